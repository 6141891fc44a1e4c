#!/usr/bin/env python3
"""Quality benchmark: our DLRM (dot and DCN) against a hashed logistic regression on the same split.

One run prints figures (it is not a test):

1. raw data: --raw (a directory of day_0.. files, or a Kaggle train.txt, or any file in that format,
   linked as train.txt); by default the real sample REAL_SAMPLE (../shared/criteo/, 117,547 Kaggle
   rows in time order) when it exists, else (or with --synthetic) synthetic days written by
   tools/make_synthetic_criteo.py (--days x --rows_per_day, --seed; with its planted click model);
2. our preprocessing: tools/criteo1t_parquet.py (local Spark; --preprocess_args passed through, e.g.
   "--min_frequency 2"), cached under --work_dir by the raw files' identity and the flags; a Kaggle
   file is split by the Kaggle rule (in file order: 6/7 train, then 1/14 test, 1/14 val);
3. our DLRM, each of --models: dlrm_train_eval.py (--nproc ranks, CPU) with the recipe --train_args
   (default: the quickstart's, TRAIN_ARGS below; the dcn model adds --dcn_args), --seeds times
   (--seed 1..N), each evaluated on val at the end and checkpointed; the checkpoints are then scored
   on val and test in this process (each model rebuilt from its train_state.json alone). The recipe's
   prediction is the mean of its models' probabilities, as dlrm_predict.py gives for several
   checkpoints; one model's figures (the mean over the seeds) are printed beside it;
4. the baseline: scikit-learn LogisticRegression (liblinear, dual: fewer rows than buckets) on the same
   parquet rows: a one-hot of each categorical id hashed with its column into 2^--hash_bits buckets,
   plus log1p(max(raw, 0)) of each dense value (the parquet stores raw + 1); C from --lr_c chosen by
   the AUC on the val split, never on test;
5. a table: method, val and test AUC and log loss, seconds (and, on synthetic data, the planted
   model's AUC on the test day, planted_model.json per_day[-1]: the optimum a model can reach there).

Goals: on real rows, our test AUC >= the logistic regression's; on the quickstart's synthetic data,
within 0.01 of the planted AUC. Choose recipes on val; test is for reporting.

    python benchmarks/bench_quality.py                    # the real sample (~6 min), else synthetic 3 x 300k
    python benchmarks/bench_quality.py --synthetic --models dot   # the quickstart's synthetic data (~10 min)
    python benchmarks/bench_quality.py --raw ../shared/criteo/kaggle_train_head10k.tsv
    python benchmarks/bench_quality.py --preprocess_args "--min_frequency 3" --epochs 2 --train_args "..."
"""
import argparse
import hashlib
import os
import shlex
import shutil
import sys
import time
from types import SimpleNamespace

import harness
from harness import CpuWindow, load_note, run_watched
from dlrm.launch import train_command
from dlrm.metrics import read_metrics
from dlrm.quickstart import epoch_batches
from dlrm.schema import NUM_SPARSE, read_dataset_info

# The quickstart's recipe (scripts/quickstart.sh on CPU, its defaults; docs/training.md "A recipe for small real
# data"): vocabulary ids with values seen once folded, Adagrad 0.02 at a flat rate, batch 256, --epochs passes.
PREPROCESS_ARGS = "--min_frequency 2"
TRAIN_ARGS = ("--bottom_mlp 64,32 --embedding_vec_size 32 --top_mlp 64,32 --train_batch_size 256 "
              "--eval_batch_size 1000 --optimizer adagrad --learning_rate 0.02 --warmup_batches 0 "
              "--decay_start 1000000000 --decay_batches 1 --loss_print_interval 100")
