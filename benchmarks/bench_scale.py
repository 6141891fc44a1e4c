#!/usr/bin/env python3
"""The whole path at fractions of Kaggle's size on this machine, and how each stage's cost grows.

For each fraction F (``--fractions 0.0156,0.125,1``; 1 = Kaggle's 45,840,617 train rows), in
``--work_dir``/f<F>/:

1. generation: tools/make_synthetic_criteo.py --layout kaggle --fraction F (train.txt, test.txt,
   planted_model.json); timed, not part of end-to-end;
2. preprocessing: tools/criteo1t_parquet.py with the README's "Kaggle on a laptop" flags, once with
   vocabulary ids (--min_frequency 2: the dataset trained on) and once with mod ids (the default
   --mod_idx), Spark's scratch in its own directory (--spark_tmp_dir) whose peak size is sampled;
3. training: one epoch with RECIPE (below, the one place of the recipe's flags) on 2 CPU processes
   (python -m oneflow.distributed.launch), its final evaluation covering the whole test split;
4. scoring: dlrm_predict.py on 2 processes over the whole test.txt (raw text, Spark transforms).

While a stage runs a thread samples the RSS of all its processes together (Spark JVM and Python
workers, every rank; benchmarks/harness.py PeakSampler) and the stage's scratch directory. Printed:
a table per fraction and stage (wall s, peak RSS, samples/s), the disk used (raw, parquet, Spark's
scratch peak, checkpoints), the AUC of the final evaluation against the planted model's on the same rows; then each
stage's growth exponent k (time ~ rows^k, least squares over log-log of the fractions run; also for
RSS and scratch disk) and the extrapolation to Criteo 1TB (4,373,472,329 rows) on --cores cores,
assuming time falls linearly with cores. Last lines, one per fraction:

    scale F: rows N, end-to-end S s, peak RSS G GiB, AUC A (planted P)

end-to-end = preprocessing (vocabulary ids) + training (with its evaluation) + scoring; peak RSS:
the largest of those stages'. Each stage's output directory is deleted once no later stage needs
it (the logs stay), unless --keep; the benchmark refuses a fraction directory that already exists,
so it deletes only what it wrote. Example:

    python benchmarks/bench_scale.py --fractions 0.0156,0.125,1 --work_dir /data/scale
"""

import argparse
import math
import os
import shutil
import sys
import time

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq

import harness
from dlrm import synthetic
from dlrm.launch import preprocess_command, train_command
from dlrm.metrics import MetricsError, read_metrics
from dlrm.preprocess.plan import split_bounds
from dlrm.quickstart import epoch_batches
from dlrm.schema import LABEL, read_dataset_info

PREDICT = os.path.join(harness.REPO, "dlrm_predict.py")
CRITEO_1TB_ROWS = 4_373_472_329
RANKS = 2  # training and scoring processes
GiB = 1 << 30
STAGE_TIMEOUT = 7 * 24 * 3600  # a stage at fraction 1 takes long on 2 cores; never cut it short

# The full-data recipe: every flag of the training run but the data, save dir, seed, steps and the
# evaluation's extent. {steps} is one epoch's batches of --train_batch_size.
RECIPE = ["--embedding_vec_size", "32", "--bottom_mlp", "64,32", "--top_mlp", "64,32",
          "--optimizer", "adagrad", "--learning_rate", "0.05", "--warmup_batches", "0",
          "--decay_start", "{steps}", "--decay_batches", "1",
          "--train_batch_size", "4096", "--eval_batch_size", "16384"]
# The README's "Kaggle on a laptop" preprocessing flags (--min_frequency 2 added for vocabulary ids).
PREPROCESS = ["--train_files", "16", "--eval_files", "4", "--spark_driver_memory_gb", "8"]
DISK = ("raw", "parquet_vocab", "parquet_mod", "scratch_vocab", "scratch_mod", "checkpoints")
STAGES = ("generate", "preprocess_vocab", "preprocess_mod", "train", "score")
END_TO_END = ("preprocess_vocab", "train", "score")


def recipe_value(recipe, flag):
    return recipe[recipe.index(flag) + 1]


