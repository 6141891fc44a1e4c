#!/usr/bin/env python3
"""Criteo click logs (raw text) -> DLRM parquet, with PySpark.

Reads the Criteo 1TB click logs (``day_0 .. day_23``) or the Kaggle display-advertising
``train.txt`` and writes ``output_dir/train/``, ``output_dir/test/``, ``output_dir/val/``
(parquet, columns ``label, I1..I13, C1..C26``) plus ``output_dir/dataset_info.json``.

Runs as ``python tools/criteo1t_parquet.py ...`` (starts a local Spark, ``--spark_master``)
or under ``spark-submit tools/criteo1t_parquet.py ...`` (keeps spark-submit's master).
Every transform is a native Spark column expression (no Python UDF) and the driver only
ever collects small aggregates, so its memory stays flat whatever the input size.

Importable: ``build_parser()``, ``parse_args(argv)``, ``plan_inputs(input_dir, fmt)``,
``valid_expr``/``reason_expr``/``transform_exprs`` (the column expressions) and
``main(argv=None)`` (returns the exit code).
"""

import argparse
import glob
import gzip
import json
import os
import re
import shutil
import sys
import time

TOOL = "tools/criteo1t_parquet.py"
FORMAT_VERSION = 1
NUM_FIELDS = 40
NUM_DENSE = 13
NUM_SPARSE = 26
LABEL_COL = "label"
DENSE_COLS = ["I%d" % i for i in range(1, NUM_DENSE + 1)]
SPARSE_COLS = ["C%d" % i for i in range(1, NUM_SPARSE + 1)]
OUTPUT_COLUMNS = [LABEL_COL] + DENSE_COLS + SPARSE_COLS
SPLITS = ("train", "test", "val")
REASONS = ("field_count", "label", "dense", "categorical")
INT32_MAX = 2**31 - 1
ROW_BITS = 33  # monotonically_increasing_id(): partition index << 33 | row within partition

# One field, empty or: a dense value is an integer of at most 18 digits (fits int64, finite in
# float32); a categorical value is 1-8 hex digits (a 32-bit hash, as in the Criteo data).
DENSE_FIELD_RE = r"(?:-?[0-9]{1,18})?"
HEX_FIELD_RE = r"(?:[0-9a-fA-F]{1,8})?"
# A well-formed line, checked with one regular expression on the raw text (no split needed).
# Same language as the fields above, with possessive quantifiers (no backtracking: ~40% less
# CPU than the plain form).
VALID_LINE_RE = r"^[01](?:\t(?:-?+[0-9]{1,18}+)?+){%d}+(?:\t[0-9a-fA-F]{0,8}+){%d}+$" % (
    NUM_DENSE, NUM_SPARSE)

DENSE_TRANSFORM = (
    "float32(raw + 1), missing -> 1.0 (same values as the original OneFlow tool; the model "
    "applies log(max(x, 0) + 1), so negative raw values such as I2 = -1/-2 stay finite)"
)
KAGGLE_RULE = (
    "kaggle layout (train.txt, n lines): the first floor(6n/7) lines -> train (shuffled), the "
    "next (n - floor(6n/7)) // 2 -> test, the rest -> val, file order kept (the 7-day rule of "
    "facebookresearch DLRM)"
)
CRITEO1T_RULE = (
    "criteo1t layout (day_0 .. day_K, also day_N.gz, contiguous from 0, K >= 1): days 0..K-1 -> "
    "train (shuffled); the first --num_test_examples lines of day K -> test, the remaining lines "
    "-> val, file order kept"
)


class PreprocessError(Exception):
    """An error reported as one line ``error: ...`` on stderr, with an exit code."""

    def __init__(self, message, code=1):
        super().__init__(message)
        self.code = code


def log(msg):
    print("[preprocess] %s" % msg, flush=True)


