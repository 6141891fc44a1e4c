#!/usr/bin/env python3
"""Benchmark the training input reader's width: dlrm.data.BatchReader samples/s against its decode threads.

One run prints figures (it is not a test):

1. a dataset with realistic row groups: --data_dir, or a synthetic train split written with pyarrow
   directly (the preprocessing tool writes about one row group per file part, far smaller than a real
   day's): --files x --rows_per_file rows, --row_group_size rows per row group, snappy, ids int64
   drawn from a zipf law with the original's table sizes, cached under --work_dir;
2. for each width (BatchReader(..., workers=N), --reader_threads of dlrm_train_eval.py) a fresh
   process reads --batches batches of --batch_size (default 6912 = the original's global batch 55296
   / 8 GPUs) after a warm-up: samples/s, the cores it used, samples/s per core, and the cores a rank
   would need for the goal (--goal, 10M samples/s = 2x the original's per-rank demand) at that
   per-core rate. Widths above the machine's cores are marked oversubscribed;
3. where a batch's time goes, on one thread over the row groups: parquet decode
   (ParquetFile.read_row_group), column copy (dlrm.data.table_to_batch: 40 columns into the label,
   dense and sparse arrays) and the batch cut (dlrm.data.take, as the reader cuts its batches): CPU
   seconds per 1M samples each, and the per-core ceiling they set.

The demand: the original's published 8 x A100 run trains global batch 55296 in 1.43 ms a step, i.e.
38.7M samples/s, ~4.8M per rank; an 8-GPU node (DGX A100: 2 x 64-core EPYC) has 16 cores per rank.
Every phase prints the CPU it used and what other processes used meanwhile ("others").

    python benchmarks/bench_reader.py                 # ~2 min, + ~1 min the first time (the dataset)
    python benchmarks/bench_reader.py --widths 1,2,4,8 --batches 400
"""
import argparse
import os
import sys
import tempfile
import time

import harness
from harness import CpuWindow, emit, load_note, run_child
from dlrm.config import int_list
from dlrm.data import BatchReader, list_row_groups, split_files, table_to_batch, take
from dlrm.schema import COLUMNS, CRITEO1T_TABLE_SIZES, DENSE_COLUMNS, LABEL, SPARSE_COLUMNS

ORIGINAL_GLOBAL_BATCH, ORIGINAL_STEP_S, ORIGINAL_GPUS = 55296, 1.43e-3, 8
ORIGINAL_DEMAND_PER_RANK = ORIGINAL_GLOBAL_BATCH / ORIGINAL_STEP_S / ORIGINAL_GPUS
NODE_CORES_PER_RANK = 16  # DGX A100: 2 x 64-core AMD EPYC 7742 for 8 GPUs


# ----------------------------------------------------------------------------- 1. dataset
def ensure_dataset(args):
    if args.data_dir:
        split_files(args.data_dir, "train")  # DataError if it has none
        print(f"dataset: {args.data_dir} (given)")
        return args.data_dir
    name = f"zipf_{args.files}x{args.rows_per_file}_rg{args.row_group_size}_seed{args.seed}"
    out = os.path.join(args.work_dir, name)
    train = os.path.join(out, "train")
    done = os.path.join(out, ".complete")
    if os.path.exists(done):
        print(f"dataset: reusing {out}")
        return out
    print(f"dataset: writing {out} ({args.files} files x {args.rows_per_file:,} rows, row groups of "
          f"{args.row_group_size:,})", flush=True)
    t = time.time()
    write_zipf_parquet(train, args.files, args.rows_per_file, args.row_group_size, args.seed)
    open(done, "w").close()
    print(f"dataset: written in {time.time() - t:.0f} s", flush=True)
    return out


