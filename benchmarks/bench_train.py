#!/usr/bin/env python3
"""Benchmark DLRM training on CPU: input reader, OneFlow matmul speed, FLOPs, training samples/s.

One run prints figures (it is not a test):

1. a synthetic parquet dataset: tools/make_synthetic_criteo.py + tools/criteo1t_parquet.py
   (3 days x 100k rows by default), cached under --work_dir and reused; or --data_dir;
2. reader throughput alone over the train split at the training batch size: dlrm.data.BatchReader,
   and petastorm's make_batch_reader (workers_count=1, shuffle_row_groups=True, num_epochs=None, as
   the original OneFlow DLRM used it) converted to the same numpy arrays; samples/s of each;
3. OneFlow's own CPU matmul speed at the GEMM shapes of the model's layers at the benchmark batch
   (forward B x in @ in x out, and the two backward GEMMs of each layer, the interaction bmm) with
   all threads and with 1 thread (what each rank gets under oneflow.distributed.launch), and one
   2048^3 square GEMM for reference;
4. the model's FLOPs per sample (2*m*n*k per GEMM row, forward + backward = 3 x forward);
5. training samples/s of dlrm_train_eval.py (subprocess, --device cpu) at 1 and 2 ranks with the
   original architecture, read from the `train` records of its --metrics_file (latency_ms,
   throughput), skipping the first interval (graph compilation);
5b. table size (unless --skip_tables): 1-rank training with the dataset's tables and with 26 x
   --tables_rows (1.3M, Kaggle-sized; the dataset's ids fit in both), dim 16 (--tables_bottom_mlp,
   --tables_top_mlp: facebookresearch/dlrm's Kaggle architecture), with the sparse embedding update
   (the default) and with --dense_embedding_update: samples/s, large/small ratio (goal >= 0.7 with
   the sparse update), and each run's RSS (peak: the tree's largest process, from wait4; at the end:
   rank 0's host_memory_mib at its last evaluation) next to dlrm.config.cpu_embedding_bytes;
   --tables_optimizer picks the optimizer (sgd: OneFlow's IndexedSlices kernel; adagrad:
   dlrm.sparse_adagrad), --only_tables runs this phase alone;
5c. with --peer_dlrm PATH --peer_python PY: facebookresearch/dlrm's dlrm_s_pytorch.py on CPU (its own
   random data, --num-indices-per-lookup=1 --num-indices-per-lookup-fixed=True: one id per feature;
   BCE loss, SGD) and our 1-rank training, in alternating rounds (--peer_rounds, at least 2 each), at
   the main architecture and the table-size phase's (Kaggle) one with the dataset's tables, and unless
   --skip_tables at 26 x --tables_rows; the peer's samples/s from its "ms/it" lines (the step alone;
   its data generation is not timed, our figure includes reading), the first interval skipped. The
   medians and ours/peer (goal >= 1.0); a ratio is marked "disturbed" (not a result) when other
   processes used more than 0.2 cores during any round.
   The peer is not a dependency: check it out outside the repository and give it an interpreter
   with torch (2.13: torch >= 2.14's profiler no longer takes the use_cuda= it passes), numpy,
   scikit-learn, tensorboard and tqdm, e.g.
       python3.11 -m venv /tmp/torchenv && /tmp/torchenv/bin/pip install torch==2.13.0 numpy \
           scikit-learn tensorboard tqdm
6. a summary: compute bound = matmul GFLOP/s / FLOPs per sample, fraction of it reached, and
   whether the reader delivers >= 3x what training consumes.

Every phase also prints the CPU it used and the CPU other processes used meanwhile ("others"):
on a shared machine the latter says how much a figure is to be trusted.

    python benchmarks/bench_train.py         # everything, default sizes: ~3.5 min (+~1.5 min the first time,
                                             # to build the dataset under --work_dir)
    python benchmarks/bench_train.py --data_dir D --ranks 1 --skip_petastorm
    python benchmarks/bench_train.py --peer_dlrm /tmp/fbdlrm --peer_python /tmp/torchenv/bin/python
                                             # + facebookresearch/dlrm next to ours (~3 min more)
    python benchmarks/bench_train.py --profile  # + where a train step's time goes (~2.5 min more)
    python benchmarks/bench_train.py --openblas_coretype Haswell --train_args --disable_fusedmlp
                                             # try settings: an env var for every OneFlow run, and
                                             # extra dlrm_train_eval.py flags (--train_args goes last)

Defaults (batch 4096, 16 steps logged every 4, the first 4 skipped) keep the run short; raise
--steps for steadier training figures.

--profile times the train graph alone on pre-made global tensors at the main and the Kaggle
architecture, as dlrm_train_eval.py runs it on CPU (unfused MLP, sparse embedding update, OneFlow's
job launcher ahead of its other threads, which run at SCHED_BATCH: dlrm.threads) and in variants
(frozen embedding, forward only, OneFlow's threads as OneFlow runs them, OneFlow's OpenBLAS instead
of MKL), with each step's CPU split by thread; then
accounts for a step: the model's GEMMs timed alone (the interaction's bmm among them), forward,
embedding gradient + sparse update, the other kernels, the VM scheduler, the main thread, idle core
time, the to_global conversion and the loss readout.

The comparison with facebookresearch/dlrm and the profile, in about 8 minutes on 2 idle cores:
    python benchmarks/bench_train.py --skip_petastorm --skip_tables --skip_training --reader_repeats 1 \
        --profile --peer_dlrm /tmp/peer_dlrm --peer_python /tmp/torchvenv/bin/python
"""
import argparse
import glob
import math
import os
import platform
import re
import shutil
import statistics
import sys
import threading
import time

import harness
from harness import REPO, CpuWindow, emit, interval_rate, load_note, run_child, run_watched
from dlrm.config import int_list
from dlrm.data import list_row_groups, split_files
from dlrm.launch import train_command
from dlrm.metrics import read_metrics
from dlrm.schema import NUM_DENSE, NUM_SPARSE

READER_WARMUP = 5


def quiet_oneflow_env(env=None):
    env = dict(os.environ if env is None else env)
    env.setdefault("GLOG_minloglevel", "3")  # OneFlow's glog: no CUDA-driver warnings/errors on CPU machines
    return env