def with_value(recipe, flag, value):
    """recipe with flag's value replaced (None: unchanged)."""
    if value is None:
        return list(recipe)
    out = list(recipe)
    out[out.index(flag) + 1] = str(value)
    return out


def fit_growth(rows, values):
    """(k, c) of values ~ c * rows^k by least squares over log-log, or None with fewer than two
    distinct row counts (or a value <= 0)."""
    pts = [(math.log(r), math.log(v)) for r, v in zip(rows, values) if r > 0 and v and v > 0]
    if len({x for x, _ in pts}) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    k = sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)
    return k, math.exp(my - k * mx)


def extrapolate(rows, values, target):
    """(value at target rows, k) of the least-squares power law, or None with one row count."""
    fit = fit_growth(rows, values)
    if fit is None:
        return None
    k, c = fit
    return c * target ** k, k


def planted_split_auc(planted, info, parquet_dir):
    """The planted model's AUC on the rows of the test split the model is evaluated on: train.txt's
    rows regenerated block by block as the generator drew them (dlrm/synthetic.py's kaggle layout:
    the spec and each block's random stream follow from the seed alone), the split's rows taken by
    the preprocessing's split rule; their clicks must equal the split's. The generator's own planted
    AUC is over all of train.txt."""
    n, seed = planted["total_rows"], planted["seed"]
    first, end = split_bounds(info["input_format"], n, 0, "train.txt")["test"]
    spec = synthetic.build_kaggle_spec(seed)
    labels, probs, size = [], [], synthetic.BLOCK_ROWS
    for block in range(first // size, -(-end // size)):
        rows = min(size, n - block * size)
        y, *_, p = synthetic.sample_block(spec, synthetic._rng(seed, synthetic._KAGGLE_DATA_STREAM, 0, block), rows)
        lo, hi = max(first - block * size, 0), min(end - block * size, rows)
        labels.append(y[lo:hi])
        probs.append(p[lo:hi])
    labels = np.concatenate(labels)
    test = os.path.join(parquet_dir, "test")
    clicks = int(ds.dataset(test, format="parquet").to_table(columns=[LABEL]).column(0).to_numpy().sum())
    if len(labels) != info["rows"]["test"] or int(labels.sum()) != clicks:
        sys.exit(f"error: the regenerated test rows ({len(labels)}, {int(labels.sum())} clicks) are not {test}'s "
                 f"({info['rows']['test']}, {clicks} clicks): the data is not this generator's")
    return synthetic._auc(labels, np.concatenate(probs))


def stage_env():
    """The stages import this checkout's dlrm package (not whatever the venv's editable install points at)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([harness.REPO] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def run_stage(name, cmd, log_path, dirs=(), read_records=lambda: None):
    """Run one stage under a PeakSampler; exits naming the log when it fails. Returns its record:
    wall_s, rss_bytes (all its processes together), dir_bytes (peaks), points (run_watched's)."""
    print(f"[scale] {name}: {' '.join(map(str, cmd[:8]))} ...", flush=True)
    with harness.PeakSampler(os.getpid(), dirs=dirs) as peak:
        points, code, _, run = harness.run_watched([str(c) for c in cmd], log_path, read_records, env=stage_env(),
                                                   timeout=STAGE_TIMEOUT)
    if code != 0:
        sys.exit(f"error: {name} failed (exit {code}); see {log_path}")
    # the machine's busy cores over the stage, everyone's: a stage's own CPU is not all counted by
    # wait4 (processes its children leave unreaped), so only the sum is reliable
    rec = {"wall_s": run["wall_s"], "rss_bytes": peak.rss_bytes, "dir_bytes": dict(peak.dir_bytes),
           "busy_cores": run["cores"] + run["others_cores"], "points": points}
    print(f"[scale] {name}: {rec['wall_s']:.1f} s, peak RSS {rec['rss_bytes'] / GiB:.2f} GiB, "
          f"machine busy {rec['busy_cores']:.2f} cores", flush=True)
    return rec


def remove(paths, keep):
    """Delete the benchmark's own outputs (every path here was created by it) unless --keep."""
    if keep:
        return
    for p in paths:
        if os.path.isdir(p):
            shutil.rmtree(p)
        elif os.path.exists(p):
            os.remove(p)


def train_metrics(path):
    try:
        return read_metrics(path)
    except MetricsError:  # not written yet, or no record so far
        return None


def run_fraction(fraction, args, recipe):
    """All stages at one fraction; returns {rows, stages: {name: record}, disk: {what: bytes}, auc, planted}."""
    base = os.path.join(args.work_dir, f"f{fraction:g}")
    os.makedirs(base)
    raw, pq_vocab, pq_mod = (os.path.join(base, d) for d in ("raw", "parquet_vocab", "parquet_mod"))
    tmp_vocab, tmp_mod = os.path.join(base, "spark_tmp_vocab"), os.path.join(base, "spark_tmp_mod")
    ckpt, preds = os.path.join(base, "checkpoints"), os.path.join(base, "predictions.parquet")
    log = lambda name: os.path.join(base, f"{name}.log")  # noqa: E731
    stages, disk = {}, {}

    stages["generate"] = run_stage("generate", harness.tool_command(
        "make_synthetic_criteo.py", "--layout", "kaggle", "--fraction", fraction, "--output_dir", raw,
        "--seed", args.seed), log("generate"))
    planted = synthetic.read_planted_model(raw)
    rows = planted["total_rows"]
    disk["raw"] = harness.dir_bytes(raw)

    runs = [("preprocess_vocab", pq_vocab, tmp_vocab, ["--min_frequency", "2"]),
            ("preprocess_mod", pq_mod, tmp_mod, [])]
    for name, out, tmp, ids in runs[:1] if args.skip_mod else runs:
        os.makedirs(tmp)
        stages[name] = run_stage(name, preprocess_command(
            ["--input_dir", raw, "--output_dir", out, "--input_format", "kaggle", *PREPROCESS, *ids,
             "--spark_tmp_dir", tmp]), log(name), dirs=[tmp])
        disk[name.replace("preprocess", "parquet")] = harness.dir_bytes(out)
        disk[name.replace("preprocess", "scratch")] = stages[name]["dir_bytes"][tmp]
        remove([tmp], args.keep)
    remove([pq_mod], args.keep)  # measured; nothing trains on it

    info = read_dataset_info(pq_vocab)
    t = time.time()
    planted_test = planted_split_auc(planted, info, pq_vocab)
    print(f"[scale] the planted model on the test split's {info['rows']['test']} rows (regenerated): "
          f"AUC {planted_test:.4f}, {time.time() - t:.1f} s", flush=True)
    batch = int(recipe_value(recipe, "--train_batch_size"))
    eval_batch = int(recipe_value(recipe, "--eval_batch_size"))
    steps = epoch_batches(info["rows"]["train"], batch, 1)
    metrics_file = os.path.join(ckpt, "metrics.jsonl")
    train_args = ["--device", "cpu", "--data_dir", pq_vocab, "--model_save_dir", ckpt, "--seed", args.seed,
                  *[a.format(steps=steps) for a in recipe], "--train_batches", steps,
                  "--eval_interval", steps, "--eval_batches", math.ceil(info["rows"]["test"] / eval_batch),
                  "--loss_print_interval", max(1, steps // 20), "--metrics_file", metrics_file]
    stages["train"] = run_stage("train", train_command(train_args, nproc=RANKS), log("train"),
                                read_records=lambda: train_metrics(metrics_file))
    records = read_metrics(metrics_file)
    evals = [r for r in records if r["kind"] == "eval"]
    if not evals or evals[-1]["eval_samples"] != info["rows"]["test"]:
        sys.exit(f"error: training's final evaluation did not cover the test split's {info['rows']['test']} rows; "
                 f"see {metrics_file}")
    train_points = [(r, s) for r, s in stages["train"]["points"] if r["kind"] == "train"]
    stages["train"]["samples"] = steps * batch
    if len(train_points) >= 2:
        stages["train"]["samples_per_s"] = harness.interval_rate(train_points, batch)["samples_per_s"]
    else:  # too few logged intervals for a steady rate: the whole stage
        stages["train"]["samples_per_s"] = steps * batch / stages["train"]["wall_s"]
    disk["checkpoints"] = harness.dir_bytes(ckpt)

    checkpoint = max((os.path.join(ckpt, d) for d in os.listdir(ckpt) if d.startswith(f"step_{steps}_")),
                     default=None)
    if checkpoint is None:
        sys.exit(f"error: no checkpoint of step {steps} in {ckpt}; see {log('train')}")
    stages["score"] = run_stage("score", train_command(
        ["--model_load_dir", checkpoint, "--input", os.path.join(raw, "test.txt"), "--output", preds,
         "--device", "cpu"], nproc=RANKS, script=PREDICT), log("score"))
    scored = pq.ParquetFile(preds).metadata.num_rows
    if scored != planted["test_rows"]:
        sys.exit(f"error: {preds} holds {scored} rows, test.txt {planted['test_rows']}; see {log('score')}")
    stages["score"]["samples"] = scored
    stages["score"]["samples_per_s"] = scored / stages["score"]["wall_s"]
    remove([preds, ckpt, pq_vocab, raw], args.keep)
    return {"fraction": fraction, "rows": rows, "stages": stages, "disk": disk, "auc": evals[-1]["auc"],
            "planted": planted_test, "planted_train_txt": planted["planted_auc"],
            "train_rows": info["rows"]["train"], "test_rows": info["rows"]["test"],
            "steps": steps}


def end_to_end(res):
    return sum(res["stages"][s]["wall_s"] for s in END_TO_END), max(res["stages"][s]["rss_bytes"] for s in END_TO_END)


def print_tables(results, cores):
    stages = [s for s in STAGES if all(s in res["stages"] for res in results)]
    print(f"\n| fraction | rows | stage | wall s | peak RSS GiB (all processes) | samples/s | machine busy cores "
          f"(of {os.cpu_count()}, everyone's) |")
    print("|---|---|---|---|---|---|---|")
    for res in results:
        for name in stages:
            s = res["stages"][name]
            rate = f"{s['samples_per_s']:,.0f}" if "samples_per_s" in s else ""
            print(f"| {res['fraction']:g} | {res['rows']:,} | {name} | {s['wall_s']:.1f} | {s['rss_bytes'] / GiB:.2f} "
                  f"| {rate} | {s['busy_cores']:.2f} |")

    print("\n| fraction | raw GB | parquet vocab GB | parquet mod GB | Spark scratch peak vocab GB "
          "| Spark scratch peak mod GB | checkpoints GB |")
    print("|---|---|---|---|---|---|---|")
    for res in results:
        d = {k: f"{res['disk'][k] / 1e9:.3f}" if k in res["disk"] else "-" for k in DISK}
        print(f"| {res['fraction']:g} | " + " | ".join(d[k] for k in DISK) + " |")

    print("\n| fraction | train rows | steps | test rows | AUC (whole test split) | planted AUC (test split) | gap "
          "| planted AUC (all train.txt) |")
    print("|---|---|---|---|---|---|---|---|")
    for res in results:
        print(f"| {res['fraction']:g} | {res['train_rows']:,} | {res['steps']} | {res['test_rows']:,} "
              f"| {res['auc']:.4f} | {res['planted']:.4f} | {res['planted'] - res['auc']:+.4f} "
              f"| {res['planted_train_txt']:.4f} |")

    rows = [res["rows"] for res in results]
    here = os.cpu_count()
    print(f"\nGrowth (time ~ rows^k, least squares over log-log of the {len(set(rows))} row count(s)) and "
          f"Criteo 1TB ({CRITEO_1TB_ROWS:,} rows) on {cores} cores.")
    print(f"Assumption: every stage's time falls linearly with cores (perfect speedup) from the {here} cores "
          f"used here; memory and disk do not depend on cores. Extrapolated from Kaggle-shaped data"
          + ("." if len(set(rows)) >= 2 else "; one row count: no fit, n/a."))
    print("| stage | time k | RSS k | 1TB time h | 1TB memory per rank GiB | 1TB Spark scratch GB | scratch k |")
    print("|---|---|---|---|---|---|---|")
    na = ("n/a", "n/a")
    for name in stages:
        t = extrapolate(rows, [r["stages"][name]["wall_s"] for r in results], CRITEO_1TB_ROWS)
        m = extrapolate(rows, [r["stages"][name]["rss_bytes"] for r in results], CRITEO_1TB_ROWS)
        per_rank = RANKS if name in ("train", "score") else 1  # the Spark stages: one driver JVM + its workers
        t_text = na if t is None else (f"{t[1]:.2f}", f"{t[0] * here / cores / 3600:,.3g}")
        m_text = na if m is None else (f"{m[1]:.2f}", f"{m[0] / per_rank / GiB:,.3g}")
        s_text = ("", "")
        if name.startswith("preprocess_"):
            sc = extrapolate(rows, [r["disk"][name.replace("preprocess", "scratch")] for r in results],
                             CRITEO_1TB_ROWS)
            s_text = na if sc is None else (f"{sc[0] / 1e9:,.0f}", f"{sc[1]:.2f}")
        print(f"| {name} | {t_text[0]} | {m_text[0]} | {t_text[1]} | {m_text[1]} | {s_text[0]} | {s_text[1]} |")
    disk = [extrapolate(rows, [r["disk"][k] for r in results], CRITEO_1TB_ROWS)
            for k in ("raw", "parquet_vocab", "scratch_vocab", "checkpoints")]
    total = "n/a" if None in disk else f"{sum(d[0] for d in disk) / 1e9:,.0f} GB"
    print(f"1TB disk for the vocabulary-id path (raw + parquet + Spark scratch peak + checkpoints): {total}")
    print(f"Memory per rank: training's and scoring's peak RSS over their {RANKS} ranks; the Spark stages': "
          "the whole local Spark (driver JVM and Python workers). A k well below 1 means fixed costs (JVM and "
          "Spark start-up, graph compilation) still dominate at these sizes: trust the fit from large fractions.\n")
    for res in results:
        e2e, rss = end_to_end(res)
        print(f"scale {res['fraction']:g}: rows {res['rows']}, end-to-end {e2e:.1f} s, peak RSS {rss / GiB:.2f} GiB, "
              f"AUC {res['auc']:.4f} (planted {res['planted']:.4f})")


def parse_fractions(text):
    try:
        fractions = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        fractions = []
    if not fractions or any(not 0 < f <= 1 for f in fractions) or len({f"{f:g}" for f in fractions}) < len(fractions):
        sys.exit(f"error: --fractions {text!r}: give a comma list of distinct numbers in (0, 1], e.g. 0.0156,0.125,1")
    return fractions


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a = p.add_argument
    a("--fractions", default="0.0156,0.125,1", help="comma list of fractions of Kaggle's 45,840,617 train rows")
    a("--work_dir", required=True, help="a directory f<F>/ per fraction goes here (must not exist yet)")
    a("--cores", type=int, default=64, help="cores of the Criteo 1TB extrapolation")
    a("--seed", type=int, default=0, help="generation and training seed")
    a("--keep", action="store_true", help="keep every stage's output (default: deleted once unused)")
    a("--skip_mod", action="store_true", help="skip the mod-id preprocessing run (quick checks)")
    a("--train_batch_size", type=int, default=None, help="override RECIPE's training batch (e.g. small CI runs)")
    a("--eval_batch_size", type=int, default=None, help="override RECIPE's evaluation batch")
    a("--learning_rate", type=float, default=None, help="override RECIPE's learning rate")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    fractions = parse_fractions(args.fractions)
    if args.cores <= 0:
        sys.exit(f"error: --cores {args.cores}: must be > 0")
    for f in fractions:
        d = os.path.join(args.work_dir, f"f{f:g}")
        if os.path.exists(d):
            sys.exit(f"error: {d} exists; remove it or choose another --work_dir "
                     "(the benchmark deletes only what it wrote)")
    recipe = with_value(RECIPE, "--train_batch_size", args.train_batch_size)
    recipe = with_value(recipe, "--eval_batch_size", args.eval_batch_size)
    recipe = with_value(recipe, "--learning_rate", args.learning_rate)
    os.makedirs(args.work_dir, exist_ok=True)
    print(f"[scale] {harness.cpu_model()}, {os.cpu_count()} cores; recipe: {' '.join(recipe)}", flush=True)
    results = [run_fraction(f, args, recipe) for f in fractions]
    print_tables(results, args.cores)
    return 0


if __name__ == "__main__":
    sys.exit(main())
