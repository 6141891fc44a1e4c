"""The Spark side: the session, the input scans with line positions and the column expressions.

Every transform is a native Spark column expression (no Python UDF), so Python workers never
start and the driver only collects small aggregates.
"""
import contextlib
import os
import re
import sys
from urllib.parse import unquote, urlparse

from dlrm.java import use_java
from dlrm.preprocess.plan import PreprocessError, driver_memory_gb, log, warn
from dlrm.schema import (DENSE_COLUMNS, LABEL, NUM_DENSE, NUM_FIELDS, NUM_SPARSE,
                         SPARSE_COLUMNS)

REASONS = ("field_count", "label", "dense", "categorical")  # what reason_expr returns
ROW_BITS = 33  # monotonically_increasing_id(): partition index << 33 | row within partition

# One dense field, empty or an integer of at most 18 digits (fits int64, finite in float32).
DENSE_FIELD_RE = r"(?:-?[0-9]{1,18})?"
# A well-formed line, checked with one regular expression on the raw text (no split needed):
# the label, dense fields as above, categorical fields of 0-8 hex digits (a 32-bit hash, as in
# the Criteo data). Possessive quantifiers (no backtracking: ~40% less CPU than the plain form);
# \p{XDigit} is [0-9a-fA-F] (US-ASCII) as one table lookup where the class tests three ranges
# (the whole match 35% faster, measured on 1M synthetic lines).
VALID_LINE_RE = r"^[01](?:\t(?:-?+[0-9]{1,18}+)?+){%d}+(?:\t\p{XDigit}{0,8}+){%d}+$" % (
    NUM_DENSE, NUM_SPARSE)

DENSE_TRANSFORM = (
    "float32(raw + 1), missing -> 1.0 (same values as the original OneFlow tool; the model "
    "applies log(max(x, 0) + 1), so negative raw values such as I2 = -1/-2 stay finite)"
)


def categorical_transform_text(mod_idx, min_frequency=0):
    """What transform_exprs (and, for vocabulary ids, passes.Vocabulary) does to C1..C26, in
    words (for dataset_info.json)."""
    if min_frequency > 0:
        return ("vocab: per column C(i+1), i = 0..25, the values (hex, compared as integers) seen "
                "at least %d times in train get ranks 1, 2, ... by descending train count (ties: "
                "smaller value first); every other value (rare, missing, or not in train) gets "
                "rank 0; id = rank + the sum of the table sizes of columns C1..Ci; table size = 1 "
                "+ the number of frequent values" % min_frequency)
    if mod_idx > 0:
        return ("mod: id = int(hex, 16) %% %d + i * %d for column C(i+1), i = 0..25; missing -> "
                "i * %d + %d (distinct from every real id)"
                % (mod_idx, mod_idx + 1, mod_idx + 1, mod_idx))
    return ("hash: id = Spark xxhash64(Ci_hex_string, i) (seed 42) for column C(i+1), i = 0..25; "
            "missing -> xxhash64(i) (a null string is skipped)")


def uri(path):
    return "file://" + os.path.abspath(path)


