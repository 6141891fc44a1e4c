#!/usr/bin/env python3
"""Benchmark tools/criteo1t_parquet.py: native Spark expressions vs Python UDFs, driver memory.

For each row count N (``--rows 1000000,4000000``):

1. generate N synthetic raw Criteo rows with tools/make_synthetic_criteo.py (one train.txt);
2. in one SparkSession, transform the same input to parquet twice (both write to a temp dir,
   both drop malformed rows with the same native check, no shuffle):
   - native: the tool's own label/dense/categorical column expressions,
   - udf: the same transforms as per-column Python UDFs (what the original tool did);
   and print rows/s for both and their ratio (target: native >= 10x);
3. run the whole tool end to end (``python tools/criteo1t_parquet.py``, kaggle layout).

While each phase runs a thread samples, with psutil, the RSS of the Spark driver JVM (the
``java`` process) and of its whole process tree (JVM + Python workers); the peaks are printed
(target: flat from 1M to 4M rows). Example:

    python scripts/bench_preprocess.py --rows 1000000,4000000
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(REPO, "tools", "criteo1t_parquet.py")
SYNTH = os.path.join(REPO, "tools", "make_synthetic_criteo.py")
MOD_IDX = 40000000


class RssSampler:
    """Peak RSS of the java processes under ``root_pid`` (JVM alone, and JVM + its children)."""

    def __init__(self, root_pid, interval=0.1):
        import psutil

        self.psutil = psutil
        self.root = psutil.Process(root_pid)
        self.interval = interval
        self.peak_jvm = 0
        self.peak_tree = 0
        self.cpu0 = None
        self.cpu_s = 0.0  # CPU seconds of the JVM and its children (Python workers) meanwhile
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self):
        ps = self.psutil
        try:
            procs = self.root.children(recursive=True)
        except ps.Error:
            return
        for p in procs:
            try:
                if p.name() != "java":
                    continue
                jvm = p.memory_info().rss
                tree = jvm
                for c in p.children(recursive=True):
                    try:
                        tree += c.memory_info().rss
                    except ps.Error:
                        pass
            except ps.Error:
                continue
            self.peak_jvm = max(self.peak_jvm, jvm)
            self.peak_tree = max(self.peak_tree, tree)

    def cpu_total(self):
        """CPU seconds of the java processes under root and of their (live or reaped)
        children."""
        ps = self.psutil
        total = 0.0
        try:
            procs = self.root.children(recursive=True)
        except ps.Error:
            return total
        for p in procs:
            try:
                if p.name() != "java":
                    continue
                c = p.cpu_times()
                total += c.user + c.system + c.children_user + c.children_system
                for k in p.children(recursive=True):
                    try:
                        kc = k.cpu_times()
                        total += kc.user + kc.system
                    except ps.Error:
                        pass
            except ps.Error:
                continue
        return total

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


def generate(rows, dest, seed):
    t = time.time()
    subprocess.run([sys.executable, SYNTH, "--output_dir", dest, "--days", "1",
                    "--rows_per_day", str(rows), "--seed", str(seed), "--kaggle"],
                   check=True, stdout=subprocess.DEVNULL)
    return time.time() - t


def udf_columns(F, T, fields):
    """The same transforms as tools/criteo1t_parquet.py, as per-column Python UDFs."""

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
    cols = [label_udf(fields[0]).alias("label")]
    cols += [dense_udf(fields[1 + j]).alias("I%d" % (j + 1)) for j in range(13)]
    cols += [F.udf(make_cat(i), T.LongType())(fields[14 + i]).alias("C%d" % (i + 1))
             for i in range(26)]
    return cols


def transform_phase(spark, cp, path, out, kind):
    """Read raw text, drop malformed rows (native check), transform, write parquet."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    v = F.col("value")
    df = spark.read.text("file://" + path).filter(cp.valid_expr(v))
    df = df.select(F.split(v, "\t", -1).alias("_f"))
    f = F.col("_f")
    cols = cp.transform_exprs(f, MOD_IDX, "int64") if kind == "native" else udf_columns(F, T, f)
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