DCN_ARGS = "--interaction_type dcn --dcn_num_layers 2 --dcn_low_rank_dim 64"
SEEDS = 3  # the recipe's models: one per seed, their probabilities averaged (docs/training.md)
WHOLE_SPLIT_EVAL_BATCHES = 10**9  # capped by the split: every val row is evaluated
# The real rows used when present: a 0.3% sample of Kaggle's train.txt (117,547 rows, time order).
REAL_SAMPLE = os.path.join(harness.REPO, "..", "shared", "criteo", "kaggle_sample_train117k.tsv")


# ----------------------------------------------------------------------------- 1./2. data
def raw_input(args):
    """(raw directory, number of test rows for the tool, planted test-day AUC or None)."""
    from dlrm.synthetic import read_planted_model

    if args.raw is None:
        raw = os.path.join(args.work_dir, f"synthetic_{args.days}x{args.rows_per_day}_seed{args.seed}")
        if read_planted_model(raw) is None:
            print(f"raw data: writing {args.days} synthetic days x {args.rows_per_day:,} rows (seed {args.seed})",
                  flush=True)
            harness.synthesize(raw, args.days, args.rows_per_day, args.seed)
    elif os.path.isdir(args.raw):
        raw = os.path.abspath(args.raw)
    else:  # a file in Kaggle's format: linked as train.txt in a directory of its own
        path = os.path.abspath(args.raw)
        raw = os.path.join(args.work_dir, "raw_" + hashlib.sha256(path.encode()).hexdigest()[:12])
        os.makedirs(raw, exist_ok=True)
        link = os.path.join(raw, "train.txt")
        if os.path.lexists(link):
            os.remove(link)
        os.symlink(path, link)
    days = sorted((f for f in os.listdir(raw) if f.startswith("day_")), key=lambda f: int(f[4:].split(".")[0]))
    if not days:
        return raw, 0, None  # Kaggle layout: the tool's own 6/7 : 1/14 : 1/14 split
    if args.num_test_examples is not None:
        test = args.num_test_examples
    else:
        test = count_lines(os.path.join(raw, days[-1])) // 2  # as the quickstart: half the last day
    planted = read_planted_model(raw)
    return raw, test, planted["per_day"][-1]["planted_auc"] if planted else None


def count_lines(path):
    import gzip

    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        return sum(1 for _ in f)


def ensure_parquet(args, raw, num_test):
    """The preprocessed dataset of raw with --preprocess_args, built once per raw files + flags."""
    stamp = [args.preprocess_args, str(num_test)]
    for f in sorted(os.listdir(raw)):
        st = os.stat(os.path.join(raw, f))
        stamp.append(f"{f} {st.st_size} {int(st.st_mtime)}")
    key = hashlib.sha256("\n".join(stamp).encode()).hexdigest()[:12]
    out = os.path.join(args.work_dir, f"parquet_{key}")
    if os.path.exists(os.path.join(out, "dataset_info.json")):
        print(f"dataset: reusing {out}")
        return out, 0.0
    print(f"dataset: preprocessing {raw} -> {out} (tools/criteo1t_parquet.py {args.preprocess_args})", flush=True)
    seconds = harness.preprocess(raw, out, out + ".log", num_test, shlex.split(args.preprocess_args),
                                 train_files=16, eval_files=4)
    return out, seconds