def start_spark(args):
    """The Spark session: a local one from --spark_master etc., or the one spark-submit made
    (its configuration kept); the SQL settings the passes rely on are set on both."""
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
        try:
            use_java(log)  # the machine's Java if it is new enough, else the environment's JDK
        except ValueError as e:
            raise PreprocessError(str(e)) from None
        # no Python UDFs here, but any Python worker must match the driver's interpreter
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        mem = driver_memory_gb(args.spark_driver_memory_gb, master)
        builder = builder.master(master).config("spark.driver.memory", "%dg" % mem)
        if args.spark_tmp_dir:
            os.makedirs(args.spark_tmp_dir, exist_ok=True)
            builder = builder.config("spark.local.dir", os.path.abspath(args.spark_tmp_dir))
        log("starting Spark: master %s, driver memory %d GB" % (master, mem))
    builder = (builder
               .config("spark.sql.adaptive.coalescePartitions.enabled", "true")
               .config("spark.sql.autoBroadcastJoinThreshold", "-1")
               .config("spark.sql.ansi.enabled", "false")
               .config("spark.ui.showConsoleProgress", "false"))
    if args.shuffle_partitions:
        builder = builder.config("spark.sql.shuffle.partitions", str(args.shuffle_partitions))
    spark = builder.getOrCreate()
    # runtime SQL settings also apply to a session that spark-submit created.
    # Small shuffles (the aggregations, the vocabulary's ranking and joins) run as fewer tasks
    # (2x faster vocabularies on 100k rows); the writes' repartition(n) keeps its n (adaptive
    # execution never coalesces a partition count given by the query), so the files and rows
    # written do not change.
    spark.conf.set("spark.sql.adaptive.enabled", "true")
    spark.conf.set("spark.sql.adaptive.coalescePartitions.enabled", "true")
    spark.conf.set("spark.sql.ansi.enabled", "false")
    # the vocabulary joins broadcast by --broadcast_vocab_rows only (never by a size estimate)
    spark.conf.set("spark.sql.autoBroadcastJoinThreshold", "-1")
    # The 40-column projection compiles to one big method; HotSpot does not JIT methods over
    # 8000 bytes, so let Spark split it instead (measured ~1.7x faster here).
    spark.conf.set("spark.sql.codegen.hugeMethodLimit", "8000")
    if args.shuffle_partitions:
        spark.conf.set("spark.sql.shuffle.partitions", str(args.shuffle_partitions))
    spark.sparkContext.setLogLevel("WARN")
    # The progress line's REST reads give up after a few seconds on a busy driver; the UI then logs
    # each one it could not answer in time as an ERROR with ~90 lines of Java (a closed connection)
    jvm = spark.sparkContext._jvm
    jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(
        "org.glassfish.jersey.server.ServerRuntime$Responder", jvm.org.apache.logging.log4j.Level.OFF)
    if master.startswith("local"):
        quiet_task_failure_logs(spark)
    return spark


def quiet_task_failure_logs(spark):
    """Turn off the executor's and the task scheduler's log of a failed task (~50 lines of Java
    stack each). In local mode a task is tried once, so its failure fails the job and the same
    stack reaches the driver's Python side, which reports it (one line for the failures it
    knows: unreadable_input_check, resume.disk_full_check; else re-raised whole)."""
    jvm = spark.sparkContext._jvm
    off = jvm.org.apache.logging.log4j.Level.OFF
    for name in ("org.apache.spark.executor.Executor", "org.apache.spark.scheduler.TaskSetManager"):
        jvm.org.apache.logging.log4j.core.config.Configurator.setLevel(name, off)


# Spark's error for a file a task could not read (FAILED_READ_FILE), and its Java cause
_FAILED_READ_RE = re.compile(r"Encountered error while reading file (\S+?)\.?\s")
_CAUSE_RE = re.compile(r"Caused by: ([\w.$]+)(?:: ([^\n]*))?")


@contextlib.contextmanager
def unreadable_input_check():
    """Turn a Spark job's failure to read a file (a truncated or corrupt gzip input: "Unexpected
    end of input stream") into one PreprocessError line naming the file and the cause."""
    try:
        yield
    except Exception as e:  # py4j / pyspark errors carry the Java stack trace in their text
        text = str(e)
        m = _FAILED_READ_RE.search(text)
        if not m:
            raise
        url = urlparse(m.group(1))
        path = unquote(url.path) if url.scheme in ("file", "") else m.group(1)
        cause = _CAUSE_RE.search(text, m.end())  # e.g. java.io.EOFException: Unexpected end...
        why = "read error"
        if cause:
            name = cause.group(1).rsplit(".", 1)[-1]
            why = "%s (%s)" % (cause.group(2), name) if cause.group(2) else name
        hint = (": a truncated or corrupt gzip file? (gzip -t %s checks it) replace the file "
                "and rerun" % path if path.endswith(".gz") else "; replace the file and rerun")
        raise PreprocessError("cannot read %s: %s%s" % (path, why, hint), 1) from None


def partition_keys(spark, n):
    """[k_0 .. k_{n-1}], longs that Spark's hash partitioning into n partitions (``repartition(n,
    col)``: pmod(murmur3 hash with seed 42, n), the function of SQL's ``hash``) sends to
    partitions 0 .. n-1: a column of k_j puts its row in partition j without a sampling scan.
    The smallest such longs, found by a small job over 0, 1, 2, ..."""
    from pyspark.sql import functions as F

    found, start = {}, 0
    while len(found) < n:
        batch = spark.range(start, start + 64 * n).select(
            "id", F.pmod(F.hash("id"), F.lit(n)).alias("p"))
        for r in batch.collect():
            found.setdefault(int(r["p"]), int(r["id"]))
        start += 64 * n
    return [found[j] for j in range(n)]