def full_tool(in_dir, out_dir, args):
    import psutil

    cmd = [sys.executable, TOOL, "--input_dir", in_dir, "--output_dir", out_dir,
           "--spark_master", args.spark_master, "--spark_driver_memory_gb",
           str(args.driver_memory_gb), "--train_files", "16", "--eval_files", "4",
           "--shuffle_partitions", "16", "--overwrite"]
    t = time.time()
    p = psutil.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    with RssSampler(p.pid) as mem:
        stdout, _ = p.communicate()
    if p.returncode != 0:
        raise SystemExit("the tool failed:\n" + stdout)
    return time.time() - t, mem, stdout


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="1000000",
                    help="comma list of row counts, e.g. 1000000,4000000")
    ap.add_argument("--spark_master", default="local[2]")
    ap.add_argument("--driver_memory_gb", type=int, default=2)
    ap.add_argument("--work_dir", default=None, help="scratch dir (default: a temp dir)")
    ap.add_argument("--skip_udf", action="store_true", help="native phase only")
    ap.add_argument("--skip_tool", action="store_true", help="no end-to-end tool run")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    rows_list = [int(x) for x in args.rows.split(",") if x]

    sys.path.insert(0, os.path.join(REPO, "tools"))
    import criteo1t_parquet as cp

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    work = args.work_dir or tempfile.mkdtemp(prefix="bench_preprocess-")
    os.makedirs(work, exist_ok=True)
    spark = (SparkSession.builder.master(args.spark_master)
             .config("spark.driver.memory", "%dg" % args.driver_memory_gb)
             .config("spark.sql.ansi.enabled", "false")
             .config("spark.sql.codegen.hugeMethodLimit", "8000")  # as the tool sets it
             .config("spark.ui.showConsoleProgress", "false")
             .getOrCreate())
    spark.sparkContext.setLogLevel("ERROR")
    results = []
    try:
        # warm up the JVM (JIT) so the first measured phase is not penalised
        warm = os.path.join(work, "warm")
        generate(20000, warm, args.seed)
        for kind in ("native", "udf"):
            transform_phase(spark, cp, os.path.join(warm, "train.txt"),
                            os.path.join(work, "warm_out_" + kind), kind)
        for n in rows_list:
            in_dir = os.path.join(work, "in_%d" % n)
            gen_s = generate(n, in_dir, args.seed)
            path = os.path.join(in_dir, "train.txt")
            size = os.path.getsize(path)
            print("[bench] %d rows, %.0f MiB of text (generated in %.1f s)" % (n, mib(size),
                                                                              gen_s), flush=True)
            res = {"rows": n, "mib": mib(size)}
            kinds = ["native"] + ([] if args.skip_udf else ["udf"])
            for kind in kinds:
                secs, mem = transform_phase(spark, cp, path, os.path.join(work, "out_" + kind),
                                            kind)
                res[kind] = {"s": secs, "cpu_s": mem.cpu_s, "jvm": mib(mem.peak_jvm),
                             "tree": mib(mem.peak_tree)}
                print("[bench]   %-6s: %.1f s, %.0f rows/s, %.1f CPU s (%.0f rows per CPU s), JVM "
                      "peak RSS %.0f MiB (with Python workers %.0f MiB)"
                      % (kind, secs, n / secs, mem.cpu_s, n / max(mem.cpu_s, 1e-9),
                         mib(mem.peak_jvm), mib(mem.peak_tree)), flush=True)
            if "udf" in res and n <= 1000000:
                same = check_same(os.path.join(work, "out_native"), os.path.join(work, "out_udf"))
                print("[bench]   native and udf outputs equal: %s" % same, flush=True)
            if not args.skip_tool:
                secs, mem, _ = full_tool(in_dir, os.path.join(work, "tool_out"), args)
                res["tool"] = {"s": secs, "jvm": mib(mem.peak_jvm)}
                print("[bench]   whole tool: %.1f s, %.0f rows/s, JVM peak %.0f MiB"
                      % (secs, n / secs, mib(mem.peak_jvm)), flush=True)
            results.append(res)
            shutil.rmtree(in_dir, ignore_errors=True)
    finally:
        spark.stop()
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print("master %s, driver memory %d GB, %d CPU(s), load average at the end %s"
          % (args.spark_master, args.driver_memory_gb, os.cpu_count(),
             " ".join("%.1f" % x for x in os.getloadavg())))
    hdr = ["rows", "native rows/s", "UDF rows/s", "native/UDF (wall)",
           "native rows/CPU-s", "UDF rows/CPU-s", "native/UDF (CPU)",
           "JVM peak native MiB", "JVM peak UDF MiB", "whole tool s", "whole tool rows/s",
           "JVM peak whole tool MiB"]
    print("| " + " | ".join(hdr) + " |")
    print("|" + "---|" * len(hdr))
    for r in results:
        n, nat, udf, tool = r["rows"], r["native"], r.get("udf"), r.get("tool")
        cells = [str(n), "%.0f" % (n / nat["s"])]
        cells += ["%.0f" % (n / udf["s"]), "%.1fx" % (udf["s"] / nat["s"])] if udf else ["-"] * 2
        cells += ["%.0f" % (n / nat["cpu_s"])]
        cells += (["%.0f" % (n / udf["cpu_s"]), "%.1fx" % (udf["cpu_s"] / nat["cpu_s"])] if udf
                  else ["-"] * 2)
        cells += ["%.0f" % nat["jvm"], "%.0f" % udf["jvm"] if udf else "-"]
        cells += (["%.1f" % tool["s"], "%.0f" % (n / tool["s"]), "%.0f" % tool["jvm"]] if tool
                  else ["-"] * 3)
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