# ----------------------------------------------------------------------------- 3. our DLRM
def train_dlrm(args, data_dir, name, recipe_args, seed):
    """Train one of our models (the recipe plus --seed and --eval_split val: the test split is not looked
    at while training), checkpointed at the end; returns its run record with the checkpoint's path."""
    from dlrm.checkpoint import latest_checkpoint

    run_dir = os.path.join(args.work_dir, f"train_{name}_seed{seed}")
    shutil.rmtree(run_dir, ignore_errors=True)
    os.makedirs(run_dir)
    metrics = os.path.join(run_dir, "metrics.jsonl")
    recipe = shlex.split(recipe_args)
    batch = int(recipe[recipe.index("--train_batch_size") + 1]) if "--train_batch_size" in recipe else 55296
    train_rows = read_dataset_info(data_dir)["rows"]["train"]
    train_args = ["--data_dir", data_dir, "--device", "cpu", "--metrics_file", metrics, "--model_save_dir", run_dir,
                  "--train_batches", str(epoch_batches(train_rows, batch, args.epochs)), *recipe, "--seed", str(seed),
                  "--eval_split", "val", "--eval_interval", "0", "--eval_batches", str(WHOLE_SPLIT_EVAL_BATCHES)]
    cmd = train_command(train_args, nproc=args.nproc)
    print(f"  $ {' '.join(map(str, cmd))}", flush=True)
    env = dict(os.environ)
    env.setdefault("GLOG_minloglevel", "3")

    def evals():
        try:
            return [r for r in read_metrics(metrics) if r.get("kind") == "eval"]
        except (FileNotFoundError, ValueError):
            return None

    points, code, _, run = run_watched(
        cmd, os.path.join(run_dir, "train.log"), evals, env=env, timeout=args.timeout,
        on_record=lambda r: print(f"    step {r['step']:>5}: {r['split']} AUC {r['auc']:.4f} "
                                  f"({r['eval_samples']:,} rows)", flush=True))
    ckpt = latest_checkpoint(run_dir)
    if code != 0 or not points or ckpt is None:
        sys.exit(f"error: training failed (exit {code}); see {os.path.join(run_dir, 'train.log')}")
    return {"checkpoint": ckpt, "train_val_auc": points[-1][0]["auc"], **run}


def predictions(path, splits, batch=10000):
    """{split: probabilities} on each of splits ({name: batch of rows}) of the model in checkpoint `path`,
    rebuilt from its train_state.json (config.model) alone, in this process."""
    import numpy as np
    import oneflow as flow

    from dlrm.checkpoint import load_weights, read_train_state
    from dlrm.distributed import cpu_placement, to_global
    from dlrm.model import DLRM
    from dlrm.predict import model_config

    saved = read_train_state(path)["config"]["model"]
    model = DLRM(model_config(SimpleNamespace(model=saved), "cpu"), None, "cpu")
    cpu = cpu_placement()
    model.to_global(cpu, flow.sbp.broadcast)
    load_weights(model, path)
    model.eval()
    out = {}
    for split, b in splits.items():
        with flow.no_grad():
            out[split] = np.concatenate([
                model(to_global(b.dense[i:i + batch], cpu), to_global(b.sparse[i:i + batch], cpu)).sigmoid()
                .to_local().numpy().reshape(-1) for i in range(0, b.rows, batch)])
    return out


def auc_logloss(probs, splits):
    """{split: (AUC, log loss)} of the probabilities against the splits' labels."""
    from sklearn.metrics import roc_auc_score

    from dlrm.evaluation import log_loss

    return {s: (roc_auc_score(b.label.ravel(), probs[s]), log_loss(b.label.ravel(), probs[s]))
            for s, b in splits.items()}


def recipe_results(args, data_dir, name, recipe):
    """[(label, record)]: the recipe's prediction (the mean of its --seeds models' probabilities) and one
    model's figures (each seed's AUC and log loss, averaged)."""
    import numpy as np

    splits = {s: read_split(data_dir, s) for s in ("val", "test")}
    runs, probs = [], []
    for seed in range(1, args.seeds + 1):
        run = train_dlrm(args, data_dir, name, recipe, seed)
        probs.append(predictions(run["checkpoint"], splits))
        run.update(auc_logloss(probs[-1], splits))
        print(f"  seed {seed}: val AUC {run['val'][0]:.4f} (the run's own evaluation: {run['train_val_auc']:.4f}), "
              f"test AUC {run['test'][0]:.4f}; {run['wall_s']:.0f} s{load_note(run)}", flush=True)
        runs.append(run)
    one = {s: tuple(np.mean([r[s][i] for r in runs]) for i in (0, 1)) for s in splits}
    one["wall_s"] = np.mean([r["wall_s"] for r in runs])
    both = auc_logloss({s: np.mean([p[s] for p in probs], axis=0) for s in splits}, splits)
    both["wall_s"] = sum(r["wall_s"] for r in runs)
    both["others_cores"] = max((r.get("others_cores") or 0) for r in runs)
    if args.seeds == 1:
        return [(f"our DLRM, {name} ({args.nproc} ranks)", both)]
    return [(f"our DLRM, {name}, mean of {args.seeds} seeds' models", both),
            (f"  one {name} model (mean over the {args.seeds})", one)]