# ----------------------------------------------------------------------------- 1. dataset
def ensure_dataset(args):
    if args.data_dir:
        if not os.path.isdir(os.path.join(args.data_dir, "train")):
            sys.exit(f"error: --data_dir {args.data_dir}: no train/ split")
        print(f"dataset: {args.data_dir} (given)")
        return args.data_dir
    name = f"synthetic_{args.days}x{args.rows_per_day}_seed{args.seed}"
    out = os.path.join(args.work_dir, name, "parquet")
    if os.path.exists(os.path.join(out, "dataset_info.json")):
        print(f"dataset: reusing {out}")
        return out
    raw = os.path.join(args.work_dir, name, "raw")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    print(f"dataset: building {out} ({args.days} days x {args.rows_per_day} rows; Spark local[2], ~2-3 min)",
          flush=True)
    t = time.time()
    harness.synthesize(raw, args.days, args.rows_per_day, args.seed)
    harness.preprocess(raw, out, os.path.join(args.work_dir, name, "preprocess.log"), args.rows_per_day // 2)
    shutil.rmtree(raw, ignore_errors=True)
    print(f"dataset: built in {time.time() - t:.0f} s", flush=True)
    return out


def train_groups(data_dir):
    return list_row_groups(split_files(data_dir, "train"))


# ----------------------------------------------------------------------------- 2. readers (child)
def child_reader(a):
    """Time `batches` batches of `batch_size` rows from the train files; the first `warmup` are not timed."""
    import numpy as np

    B = a.batch_size
    if a.impl == "ours":
        from dlrm.data import BatchReader

        reader = BatchReader(train_groups(a.data_dir), B, 0, 1, train=True, seed=1234)
        batches, close = reader, reader.close
    else:
        from petastorm import make_batch_reader

        files = split_files(a.data_dir, "train")
        reader = make_batch_reader(["file://" + os.path.abspath(f) for f in files], workers_count=1,
                                   shuffle_row_groups=True, num_epochs=None)
        batches, close = petastorm_batches(reader, B), lambda: (reader.stop(), reader.join())
    batch = None
    try:
        for _ in range(a.warmup):
            next(batches)
        with CpuWindow() as w:
            for _ in range(a.batches):
                batch = next(batches)
    finally:
        close()
    label, dense, sparse = batch.label, batch.dense, batch.sparse
    assert label.shape == (B, 1) and dense.shape == (B, NUM_DENSE) and sparse.shape == (B, NUM_SPARSE), \
        (label.shape, dense.shape, sparse.shape)
    assert label.dtype == np.float32 and dense.dtype == np.float32 and sparse.dtype.kind == "i"
    rec = w.record()
    rec.update(impl=a.impl, batches=a.batches, samples=a.batches * B, samples_per_s=a.batches * B / w.wall,
               cpu_s_per_msample=w.cpu / (a.batches * B) * 1e6)
    emit(rec)
    sys.stdout.flush()
    os._exit(0)  # petastorm's pool threads can abort the interpreter at shutdown


def petastorm_batches(reader, B):
    """Petastorm row groups as the original OneFlow DLRM batched them (np.stack of the columns; a batch
    may span row groups), cut into dlrm.data.Batch like BatchReader's."""
    import numpy as np

    from dlrm.data import Batch, take
    from dlrm.schema import DENSE_COLUMNS, LABEL, SPARSE_COLUMNS

    parts, have = [], 0
    for rg in reader:
        d = rg._asdict()
        n = len(d[LABEL])
        parts.append(Batch(d[LABEL].astype(np.float32, copy=False).reshape(-1, 1),
                           np.stack([d[c] for c in DENSE_COLUMNS], axis=1).astype(np.float32, copy=False),
                           np.stack([d[c] for c in SPARSE_COLUMNS], axis=1), n))
        have += n
        while have >= B:
            yield take(parts, B)
            have -= B


# ----------------------------------------------------------------------------- 3./4. GEMMs and FLOPs
def model_gemms(bottom_mlp, top_mlp, embedding_vec_size):
    """The model's GEMMs per sample, widths taken from dlrm.model's own modules (default paddings):
    ([(where, k, n)] per linear layer, interaction bmm (m, k, n))."""
    from dlrm.model import DenseFeatures, Interaction

    inter = Interaction(embedding_vec_size, interaction_itself=False, padding=True, use_fused_op=False)
    widths = [DenseFeatures(pad=True).out_features] + list(bottom_mlp)
    layers = [("bottom", widths[i], widths[i + 1]) for i in range(len(widths) - 1)]
    widths = [inter.output_size] + list(top_mlp) + [1]
    layers += [("top", widths[i], widths[i + 1]) for i in range(len(widths) - 1)]
    F = inter.num_features
    return layers, (F, embedding_vec_size, F)


def flops_per_sample(layers, bmm):
    """Forward GEMM FLOPs per sample (2*k*n per linear row, 2*m*k*n per interaction bmm)."""
    return sum(2 * k * n for _, k, n in layers) + 2 * bmm[0] * bmm[1] * bmm[2]


def gemm_shapes(B, layers, bmm):
    """Every GEMM one training step runs at batch B: (label, 'mm'|'bmm', shape, count, flops)."""
    shapes = []
    for where, k, n in layers:
        tag = f"{where} {k}->{n}"
        shapes.append((f"{tag} fwd   ", "mm", (B, k, n), 1))    # X[B,k] @ W[k,n]
        shapes.append((f"{tag} dgrad ", "mm", (B, n, k), 1))    # dY[B,n] @ W^T[n,k]
        shapes.append((f"{tag} wgrad ", "mm", (k, B, n), 1))    # X^T[k,B] @ dY[B,n]
    m, k, n = bmm
    shapes.append((f"interaction bmm {m}x{k}x{n} fwd", "bmm", (B, m, k, n), 1))   # T @ T^T
    shapes.append((f"interaction bmm {m}x{n}x{k} bwd", "bmm", (B, m, n, k), 2))   # dZ @ T, dZ^T @ T
    return [(label, kind, shape, count, 2 * math.prod(shape) * count) for label, kind, shape, count in shapes]


def child_matmul(a):
    import oneflow as flow

    if a.threads:
        flow.set_num_threads(a.threads)
    B = a.batch_size
    layers, bmm = model_gemms(int_list(a.bottom_mlp), int_list(a.top_mlp), a.embedding_vec_size)
    shapes = gemm_shapes(B, layers, bmm)
    if a.square:
        shapes.append((f"square {a.square}^3 (reference)", "mm", (a.square, a.square, a.square), 1,
                       2 * a.square ** 3))

    def sync_time(fn, reps=1):
        """Seconds per call; eager ops run asynchronously, so a timing ends on a sync."""
        t0 = time.perf_counter()
        for _ in range(reps):
            out = fn()
        out.sum().numpy()
        return (time.perf_counter() - t0) / reps

    cases = []  # (row, fn, reps)
    for label, kind, shape, count, flops in shapes:
        if kind == "mm":
            m, k, n = shape
            x, y = flow.randn(m, k), flow.randn(k, n)
            fn = lambda x=x, y=y: flow.matmul(x, y)
        else:
            bb, m, k, n = shape
            x, y = flow.randn(bb, m, k), flow.randn(bb, k, n)
            fn = lambda x=x, y=y: flow.bmm(x, y)
        cases.append(({"label": label, "shape": list(shape), "count": count, "flops": flops}, fn))
    # the interaction as dlrm/model.py writes it: bmm with a transposed (non-contiguous) view (eager)
    T = flow.randn(B, bmm[0], bmm[1])
    cases.append(({"label": "interaction bmm T @ T.transpose(1,2) (view)", "count": 1,
                   "flops": 2 * B * bmm[0] * bmm[1] * bmm[2], "extra": True},
                  lambda: flow.bmm(T, T.transpose(1, 2))))
    with CpuWindow() as w:
        timed = []
        for row, fn in cases:  # warm up (and allocate), and pick repetitions for ~min_time per timing
            timed.append((row, fn, max(1, min(200, int(a.min_time / sync_time(fn))))))
        for _ in range(a.repeats):  # round robin, so a burst of load elsewhere does not hit every repeat of a shape
            for row, fn, reps in timed:
                dt = sync_time(fn, reps) * row["count"]
                row["seconds"] = min(row.get("seconds", dt), dt)
    rows = [row for row, _ in cases if not row.get("extra")]
    for row in rows + [cases[-1][0]]:
        row["gflops"] = row["flops"] / row["seconds"] / 1e9
        if a.verbose:
            print(f"    {row['label']} {row.get('shape')}: {row['seconds'] * 1e3:.2f} ms", file=sys.stderr)
    view_row = cases[-1][0]
    model = [r for r in rows if not r["label"].startswith("square")]
    rec = w.record()
    rec.update(threads=a.threads or None, rows=rows, view_row=view_row, layers=layers, bmm=bmm,
               model_flops=sum(r["flops"] for r in model), model_seconds=sum(r["seconds"] for r in model),
               blas=blas_info())
    rec["model_gflops"] = rec["model_flops"] / rec["model_seconds"] / 1e9
    sq = [r for r in rows if r["label"].startswith("square")]
    rec["square_gflops"] = sq[0]["gflops"] if sq else None
    emit(rec)


def blas_info():
    """The BLAS serving OneFlow's matmuls: MKL when the startup hook loaded it (scripts/oneflow_preload.py),
    else the OpenBLAS liboneflow links statically: its kernel family and thread count."""
    import ctypes

    import oneflow

    if os.environ.get("DLRM_BLAS_LIBRARY"):
        return {"core": "MKL " + os.path.basename(os.environ["DLRM_BLAS_LIBRARY"]),
                "threads": os.environ.get("MKL_NUM_THREADS", "?")}

    libs = glob.glob(os.path.join(os.path.dirname(os.path.dirname(oneflow.__file__)), "oneflow.libs", "liboneflow*.so"))
    try:
        lib = ctypes.CDLL(libs[0]) if libs else ctypes.CDLL(None)
        lib.gotoblas_corename.restype = ctypes.c_char_p
        return {"core": lib.gotoblas_corename().decode(), "threads": lib.openblas_get_num_threads()}
    except (OSError, AttributeError, IndexError):
        return None


# ----------------------------------------------------------------------------- 5. training
def train_records(path):
    """The `train` records of a metrics file being written, or None while it is absent or a line is half
    written."""
    try:
        return [r for r in read_metrics(path) if r.get("kind") == "train"]
    except (FileNotFoundError, ValueError):
        return None


def with_table_sizes(data_dir, sizes, work_dir):
    """data_dir's splits (symlinked) under a dataset_info.json that records `sizes`: training takes a
    dataset's own sizes only, and the table-size phase trains the same rows with larger tables."""
    from dlrm import schema

    if list(sizes) == schema.load_table_sizes(data_dir):
        return data_dir
    view = os.path.join(work_dir, f"tables_{sum(sizes)}")
    os.makedirs(view, exist_ok=True)
    for split in ("train", "test", "val"):
        if os.path.isdir(os.path.join(data_dir, split)) and not os.path.lexists(os.path.join(view, split)):
            os.symlink(os.path.abspath(os.path.join(data_dir, split)), os.path.join(view, split))
    schema.write_dataset_info(view, dict(schema.read_dataset_info(data_dir) or {}, table_size_array=list(sizes)))
    return view


def run_training(args, data_dir, ranks, env, name=None, arch=None, extra=(), table_sizes=None):
    """dlrm_train_eval.py at `ranks` ranks; samples/s from its metrics file, polled while it runs so that
    every record gets the CPU use of the process tree and of the machine at that moment; its peak RSS.
    arch: (bottom_mlp, top_mlp, embedding_vec_size), default the command line's; extra: more flags;
    table_sizes: train the dataset's rows with these tables (with_table_sizes)."""
    if table_sizes is not None:
        data_dir = with_table_sizes(data_dir, table_sizes, args.work_dir)
    B, steps, interval = args.batch_size, args.steps, args.log_interval
    bottom, top, dim = arch or (args.bottom_mlp, args.top_mlp, args.embedding_vec_size)
    name = name or f"train_{ranks}rank"
    log_path = os.path.join(args.work_dir, f"{name}.log")
    metrics_path = os.path.join(args.work_dir, f"{name}.metrics.jsonl")
    if os.path.exists(metrics_path):
        os.remove(metrics_path)  # the metrics file is appended to
    train_args = ["--data_dir", data_dir, "--device", "cpu", "--train_batch_size", B,
                  "--train_batches", steps, "--loss_print_interval", interval,
                  "--eval_interval", 0, "--eval_batches", 1, "--eval_batch_size", B,
                  "--bottom_mlp", bottom, "--top_mlp", top, "--embedding_vec_size", dim,
                  "--metrics_file", metrics_path, *extra, *args.train_args]
    cmd = train_command(train_args, nproc=ranks)
    print(f"  $ {' '.join(os.path.relpath(c, REPO) if c.startswith(REPO) else c for c in map(str, cmd))}", flush=True)
    try:
        points, code, peak_rss, run = run_watched(
            cmd, log_path, lambda: train_records(metrics_path), env=env, timeout=args.timeout,
            on_record=lambda r: print(f"    step {r['step']:>4}: {r['throughput']:9.1f} samples/s", flush=True))
    except RuntimeError as e:
        raise RuntimeError(f"{name}: {e}") from None
    if code != 0:
        raise RuntimeError(f"{name} failed (exit {code}); see {log_path}")
    try:
        rec = interval_rate(points, B)
    except RuntimeError as e:
        raise RuntimeError(f"{name}: {e} ({metrics_path})") from None
    rec.update(ranks=ranks, elapsed_s=run["wall_s"], peak_rss=peak_rss, log=log_path, metrics=metrics_path)
    evals = [r for r in read_metrics(metrics_path) if r.get("kind") == "eval" and r.get("host_memory_mib")]
    rec["end_rss"] = evals[-1]["host_memory_mib"] * 2**20 if evals else None  # rank 0's RSS at its last evaluation
    return rec


# ----------------------------------------------------------------------------- 5b. table size
def tables_arch(args):
    """(bottom_mlp, top_mlp, embedding_vec_size) of the table-size phase: the embedding width is the
    bottom MLP's last."""
    return args.tables_bottom_mlp, args.tables_top_mlp, int_list(args.tables_bottom_mlp)[-1]


def table_size_phase(args, data_dir, env):
    """1-rank training with the dataset's tables and with NUM_SPARSE x --tables_rows (the dataset's ids all
    fit in either), with the sparse (default) and the dense embedding update: samples/s, peak RSS."""
    from dlrm.config import OptimizerConfig, cpu_embedding_bytes
    from dlrm.schema import load_table_sizes

    bottom, top, dim = arch = tables_arch(args)
    small = load_table_sizes(data_dir)
    large = [args.tables_rows] * NUM_SPARSE
    print(f"\n== table size (1 rank, {args.tables_optimizer}, batch {args.batch_size}, bottom {bottom}, top {top}, dim {dim}; "
          f"the dataset's tables ({sum(small):,} rows) vs {NUM_SPARSE} x {args.tables_rows:,})")
    runs = {}
    for update in ("sparse", "dense"):
        for size, sizes in (("small", small), ("large", large)):
            extra = ["--optimizer", args.tables_optimizer]
            extra += ["--dense_embedding_update"] if update == "dense" else []
            try:
                rec = run_training(args, data_dir, 1, env, name=f"tables_{update}_{size}", arch=arch, extra=extra,
                                   table_sizes=sizes)
            except RuntimeError as e:
                print(f"  {update} update, {size} tables: FAILED: {e}")
                continue
            rec["expected_bytes"] = cpu_embedding_bytes(sum(sizes), dim,
                                                        OptimizerConfig(args.tables_optimizer, update == "sparse"))
            rec["table_rows"] = sum(sizes)
            runs[update, size] = rec
            end = "-" if rec["end_rss"] is None else f"{rec['end_rss'] / 2**30:.2f}"
            print(f"  {update} update, {size} tables: {rec['samples_per_s']:,.0f} samples/s; RSS peak "
                  f"{rec['peak_rss'] / 2**30:.2f} GiB, at the end {end} GiB (embedding + optimizer: "
                  f"{rec['expected_bytes'] / 2**30:.2f} GiB, dlrm.config.cpu_embedding_bytes)"
                  f"{load_note(rec)}", flush=True)
    print(f"  {'update':8s} {'small samples/s':>16} {'large samples/s':>16} {'large/small':>12} "
          f"{'peak RSS l-s':>16} {'end RSS l-s':>12} {'expected':>10}")
    for update in ("sparse", "dense"):
        s_, l_ = runs.get((update, "small")), runs.get((update, "large"))
        if not (s_ and l_):
            continue
        goal = "  (goal >= 0.70)" if update == "sparse" else ""
        print(f"  {update:8s} {fmt(s_['samples_per_s']):>16} {fmt(l_['samples_per_s']):>16} "
              f"{l_['samples_per_s'] / s_['samples_per_s']:>11.2f}x "
              f"{(l_['peak_rss'] - s_['peak_rss']) / 2**30:>12.2f} GiB "
              f"{(l_['end_rss'] - s_['end_rss']) / 2**30 if l_['end_rss'] and s_['end_rss'] else float('nan'):>8.2f} GiB "
              f"{(l_['expected_bytes'] - s_['expected_bytes']) / 2**30:>6.2f} GiB{goal}")
    return runs


# ----------------------------------------------------------------------------- 5c. facebookresearch/dlrm
PEER_LINE = re.compile(r"Finished training it (\d+)/\d+ of epoch \d+, ([0-9.]+) ms/it")


def peer_records(log_path):
    """The peer's progress lines as {step, latency_ms} records."""
    try:
        with open(log_path) as f:
            return [{"step": int(m.group(1)), "latency_ms": float(m.group(2))} for m in PEER_LINE.finditer(f.read())]
    except FileNotFoundError:
        return None


def peer_script(path):
    script = os.path.join(path, "dlrm_s_pytorch.py") if os.path.isdir(path) else path
    if not os.path.isfile(script):
        sys.exit(f"error: --peer_dlrm {path}: no dlrm_s_pytorch.py")
    return os.path.abspath(script)


def peer_env(environ=os.environ):
    """The environment for the peer: ours without the thread settings our startup hook made (MKL_NUM_THREADS
    and the like, recorded in DLRM_HOOK_SET), which would otherwise limit torch's threads too."""
    ours = set(environ.get("DLRM_HOOK_SET", "").split(",")) | {"DLRM_HOOK_SET"}
    return {k: v for k, v in environ.items() if k not in ours}


def run_peer(args, name, arch, table_sizes, threads=None):
    """facebookresearch/dlrm's dlrm_s_pytorch.py on CPU with its random data generator, one id per
    feature, the given architecture and tables; samples/s from its 'ms/it' lines (which time the
    step alone: its data generation is outside), the first interval skipped."""
    bottom, top, dim = arch
    B = args.batch_size
    log_path = os.path.join(args.work_dir, f"{name}.log")
    cwd = os.path.join(args.work_dir, "peer")  # it writes a tensorboard runs/ directory there
    os.makedirs(cwd, exist_ok=True)
    cmd = [args.peer_python, peer_script(args.peer_dlrm), f"--arch-sparse-feature-size={dim}",
           f"--arch-mlp-bot={NUM_DENSE}-{bottom.replace(',', '-')}", f"--arch-mlp-top={top.replace(',', '-')}-1",
           f"--arch-embedding-size={'-'.join(map(str, table_sizes))}", "--data-generation=random",
           f"--mini-batch-size={B}", f"--num-batches={args.steps}", "--num-indices-per-lookup=1",
           "--num-indices-per-lookup-fixed=True", "--loss-function=bce", "--nepochs=1",
           f"--print-freq={args.log_interval}", "--print-time"]
    print(f"  $ {' '.join(cmd)}", flush=True)
    env = peer_env()
    if threads:  # torch's intra-op threads (its default: every core)
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    points, code, peak_rss, run = run_watched(
        cmd, log_path, lambda: peer_records(log_path), cwd=cwd, timeout=args.timeout, env=env,
        on_record=lambda r: print(f"    it {r['step']:>4}: {B / r['latency_ms'] * 1000:9.1f} samples/s", flush=True))
    if code != 0:
        with open(log_path) as f:
            hint = ("; torch >= 2.14's profiler no longer takes use_cuda= (use torch 2.13)"
                    if "use_cuda" in f.read() else "")
        raise RuntimeError(f"{name} failed (exit {code}); see {log_path}{hint}")
    rec = interval_rate(points, B)
    rec.update(elapsed_s=run["wall_s"], peak_rss=peak_rss, log=log_path)
    return rec


DISTURBED_CORES = 0.2  # other processes' CPU above which a ratio is not reported as a result


def median_record(runs):
    """The median samples/s of runs (the CPU fields of the lower middle run), with every run's
    samples/s and the most CPU other processes used during any of them."""
    ordered = sorted(runs, key=lambda r: r["samples_per_s"])
    rec = dict(ordered[(len(ordered) - 1) // 2])
    rec["samples_per_s"] = statistics.median(r["samples_per_s"] for r in runs)
    rec["rounds"] = [round(r["samples_per_s"]) for r in runs]
    rec["max_others_cores"] = max(r.get("others_cores") or 0.0 for r in runs)
    return rec


def peer_cases(args, data_dir):
    """(name, (bottom, top, dim), table sizes) compared with the peer: the main architecture and the
    table-size phase's (the Kaggle architecture) at the dataset's tables, and unless --skip_tables the
    latter at NUM_SPARSE x --tables_rows."""
    from dlrm.schema import load_table_sizes

    small = load_table_sizes(data_dir)
    main_arch = (args.bottom_mlp, args.top_mlp, args.embedding_vec_size)
    cases = [("main", main_arch, small), ("tables_small", tables_arch(args), small)]
    if not args.skip_tables:
        cases.append(("tables_large", tables_arch(args), [args.tables_rows] * NUM_SPARSE))
    return cases


# (label, our ranks or the peer's threads): every configuration each round runs, ours and the peer's
OURS_RANKS = (1, 2)
PEER_THREADS = (None, 1)  # None: torch's default, every core


def peer_phase(args, data_dir, env):
    """Ours (1 and 2 ranks, the default sparse update) and the peer (all threads and 1) in alternating
    rounds (--peer_rounds each) per case; the medians, each side at its best configuration, and
    whether other processes disturbed any round."""
    print(f"\n== facebookresearch/dlrm (dlrm_s_pytorch.py, CPU, its random data: ids uniform over each table) "
          f"vs ours, batch {args.batch_size}, {args.peer_rounds} alternating rounds each, medians; ours at "
          f"{' and '.join(map(str, OURS_RANKS))} ranks, the peer at all and 1 thread(s)")
    rows = []
    for name, arch, sizes in peer_cases(args, data_dir):
        ours_runs = {r: [] for r in OURS_RANKS}
        peer_runs = {t: [] for t in PEER_THREADS}
        try:
            for i in range(args.peer_rounds):
                for ranks in OURS_RANKS:
                    rec = run_training(args, data_dir, ranks, env, name=f"ours_{name}_{ranks}rank_{i}", arch=arch,
                                       table_sizes=sizes)
                    print(f"  ours {ranks} rank(s), round {i}: {rec['samples_per_s']:,.0f} samples/s"
                          f"{load_note(rec)}", flush=True)
                    ours_runs[ranks].append(rec)
                for threads in PEER_THREADS:
                    rec = run_peer(args, f"peer_{name}_{threads or 'all'}thr_{i}", arch, sizes, threads)
                    print(f"  peer {threads or 'all'} thread(s), round {i}: {rec['samples_per_s']:,.0f} samples/s "
                          f"(step only; peak RSS {rec['peak_rss'] / 2**30:.2f} GiB){load_note(rec)}", flush=True)
                    peer_runs[threads].append(rec)
        except RuntimeError as e:
            print(f"  {name}: FAILED: {e}")
            continue
        ours = {r: median_record(v) for r, v in ours_runs.items()}
        peer = {t: median_record(v) for t, v in peer_runs.items()}
        rows.append((name, arch, sum(sizes), ours, peer))

    def cores(r):
        return f"{r['cores']:.2f}/{r['max_others_cores']:.2f}" if r.get("cores") is not None else "?"

    if rows:
        print(f"  {'case':14s} {'bottom / top / dim':30s} {'table rows':>12} {'ours 1r':>10} {'ours 2r':>10} "
              f"{'peer all':>10} {'peer 1t':>10}")
        for name, (bottom, top, dim), n, ours, peer in rows:
            print(f"  {name:14s} {f'{bottom} / {top} / {dim}':30s} {n:>12,} "
                  + " ".join(f"{fmt(r['samples_per_s']):>10}" for r in (*ours.values(), *peer.values())))
        for name, _, _, ours, peer in rows:
            best_ours, best_peer = best_of(ours), best_of(peer)
            print(f"  (cores used / most others': ours {cores(best_ours)}, peer {cores(best_peer)})")
            print(f"ours best / facebookresearch/dlrm, {name}: {ratio_text(best_ours, best_peer)}  (goal >= 1.0; "
                  f"ours at {best_ours['ranks']} rank(s), the peer at its best thread count)")
        if any(disturbed(o, p) for _, _, _, oo, pp in rows for o in oo.values() for p in pp.values()):
            print(f"  DISTURBED: other processes used more than {DISTURBED_CORES} cores during a round: these ratios "
                  f"are not results; rerun on an idle machine")
    return rows


def best_of(medians):
    """The configuration (ranks or threads -> median record) with the most samples/s."""
    return max(medians.values(), key=lambda r: r["samples_per_s"])


def disturbed(ours, peer):
    return max(ours["max_others_cores"], peer["max_others_cores"]) > DISTURBED_CORES


def ratio_text(ours, peer):
    """ours/peer of the medians, marked when other processes used the machine meanwhile."""
    ratio = f"{ours['samples_per_s'] / peer['samples_per_s']:.2f}x"
    return ratio + " (disturbed)" if disturbed(ours, peer) else ratio


# ----------------------------------------------------------------------------- profiling (child)
def child_profile(a):
    """The train graph alone, on pre-made global tensors, in one variant: per step its wall time and
    the CPU of each kind of thread (OneFlow's kernel threads, its VM scheduler, the rest); for the
    default variant also the model's GEMMs timed alone, to_global of a batch and the loss readout."""
    import numpy as np
    import oneflow as flow

    from dlrm.config import ModelConfig, OptimizerConfig, ScheduleConfig
    from dlrm.data import BatchReader
    from dlrm.distributed import cpu_placement, gather_to_all, to_global
    from dlrm.graphs import EvalGraph, Graph, TrainGraph, build_train_graph
    from dlrm.model import DLRM
    from dlrm.schedule import make_lr_scheduler
    from dlrm.schema import load_table_sizes
    from dlrm.threads import find_spinner, thread_times

    B = a.batch_size
    variant = set(a.variant.split("+"))
    sizes = load_table_sizes(a.data_dir)
    if sizes is None:
        sys.exit(f"error: {a.data_dir} records no table sizes (dataset_info.json)")
    model_cfg = ModelConfig(table_sizes=tuple(sizes), embedding_vec_size=a.embedding_vec_size,
                            bottom_mlp=tuple(int_list(a.bottom_mlp)), top_mlp=tuple(int_list(a.top_mlp)),
                            fused_mlp="fused" in variant, dense_input_padding=True, interaction_padding=True,
                            interaction_itself=False)  # unfused, as dlrm.config resolves it on CPU
    schedule = ScheduleConfig(learning_rate=0.01, warmup_batches=0, decay_start=0, decay_batches=1000,
                              train_batches=1000)  # its values do not change a step's time
    cpu = cpu_placement()
    flow.manual_seed(1)
    np.random.seed(1)
    module = DLRM(model_cfg, None, "cpu")  # the store settings are CUDA-only
    module.to_global(cpu, flow.sbp.broadcast)
    reader = BatchReader(train_groups(a.data_dir), B, 0, 1, train=True)
    label, dense, sparse, _ = next(reader)
    reader.close()
    rec = {"variant": a.variant, "blas": os.environ.get("DLRM_BLAS_LIBRARY", "OneFlow's OpenBLAS")}
    if "forward" in variant:
        graph = EvalGraph(module, "cpu", False)
        inputs = [to_global(x, cpu) for x in (dense, sparse)]
    elif "frozen_embedding" in variant:
        module.embedding.weight.requires_grad = False
        optimizer = flow.optim.SGD([p for p in module.parameters() if p.requires_grad], lr=schedule.learning_rate)
        graph = TrainGraph(module, [(optimizer, make_lr_scheduler(optimizer, schedule), False)], "cpu", False, None)
    else:  # the graph dlrm_train_eval.py builds (make_train_graph -> build_train_graph), sparse SGD by default
        optimizer = OptimizerConfig("sgd", sparse_embedding="dense_update" not in variant)
        graph = build_train_graph(module, optimizer, schedule, "cpu", global_batch=B)
    if "forward" not in variant:
        inputs = [to_global(x, cpu) for x in (label, dense, sparse)]
    if "oneflow_threads" in variant:
        Graph.launcher = (None, None)  # as if already done: the threads stay as OneFlow runs them
    t = time.perf_counter()
    out = graph(*inputs)
    out.numpy()
    rec["compile_s"] = time.perf_counter() - t
    before = thread_times()
    graph(*inputs).numpy()
    spinner = find_spinner(before, thread_times())  # OneFlow's VM scheduler, for the CPU split
    walls = []
    before = thread_times()
    with CpuWindow() as w:
        for _ in range(a.steps):
            t = time.perf_counter()
            out = graph(*inputs)
            out.numpy()
            walls.append(time.perf_counter() - t)
    after = thread_times()
    used = {tid: (after[tid][0] - before.get(tid, (0, 0))[0]) / 1e9 / a.steps for tid in after}
    main_tid = threading.get_native_id()
    kernel = sorted((c for tid, c in used.items() if tid not in (spinner, main_tid)), reverse=True)
    rec.update(w.record())
    rec.update(wall_s=sorted(walls)[len(walls) // 2], all_wall_s=[round(x, 3) for x in walls],
               cpu_per_step=w.cpu / a.steps, vm_scheduler_cpu=used.get(spinner, 0.0),
               main_thread_cpu=used.get(main_tid, 0.0), kernel_threads_cpu=sum(kernel[:2]),
               other_threads_cpu=sum(kernel[2:]), kernel_threads=[round(c, 4) for c in kernel[:4]])
    rec["samples_per_s"] = B / rec["wall_s"]
    if a.variant == "default":  # the per-step costs around the graph in dlrm_train_eval.py's loop
        def best_of(fn, n=5):
            ts = []
            for _ in range(n):
                t = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t)
            return min(ts)

        rec["to_global_s"] = best_of(lambda: [to_global(x, cpu).to_local().numpy() for x in (label, dense, sparse)])
        rec["loss_readout_s"] = best_of(lambda: float(gather_to_all(out).numpy()))
        layers, bmm = model_gemms(int_list(a.bottom_mlp), int_list(a.top_mlp), a.embedding_vec_size)
        gemm_cpu = gemm_wall = bmm_cpu = 0.0
        for label_, kind, shape, count, flops in gemm_shapes(B, layers, bmm):
            x, y = (flow.randn(shape[0], shape[1]), flow.randn(shape[1], shape[2])) if kind == "mm" else \
                (flow.randn(*shape[:3]), flow.randn(shape[0], shape[2], shape[3]))
            fn = flow.matmul if kind == "mm" else flow.bmm
            fn(x, y).numpy()
            best = None
            for _ in range(3):
                t, c = time.perf_counter(), time.process_time()
                fn(x, y).numpy()
                cur = (time.perf_counter() - t, time.process_time() - c)
                best = cur if best is None or cur[0] < best[0] else best
            gemm_wall += best[0] * count
            gemm_cpu += best[1] * count
            bmm_cpu += best[1] * count if kind == "bmm" else 0.0
        rec.update(gemm_wall_s=gemm_wall, gemm_cpu_s=gemm_cpu, interaction_bmm_cpu_s=bmm_cpu)
    emit(rec)


PROFILE_VARIANTS = [  # (variant, extra environment, what it shows)
    ("default", {}, "as dlrm_train_eval.py runs it: the job launcher leads, the rest at SCHED_BATCH"),
    ("frozen_embedding", {}, "no embedding gradient or sparse update"),
    ("forward", {}, "the eval graph: forward only"),
    ("oneflow_threads", {}, "OneFlow's threads as OneFlow runs them (all SCHED_OTHER)"),
    ("openblas", {"DLRM_BLAS": "openblas"}, "OneFlow's bundled OpenBLAS instead of MKL"),
]


def profile_phase(args, data_dir, env):
    """Where a training step's time goes, at the main and the table-size (Kaggle) architecture."""
    B = args.batch_size
    archs = [("main", (args.bottom_mlp, args.top_mlp, args.embedding_vec_size)), ("kaggle", tables_arch(args))]
    print(f"\n== profile: the train graph alone on pre-made global tensors, 1 rank, batch {B}, median of "
          f"{args.profile_steps} steps; CPU per step by thread (dlrm.threads)")
    out = {}
    for name, (bottom, top, dim) in archs:
        arch_args = ["--data_dir", data_dir, "--batch_size", B, "--bottom_mlp", bottom, "--top_mlp", top,
                     "--embedding_vec_size", dim]
        print(f"  {name} architecture: bottom {bottom}, top {top}, dim {dim}")
        for variant, extra_env, what in PROFILE_VARIANTS:
            cenv = dict(env, **extra_env)
            try:
                p = run_child(__file__, ["--_child", "profile", "--variant", variant,
                                         "--steps", args.profile_steps, *arch_args], env=cenv)
            except RuntimeError as e:
                print(f"    {variant}: FAILED: {e}")
                continue
            out[name, variant] = p
            print(f"    {variant:17s} {p['wall_s'] * 1e3:7.0f} ms/step {p['samples_per_s']:9,.0f} samples/s; CPU "
                  f"{p['cpu_per_step'] * 1e3:5.0f} ms (kernel threads {p['kernel_threads_cpu'] * 1e3:.0f}, VM "
                  f"scheduler {p['vm_scheduler_cpu'] * 1e3:.0f}, main {p['main_thread_cpu'] * 1e3:.0f}, other "
                  f"{p['other_threads_cpu'] * 1e3:.0f}): {what}{load_note(p)}", flush=True)
        d = out.get((name, "default"))
        if d:
            print_step_account(d, out.get((name, "frozen_embedding")), out.get((name, "forward")),
                               out.get((name, "oneflow_threads")), out.get((name, "openblas")), args.log_interval)
    return out


def print_step_account(d, frozen, forward, oneflow_threads, openblas, log_interval):
    """One step's wall time and CPU, item by item."""
    ncpu = os.cpu_count()
    wall, cpu = d["wall_s"], d["cpu_per_step"]
    ms = lambda x: f"{x * 1e3:7.1f} ms"  # noqa: E731
    print(f"    where a step goes ({os.path.basename(d['blas'])}): {ms(wall)} wall, {ms(cpu)} CPU on {ncpu} cores"
          f"{'  DISTURBED: other processes used the machine' if d.get('others_cores', 0) > DISTURBED_CORES else ''}")
    print(f"      GEMMs (the model's, timed alone at this BLAS)      {ms(d['gemm_wall_s'])} wall, {ms(d['gemm_cpu_s'])} CPU "
          f"({100 * d['gemm_cpu_s'] / cpu:.0f}% of the step's CPU)")
    print(f"        of which the interaction's bmm (fwd + 2 bwd)       {ms(d['interaction_bmm_cpu_s'])} CPU")
    if forward:
        print(f"      forward (eval graph)                               {ms(forward['wall_s'])} wall; backward + "
              f"update {ms(wall - forward['wall_s'])}")
    if frozen:
        print(f"      embedding gradient + sparse update                 {ms(wall - frozen['wall_s'])} wall "
              f"(step - frozen-embedding step)")
    rest = d["kernel_threads_cpu"] + d["other_threads_cpu"] - d["gemm_cpu_s"]
    print(f"      other kernels (elementwise, gather, interaction cat/index_select, loss, SGD): {ms(rest)} CPU")
    print(f"      OneFlow's VM scheduler thread                      {ms(d['vm_scheduler_cpu'])} CPU")
    print(f"      main thread (graph launch, sync)                   {ms(d['main_thread_cpu'])} CPU")
    print(f"      idle waits (cores x wall - CPU)                    {ms(max(ncpu * wall - cpu, 0.0))} core time")
    print(f"      outside the graph, per step: to_global of a batch {ms(d['to_global_s'])}, loss readout "
          f"{ms(d['loss_readout_s'] / log_interval)} ({ms(d['loss_readout_s'])} once per logged interval)")
    if oneflow_threads:
        print(f"      with OneFlow's threads as OneFlow runs them: {ms(oneflow_threads['wall_s'])} wall "
              f"({oneflow_threads['wall_s'] / wall:.2f}x the time), VM scheduler "
              f"{ms(oneflow_threads['vm_scheduler_cpu'])} CPU")
    if openblas:
        print(f"      with OneFlow's OpenBLAS instead: {ms(openblas['wall_s'])} wall, {ms(openblas['cpu_per_step'])} CPU "
              f"({openblas['wall_s'] / wall:.2f}x the time)")


# ----------------------------------------------------------------------------- main
def get_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--data_dir", default=None, help="existing parquet dataset (train/ ...); default: build a synthetic one")
    harness.add_synthetic_args(p, "bench_train", 100000, "where the synthetic dataset is cached and the training logs go")
    a("--batch_size", type=int, default=4096, help="global training batch size (reader and GEMMs use it too)")
    a("--steps", type=int, default=16, help="training steps per run")
    a("--log_interval", type=int, default=4, help="--loss_print_interval; the first interval is skipped")
    a("--reader_batches", type=int, default=200, help="batches timed per reader run")
    a("--skip_petastorm", action="store_true", help="do not measure petastorm")
    a("--ranks", type=int_list, default="1,2", help="rank counts to train with")
    a("--bottom_mlp", default="512,256,128")
    a("--top_mlp", default="1024,1024,512,256")
    a("--embedding_vec_size", type=int, default=128)
    a("--train_args", nargs=argparse.REMAINDER, default=[],
      help="extra dlrm_train_eval.py flags (last on the command line), e.g. --train_args --disable_fusedmlp")
    a("--reader_repeats", type=int, default=2, help="runs per reader (the best is kept)")
    a("--openblas_coretype", default=None,
      help="set OPENBLAS_CORETYPE (e.g. Haswell) for the matmul, training and profile runs")
    a("--skip_tables", action="store_true", help="do not run the table-size phase")
    a("--skip_training", action="store_true", help="do not run the --ranks training phase")
    a("--tables_rows", type=int, default=1300000, help="rows of each of the 26 tables in the table-size phase")
    a("--tables_bottom_mlp", default="512,256,64,16",
      help="bottom MLP of the table-size phase (its last width is the embedding width)")
    a("--tables_top_mlp", default="512,256", help="top MLP of the table-size phase")
    a("--tables_optimizer", default="sgd", choices=["sgd", "adagrad", "adam"], help="optimizer of the table-size phase")
    a("--only_tables", action="store_true", help="run the table-size phase alone")
    a("--peer_dlrm", default=None,
      help="facebookresearch/dlrm checkout (or its dlrm_s_pytorch.py): run it next to ours, see the docstring")
    a("--peer_python", default="python3", help="the interpreter (with torch) that runs --peer_dlrm")
    a("--peer_rounds", type=int, default=2, help="alternating ours/peer rounds per case (medians reported)")
    a("--profile", action="store_true", help="also time the train graph alone in variants (see the docstring)")
    a("--profile_steps", type=int, default=5, help="timed steps per profile variant (the median is kept)")
    a("--timeout", type=int, default=1800, help="seconds allowed per training run")
    # child phases (internal)
    a("--_child", choices=["reader", "matmul", "profile"], help=argparse.SUPPRESS)
    a("--impl", default="ours", help=argparse.SUPPRESS)
    a("--batches", type=int, default=40, help=argparse.SUPPRESS)
    a("--warmup", type=int, default=2, help=argparse.SUPPRESS)
    a("--threads", type=int, default=0, help=argparse.SUPPRESS)
    a("--square", type=int, default=0, help=argparse.SUPPRESS)
    a("--repeats", type=int, default=3, help=argparse.SUPPRESS)
    a("--min_time", type=float, default=0.1, help=argparse.SUPPRESS)
    a("--variant", default="default", help=argparse.SUPPRESS)
    a("--verbose", action="store_true", help=argparse.SUPPRESS)
    return p


def fmt(x, digits=0):
    return "-" if x is None else f"{x:,.{digits}f}"


def main(argv=None):
    args = get_parser().parse_args(argv)
    if args._child == "reader":
        return child_reader(args)
    if args._child == "matmul":
        return child_matmul(args)
    if args._child == "profile":
        return child_profile(args)

    t_start = time.time()
    B = args.batch_size
    if args.peer_rounds < 2:
        sys.exit(f"error: --peer_rounds {args.peer_rounds}: at least 2 (a median of alternating rounds)")
    if args.skip_training:
        args.ranks = []
    if any(B % r for r in args.ranks):
        sys.exit(f"error: --batch_size {B} is not a multiple of every --ranks entry {args.ranks}")
    ncpu = os.cpu_count()
    print(f"machine: {ncpu} CPUs, {harness.cpu_model()}, python {platform.python_version()}")
    print(f"batch {B}, {args.steps} training steps per run, log every {args.log_interval} (first interval skipped)")
    os.makedirs(args.work_dir, exist_ok=True)
    data_dir = ensure_dataset(args)
    files = split_files(data_dir, "train")
    env = quiet_oneflow_env()
    if args.openblas_coretype:
        env["OPENBLAS_CORETYPE"] = args.openblas_coretype
    common = ["--data_dir", data_dir, "--batch_size", str(B), "--bottom_mlp", args.bottom_mlp,
              "--top_mlp", args.top_mlp, "--embedding_vec_size", str(args.embedding_vec_size)]

    if args.only_tables:
        table_size_phase(args, data_dir, env)
        print(f"total {time.time() - t_start:.0f} s")
        return 0

    # 2. readers
    print(f"\n== reader throughput ({len(files)} train files, batch {B}, {args.reader_batches} batches timed "
          f"after {READER_WARMUP}; best of {args.reader_repeats} runs)")
    readers = {}
    for impl in ["ours"] + ([] if args.skip_petastorm else ["petastorm"]):
        runs = [run_child(__file__, ["--_child", "reader", "--impl", impl, "--batches", str(args.reader_batches),
                           "--warmup", str(READER_WARMUP), *common]) for _ in range(args.reader_repeats)]
        readers[impl] = r = max(runs, key=lambda x: x["samples_per_s"])
        print(f"  {impl:10s} {fmt(r['samples_per_s']):>12} samples/s  "
              f"({r['cpu_s_per_msample']:.2f} CPU-s per 1M samples){load_note(r)}; "
              f"runs {', '.join(fmt(x['samples_per_s']) for x in runs)}", flush=True)
    if "petastorm" in readers:
        print(f"  ours / petastorm: {readers['ours']['samples_per_s'] / readers['petastorm']['samples_per_s']:.2f}x")

    # 3./4. matmul and FLOPs
    mm = run_child(__file__, ["--_child", "matmul", "--square", "2048", *common], env=env)
    layers, bmm = mm["layers"], mm["bmm"]  # from dlrm.model's modules, in the child that imports OneFlow
    fwd = flops_per_sample(layers, bmm)
    train_flops = 3 * fwd
    print("\n== FLOPs per sample (2*m*n*k per GEMM; train = 3 x forward: fwd + dgrad + wgrad per layer)")
    inter = 2 * bmm[0] * bmm[1] * bmm[2]
    for where in ("bottom", "top"):
        ls = [(k, n) for w, k, n in layers if w == where]
        flops = sum(2 * k * n for k, n in ls)
        print(f"  {where} MLP {'->'.join(str(k) for k, _ in ls)}->{ls[-1][1]}: {flops / 1e6:.3f} MFLOP fwd")
    print(f"  interaction bmm {bmm[0]}x{bmm[1]}x{bmm[2]}: {inter / 1e6:.3f} MFLOP fwd")
    print(f"  forward {fwd / 1e6:.3f} MFLOP, train step {train_flops / 1e6:.3f} MFLOP per sample "
          f"(not counted: embedding gather/scatter, SGD update, bias/ReLU/log, loss: memory-bound)")

    print(f"\n== OneFlow CPU matmul (flow.matmul / flow.bmm, float32, the model's GEMM shapes at batch {B})")
    for r in mm["rows"]:
        print(f"  {r['label']:42s} {'x'.join(map(str, r['shape'])):>16} {r['seconds'] * 1e3:9.2f} ms "
              f"{r['gflops']:8.1f} GFLOP/s")
    v = mm["view_row"]
    print(f"  {v['label']:42s} {'':>16} {v['seconds'] * 1e3:9.2f} ms {v['gflops']:8.1f} GFLOP/s")
    blas = mm.get("blas") or {}
    print(f"  model GEMMs together: {mm['model_gflops']:.1f} GFLOP/s in one process "
          f"(BLAS: {blas.get('core', '?')}, {blas.get('threads', '?')} thread(s)"
          f"{', OPENBLAS_CORETYPE=' + env['OPENBLAS_CORETYPE'] if env.get('OPENBLAS_CORETYPE') else ''})"
          f"{load_note(mm)}")
    # Each launched rank gets OMP_NUM_THREADS=1. If one process's GEMMs already run on ~1 core (OneFlow 0.9's
    # bundled OpenBLAS is single-threaded), a rank's speed is that figure; otherwise measure it.
    mm1 = None
    if any(r > 1 for r in args.ranks) and mm["cores"] > 1.3:
        env1 = dict(env, OMP_NUM_THREADS="1")
        mm1 = run_child(__file__, ["--_child", "matmul", "--threads", "1", *common], env=env1)
        print(f"  model GEMMs together, 1 thread (OMP_NUM_THREADS=1, as each launched rank): "
              f"{mm1['model_gflops']:.1f} GFLOP/s{load_note(mm1)}")
    per_rank = (mm1 or mm)["model_gflops"]
    bound = {1: mm["model_gflops"] * 1e9 / train_flops}
    for r in args.ranks:
        if r > 1:  # r single-threaded ranks, on their own cores as far as there are enough
            bound[r] = min(r, ncpu) * per_rank * 1e9 / train_flops
    print(f"  compute bound = GFLOP/s / {train_flops / 1e6:.2f} MFLOP: " +
          ", ".join(f"{r} rank(s) {bound[r]:,.0f} samples/s" for r in sorted(bound)) +
          f"; square 2048^3 GEMM {mm['square_gflops']:.1f} GFLOP/s -> {mm['square_gflops'] * 1e9 / train_flops:,.0f}")

    # 5. training
    print(f"\n== training (dlrm_train_eval.py --device cpu, global batch {B})")
    train = {}
    for r in args.ranks:
        try:
            train[r] = rec = run_training(args, data_dir, r, env)
        except RuntimeError as e:
            print(f"  {r} rank(s): FAILED: {e}")
            continue
        print(f"  {r} rank(s): {rec['samples_per_s']:,.0f} samples/s mean over the measured intervals "
              f"(best interval {rec['best_interval']:,.0f}; first, with compilation, {rec['first_interval']:,.0f}); "
              f"run {rec['elapsed_s']:.0f} s{load_note(rec)}", flush=True)

    tables = {} if args.skip_tables else table_size_phase(args, data_dir, env)
    peers = peer_phase(args, data_dir, env) if args.peer_dlrm else []

    if args.profile:
        profile_phase(args, data_dir, env)

    # 6. summary
    ours = readers["ours"]["samples_per_s"]
    pet = readers.get("petastorm", {}).get("samples_per_s")
    print("\n" + "=" * 96)
    print(f"SUMMARY  {ncpu} x {harness.cpu_model()}; batch {B}; model bottom {args.bottom_mlp}, top {args.top_mlp}, "
          f"emb {args.embedding_vec_size}; {train_flops / 1e6:.2f} MFLOP/sample")
    print("-" * 96)
    print(f"{'reader samples/s, dlrm.data.BatchReader':58s} {fmt(ours):>16}")
    print(f"{'reader samples/s, petastorm make_batch_reader':58s} {fmt(pet):>16}")
    if pet:
        print(f"{'reader ours / petastorm':58s} {ours / pet:>15.2f}x")
    print(f"{'OneFlow matmul GFLOP/s, model GEMMs, 1 process (kernel ' + blas.get('core', '?') + ')':58s} "
          f"{mm['model_gflops']:>16.1f}")
    print(f"{'OneFlow matmul GFLOP/s, square 2048^3':58s} {mm['square_gflops']:>16.1f}")
    print("-" * 96)
    if args.ranks:  # not with --skip_training
        print(f"{'':58s} " + " ".join(f"{f'{r} rank' + ('s' if r > 1 else ''):>16}" for r in args.ranks))
    def free_bound(r):
        """The bound with min(ranks, ncpu - others' cores) cores: what a shared machine allowed."""
        others = train[r].get("others_cores")
        if others is None:
            return "-"
        cores = max(min(r, ncpu - others), 0.1)
        b = cores * per_rank * 1e9 / train_flops
        return f"{fmt(b)} {100 * train[r]['samples_per_s'] / b:.0f}%"

    rows = [
        ("training samples/s (mean, first interval skipped)", lambda r: fmt(train[r]["samples_per_s"])),
        ("training samples/s (best interval)", lambda r: fmt(train[r]["best_interval"])),
        ("compute bound samples/s (matmul GFLOP/s / FLOPs)", lambda r: fmt(bound[r])),
        ("fraction of the bound (target >= 60%)",
         lambda r: f"{100 * train[r]['samples_per_s'] / bound[r]:.0f}% "
                   f"{'OK' if train[r]['samples_per_s'] >= 0.6 * bound[r] else 'LOW'}"),
        ("reader / training consumption (target >= 3x)",
         lambda r: f"{ours / train[r]['samples_per_s']:.0f}x "
                   f"{'OK' if ours >= 3 * train[r]['samples_per_s'] else 'LOW'}"),
        ("reader CPU share at the training rate (cores)",
         lambda r: f"{readers['ours']['cpu_s_per_msample'] * train[r]['samples_per_s'] / 1e6:.3f}"),
        ("CPU: training / others during it (cores)",
         lambda r: f"{train[r].get('cores', 0):.2f} / {fmt(train[r].get('others_cores'), 2)}"),
        ("bound on the cores others left free, fraction reached", free_bound),
    ]
    for name, f in rows if args.ranks else []:
        print(f"{name:58s} " + " ".join(f"{f(r) if r in train else 'failed':>16}" for r in args.ranks))
    for update in ("sparse", "dense"):
        s_, l_ = tables.get((update, "small")), tables.get((update, "large"))
        if s_ and l_:
            print(f"{f'{update} update: large / small tables samples/s' + (' (goal >= 0.7x)' if update == 'sparse' else ''):58s} "
                  f"{l_['samples_per_s'] / s_['samples_per_s']:>15.2f}x  ({fmt(l_['samples_per_s'])} / "
                  f"{fmt(s_['samples_per_s'])}; peak RSS {l_['peak_rss'] / 2**30:.2f} GiB, embedding "
                  f"{l_['expected_bytes'] / 2**30:.2f} GiB)")
    for name, _, _, ours, peer in peers:
        o, p = best_of(ours), best_of(peer)
        print(f"{f'ours best / facebookresearch/dlrm best, {name} (goal >= 1.0x)':58s} {ratio_text(o, p):>16}  "
              f"({fmt(o['samples_per_s'])} at {o['ranks']} rank(s) / {fmt(p['samples_per_s'])}, medians of "
              f"{args.peer_rounds} rounds)")
    if any(disturbed(best_of(o), best_of(p)) for _, _, _, o, p in peers):
        print(f"note: other processes used more than {DISTURBED_CORES} cores during a peer comparison round: "
              f"rerun on an idle machine for a result")
    print("=" * 96)
    busy = [f"{r} rank(s) {train[r]['others_cores']:.2f}" for r in train if (train[r].get("others_cores") or 0) > 0.25]
    if busy:
        print(f"note: other processes kept cores busy during training ({', '.join(busy)} cores): the training and "
              f"matmul figures are noisy; run again and keep the better, or use a quiet machine")
    print(f"total {time.time() - t_start:.0f} s; logs in {args.work_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