def write_zipf_parquet(out_dir, files, rows, row_group_size, seed):
    """Synthetic train files in the schema of tools/criteo1t_parquet.py: label float32, dense = raw + 1
    (float32), ids int64 per column (zipf, capped at the original's table sizes, offset per column)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    os.makedirs(out_dir, exist_ok=True)
    rng = np.random.default_rng(seed)
    for f in range(files):
        cols = {LABEL: (rng.random(rows) < 0.25).astype(np.float32)}
        for c in DENSE_COLUMNS:
            cols[c] = np.floor(np.expm1(rng.normal(1.5, 1.2, rows))).clip(0).astype(np.float32) + 1
        for c, size in zip(SPARSE_COLUMNS, CRITEO1T_TABLE_SIZES):
            cols[c] = (np.minimum(rng.zipf(1.2, rows), size) - 1).astype(np.int64)
        pq.write_table(pa.table({c: cols[c] for c in COLUMNS}), os.path.join(out_dir, f"part-{f:05d}.parquet"),
                       row_group_size=row_group_size, compression="snappy")


# ----------------------------------------------------------------------------- 2. width (child)
def child_width(a):
    groups = list_row_groups(split_files(a.data_dir, "train"))
    reader = BatchReader(groups, a.batch_size, 0, 1, train=True, seed=1234, workers=a.workers)
    try:
        for _ in range(a.warmup):
            next(reader)
        with CpuWindow() as w:
            for _ in range(a.batches):
                next(reader)
    finally:
        reader.close()
    rec = w.record()
    rec.update(workers=a.workers, samples_per_s=a.batches * a.batch_size / w.wall)
    emit(rec)


# ----------------------------------------------------------------------------- 3. where the time goes (child)
def child_breakdown(a):
    """Decode, copy and cut, each timed on this thread alone over the row groups (CPU time), after
    one untimed row group."""
    import pyarrow.parquet as pq

    groups = list_row_groups(split_files(a.data_dir, "train"))[:a.row_groups + 1]
    path, rg, _ = groups.pop(0)  # warm-up, untimed: the first conversion pays pyarrow's one-time set-up
    table_to_batch(pq.ParquetFile(path).read_row_group(rg, columns=COLUMNS, use_threads=False))
    decode = copy = cut = 0.0
    rows = batches = 0
    parts = []
    with CpuWindow() as w:
        for path, rg, n in groups:
            t = time.thread_time()
            table = pq.ParquetFile(path).read_row_group(rg, columns=COLUMNS, use_threads=False)
            t1 = time.thread_time()
            batch = table_to_batch(table)
            t2 = time.thread_time()
            parts.append(batch)
            have = sum(p.rows for p in parts)
            while have >= a.batch_size:
                take(parts, a.batch_size)
                have -= a.batch_size
                batches += 1
            t3 = time.thread_time()
            decode, copy, cut, rows = decode + t1 - t, copy + t2 - t1, cut + t3 - t2, rows + n
            del table, batch
    rec = w.record()
    rec.update(rows=rows, row_groups=len(groups), batches=batches,
               **{k: v / rows * 1e6 for k, v in (("decode", decode), ("copy", copy), ("cut", cut))})
    emit(rec)


# ----------------------------------------------------------------------------- main
def default_widths():
    ncpu = os.cpu_count() or 1
    widths = [1 << i for i in range(ncpu.bit_length()) if 1 << i <= ncpu]
    if widths[-1] != ncpu:
        widths.append(ncpu)
    return widths + [2 * ncpu]  # one oversubscribed row: what more threads than cores give


def get_parser():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    a = p.add_argument
    a("--data_dir", default=None, help="existing parquet dataset (train/); default: write a synthetic one")
    a("--work_dir", default=os.path.join(tempfile.gettempdir(), "dlrm_bench_reader"),
      help="where the synthetic dataset is cached")
    a("--files", type=int, default=4, help="synthetic train files")
    a("--rows_per_file", type=int, default=1000000, help="synthetic rows per file")
    a("--row_group_size", type=int, default=250000, help="synthetic rows per row group")
    a("--seed", type=int, default=0, help="synthetic data seed")
    a("--batch_size", type=int, default=ORIGINAL_GLOBAL_BATCH // ORIGINAL_GPUS,
      help="per-rank batch (default: the original's 8-GPU global batch / 8)")
    a("--widths", type=int_list, default=None,
      help="reader widths (workers) to time; default: powers of two up to the CPUs, the CPUs, 2 x the CPUs")
    a("--batches", type=int, default=3000,
      help="batches timed per width (many times the 2 x workers row groups decoded ahead, or the lookahead inflates the rate)")
    a("--warmup", type=int, default=100, help="batches read before timing")
    a("--row_groups", type=int, default=8, help="row groups in the time breakdown")
    a("--goal", type=float, default=10e6, help="samples/s per rank to reach (2x the original's per-rank demand)")
    # child phases (internal)
    a("--_child", choices=["width", "breakdown"], help=argparse.SUPPRESS)
    a("--workers", type=int, default=1, help=argparse.SUPPRESS)
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    if args._child == "width":
        return child_width(args)
    if args._child == "breakdown":
        return child_breakdown(args)

    t_start = time.time()
    ncpu = os.cpu_count() or 1
    widths = args.widths or default_widths()
    print(f"machine: {ncpu} CPUs, {harness.cpu_model()}")
    data_dir = ensure_dataset(args)
    groups = list_row_groups(split_files(data_dir, "train"))
    rows = sum(n for _, _, n in groups)
    B = args.batch_size
    demand = ORIGINAL_DEMAND_PER_RANK
    print(f"train split: {rows:,} rows in {len(groups)} row groups (~{rows // len(groups):,} rows each); "
          f"batch {B}")
    print(f"demand: the original's 8 x A100 run, global batch {ORIGINAL_GLOBAL_BATCH} per {ORIGINAL_STEP_S * 1e3:.2f} ms "
          f"= {ORIGINAL_GLOBAL_BATCH / ORIGINAL_STEP_S / 1e6:.1f}M samples/s = {demand / 1e6:.2f}M per rank; "
          f"goal {args.goal / 1e6:.0f}M per rank ({args.goal / demand:.1f}x) with the {NODE_CORES_PER_RANK} cores "
          f"a rank has on an 8-GPU node")

    common = ["--data_dir", data_dir, "--batch_size", B]
    print(f"\n== reader width (dlrm.data.BatchReader workers=N; {args.batches} batches timed after {args.warmup})")
    print(f"  {'workers':>7} {'samples/s':>12} {'cores':>6} {'per core':>11} {'cores for goal':>15} "
          f"{'x demand':>9}")
    results = []
    for n in widths:
        r = run_child(__file__, ["--_child", "width", "--workers", n, "--batches", args.batches,
                                 "--warmup", args.warmup, *common])
        results.append(r)
        per_core = r["samples_per_s"] / max(r["cores"], 1e-9)
        over = "  oversubscribed: more threads than the machine's cores" if n > ncpu else ""
        print(f"  {n:>7} {r['samples_per_s']:>12,.0f} {r['cores']:>6.2f} {per_core:>11,.0f} "
              f"{args.goal / per_core:>15.1f} {r['samples_per_s'] / demand:>8.2f}x{load_note(r)}{over}", flush=True)
    base = results[0]
    base_per_core = base["samples_per_s"] / base["cores"]
    best = max((r for r in results if r["workers"] <= ncpu), key=lambda r: r["samples_per_s"])
    print("  speed-up over 1 worker: " + ", ".join(f"{r['workers']}: {r['samples_per_s'] / base['samples_per_s']:.2f}x"
                                                   for r in results))

    b = run_child(__file__, ["--_child", "breakdown", "--row_groups", args.row_groups, *common])
    total = b["decode"] + b["copy"] + b["cut"]
    print(f"\n== where the time goes (one thread, {b['row_groups']} row groups = {b['rows']:,} rows, "
          f"{b['batches']} batches; CPU seconds per 1M samples){load_note(b)}")
    for k, what in (("decode", "parquet decode (ParquetFile.read_row_group, snappy + dictionary/plain pages)"),
                    ("copy", "column copy (table_to_batch: 40 columns into 3 arrays)"),
                    ("cut", "batch cut (take: views, a concatenation where a batch spans row groups)")):
        print(f"  {k:7s} {b[k]:7.3f} s  {100 * b[k] / total:5.1f}%  {what}")
    print(f"  total   {total:7.3f} s  -> {1e6 / total:,.0f} samples/s per core at most")

    print("\n" + "=" * 96)
    print(f"SUMMARY  {ncpu} x {harness.cpu_model()}; batch {B}; {len(groups)} row groups of ~{rows // len(groups):,}")
    print("-" * 96)
    print(f"{'per-rank demand of the original 8 x A100 run':58s} {demand:>16,.0f}")
    print(f"{'goal per rank (>= 2x the demand)':58s} {args.goal:>16,.0f}")
    print(f"{'1 worker: samples/s (cores)':58s} {base['samples_per_s']:>16,.0f} ({base['cores']:.2f})")
    label = f"best within the cores ({best['workers']} workers): samples/s (cores)"
    print(f"{label:58s} "
          f"{best['samples_per_s']:>16,.0f} ({best['cores']:.2f})")
    print(f"{'samples/s per core (1 worker)':58s} {base_per_core:>16,.0f}")
    print(f"{'cores for the goal at that per-core rate':58s} {args.goal / base_per_core:>16.1f}")
    node = NODE_CORES_PER_RANK * base_per_core
    print(f"{f'projection: {NODE_CORES_PER_RANK} cores per rank x per-core rate':58s} {node:>16,.0f}  "
          f"({node / demand:.1f}x the demand; {'meets' if node >= args.goal else 'misses'} the goal if it scales linearly)")
    print("=" * 96)
    harness.busy_note([(f"width {r['workers']}", r) for r in results] + [("the breakdown", b)],
                     "those figures are")
    print(f"total {time.time() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