# ----------------------------------------------------------------------------- 4. logistic regression
def read_split(data_dir, split):
    import pyarrow.parquet as pq

    from dlrm.data import split_files, table_to_batch
    from dlrm.schema import COLUMNS

    return table_to_batch(pq.read_table(split_files(data_dir, split), columns=COLUMNS))


def hashed_features(batch, bits):
    """Sparse rows: one-hot of hash(column, id) into 2^bits buckets, then log1p(max(raw, 0)) of the 13
    dense values (parquet dense = raw + 1)."""
    import numpy as np
    import scipy.sparse as sp

    n = batch.rows
    ids = batch.sparse.astype(np.uint64)
    cols = np.arange(NUM_SPARSE, dtype=np.uint64)
    h = (ids * np.uint64(0x9E3779B97F4A7C15)) ^ (cols * np.uint64(0xC2B2AE3D27D4EB4F))
    h = (h * np.uint64(0xFF51AFD7ED558CCD)) >> np.uint64(64 - bits)
    onehot = sp.csr_matrix((np.ones(h.size, np.float32), h.ravel().astype(np.int64),
                            np.arange(0, h.size + 1, NUM_SPARSE)), shape=(n, 1 << bits))
    onehot.sum_duplicates()
    dense = np.log1p(np.maximum(batch.dense - 1, 0)).astype(np.float32)
    return sp.hstack([onehot, sp.csr_matrix(dense)], format="csr")


def logistic_regression(args, data_dir):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score

    from dlrm.evaluation import log_loss

    scores = {}

    with CpuWindow() as w:
        data = {s: read_split(data_dir, s) for s in ("train", "val", "test")}
        X = {s: hashed_features(b, args.hash_bits) for s, b in data.items()}
        y = {s: b.label.ravel() for s, b in data.items()}
        fits = []
        for C in args.lr_c:
            t = time.time()
            m = LogisticRegression(C=C, solver="liblinear", dual=True, max_iter=200).fit(X["train"], y["train"])
            val = roc_auc_score(y["val"], m.predict_proba(X["val"])[:, 1])
            print(f"    C={C:g}: val AUC {val:.4f} ({time.time() - t:.1f} s)", flush=True)
            fits.append((val, C, m))
        _, C, m = max(fits, key=lambda f: f[0])
        for s in ("val", "test"):
            p = m.predict_proba(X[s])[:, 1]
            scores[s] = (roc_auc_score(y[s], p), log_loss(y[s], p))
    rec = w.record()
    rec.update(scores, C=C, rows={s: b.rows for s, b in data.items()})
    return rec


# ----------------------------------------------------------------------------- main
def float_list(s):
    return [float(x) for x in s.split(",") if x.strip()]


