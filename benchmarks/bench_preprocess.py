#!/usr/bin/env python3
"""Benchmark tools/criteo1t_parquet.py: native Spark expressions vs Python UDFs, driver memory.

For each row count N (``--rows 1000000,4000000``):

1. generate N synthetic raw Criteo rows with tools/make_synthetic_criteo.py: one train.txt
   (Kaggle layout), or with ``--days D`` D day files of N rows each (Criteo 1TB layout; the
   last day's first half goes to test);
2. in one fresh SparkSession (a new JVM per N, after an untimed warm-up on other rows),
   transform the same input to parquet twice, both read text -> split -> transform -> write
   parquet to a temp dir, no shuffle (the tool's write pass on clean input):
   - native: the tool's own label/dense/categorical column expressions,
   - udf: the same transforms as per-column Python UDFs (what the original tool did);
   and print rows/s (wall and per CPU second of the JVM + Python workers) and the ratio
   (target: native >= 10x);
3. run the whole tool end to end (``python tools/criteo1t_parquet.py``: line count and row
   check in one scan, shuffled train, test, val, table sizes), with mod ids and,
   unless ``--vocab_min_frequency 0``, again with vocabulary ids (``--min_frequency``: the
   vocabulary pass and the id joins instead of the distinct-id count);
4. unless ``--skip_floor``, Spark's floor for the same work, in a fresh process like the tool
   (its start-up included): the input read as typed CSV (no row check, no line positions) ->
   the same label/dense/mod-id transforms -> parquet, then a random shuffle of that parquet
   (seeded random partitioning into the tool's train file count, sorted within partitions by a
   second random key) -> parquet; printed with the ratio floor / tool for mod and vocabulary
   ids (goal >= 90%). Steps 3 and 4 alternate ``--rounds`` times, the floor first in even
   rounds; printed: the ratio of each side's best run, and each round's ratio of its two
   adjacent runs with their median (robust to the machine's speed drifting).

While each phase runs a thread samples, with psutil, the RSS of the Spark driver JVM (the
``java`` process) and of its whole process tree (JVM + Python workers); the peaks are printed
(target: flat from 1M to 4M rows; the JVM heap is capped by --driver_memory_gb). Example:

    python benchmarks/bench_preprocess.py --rows 1000000,4000000
"""

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import psutil

import harness
from dlrm.launch import preprocess_command
from dlrm.preprocess.cli import build_parser as tool_parser
from dlrm.schema import DENSE_COLUMNS, LABEL, NUM_DENSE, SPARSE_COLUMNS

MOD_IDX = tool_parser().get_default("mod_idx")  # the tool's default categorical modulus


class RssSampler:
    """Peak RSS of the java processes under ``root_pid`` (JVM alone, and JVM + its children), and
    the CPU seconds of the JVM and its children (Python workers) while it samples."""

    def __init__(self, root_pid, interval=0.1):
        self.root = psutil.Process(root_pid)
        self.interval = interval
        self.peak_jvm = 0
        self.peak_tree = 0
        self.cpu0 = None
        self.cpu_s = 0.0
        self.seen_cpu = {}  # pid -> its CPU seconds at the last sample, for every process under root
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _children(self):
        try:
            return self.root.children(recursive=True)
        except psutil.Error:
            return []

    def _jvms(self, procs=None):
        """The java processes among procs (default: every process under root)."""
        jvms = []
        for p in self._children() if procs is None else procs:
            try:
                if p.name() == "java":
                    jvms.append(p)
            except psutil.Error:
                pass
        return jvms

    def _sample(self):
        children = self._children()  # listed once per sample, for the CPU and the RSS
        for p in [self.root] + children:
            try:
                t = p.cpu_times()
                self.seen_cpu[p.pid] = t.user + t.system
            except psutil.Error:
                pass
        for p in self._jvms(children):
            try:
                jvm = p.memory_info().rss
                tree = jvm
                for c in p.children(recursive=True):
                    try:
                        tree += c.memory_info().rss
                    except psutil.Error:
                        pass
            except psutil.Error:
                continue
            self.peak_jvm = max(self.peak_jvm, jvm)
            self.peak_tree = max(self.peak_tree, tree)

    def cpu_total(self):
        """CPU seconds of the java processes under root and of their (live or reaped) children."""
        return sum(harness.tree_cpu_s(p.pid) for p in self._jvms())

    def _loop(self):
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self.cpu0 = self.cpu_total()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()
        self.cpu_s = self.cpu_total() - self.cpu0