def union(dfs):
    out = dfs[0]
    for d in dfs[1:]:
        out = out.unionByName(d, allowMissingColumns=True)
    return out


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

    def scan(self, idx, positions=True):
        from pyspark.sql import functions as F

        df = self.spark.read.text(uri(self.paths[idx]))
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
        check_block_order(self.paths[idx], sorted(blocks))
        return counts

    def line_index(self, offsets=None):
        """0-based line index within the split file (native: literal offsets array), or with
        offsets (each partition's first line, from count_partitions), within any file."""
        from pyspark.sql import functions as F

        offsets = self.offsets if offsets is None else offsets
        arr = F.array(*[F.lit(int(o)).cast("long") for o in offsets])
        return F.element_at(arr, (F.col("_part") + 1).cast("int")) + F.col("_row")

    def tagged(self, idx, bounds, positions=True):
        """Scan of file idx with its split in ``_split`` (and ``_line`` for the split file,
        whose lines go to the splits by position: bounds from plan.split_bounds)."""
        from pyspark.sql import functions as F

        df = self.scan(idx, positions)
        if idx != self.split_file:
            return df.withColumn("_split", F.lit("train"))
        df = df.withColumn("_line", self.line_index())
        return df.withColumn("_split", split_expr(F.col("_line"), bounds))


def check_block_order(path, blocks):
    """Raise PreprocessError unless the partitions of file ``path`` hold its byte ranges in
    file order; blocks: sorted (partition, first block start, last block start)."""
    for (p0, _, end0), (p1, start1, _) in zip(blocks, blocks[1:]):
        if not end0 < start1:
            raise PreprocessError(
                "internal error: Spark did not read %s in file order (partition %d starts "
                "at byte %d, partition %d at byte %d); line positions cannot be computed"
                % (path, p0, end0, p1, start1), 1)


def split_expr(line, bounds):
    """The split ("train"/"test"/"val") of split-file line index ``line`` (native)."""
    from pyspark.sql import functions as F

    if "train" in bounds:  # kaggle: all three splits come from the split file
        return (F.when(line < bounds["test"][0], F.lit("train"))
                .when(line < bounds["val"][0], F.lit("test")).otherwise(F.lit("val")))
    return F.when(line < bounds["val"][0], F.lit("test")).otherwise(F.lit("val"))


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


def hex_value(field):
    """The integer value of a categorical field of 1-8 hex digits, null when it is empty."""
    from pyspark.sql import functions as F

    return F.conv(field, 16, 10).cast("long")  # "" -> null


def transform_exprs(fields, mod_idx, key_type, vocab=False):
    """label, I1..I13, C1..C26 as native column expressions of the split fields of a
    well-formed line (an empty field is missing; casts of "" give null).

    vocab: C1..C26 are the hex values as long (null when missing), which
    passes.Vocabulary.apply then replaces with the vocabulary ids."""
    from pyspark.sql import functions as F

    # label "0"/"1" -> 0.0/1.0 without a string-to-float parse
    out = [(fields[0] == "1").cast("float").alias(LABEL)]
    for j, name in enumerate(DENSE_COLUMNS):
        # Only non-empty fields (validated integers, |raw| < 10^18) are cast, string -> long:
        # that parse needs no exception, unlike string -> double or try_cast, which throw and
        # catch one per missing value (measured: a third of the CPU time).
        f = fields[1 + j]
        v = (F.when(f != "", f.cast("long")).cast("double") + F.lit(1.0)).cast("float")
        out.append(F.coalesce(v, F.lit(1.0).cast("float")).alias(name))
    key = "int" if key_type == "int32" else "long"
    for i, name in enumerate(SPARSE_COLUMNS):
        f = fields[1 + NUM_DENSE + i]
        if vocab:
            out.append(hex_value(f).alias(name))
            continue
        if mod_idx > 0:
            # conv(1-8 hex digits) is in [0, 2^32): % is the non-negative modulus here
            base = i * (mod_idx + 1)
            val = hex_value(f) % F.lit(mod_idx).cast("long")
            c = F.coalesce(val + F.lit(base).cast("long"), F.lit(base + mod_idx).cast("long"))
        else:
            c = F.xxhash64(F.when(f == "", F.lit(None).cast("string")).otherwise(f), F.lit(i))
        out.append(c.cast(key).alias(name))
    return out