def get_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--raw", default=None, help="raw data: a directory of day_N files, or a Kaggle-format file (train.txt); "
                                  "default: REAL_SAMPLE when it exists, else synthetic days")
    a("--synthetic", action="store_true", help="synthetic days even when REAL_SAMPLE exists")
    a("--models", type=lambda t: [m for m in t.split(",") if m], default="dot,dcn",
      help="our models to train: dot (the recipe), dcn (the recipe plus --dcn_args)")
    a("--dcn_args", default=DCN_ARGS, help="flags added to the recipe for the dcn model")
    a("--seeds", type=int, default=SEEDS,
      help="models per recipe (--seed 1..N); the recipe predicts the mean of their probabilities")
    harness.add_synthetic_args(p, "bench_quality", 300000,
                               "where the raw synthetic data, the parquet datasets and the training run go")
    a("--num_test_examples", type=int, default=None,
      help="rows of the last day that go to test (default: half of it, as the quickstart)")
    a("--preprocess_args", default=PREPROCESS_ARGS, help="extra tools/criteo1t_parquet.py flags, one string")
    a("--train_args", default=TRAIN_ARGS, help="the dlrm_train_eval.py recipe, one string")
    a("--epochs", type=float, default=1.0,
      help="passes over train: --train_batches = ceil(train rows * epochs / --train_batch_size of the recipe)")
    a("--nproc", type=int, default=2, help="training ranks (the quickstart's on CPU)")
    a("--hash_bits", type=int, default=22, help="logistic regression: 2^bits hashed buckets")
    a("--lr_c", type=float_list, default="0.01,0.03,0.1,0.3,1",
      help="logistic regression: inverse regularisation strengths tried (chosen on val)")
    a("--timeout", type=int, default=3600, help="seconds allowed for training")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    if args.raw is None and not args.synthetic and os.path.exists(REAL_SAMPLE):
        args.raw = REAL_SAMPLE
    t_start = time.time()
    os.makedirs(args.work_dir, exist_ok=True)
    print(f"machine: {os.cpu_count()} CPUs, {harness.cpu_model()}")
    raw, num_test, planted = raw_input(args)
    data_dir, prep_s = ensure_parquet(args, raw, num_test)
    rows = read_dataset_info(data_dir)["rows"]
    print(f"rows: {', '.join(f'{s} {n:,}' for s, n in rows.items())}")

    results = []
    for name in args.models:
        recipe = args.train_args + (" " + args.dcn_args if name == "dcn" else "")
        print(f"\n== our DLRM, {name} (dlrm_train_eval.py, {args.nproc} rank(s), CPU, {args.seeds} seed(s); "
              f"recipe: {recipe})")
        results += recipe_results(args, data_dir, name, recipe)

    print(f"\n== logistic regression (scikit-learn liblinear; 2^{args.hash_bits} hashed one-hot + log1p dense; "
          f"C from {args.lr_c} on val)")
    lr = logistic_regression(args, data_dir)
    print(f"  C={lr['C']:g}: val AUC {lr['val'][0]:.4f}, test AUC {lr['test'][0]:.4f}; {lr['wall_s']:.0f} s"
          f"{load_note(lr)}")
    results.append((f"hashed logistic regression (C={lr['C']:g})", lr))

    print("\n" + "=" * 96)
    print(f"SUMMARY  {raw}; val {rows['val']:,} rows, test {rows['test']:,} rows")
    print("-" * 96)
    print(f"{'method':42s} {'val AUC':>9} {'val logloss':>12} {'test AUC':>9} {'test logloss':>13} {'seconds':>8}")
    for label, r in results:
        print(f"{label:42s} {r['val'][0]:>9.4f} {r['val'][1]:>12.4f} {r['test'][0]:>9.4f} {r['test'][1]:>13.4f} "
              f"{r['wall_s']:>8.0f}")
    if planted is not None:
        print(f"{'planted model (test day, synthetic optimum)':42s} {'':>9} {'':>12} {planted:>9.4f}")
    print("-" * 96)
    for label, r in results[:-1]:
        diff = r["test"][0] - lr["test"][0]
        print(f"{label} - logistic regression, test AUC: {diff:+.4f} "
              f"({'OK' if diff >= 0 else 'BELOW'}: goal >= 0 on real rows)")
        if planted is not None:
            gap = planted - r["test"][0]
            print(f"planted - {label}: {gap:+.4f} ({'OK' if gap <= 0.01 else 'ABOVE 0.01'}: goal <= 0.01 on "
                  f"synthetic data)")
    print("=" * 96)
    harness.busy_note(results, "the seconds are")
    print(f"total {time.time() - t_start:.0f} s (preprocessing {prep_s:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