def mib(n):
    return n / 2**20


def generate(rows, dest, seed, days=0):
    """One train.txt of `rows` synthetic rows, or `days` day files of `rows` rows each; the
    seconds it took."""
    return harness.synthesize(dest, days=max(days, 1), rows_per_day=rows, seed=seed,
                              kaggle=days == 0)


def input_files(in_dir):
    """The raw files generate() wrote: train.txt, or day_0, day_1, ..."""
    names = sorted((f for f in os.listdir(in_dir) if f == "train.txt" or f.startswith("day_")),
                   key=lambda f: (len(f), f))
    return [os.path.join(in_dir, f) for f in names]


def udf_columns(F, T, fields):
    """The same transforms as the tool's (dlrm.preprocess.spark.transform_exprs), as per-column
    Python UDFs."""

    def label(s):
        return float(s)

    def dense(s):
        return 1.0 if s == "" else float(s) + 1.0

    def make_cat(i):
        base = i * (MOD_IDX + 1)

        def cat(s):
            return base + MOD_IDX if s == "" else int(s, 16) % MOD_IDX + base

        return cat

    label_udf = F.udf(label, T.FloatType())
    dense_udf = F.udf(dense, T.FloatType())
    cols = [label_udf(fields[0]).alias(LABEL)]
    cols += [dense_udf(fields[1 + j]).alias(name) for j, name in enumerate(DENSE_COLUMNS)]
    cols += [F.udf(make_cat(i), T.LongType())(fields[1 + NUM_DENSE + i]).alias(name)
             for i, name in enumerate(SPARSE_COLUMNS)]
    return cols