def warn(msg):
    print("[preprocess] warning: %s" % msg, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------


def build_parser():
    p = argparse.ArgumentParser(
        prog="criteo1t_parquet.py",
        description="Convert the raw Criteo click logs (1TB day_N files or Kaggle train.txt) "
        "into DLRM parquet: output_dir/{train,test,val}/ and output_dir/dataset_info.json.",
        epilog="Split rules. " + CRITEO1T_RULE + ". " + KAGGLE_RULE + ". Malformed rows "
        "(reasons: field_count, label, dense, categorical) are skipped and counted, or stop the "
        "run with --bad_rows fail. Output is written to a temporary sibling directory and renamed "
        "to output_dir only when complete.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--input_dir", type=str, required=True,
                   help="directory holding day_0..day_K (criteo1t) or train.txt (kaggle)")
    p.add_argument("--output_dir", type=str, required=True,
                   help="output directory (must not exist or be empty, unless --overwrite)")
    p.add_argument("--spark_tmp_dir", type=str, default=None,
                   help="Spark scratch directory (spark.local.dir); None keeps Spark's default")
    p.add_argument("--spark_driver_memory_gb", type=int, default=360,
                   help="spark.driver.memory in GB; in local mode capped at 80%% of physical RAM")
    p.add_argument("--mod_idx", type=int, default=40000000,
                   help="categorical id modulus; <= 0 means hash ids (xxhash64)")
    p.add_argument("--num_test_examples", type=int, default=89137319,
                   help="criteo1t: number of first lines of the last day that go to test")
    p.add_argument("--export_dataset_info", action="store_true",
                   help="also write output_dir/README.md with the example counts and the "
                   "table size array (dataset_info.json is always written)")
    p.add_argument("--spark_master", type=str, default="local[*]",
                   help="Spark master; ignored under spark-submit when spark.master is set")
    p.add_argument("--input_format", choices=["auto", "criteo1t", "kaggle"], default="auto",
                   help="auto: train.txt present -> kaggle, day_N files -> criteo1t")
    p.add_argument("--train_files", type=int, default=1024,
                   help="number of parquet files for train")
    p.add_argument("--eval_files", type=int, default=256,
                   help="number of parquet files for test and for val (fewer if fewer rows)")
    p.add_argument("--seed", type=int, default=1234, help="seed of the train shuffle")
    p.add_argument("--key_type", choices=["int64", "int32"], default="int64",
                   help="dtype of C1..C26; int32 only with --mod_idx > 0 and if the max id fits")
    p.add_argument("--bad_rows", choices=["skip", "fail"], default="skip",
                   help="malformed rows: skip and count them, or stop before writing anything")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing non-empty output_dir (once the new one is complete)")
    p.add_argument("--shuffle_partitions", type=int, default=None,
                   help="spark.sql.shuffle.partitions (None keeps Spark's default)")
    return p


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def max_categorical_id(mod_idx):
    return (NUM_SPARSE - 1) * (mod_idx + 1) + mod_idx


def check_args(args):
    if args.spark_driver_memory_gb <= 0:
        raise PreprocessError("--spark_driver_memory_gb must be > 0", 2)
    if args.num_test_examples < 0:
        raise PreprocessError("--num_test_examples must be >= 0", 2)
    if args.train_files < 1 or args.eval_files < 1:
        raise PreprocessError("--train_files and --eval_files must be >= 1", 2)
    if args.shuffle_partitions is not None and args.shuffle_partitions < 1:
        raise PreprocessError("--shuffle_partitions must be >= 1", 2)
    if args.key_type == "int32":
        if args.mod_idx <= 0:
            raise PreprocessError("--key_type int32 needs mod ids (--mod_idx > 0); hash ids "
                                  "are 64-bit", 2)
        if max_categorical_id(args.mod_idx) > INT32_MAX:
            raise PreprocessError(
                "--key_type int32: the largest id %d (mod_idx %d) does not fit int32; use "
                "--mod_idx <= %d or --key_type int64"
                % (max_categorical_id(args.mod_idx), args.mod_idx,
                   (INT32_MAX - (NUM_SPARSE - 1)) // NUM_SPARSE), 2)


# --------------------------------------------------------------------------------------------
# input discovery and output directory handling (no Spark)
# --------------------------------------------------------------------------------------------

_DAY_RE = re.compile(r"^day_(\d+)(\.gz)?$")


def _file_is_empty(path):
    if os.path.getsize(path) == 0:
        return True
    if path.endswith(".gz"):
        try:
            with gzip.open(path, "rb") as f:
                return len(f.read(1)) == 0
        except (OSError, EOFError) as e:
            raise PreprocessError("cannot read gzip file %s: %s" % (path, e), 2)
    return False


def plan_inputs(input_dir, input_format="auto"):
    """Return (format, [paths]) for the input directory; the split file is the last path.

    Raises PreprocessError (exit code 2) for a missing directory, no recognised files, gaps in
    the day files, duplicates or empty files.
    """
    if not os.path.isdir(input_dir):
        raise PreprocessError("input directory %s does not exist" % input_dir, 2)
    names = os.listdir(input_dir)
    kaggle = [n for n in ("train.txt", "train.txt.gz") if n in names]
    days = {}
    for n in names:
        m = _DAY_RE.match(n)
        if m and os.path.isfile(os.path.join(input_dir, n)):
            d = int(m.group(1))
            if d in days:
                raise PreprocessError("%s: both %s and %s exist; keep one"
                                      % (input_dir, days[d], n), 2)
            days[d] = n
    fmt = input_format
    if fmt == "auto":
        if kaggle:
            fmt = "kaggle"
        elif days:
            fmt = "criteo1t"
        else:
            raise PreprocessError("no Criteo files in %s (expected day_0..day_K or train.txt)"
                                  % input_dir, 2)
    if fmt == "kaggle":
        if not kaggle:
            raise PreprocessError("no train.txt in %s (--input_format kaggle)" % input_dir, 2)
        if len(kaggle) > 1:
            raise PreprocessError("%s: both train.txt and train.txt.gz exist; keep one"
                                  % input_dir, 2)
        paths = [os.path.join(input_dir, kaggle[0])]
    else:
        if not days:
            raise PreprocessError("no day_N files in %s (--input_format criteo1t)" % input_dir, 2)
        last = max(days)
        missing = [d for d in range(last + 1) if d not in days]
        if missing:
            shown = ", ".join("day_%d" % d for d in missing[:5]) + (", ..." if len(missing) > 5
                                                                   else "")
            raise PreprocessError("day files in %s are not contiguous from day_0: missing %s"
                                  % (input_dir, shown), 2)
        if last < 1:
            raise PreprocessError("%s has only day_0; criteo1t needs at least two days (the "
                                  "last day is split into test and val)" % input_dir, 2)
        paths = [os.path.join(input_dir, days[d]) for d in range(last + 1)]
    for path in paths:
        if _file_is_empty(path):
            raise PreprocessError("input file %s is empty" % path, 2)
    return fmt, paths


def _dir_nonempty(path):
    return os.path.isdir(path) and bool(os.listdir(path))


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def prepare_output(output_dir, overwrite):
    """Check output_dir and remove stale temp dirs of killed runs. Returns the temp dir path."""
    output_dir = os.path.abspath(output_dir)
    parent, name = os.path.split(output_dir)
    if not name:
        raise PreprocessError("invalid --output_dir %s" % output_dir, 2)
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise PreprocessError("output_dir %s exists and is not a directory" % output_dir, 2)
    if _dir_nonempty(output_dir) and not overwrite:
        raise PreprocessError("output_dir %s exists and is not empty; pass --overwrite to "
                              "replace it" % output_dir, 2)
    os.makedirs(parent, exist_ok=True)
    prefix = ".%s.incomplete-" % name
    for stale in sorted(glob.glob(os.path.join(glob.escape(parent), glob.escape(prefix) + "*"))):
        suffix = os.path.basename(stale)[len(prefix):]
        if suffix.isdigit() and int(suffix) != os.getpid() and _pid_alive(int(suffix)):
            warn("%s belongs to a running process (pid %s); left alone" % (stale, suffix))
            continue
        log("removing stale temporary directory %s (left by a killed run)" % stale)
        shutil.rmtree(stale, ignore_errors=True)
    return os.path.join(parent, prefix + str(os.getpid()))


def publish_output(tmp_dir, output_dir, overwrite):
    """Atomically move the finished temp dir to output_dir (old one removed afterwards)."""
    output_dir = os.path.abspath(output_dir)
    parent, name = os.path.split(output_dir)
    old = None
    if os.path.isdir(output_dir):
        if os.listdir(output_dir):
            if not overwrite:  # appeared while we were running
                raise PreprocessError("output_dir %s appeared during the run and is not "
                                      "empty; nothing replaced" % output_dir)
            old = os.path.join(parent, ".%s.old-%d" % (name, os.getpid()))
            os.rename(output_dir, old)
        else:
            os.rmdir(output_dir)
    os.rename(tmp_dir, output_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
        log("replaced the previous %s" % output_dir)


# --------------------------------------------------------------------------------------------
# Spark
# --------------------------------------------------------------------------------------------


def physical_memory_bytes():
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:  # pragma: no cover - psutil is a requirement
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def driver_memory_gb(requested_gb, master):
    """The driver memory to use: capped at 80% of physical RAM in local mode."""
    if not master.startswith("local"):
        return requested_gb
    total = physical_memory_bytes()
    if requested_gb * 2**30 > total:
        capped = max(1, int(total * 0.8 / 2**30))
        warn("--spark_driver_memory_gb %d is more than this machine's RAM (%.1f GiB); using "
             "%d GB (80%%)" % (requested_gb, total / 2**30, capped))
        return capped
    return requested_gb


def start_spark(args):
    from pyspark import SparkConf, SparkContext
    from pyspark.sql import SparkSession

    submitted = bool(os.environ.get("PYSPARK_GATEWAY_PORT"))
    master = None
    if submitted:  # spark-submit: the JVM already runs and holds the configuration
        SparkContext._ensure_initialized()
        master = SparkConf().get("spark.master", None)
    builder = SparkSession.builder.appName("criteo1t_parquet")
    if master:
        log("spark-submit: using its spark.master %s (--spark_master ignored)" % master)
        if args.spark_tmp_dir:
            warn("under spark-submit set spark.local.dir with --conf; --spark_tmp_dir ignored")
    else:
        master = args.spark_master
        # no Python UDFs here, but any Python worker must match the driver's interpreter
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        mem = driver_memory_gb(args.spark_driver_memory_gb, master)
        builder = builder.master(master).config("spark.driver.memory", "%dg" % mem)
        if args.spark_tmp_dir:
            os.makedirs(args.spark_tmp_dir, exist_ok=True)
            builder = builder.config("spark.local.dir", os.path.abspath(args.spark_tmp_dir))
        log("starting Spark: master %s, driver memory %d GB" % (master, mem))
    builder = (builder
               .config("spark.sql.adaptive.coalescePartitions.enabled", "false")
               .config("spark.sql.ansi.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false"))
    if args.shuffle_partitions:
        builder = builder.config("spark.sql.shuffle.partitions", str(args.shuffle_partitions))
    spark = builder.getOrCreate()
    # runtime SQL settings also apply to a session that spark-submit created
    spark.conf.set("spark.sql.adaptive.coalescePartitions.enabled", "false")
    spark.conf.set("spark.sql.ansi.enabled", "false")
    # The 40-column projection compiles to one big method; HotSpot does not JIT methods over
    # 8000 bytes, so let Spark split it instead (measured ~1.7x faster here).
    spark.conf.set("spark.sql.codegen.hugeMethodLimit", "8000")
    if args.shuffle_partitions:
        spark.conf.set("spark.sql.shuffle.partitions", str(args.shuffle_partitions))
    spark.sparkContext.setLogLevel("WARN")
    return spark


def _uri(path):
    return "file://" + os.path.abspath(path)


class Inputs:
    """Scans of the input files with native line-position columns.

    Each file is its own DataFrame (so its partitions follow the file order); ``_file`` is the
    file index, ``_part``/``_row`` the partition index and row within it, taken from
    monotonically_increasing_id() evaluated on that file's own scan.
    """

    def __init__(self, spark, paths):
        self.spark = spark
        self.paths = paths
        self.names = [os.path.basename(p) for p in paths]
        self.split_file = len(paths) - 1  # the file split by line position
        self.offsets = None  # per-partition first line of the split file
        self.split_lines = None

    def scan(self, idx, positions=True):
        from pyspark.sql import functions as F

        df = self.spark.read.text(_uri(self.paths[idx]))
        if not positions:
            return df.select("value", F.lit(idx).alias("_file"))
        mid = F.monotonically_increasing_id()
        df = df.select("value", F.lit(idx).alias("_file"), mid.alias("_mid"))
        return df.select(
            "value", "_file",
            F.shiftright("_mid", ROW_BITS).alias("_part"),
            F.col("_mid").bitwiseAND((1 << ROW_BITS) - 1).alias("_row"))

    def count_partitions(self, idx):
        """Row count of each partition of file idx (one small row per partition).

        Also checks that the partitions hold the file's byte ranges in file order (first byte
        of each partition's block(s), from input_file_block_start()), which the line positions
        rely on; Spark plans a single file that way, this only guards against a change.
        """
        from pyspark.sql import functions as F

        df = self.scan(idx).withColumn("_block", F.input_file_block_start())
        nparts = df.rdd.getNumPartitions()
        counts = [0] * nparts
        blocks = []
        for r in (df.groupBy("_part")
                  .agg(F.count(F.lit(1)).alias("n"), F.min("_block").alias("b0"),
                       F.max("_block").alias("b1"))
                  .collect()):
            counts[int(r["_part"])] = int(r["n"])
            blocks.append((int(r["_part"]), int(r["b0"]), int(r["b1"])))
        blocks.sort()
        for (p0, _, end0), (p1, start1, _) in zip(blocks, blocks[1:]):
            if not end0 < start1:
                raise PreprocessError(
                    "internal error: Spark did not read %s in file order (partition %d starts "
                    "at byte %d, partition %d at byte %d); line positions cannot be computed"
                    % (self.paths[idx], p0, end0, p1, start1), 1)
        return counts

    def locate_split_file(self):
        counts = self.count_partitions(self.split_file)
        offsets, acc = [], 0
        for c in counts:
            offsets.append(acc)
            acc += c
        self.offsets = offsets
        self.split_lines = acc
        return acc

    def line_index(self):
        """0-based line index within the split file (native: literal offsets array)."""
        from pyspark.sql import functions as F

        arr = F.array(*[F.lit(int(o)).cast("long") for o in self.offsets])
        return F.element_at(arr, (F.col("_part") + 1).cast("int")) + F.col("_row")


def valid_expr(value):
    """True for a well-formed raw line (native: one regex on the text)."""
    return value.rlike(VALID_LINE_RE)


def reason_expr(value):
    """Null for a well-formed raw line, else the first reason that applies (native).

    Only malformed lines (rare) get split and checked group by group.
    """
    from pyspark.sql import functions as F

    fields = F.split(value, "\t", -1)
    dense = F.concat_ws("\t", F.slice(fields, 2, NUM_DENSE))
    dense_re = "^%s(?:\t%s){%d}$" % (DENSE_FIELD_RE, DENSE_FIELD_RE, NUM_DENSE - 1)
    return (F.when(valid_expr(value), F.lit(None).cast("string"))
            .when(F.size(fields) != NUM_FIELDS, F.lit("field_count"))
            .when(~fields[0].isin("0", "1"), F.lit("label"))
            .when(~dense.rlike(dense_re), F.lit("dense"))
            .otherwise(F.lit("categorical")))


def transform_exprs(fields, mod_idx, key_type):
    """label, I1..I13, C1..C26 as native column expressions of the split fields of a
    well-formed line (an empty field is missing; casts of "" give null)."""
    from pyspark.sql import functions as F

    # label "0"/"1" -> 0.0/1.0 without a string-to-float parse
    out = [(fields[0] == "1").cast("float").alias(LABEL_COL)]
    for j, name in enumerate(DENSE_COLS):
        # Only non-empty fields (validated integers, |raw| < 10^18) are cast, string -> long:
        # that parse needs no exception, unlike string -> double or try_cast, which throw and
        # catch one per missing value (measured: a third of the CPU time).
        f = fields[1 + j]
        v = (F.when(f != "", f.cast("long")).cast("double") + F.lit(1.0)).cast("float")
        out.append(F.coalesce(v, F.lit(1.0).cast("float")).alias(name))
    key = "int" if key_type == "int32" else "long"
    for i, name in enumerate(SPARSE_COLS):
        f = fields[1 + NUM_DENSE + i]
        if mod_idx > 0:
            # conv(1-8 hex digits) is in [0, 2^32): % is the non-negative modulus here
            base = i * (mod_idx + 1)
            val = F.conv(f, 16, 10).cast("long") % F.lit(mod_idx).cast("long")  # "" -> null
            c = F.coalesce(val + F.lit(base).cast("long"), F.lit(base + mod_idx).cast("long"))
        else:
            c = F.xxhash64(F.when(f == "", F.lit(None).cast("string")).otherwise(f), F.lit(i))
        out.append(c.cast(key).alias(name))
    return out


def categorical_transform_text(mod_idx):
    if mod_idx > 0:
        return ("mod: id = int(hex, 16) %% %d + i * %d for column C(i+1), i = 0..25; missing -> "
                "i * %d + %d (distinct from every real id)"
                % (mod_idx, mod_idx + 1, mod_idx + 1, mod_idx))
    return ("hash: id = Spark xxhash64(Ci_hex_string, i) (seed 42) for column C(i+1), i = 0..25; "
            "missing -> xxhash64(i) (a null string is skipped)")


def _parquet_rows(path):
    """Row count of a parquet directory from the file footers."""
    import pyarrow.parquet as pq

    files = sorted(f for f in os.listdir(path) if f.endswith(".parquet"))
    return sum(pq.ParquetFile(os.path.join(path, f)).metadata.num_rows for f in files), len(files)


# --------------------------------------------------------------------------------------------
# the run
# --------------------------------------------------------------------------------------------


def run(args, fmt, paths, tmp_dir):
    from pyspark.sql import functions as F

    t_start = time.time()
    spark = start_spark(args)
    try:
        return _run(spark, F, args, fmt, paths, tmp_dir, t_start)
    finally:
        spark.stop()


def _run(spark, F, args, fmt, paths, tmp_dir, t_start):
    inputs = Inputs(spark, paths)
    names = inputs.names
    sf = inputs.split_file

    # 1. line positions of the split file (day K, or train.txt)
    t = time.time()
    log("counting lines of %s..." % names[sf])
    n = inputs.locate_split_file()
    if fmt == "kaggle":
        n_train = (6 * n) // 7
        n_test = (n - n_train) // 2
        bounds = {"train": (0, n_train), "test": (n_train, n_train + n_test),
                  "val": (n_train + n_test, n)}
    else:
        n_test = min(args.num_test_examples, n)
        if args.num_test_examples > n:
            warn("--num_test_examples %d is more than the %d lines of %s: test gets all of "
                 "them, val none" % (args.num_test_examples, n, names[sf]))
        bounds = {"test": (0, n_test), "val": (n_test, n)}
    log("%s: %d lines in %d partitions (%.1f s)" % (names[sf], n, len(inputs.offsets),
                                                    time.time() - t))

    def split_of(line):
        if fmt == "kaggle":
            return (F.when(line < bounds["test"][0], F.lit("train"))
                    .when(line < bounds["val"][0], F.lit("test")).otherwise(F.lit("val")))
        return F.when(line < bounds["val"][0], F.lit("test")).otherwise(F.lit("val"))

    def scanned(idx, positions):
        df = inputs.scan(idx, positions)
        if idx == sf:
            df = df.withColumn("_line", inputs.line_index())
            df = df.withColumn("_split", split_of(F.col("_line")))
        else:
            df = df.withColumn("_split", F.lit("train"))
        return df

    def union(dfs):
        out = dfs[0]
        for d in dfs[1:]:
            out = out.unionByName(d, allowMissingColumns=True)
        return out

    # 2. one aggregation pass: lines per split, malformed per reason and file, first bad row
    t = time.time()
    log("checking %d input file(s) for malformed rows..." % len(paths))
    checked = union([scanned(i, True) for i in range(len(paths))])
    checked = checked.withColumn("_reason", reason_expr(F.col("value")))
    bad_first = F.when(F.col("_reason").isNotNull(), F.struct("_part", "_row"))
    agg = (checked.groupBy("_split", "_file", "_reason")
           .agg(F.count(F.lit(1)).alias("n"), F.min(bad_first).alias("first")).collect())
    lines_read = {s: 0 for s in SPLITS}
    by_reason = {r: 0 for r in REASONS}
    by_split = {s: 0 for s in SPLITS}
    by_file = {}
    first_bad = None  # (file, part, row, reason)
    for r in agg:
        split, fidx, reason, cnt = r["_split"], int(r["_file"]), r["_reason"], int(r["n"])
        lines_read[split] += cnt
        if reason is None:
            continue
        by_reason[reason] += cnt
        by_split[split] += cnt
        d = by_file.setdefault(names[fidx], {})
        d[reason] = d.get(reason, 0) + cnt
        key = (fidx, int(r["first"]["_part"]), int(r["first"]["_row"]), reason)
        if first_bad is None or key[:3] < first_bad[:3]:
            first_bad = key
    total_bad = sum(by_reason.values())
    by_file = {k: dict(v, total=sum(v.values())) for k, v in sorted(by_file.items())}
    log("read %d lines (train %d, test %d, val %d), %d malformed (%.1f s)"
        % (sum(lines_read.values()), lines_read["train"], lines_read["test"], lines_read["val"],
           total_bad, time.time() - t))
    if sum(lines_read[s] for s in bounds) != n:
        raise PreprocessError("%s: %d lines counted, then %d; did the file change during the "
                              "run?" % (names[sf], n, sum(lines_read[s] for s in bounds)), 1)

    if total_bad and args.bad_rows == "fail":
        fidx, part, row, reason = first_bad
        if fidx == sf:
            offsets = inputs.offsets
        else:
            counts = inputs.count_partitions(fidx)
            offsets = [sum(counts[:k]) for k in range(len(counts))]
        line_no = offsets[part] + row + 1
        raise PreprocessError(
            "malformed row in %s line %d: %s (%d malformed row(s) in total; --bad_rows fail, "
            "nothing written)" % (paths[fidx], line_no, reason, total_bad), 1)
    if total_bad:
        log("skipping malformed rows: %s" % ", ".join("%s %d" % (k, v) for k, v in
                                                      by_reason.items() if v))

    # 3. write the splits
    os.makedirs(tmp_dir)
    out_cols = transform_exprs(F.col("_f"), args.mod_idx, args.key_type)
    rows = {}
    for split in SPLITS:
        t = time.time()
        if split == "train":
            idxs = [sf] if fmt == "kaggle" else list(range(sf))
        else:
            idxs = [sf]
        parts = []
        for i in idxs:
            d = scanned(i, i == sf)
            if i == sf:
                d = d.filter(F.col("_split") == split)  # cheap test first
            if total_bad:  # the check pass found malformed rows: drop them
                d = d.filter(valid_expr(F.col("value")))
            parts.append(d)
        df = union(parts)

        def transformed(d, *extra):
            # split once per row, then the column transforms
            d = d.select(F.split(F.col("value"), "\t", -1).alias("_f"), *extra)
            return d.select(*out_cols, *extra)

        dest = os.path.join(tmp_dir, split)
        if split == "train":
            log("writing train (shuffled, seed %d) into %d files..." % (args.seed,
                                                                        args.train_files))
            # both random keys are drawn before the shuffle, so the result does not depend on
            # the order in which shuffle blocks arrive: deterministic for a seed and input
            df = (transformed(df.select("value"))
                  .select("*", F.rand(args.seed).alias("_r1"), F.rand(args.seed + 1).alias("_r2"))
                  .repartition(args.train_files, "_r1")
                  .sortWithinPartitions("_r2", "_r1")
                  .drop("_r1", "_r2"))
        else:
            log("writing %s (file order) into up to %d files..." % (split, args.eval_files))
            # range-partition the raw lines (the sampling pass then skips the transforms)
            df = (df.select("value", "_line")
                  .repartitionByRange(args.eval_files, "_line")
                  .sortWithinPartitions("_line"))
            df = transformed(df, "_line").drop("_line")
        df.write.mode("errorifexists").parquet(_uri(dest))
        written, nfiles = _parquet_rows(dest)
        rows[split] = written
        log("wrote %s: %d rows in %d files in %.1f s" % (split, written, nfiles,
                                                         time.time() - t))
        if written + by_split[split] != lines_read[split]:
            raise PreprocessError(
                "row count check failed for %s: %d lines read, %d written + %d malformed "
                "skipped = %d" % (split, lines_read[split], written, by_split[split],
                                  written + by_split[split]), 1)

    # 4. table sizes: exact distinct id count per column over train + test + val
    t = time.time()
    log("counting distinct ids per column...")
    all_out = spark.read.parquet(*[_uri(os.path.join(tmp_dir, s)) for s in SPLITS])
    sizes = [0] * NUM_SPARSE
    exploded = all_out.select(F.posexplode(F.array(*SPARSE_COLS)).alias("pos", "id"))
    for r in exploded.distinct().groupBy("pos").count().collect():
        sizes[int(r["pos"])] = int(r["count"])
    log("table_size_array = %s (%.1f s)" % (sizes, time.time() - t))

    info = {
        "format_version": FORMAT_VERSION,
        "input_format": fmt,
        "input_files": names,
        "rows": rows,
        "lines_read": lines_read,
        "malformed": {"total": total_bad, "by_reason": by_reason, "by_split": by_split,
                      "by_file": by_file},
        "bad_rows_policy": args.bad_rows,
        "table_size_array": sizes,
        "id_mode": "mod" if args.mod_idx > 0 else "hash",
        "mod_idx": args.mod_idx,
        "key_type": args.key_type,
        "columns": dict([(LABEL_COL, "float32")] + [(c, "float32") for c in DENSE_COLS]
                        + [(c, args.key_type) for c in SPARSE_COLS]),
        "dense_transform": DENSE_TRANSFORM,
        "categorical_transform": categorical_transform_text(args.mod_idx),
        "split_rule": KAGGLE_RULE if fmt == "kaggle" else CRITEO1T_RULE,
        "num_test_examples": args.num_test_examples if fmt == "criteo1t" else None,
        "seed": args.seed,
        "train_files": args.train_files,
        "eval_files": args.eval_files,
        "tool": TOOL,
    }
    if args.export_dataset_info:
        with open(os.path.join(tmp_dir, "README.md"), "w") as f:
            f.write(readme_text(rows, sizes))
    with open(os.path.join(tmp_dir, "dataset_info.json"), "w") as f:
        json.dump(info, f, indent=2)
        f.write("\n")
    return info


def readme_text(rows, sizes):
    return ("## number of examples:\ntrain: %d\ntest: %d\nval: %d\n## table size array\n"
            "table_size_array = [%s]\n" % (rows["train"], rows["test"], rows["val"],
                                           ", ".join(str(s) for s in sizes)))


def main(argv=None):
    t0 = time.time()
    tmp_dir = None
    published = False
    try:
        args = parse_args(argv)
        check_args(args)
        fmt, paths = plan_inputs(os.path.abspath(args.input_dir), args.input_format)
        log("input: %s layout, %d file(s) in %s" % (fmt, len(paths),
                                                    os.path.abspath(args.input_dir)))
        out_real = os.path.realpath(args.output_dir)
        in_real = os.path.realpath(args.input_dir)
        # An output below the input is harmless (only day_N / train.txt are read); one that
        # contains the input would be replaced, input included, by --overwrite.
        if out_real == in_real or in_real.startswith(out_real + os.sep):
            raise PreprocessError("--output_dir %s contains --input_dir %s; choose an output "
                                  "directory outside the input" % (args.output_dir,
                                                                   args.input_dir), 2)
        tmp_dir = prepare_output(args.output_dir, args.overwrite)
        info = run(args, fmt, paths, tmp_dir)
        publish_output(tmp_dir, args.output_dir, args.overwrite)
        published = True
        m = info["malformed"]
        log("done in %.1f s: train %d, test %d, val %d rows; %d malformed row(s) skipped%s; "
            "output %s" % (time.time() - t0, info["rows"]["train"], info["rows"]["test"],
                           info["rows"]["val"], m["total"],
                           (" (%s)" % ", ".join("%s %d" % (k, v) for k, v in
                                                m["by_reason"].items() if v)) if m["total"]
                           else "", os.path.abspath(args.output_dir)))
        return 0
    except PreprocessError as e:
        print("error: %s" % e, file=sys.stderr, flush=True)
        return e.code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr, flush=True)
        return 130
    finally:
        if tmp_dir and not published and os.path.isdir(tmp_dir):
            shutil.rmtree(tmp_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
