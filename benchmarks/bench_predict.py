#!/usr/bin/env python3
"""Benchmark dlrm_predict.py against the passes it stands beside, side by side in one run.

1. generate N synthetic raw rows (two days, tools/make_synthetic_criteo.py) and preprocess them
   with tools/criteo1t_parquet.py (local Spark; test: all of day_1 but its last 1000 rows, so the
   test split is large enough for the graph's compilation not to dominate): the tool's rows/s over
   the whole run (N rows / wall time);
2. train a tiny model for a few steps with dlrm_train_eval.py on CPU; its one evaluation pass over
   the test split (best of --repeats runs, alternating with step 3) gives the evaluation rows/s (eval_samples / eval_time_s of its metrics record:
   reading, the compiled graph's first call, scoring, gathering);
3. dlrm_predict.py on the same test split (parquet): the rows/s of its scoring step (best of --repeats) (reading,
   the graph's first call, scoring, gathering: the same work), goal >= 0.9x the evaluation pass;
4. dlrm_predict.py on the raw day files (the N rows the tool preprocessed): N / wall time of the
   whole command (Spark transforms, scoring, output), goal >= 0.9x the tool's rows/s.

    python benchmarks/bench_predict.py --rows 200000
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import harness
from dlrm.metrics import read_metrics

PREDICT = os.path.join(harness.REPO, "dlrm_predict.py")
TRAIN = os.path.join(harness.REPO, "dlrm_train_eval.py")
MODEL = ["--bottom_mlp", "64,32,16", "--embedding_vec_size", "16", "--top_mlp", "64,32"]
SCORED_RE = re.compile(r"^scored in ([\d.]+) s \((\d+) rows/s\)", re.M)


def run(cmd, log_path):
    """Run cmd (output to log_path); its wall seconds and output. Exits with a message if it fails."""
    t = time.time()
    with open(log_path, "w") as f:
        proc = subprocess.run([str(c) for c in cmd], cwd=harness.REPO, stdout=f, stderr=subprocess.STDOUT)
    wall = time.time() - t
    text = open(log_path).read()
    if proc.returncode != 0:
        sys.exit(f"error: {os.path.basename(cmd[1])} failed (exit {proc.returncode}); see {log_path}")
    return wall, text


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=200000, help="synthetic raw rows (test split: about half)")
    ap.add_argument("--batch_size", type=int, default=1024, help="evaluation and prediction batch size")
    ap.add_argument("--work_dir", default=None, help="scratch dir (default: a temp dir, removed)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3, help="runs of each side of the parquet comparison (best taken)")
    args = ap.parse_args(argv)
    work = args.work_dir or tempfile.mkdtemp(prefix="bench_predict-")
    os.makedirs(work, exist_ok=True)
    spark = ["--spark_master", "local[2]", "--spark_driver_memory_gb", "4"]
    try:
        raw, data, run_dir = (os.path.join(work, d) for d in ("raw", "parquet", "run"))
        day = args.rows // 2
        print(f"[bench] {2 * day} synthetic rows (generated in "
              f"{harness.synthesize(raw, 2, day, args.seed):.1f} s)", flush=True)
        tool_s = harness.preprocess(raw, data, os.path.join(work, "preprocess.log"), max(1, day - 1000))
        print(f"[bench] preprocessing tool: {tool_s:.1f} s", flush=True)

        # the two sides of the parquet comparison alternate, best of --repeats each (a shared machine)
        eval_s, split_s = [], []
        for _ in range(args.repeats):
            shutil.rmtree(run_dir, ignore_errors=True)
            run([sys.executable, TRAIN, "--data_dir", data, "--device", "cpu", *MODEL, "--train_batch_size", "256",
                 "--eval_batch_size", args.batch_size, "--train_batches", "20", "--eval_interval", "0",
                 "--eval_batches", "1000000", "--loss_print_interval", "10", "--optimizer", "adam",
                 "--learning_rate", "0.001", "--model_save_dir", run_dir], os.path.join(work, "train.log"))
            ev = [r for r in read_metrics(os.path.join(run_dir, "metrics.jsonl")) if r["kind"] == "eval"][-1]
            eval_s.append(ev["eval_time_s"])
            ckpt = os.path.join(run_dir, [d for d in os.listdir(run_dir) if d.startswith("step_20")][0])
            predict = [sys.executable, PREDICT, "--model_load_dir", ckpt, "--device", "cpu", "--overwrite",
                       "--batch_size", str(args.batch_size)]
            _, out = run(predict + ["--input", os.path.join(data, "test"), "--output",
                                    os.path.join(work, "split.parquet")], os.path.join(work, "predict_split.log"))
            split_s.append(float(SCORED_RE.search(out).group(1)))
            print(f"[bench] evaluation pass {eval_s[-1]:.2f} s, dlrm_predict.py scoring {split_s[-1]:.2f} s",
                  flush=True)
        raw_s, _ = run(predict + ["--input", os.path.join(raw, "day_*"), "--output",
                                  os.path.join(work, "raw.parquet"), *spark], os.path.join(work, "predict_raw.log"))

        eval_rate = ev["eval_samples"] / min(eval_s)
        split_rate = ev["eval_samples"] / min(split_s)
        tool_rate, raw_rate = 2 * day / tool_s, 2 * day / raw_s
        print()
        print(f"{2 * day:,} synthetic rows, {harness.cpu_model()}, {os.cpu_count()} CPU(s), load average at "
              f"the end {os.getloadavg()[0]:.1f}")
        print("| what | dlrm_predict.py rows/s | baseline | baseline rows/s | ratio (goal >= 0.9) |")
        print("|---|---|---|---|---|")
        print(f"| parquet test split ({ev['eval_samples']:,} rows) | {split_rate:,.0f} | dlrm_train_eval.py "
              f"evaluation pass | {eval_rate:,.0f} | {split_rate / eval_rate:.2f} |")
        print(f"| raw text ({2 * day:,} rows, whole command) | {raw_rate:,.0f} | tools/criteo1t_parquet.py, "
              f"whole run | {tool_rate:,.0f} | {raw_rate / tool_rate:.2f} |")
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