def transform_phase(spark, path, out, kind):
    """Read raw text, split, transform, write parquet (the tool's write pass on clean input:
    the row check runs in its separate check pass, which the UDF version would need too)."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from dlrm.preprocess.spark import transform_exprs

    v = F.col("value")
    df = spark.read.text("file://" + path).select(F.split(v, "\t", -1).alias("_f"))
    f = F.col("_f")
    cols = transform_exprs(f, MOD_IDX, "int64") if kind == "native" else udf_columns(F, T, f)
    t = time.time()
    with RssSampler(os.getpid()) as mem:
        df.select(*cols).write.mode("overwrite").parquet("file://" + out)
    return time.time() - t, mem


def check_same(out_a, out_b):
    """Both phases wrote the same rows (as multisets; the UDF columns are nullable)."""
    import pyarrow.parquet as pq

    a, b = pq.read_table(out_a), pq.read_table(out_b)
    b = b.cast(a.schema)
    keys = [(c, "ascending") for c in a.column_names]
    return a.num_rows == b.num_rows and a.sort_by(keys).equals(b.sort_by(keys))


def measured(cmd):
    """Run cmd (the tool, or the floor's child) as a fresh process under an RssSampler, the same
    for both sides of the comparison; (wall seconds, the sampler, stdout). The sampler's
    others_cores: the cores other processes kept busy meanwhile. Exits on a failure."""
    t, busy, own = time.time(), harness.machine_busy_s(), harness.self_cpu_s()
    p = psutil.Popen([str(c) for c in cmd], cwd=harness.REPO, stdout=subprocess.PIPE,
                     stderr=subprocess.DEVNULL, text=True)
    with RssSampler(p.pid, interval=0.5) as mem:
        stdout, _ = p.communicate()
    # the run's processes as last sampled (the JVM may outlive the tool, unreaped by us); what a
    # process used after its last sample counts as others', so the figure errs high
    ours = sum(mem.seen_cpu.values()) + harness.self_cpu_s() - own
    mem.others_cores = max(harness.machine_busy_s() - busy - ours, 0.0) / (time.time() - t)
    if p.returncode != 0:
        raise SystemExit("%s failed:\n%s" % (" ".join(map(str, cmd[:3])), stdout))
    return time.time() - t, mem, stdout


def full_tool(in_dir, out_dir, args, rows_per_file, *extra):
    if args.days:  # the last day: half test, half val
        extra = ("--num_test_examples", rows_per_file // 2) + extra
    shutil.rmtree(out_dir, ignore_errors=True)  # (not timed: the floor's outputs go the same way)
    cmd = preprocess_command(["--input_dir", in_dir, "--output_dir", out_dir, "--spark_master", args.spark_master,
                              "--spark_driver_memory_gb", args.driver_memory_gb, "--train_files", 16,
                              "--eval_files", 4, "--shuffle_partitions", 16, *extra])
    return measured(cmd)


def floor_child(args):
    """Spark's floor (step 4) in this process: typed CSV -> transforms -> parquet, then a random
    shuffle of that parquet -> parquet; prints the two phases' seconds."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    from dlrm.preprocess.spark import start_spark

    settings = argparse.Namespace(spark_master=args.spark_master, spark_driver_memory_gb=args.driver_memory_gb,
                                  spark_tmp_dir=None, shuffle_partitions=16)
    with contextlib.redirect_stdout(sys.stderr):
        spark = start_spark(settings)
    spark.sparkContext.setLogLevel("ERROR")
    schema = T.StructType([T.StructField(LABEL, T.IntegerType())]
                          + [T.StructField(c, T.LongType()) for c in DENSE_COLUMNS]
                          + [T.StructField(c, T.StringType()) for c in SPARSE_COLUMNS])
    work = args.work_dir
    try:
        t = time.time()
        df = spark.read.csv(["file://" + f for f in input_files(os.path.join(work, "in"))],
                            sep="\t", schema=schema)
        cols = [F.col(LABEL).cast("float").alias(LABEL)]
        cols += [F.coalesce((F.col(c).cast("double") + 1.0).cast("float"),
                            F.lit(1.0).cast("float")).alias(c) for c in DENSE_COLUMNS]
        for i, c in enumerate(SPARSE_COLUMNS):  # the tool's mod ids (spark.transform_exprs)
            base = i * (MOD_IDX + 1)
            v = F.conv(F.col(c), 16, 10).cast("long") % F.lit(MOD_IDX).cast("long")
            cols.append(F.coalesce(v + F.lit(base).cast("long"),
                                   F.lit(base + MOD_IDX).cast("long")).alias(c))
        typed = os.path.join(work, "floor_typed")
        df.select(*cols).write.mode("overwrite").parquet("file://" + typed)
        t_write = time.time() - t
        t = time.time()
        (spark.read.parquet("file://" + typed)
         .select("*", F.rand(1).alias("_r1"), F.rand(2).alias("_r2"))
         .repartition(16, "_r1").sortWithinPartitions("_r2", "_r1").drop("_r1", "_r2")
         .write.mode("overwrite").parquet("file://" + os.path.join(work, "floor_shuffled")))
        t_shuffle = time.time() - t
    finally:
        spark.stop()
    harness.emit({"write": t_write, "shuffle": t_shuffle})
    return 0


def floor_run(args, work):
    """Step 4 in a fresh process: (wall seconds with start-up, the sampler, the child's phase
    seconds)."""
    for d in ("floor_typed", "floor_shuffled"):  # (not timed, as for the tool's output)
        shutil.rmtree(os.path.join(work, d), ignore_errors=True)
    secs, mem, stdout = measured([sys.executable, os.path.abspath(__file__), "--floor", "--work_dir",
                                  work, "--spark_master", args.spark_master, "--driver_memory_gb",
                                  args.driver_memory_gb])
    results = harness.results_in(stdout)
    if not results:
        raise SystemExit("the floor's child printed no result:\n" + stdout)
    return secs, mem, results[-1]


def child(args):
    """One row count in a fresh JVM: warm-up, then the timed native and UDF phases."""
    from dlrm.preprocess.spark import start_spark

    settings = argparse.Namespace(spark_master=args.spark_master, spark_driver_memory_gb=args.driver_memory_gb,
                                  spark_tmp_dir=None, shuffle_partitions=None)
    with contextlib.redirect_stdout(sys.stderr):  # its "[preprocess] starting Spark" line
        spark = start_spark(settings)  # the tool's session and settings
    spark.sparkContext.setLogLevel("ERROR")
    work, n = args.work_dir, args.child
    kinds = ["native"] + ([] if args.skip_udf else ["udf"])
    res = {}
    try:
        # warm up the JIT on other rows so the timed phases run compiled code
        for kind in kinds:
            transform_phase(spark, os.path.join(work, "warm", "train.txt"),
                            os.path.join(work, "warm_out_" + kind), kind)
        for kind in kinds:
            secs, mem = transform_phase(spark, input_files(os.path.join(work, "in"))[0],
                                        os.path.join(work, "out_" + kind), kind)
            res[kind] = {"s": secs, "cpu_s": mem.cpu_s, "jvm": mib(mem.peak_jvm),
                         "tree": mib(mem.peak_tree)}
            print("[bench]   %-6s: %.1f s, %.0f rows/s, %.1f CPU s (%.0f rows per CPU s), JVM "
                  "peak RSS %.0f MiB (with Python workers %.0f MiB)"
                  % (kind, secs, n / secs, mem.cpu_s, n / max(mem.cpu_s, 1e-9),
                     mib(mem.peak_jvm), mib(mem.peak_tree)), flush=True)
    finally:
        spark.stop()
    harness.emit(res)
    return 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="1000000",
                    help="comma list of row counts, e.g. 1000000,4000000")
    ap.add_argument("--spark_master", default="local[2]")
    ap.add_argument("--driver_memory_gb", type=int, default=2)
    ap.add_argument("--work_dir", default=None, help="scratch dir (default: a temp dir)")
    ap.add_argument("--skip_udf", action="store_true", help="native phase only")
    ap.add_argument("--skip_tool", action="store_true", help="no end-to-end tool run")
    ap.add_argument("--vocab_min_frequency", type=int, default=3,
                    help="also run the whole tool with --min_frequency this (0: mod ids only)")
    ap.add_argument("--days", type=int, default=0,
                    help="0: one Kaggle train.txt of --rows rows; D > 0: D day files of --rows rows "
                    "each (Criteo 1TB layout)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--warmup_rows", type=int, default=200000,
                    help="rows of the untimed warm-up run of each phase (JIT compilation)")
    ap.add_argument("--rounds", type=int, default=2,
                    help="the whole tool and the floor alternate this many times; each side's best run counts")
    ap.add_argument("--skip_floor", action="store_true",
                    help="no Spark floor run (typed CSV -> transforms -> parquet + shuffle)")
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--floor", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.floor:
        return floor_child(args)
    if args.child is not None:
        return child(args)

    rows_list = [int(x) for x in args.rows.split(",") if x]
    work = args.work_dir or tempfile.mkdtemp(prefix="bench_preprocess-")
    os.makedirs(work, exist_ok=True)
    results = []
    try:
        generate(args.warmup_rows, os.path.join(work, "warm"), args.seed + 1)
        for n in rows_list:
            in_dir = os.path.join(work, "in")
            shutil.rmtree(in_dir, ignore_errors=True)
            gen_s = generate(n, in_dir, args.seed, args.days)
            files = input_files(in_dir)
            size = sum(os.path.getsize(f) for f in files)
            total = n * len(files)
            print("[bench] %d rows in %d file(s), %.0f MiB of text (generated in %.1f s)"
                  % (total, len(files), mib(size), gen_s), flush=True)
            # each row count in a fresh JVM, so the memory peaks are comparable
            argv = ["--child", n, "--work_dir", work, "--spark_master", args.spark_master,
                    "--driver_memory_gb", args.driver_memory_gb] + (["--skip_udf"] if args.skip_udf else [])
            try:
                res = harness.run_child(__file__, argv, timeout=None, echo=True)
            except RuntimeError as e:
                raise SystemExit("the benchmark child failed for %d rows: %s" % (n, e))
            res["rows"], res["files"] = n, len(files)
            if "udf" in res and n <= 1000000:
                same = check_same(os.path.join(work, "out_native"), os.path.join(work, "out_udf"))
                print("[bench]   native and udf outputs equal: %s" % same, flush=True)
            # the whole tool and Spark's floor alternate --rounds times, the floor first in even
            # rounds; each side's best run counts, and each round's ratio (adjacent runs, so a
            # drift of the machine's speed during the benchmark cancels) is printed too
            sides = [] if args.skip_tool else [("tool", "mod ids", [])]
            if sides and args.vocab_min_frequency > 0:
                sides.append(("vocab", "vocabulary ids, --min_frequency %d" % args.vocab_min_frequency,
                              ["--min_frequency", args.vocab_min_frequency]))
            runs = {key: [] for key in [k for k, _, _ in sides] + ["floor"]}
            others = []  # cores other processes kept busy during each timed run

            def run_tool(rnd, key, what, extra):
                secs, mem, stdout = full_tool(in_dir, os.path.join(work, "tool_out"), args, n, *extra)
                runs[key].append(secs)
                if key not in res or secs < res[key]["s"]:
                    res[key] = {"s": secs, "jvm": mib(mem.peak_jvm)}
                others.append(mem.others_cores)
                print("[bench]   round %d, whole tool (%s): %.1f s, %.0f rows/s, JVM peak RSS %.0f MiB, "
                      "others %.2f cores" % (rnd, what, secs, total / secs, mib(mem.peak_jvm),
                                             mem.others_cores), flush=True)
                took = re.search(r"^\[preprocess\] time per pass: (.*)$", stdout, re.M)
                print("[bench]     its passes: %s" % (took.group(1) if took else "(not printed)"),
                      flush=True)

            def run_floor(rnd):
                secs, mem, phases = floor_run(args, work)
                runs["floor"].append(secs)
                res["floor"] = min(secs, res.get("floor", secs))
                others.append(mem.others_cores)
                print("[bench]   round %d, Spark floor: %.1f s (typed CSV -> parquet %.1f s, shuffle %.1f s, "
                      "start-up %.1f s), JVM peak RSS %.0f MiB, others %.2f cores"
                      % (rnd, secs, phases["write"], phases["shuffle"],
                         secs - phases["write"] - phases["shuffle"], mib(mem.peak_jvm), mem.others_cores),
                      flush=True)

            for rnd in range(1, args.rounds + 1):
                floor_first = rnd % 2 == 0 and not args.skip_floor
                if floor_first:
                    run_floor(rnd)
                for side in sides:
                    run_tool(rnd, *side)
                if not args.skip_floor and not floor_first:
                    run_floor(rnd)
            if "floor" in res:
                for key, what, _ in sides:
                    rounds = [100 * f / t for f, t in zip(runs["floor"], runs[key])]
                    res[key]["round_ratios"] = rounds
                    print("[bench]   floor / whole tool (%s): best of %d each %.0f%%; per round %s, "
                          "median %.0f%%" % (what, args.rounds, 100 * res["floor"] / res[key]["s"],
                                             " ".join("%.0f%%" % r for r in rounds),
                                             statistics.median(rounds)), flush=True)
            if others:
                res["others_max"] = max(others)
                print("[bench]   other processes: at most %.2f cores during a timed run%s"
                      % (max(others), " (over 0.2: the times are noisy)" if max(others) > 0.2 else ""),
                      flush=True)
            results.append(res)
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print("master %s, driver memory %d GB, %d CPU(s), load average at the end %s"
          % (args.spark_master, args.driver_memory_gb, os.cpu_count(),
             " ".join("%.1f" % x for x in os.getloadavg())))
    hdr = ["rows", "native rows/s", "UDF rows/s", "native/UDF (wall)",
           "native rows/CPU-s", "UDF rows/CPU-s", "native/UDF (CPU)",
           "JVM peak native MiB", "JVM peak UDF MiB", "whole tool s", "whole tool rows/s",
           "JVM peak whole tool MiB", "whole tool vocab s", "whole tool vocab rows/s",
           "JVM peak whole tool vocab MiB", "Spark floor s", "floor/tool mod (best; round median)",
           "floor/tool vocab (best; round median)"]
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for r in results:
        n, nat, udf = r["rows"], r["native"], r.get("udf")
        total = n * r["files"]
        cells = [str(n) if r["files"] == 1 else "%d x %d" % (r["files"], n), "%.0f" % (n / nat["s"])]
        cells += ["%.0f" % (n / udf["s"]), "%.1fx" % (udf["s"] / nat["s"])] if udf else ["-"] * 2
        cells += ["%.0f" % (n / nat["cpu_s"])]
        cells += (["%.0f" % (n / udf["cpu_s"]), "%.1fx" % (udf["cpu_s"] / nat["cpu_s"])] if udf
                  else ["-"] * 2)
        cells += ["%.0f" % nat["jvm"], "%.0f" % udf["jvm"] if udf else "-"]
        for tool in (r.get("tool"), r.get("vocab")):
            cells += (["%.1f" % tool["s"], "%.0f" % (total / tool["s"]), "%.0f" % tool["jvm"]] if tool
                      else ["-"] * 3)
        fl = r.get("floor")
        cells += ["%.1f" % fl if fl else "-"]
        cells += ["%.0f%%; %.0f%%" % (100 * fl / r[k]["s"], statistics.median(r[k]["round_ratios"]))
                  if fl and k in r else "-" for k in ("tool", "vocab")]
        print("| " + " | ".join(cells) + " |")
    return 0

if __name__ == "__main__":
    sys.exit(main())
