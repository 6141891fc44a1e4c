"""The named Spark passes of preprocessing, in the order ``run`` calls them.

1. check_rows: one aggregation over every input line, by file, partition and malformed reason
   -> the split file's line positions and split bounds, lines per split, malformed rows per
   reason, split and file, the first malformed row (stops here with --bad_rows fail)
2. build_vocabulary (--min_frequency only): per column, the train values seen at least N times,
   ranked -> output_dir/vocabulary/ and the exact table sizes
3. write_splits (kaggle: all three splits, one scan of train.txt), or write_train then
   write_test_val (criteo1t: the other days, then the last day's two splits): transform the
   rows, shuffle train, keep test and val in file order, write the parquet, check the row
   counts
4. count_distinct_ids (mod and hash ids): exact distinct ids per categorical column -> the
   table sizes
5. build_dataset_info: the dataset_info.json content
"""
import functools
import os
import re
import shutil
import time
from dataclasses import dataclass
from typing import Optional, Tuple

from dlrm.preprocess.plan import (TOOL, PreprocessError, check_int32_ids, log, split_bounds,
                                  split_rule)
from dlrm.preprocess.progress import Progress
from dlrm.preprocess.resume import disk_full_check
from dlrm.preprocess.spark import (DENSE_TRANSFORM, REASONS, Inputs, categorical_transform_text,
                                   check_block_order, hex_value, partition_keys, reason_expr,
                                   start_spark, transform_exprs, union, unreadable_input_check, uri,
                                   valid_expr)
from dlrm.schema import (DATASET_INFO_VERSION, NUM_DENSE, NUM_SPARSE, SPARSE_COLUMNS, SPLITS,
                         column_dtypes, write_dataset_info, write_original_readme)

VOCAB_DIR = "vocabulary"  # output_dir/vocabulary/column=i/*.parquet with --min_frequency
WRITE_DIR = "_splits"  # write_splits' Spark output, moved to train/, test/, val/ when complete
VOCAB_COLUMNS = ("column (0..25 for C1..C26, a directory level), value (the hex value as an "
                 "integer), count (its rows in train), rank (id = rank + the column's offset; "
                 "rank 0, shared by all other values, is not listed)")


@dataclass
class SplitFile:
    """The split file's line count and each split's (first, end) line range in it."""
    lines: int
    bounds: dict


@dataclass
class RowCheck:
    """What check_rows found: lines read per split and the malformed rows."""
    lines_read: dict  # split -> lines
    by_reason: dict  # reason -> malformed rows
    by_split: dict  # split -> malformed rows
    by_file: dict  # file name -> {reason: rows, "total": rows}
    first_bad: Optional[Tuple[int, int, int, str]] = None  # (file index, partition, row, reason)

    @property
    def total_bad(self):
        return sum(self.by_reason.values())

    def malformed(self):
        return {"total": self.total_bad, "by_reason": self.by_reason, "by_split": self.by_split,
                "by_file": self.by_file}


def reasons_text(by_reason):
    """"field_count 1, dense 2": the reasons that occurred, with their counts."""
    return ", ".join("%s %d" % (k, v) for k, v in by_reason.items() if v)


def check_malformed_share(check, paths, max_fraction):
    """Raise PreprocessError when every line read is malformed, or more than max_fraction of
    them (--max_malformed_fraction): the input is not Criteo text (or not the format expected),
    and skipping would write a dataset of (almost) nothing. Names the file with the most."""
    lines, bad = sum(check.lines_read.values()), check.total_bad
    if not bad or (bad < lines and bad <= max_fraction * lines):
        return
    name, worst = max(check.by_file.items(), key=lambda kv: kv[1]["total"])
    path = next((p for p in paths if os.path.basename(p) == name), name)
    raise PreprocessError(
        "%d of %d lines malformed (%.1f%%: %s), %d of them in %s: %s; is it Criteo text (40 "
        "tab-separated fields)? nothing written" % (
            bad, lines, 100.0 * bad / lines, reasons_text(check.by_reason), worst["total"], path,
            "every line" if bad == lines
            else "more than --max_malformed_fraction %g" % max_fraction), 1)


def check_rows(inputs, fmt, num_test_examples, bad_rows, max_malformed_fraction=1.0):
    """Pass 1: one scan of every input line, aggregated by file, partition and malformed
    reason (reason_expr): each partition's line count (the split file's give the line
    positions, Inputs.offsets, and the split bounds), its byte range (check_block_order) and
    the first and last malformed row of each group.

    A split-file partition holding malformed rows on both sides of a split bound (rare) is
    split by a second, filtered aggregation. Raises PreprocessError (--bad_rows fail) at the
    first malformed row, before anything is written, and (check_malformed_share) when more than
    max_malformed_fraction of the lines are malformed. Returns (SplitFile, RowCheck).
    """
    from pyspark.sql import functions as F

    t = time.time()
    sf, name = inputs.split_file, inputs.names[inputs.split_file]
    log("counting lines and checking %d input file(s) for malformed rows..." % len(inputs.paths))
    df = union([inputs.scan(i).withColumn("_block", F.input_file_block_start())
                for i in range(len(inputs.paths))])
    rows = (df.withColumn("_reason", reason_expr(F.col("value")))
            .groupBy("_file", "_part", "_reason")
            .agg(F.count(F.lit(1)).alias("n"), F.min("_row").alias("first"),
                 F.max("_row").alias("last"), F.min("_block").alias("b0"),
                 F.max("_block").alias("b1"))
            .collect())
    counts = [{} for _ in inputs.paths]  # file -> {partition: lines}
    blocks = [{} for _ in inputs.paths]  # file -> {partition: (first byte, last block start)}
    for r in rows:
        f, p = int(r["_file"]), int(r["_part"])
        counts[f][p] = counts[f].get(p, 0) + int(r["n"])
        b0, b1 = blocks[f].get(p, (r["b0"], r["b1"]))
        blocks[f][p] = (min(b0, r["b0"]), max(b1, r["b1"]))
    for f, path in enumerate(inputs.paths):
        check_block_order(path, sorted((p, b0, b1) for p, (b0, b1) in blocks[f].items()))
    starts = [_partition_starts(c) for c in counts]
    inputs.offsets = starts[sf]
    n = sum(counts[sf].values())
    split_file = SplitFile(n, split_bounds(fmt, n, num_test_examples, name))
    log("%s: %d lines in %d partitions" % (name, n, len(inputs.offsets)))
    check = _tally(_split_groups(inputs, split_file, rows, counts), inputs.names)
    lr = check.lines_read
    log("read %d lines (train %d, test %d, val %d), %d malformed (%.1f s)"
        % (sum(lr.values()), lr["train"], lr["test"], lr["val"], check.total_bad,
           time.time() - t))
    if check.total_bad and bad_rows == "fail":
        fidx, part, row, reason = check.first_bad
        raise PreprocessError(
            "malformed row in %s line %d: %s (%d malformed row(s) in total; --bad_rows fail, "
            "nothing written)" % (inputs.paths[fidx], starts[fidx][part] + row + 1, reason,
                                  check.total_bad), 1)
    check_malformed_share(check, inputs.paths, max_malformed_fraction)
    if check.total_bad:
        log("skipping malformed rows: %s" % reasons_text(check.by_reason))
    return split_file, check


def _partition_starts(counts):
    """First line of each partition, from {partition: lines} (partitions 0..k)."""
    starts, acc = [], 0
    for p in range(max(counts) + 1 if counts else 0):
        starts.append(acc)
        acc += counts.get(p, 0)
    return starts


def _split_groups(inputs, split_file, rows, counts):
    """check_rows' per-partition groups as _tally's per-split ones (_split, _file, _reason, n,
    first): lines by the split bounds; malformed rows by their positions (first..last), from
    a filtered aggregation of the split file when a group straddles a bound."""
    from pyspark.sql import functions as F

    sf, bounds = inputs.split_file, split_file.bounds
    ranges = sorted((lo, hi, s) for s, (lo, hi) in bounds.items())

    def split_of(line):
        return next(s for lo, hi, s in ranges if lo <= line < hi)

    out, straddling = [], []
    for f, parts in enumerate(counts):
        if f != sf:
            out += [{"_split": "train", "_file": f, "_reason": None, "n": c, "first": None}
                    for c in parts.values()]
            continue
        for p, c in parts.items():  # the lines of each split in partition p
            lo = inputs.offsets[p]
            for a, b, s in ranges:
                k = min(b, lo + c) - max(a, lo)
                if k > 0:
                    out.append({"_split": s, "_file": f, "_reason": None, "n": k, "first": None})
    for r in rows:
        if r["_reason"] is None:
            continue
        f, p, reason = int(r["_file"]), int(r["_part"]), r["_reason"]
        first = {"_part": p, "_row": int(r["first"])}
        if f != sf:
            split = "train"
        else:
            lo = inputs.offsets[p]
            split = split_of(lo + int(r["first"]))
            if split != split_of(lo + int(r["last"])):
                straddling.append((p, reason))
                continue
        # the malformed rows were counted as lines above: move them from good to malformed
        out.append({"_split": split, "_file": f, "_reason": reason, "n": int(r["n"]),
                    "first": first})
        out.append({"_split": split, "_file": f, "_reason": None, "n": -int(r["n"]),
                    "first": None})
    if straddling:
        df = inputs.tagged(sf, bounds).filter(F.col("_part").isin([p for p, _ in straddling]))
        df = df.withColumn("_reason", reason_expr(F.col("value")))
        df = df.filter(functools.reduce(lambda a, b: a | b, [
            (F.col("_part") == p) & (F.col("_reason") == reason) for p, reason in straddling]))
        for r in (df.groupBy("_split", "_reason")
                  .agg(F.count(F.lit(1)).alias("n"), F.min(F.struct("_part", "_row"))
                       .alias("first")).collect()):
            out.append({"_split": r["_split"], "_file": sf, "_reason": r["_reason"],
                        "n": int(r["n"]), "first": r["first"]})
            out.append({"_split": r["_split"], "_file": sf, "_reason": None, "n": -int(r["n"]),
                        "first": None})
    return out


def _tally(groups, names):
    """RowCheck from check_rows' aggregated rows (_split, _file, _reason, n, first)."""
    check = RowCheck({s: 0 for s in SPLITS}, {r: 0 for r in REASONS}, {s: 0 for s in SPLITS}, {})
    for r in groups:  # rows or dicts
        split, fidx, reason, cnt = r["_split"], int(r["_file"]), r["_reason"], int(r["n"])
        check.lines_read[split] += cnt
        if reason is None:
            continue
        check.by_reason[reason] += cnt
        check.by_split[split] += cnt
        d = check.by_file.setdefault(names[fidx], {})
        d[reason] = d.get(reason, 0) + cnt
        first = (fidx, int(r["first"]["_part"]), int(r["first"]["_row"]), reason)
        if check.first_bad is None or first[:3] < check.first_bad[:3]:
            check.first_bad = first
    check.by_file = {k: dict(v, total=sum(v.values())) for k, v in sorted(check.by_file.items())}
    return check


def _files_of(split, inputs, bounds):
    """Indices of the input files holding the split's lines: the split file, except for
    criteo1t's train (all the other days)."""
    if split == "train" and "train" not in bounds:
        return list(range(inputs.split_file))
    return [inputs.split_file]


def _split_lines(inputs, splits, split_file, check):
    """The raw lines of the splits in ``value`` (plus ``_line`` and ``_split`` from the split
    file), malformed lines dropped (only if check_rows found any); each file scanned once."""
    from pyspark.sql import functions as F

    sf = inputs.split_file
    files = sorted({i for s in splits for i in _files_of(s, inputs, split_file.bounds)})
    parts = []
    for i in files:
        d = inputs.tagged(i, split_file.bounds, positions=i == sf)
        if i == sf:
            d = d.filter(F.col("_split").isin(*splits))  # cheap test first
        if check.total_bad:  # the check pass found malformed rows: drop them
            d = d.filter(valid_expr(F.col("value")))
        parts.append(d)
    return union(parts)


@dataclass
class Vocabulary:
    """The frequent train values of each column, as written by build_vocabulary."""
    path: str  # the vocabulary parquet directory
    sizes: list  # table sizes: 1 + frequent values, per column
    broadcast_rows: int  # --broadcast_vocab_rows

    @property
    def offsets(self):
        return [sum(self.sizes[:i]) for i in range(len(self.sizes))]

    def broadcast_columns(self):
        """Indices of the columns whose join is a broadcast join (1..broadcast_rows values)."""
        return [i for i, n in enumerate(self.sizes) if 0 < n - 1 <= self.broadcast_rows]

    def apply(self, spark, df, key_type, columns=range(NUM_SPARSE)):
        """df with its C1..C26 (hex values, from transform_exprs(vocab=True)), or those of
        ``columns`` (indices), replaced by the vocabulary ids: one left join per column with that
        column's vocabulary, broadcast when it has at most broadcast_rows values, a shuffle join
        otherwise."""
        from pyspark.sql import functions as F

        vocab = spark.read.parquet(uri(self.path))
        key = "int" if key_type == "int32" else "long"
        for i in columns:
            name, offset = SPARSE_COLUMNS[i], self.offsets[i]
            cols = df.columns
            frequent = self.sizes[i] - 1
            if frequent:
                k, r = "_vk%d" % i, "_vr%d" % i
                v = vocab.filter(F.col("column") == i).select(F.col("value").alias(k),
                                                               F.col("rank").alias(r))
                if frequent <= self.broadcast_rows:
                    v = F.broadcast(v)
                df = df.join(v, F.col(name) == F.col(k), "left")
                rank = F.coalesce(F.col(r), F.lit(0))
            else:
                rank = F.lit(0)
            new = (rank.cast("long") + F.lit(offset).cast("long")).cast(key).alias(name)
            df = df.select(*[new if c == name else c for c in cols])
        return df


def build_vocabulary(spark, inputs, split_file, check, args, tmp_dir):
    """Pass 2 (--min_frequency only): count each column's non-missing values over train (one
    aggregation), keep those seen at least --min_frequency times, rank them per column (a
    window per column: descending count, then value) and write tmp_dir/vocabulary/; the table
    sizes come from its per-column row counts. Nothing is collected but 26 counts. Returns a
    Vocabulary."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    t = time.time()
    n = args.min_frequency
    log("building the vocabularies (values seen >= %d times in train)..." % n)
    # the line is split in a projection of its own: inside the exploded array Spark would split
    # it again for each of the 26 values (no common subexpressions there; 5x slower measured)
    fields = F.col("_f")
    values = F.array(*[hex_value(fields[1 + NUM_DENSE + i]) for i in range(NUM_SPARSE)])
    counts = (_split_lines(inputs, ["train"], split_file, check)
              .select(F.split(F.col("value"), "\t", -1).alias("_f"))
              .select(F.posexplode(values).alias("column", "value"))
              .filter(F.col("value").isNotNull())
              .groupBy("column", "value").count()
              .filter(F.col("count") >= n))
    order = Window.partitionBy("column").orderBy(F.desc("count"), F.asc("value"))
    dest = os.path.join(tmp_dir, VOCAB_DIR)
    (counts.select("column", "value", "count", F.row_number().over(order).alias("rank"))
     .write.partitionBy("column").mode("errorifexists").parquet(uri(dest)))
    sizes = [1] * NUM_SPARSE
    for r in spark.read.parquet(uri(dest)).groupBy("column").count().collect():
        sizes[int(r["column"])] += int(r["count"])
    log("table_size_array = %s (%d frequent values; %.1f s)"
        % (sizes, sum(sizes) - NUM_SPARSE, time.time() - t))
    if args.key_type == "int32":
        check_int32_ids(sizes)
    return Vocabulary(dest, sizes, args.broadcast_vocab_rows)


def transformed(df, out_cols, *extra):
    """The output columns of the raw lines in ``value`` (split once per row), plus extra."""
    from pyspark.sql import functions as F

    df = df.select(F.split(F.col("value"), "\t", -1).alias("_f"), *extra)
    return df.select(*out_cols, *extra)


def _parquet_files(path):
    return sorted(f for f in os.listdir(path) if f.endswith(".parquet"))


def _parquet_rows(path):
    """Row count and file count of a parquet directory, from the file footers."""
    import pyarrow.parquet as pq

    files = _parquet_files(path)
    return sum(pq.ParquetFile(os.path.join(path, f)).metadata.num_rows for f in files), len(files)


def _part_files(path):
    """[(file name, partition index)] of the parquet files Spark wrote to path: a task writes
    part-NNNNN-..., NNNNN its partition's index."""
    out = []
    for f in _parquet_files(path):
        m = re.match(r"part-(\d+)-", f)
        if not m:
            raise PreprocessError("internal error: unexpected file %s in %s" % (f, path), 1)
        out.append((f, int(m.group(1))))
    return out


def split_of_part(part, ntrain, files, evals):
    """The split of write_splits' partition ``part``: the first ntrain are train's, then
    ``files`` for each of evals (test, val) in turn."""
    if part < ntrain:
        return "train"
    k = (part - ntrain) // files
    if k >= len(evals):
        raise PreprocessError("internal error: partition %d beyond the %d planned" % (
            part, ntrain + files * len(evals)), 1)
    return evals[k]


def _check_written(split, written, check):
    """Raise PreprocessError unless rows written + malformed skipped == lines read."""
    read, skipped = check.lines_read[split], check.by_split[split]
    if written + skipped != read:
        raise PreprocessError(
            "row count check failed for %s: %d lines read, %d written + %d malformed "
            "skipped = %d" % (split, read, written, skipped, written + skipped), 1)


def eval_file_index(line, bounds, files):
    """The output file (0..2*files-1) of split-file line ``line`` (a column) of test or val:
    each split's line range cut into ``files`` equal runs, test's first, then val's."""
    from pyspark.sql import functions as F

    def run(split):
        a, b = bounds[split]
        return F.floor((line - F.lit(a)) * F.lit(files) / F.lit(max(b - a, 1))).cast("int")

    return F.when(line < F.lit(bounds["val"][0]), run("test")).otherwise(run("val") + files)


def write_splits(inputs, split_file, check, args, tmp_dir, splits, vocab=None):
    """Write tmp_dir/<split>/ for each of ``splits`` (train, or test and val, or all three when
    one file holds them: Kaggle's train.txt) in one Spark job, one scan of their lines: train
    shuffled (seed --seed) into --train_files files, test and val in file order, each cut into
    --eval_files equal runs of its lines (fewer files when a split has fewer lines); with a
    Vocabulary the ids are joined in first. Returns {split: rows}, each checked against the
    lines read.

    A row reaches its file's partition by hash partitioning on a key chosen to land there
    (spark.partition_keys): a train row one of the first --train_files partitions at random,
    a test or val row its run's (a range partitioning would scan the input once more to sample
    it). Each partition holds one split, sorted within it: train rows by a second random key,
    test and val rows by line.
    """
    from pyspark.sql import functions as F

    t = time.time()
    train = "train" in splits
    evals = [s for s in ("test", "val") if s in splits]
    ntrain, files = (args.train_files if train else 0), args.eval_files
    what = ["train (shuffled, seed %d) into %d files" % (args.seed, ntrain)] if train else []
    if evals:
        what.append("%s (file order) into up to %d files each" % (" and ".join(evals), files))
    log("writing %s..." % ", ".join(what))
    df = _split_lines(inputs, splits, split_file, check)
    keep = [c for c in ("_split", "_line") if c in df.columns]
    out_cols = transform_exprs(F.col("_f"), args.mod_idx, args.key_type, vocab=bool(vocab))
    df = transformed(df, out_cols, *keep)
    is_train = F.col("_split") == "train"
    if train:
        # both random keys are drawn before the shuffle (and the joins), so the result does
        # not depend on the order in which shuffle blocks arrive: deterministic for a seed and
        # input
        df = df.select("*", F.rand(args.seed).alias("_r1"), F.rand(args.seed + 1).alias("_r2"))
        part = F.least(F.floor(F.col("_r1") * ntrain), F.lit(ntrain - 1)).cast("int")
        order = [F.col("_r2"), F.col("_r1")]
    if evals:
        run = F.lit(ntrain) + eval_file_index(F.col("_line"), split_file.bounds, files)
        line = F.col("_line").cast("double")
        part = F.when(is_train, part).otherwise(run) if train else run
        order = [F.when(is_train, F.col("_r2")).otherwise(line),
                 F.when(is_train, F.col("_r1")).otherwise(F.lit(0.0))] if train else [line]
    # (long literals: the keys were found as longs, and hash(int) differs from hash(long))
    nparts = ntrain + (2 * files if evals else 0)
    keys = F.array(*[F.lit(k).cast("long") for k in partition_keys(inputs.spark, nparts)])
    df = df.select("*", F.element_at(keys, part + 1).alias("_k"),
                   *[o.alias("_o%d" % i) for i, o in enumerate(order)])
    # the vocabulary's joins: a row's cost per join grows with the joins in one stage (26 in one
    # stage 12.7 s, 13 + 13 10.3 s on 857k rows, warm), so up to half of them run after the
    # shuffle: broadcast joins only, which keep its partitioning (a shuffle join would not)
    late = vocab.broadcast_columns()[-(NUM_SPARSE // 2):] if vocab else []
    if vocab:
        early = [i for i in range(NUM_SPARSE) if i not in late]
        df = vocab.apply(inputs.spark, df, args.key_type, early)
    df = df.repartition(nparts, "_k")
    if late:
        df = vocab.apply(inputs.spark, df, args.key_type, late)
    # Each partition holds one split, so the write needs no partitionBy("_split"), which
    # requires the rows sorted by the split first: a constant within a partition, so every
    # comparison of the sort would go past its prefix (1M rows, warm: 7.4 s instead of 7.0 s).
    # A file's split follows from its partition index instead (split_of_part).
    helpers = ["_k", "_line", "_r1", "_r2", "_split"] + ["_o%d" % i for i in range(len(order))]
    df = (df.sortWithinPartitions(*["_o%d" % i for i in range(len(order))])
          .drop(*[c for c in helpers if c in df.columns]))
    dest = os.path.join(tmp_dir, WRITE_DIR)
    df.write.mode("errorifexists").parquet(uri(dest))
    for split in splits:
        os.makedirs(os.path.join(tmp_dir, split))
    for name, part in _part_files(dest):
        split = split_of_part(part, ntrain, files, evals)
        for f in (name, ".%s.crc" % name):  # (the local file system's checksum file)
            if os.path.exists(os.path.join(dest, f)):
                os.rename(os.path.join(dest, f), os.path.join(tmp_dir, split, f))
    rows = {}
    for split in splits:
        if not _parquet_files(os.path.join(tmp_dir, split)):
            # no rows: an empty split with the schema, as a plain write leaves it
            os.rmdir(os.path.join(tmp_dir, split))
            (inputs.spark.createDataFrame([], df.schema).write.mode("errorifexists")
             .parquet(uri(os.path.join(tmp_dir, split))))
        rows[split], nfiles = _parquet_rows(os.path.join(tmp_dir, split))
        log("wrote %s: %d rows in %d files" % (split, rows[split], nfiles))
        _check_written(split, rows[split], check)
    shutil.rmtree(dest)
    log("wrote %s in %.1f s" % (", ".join(splits), time.time() - t))
    return rows


def write_passes(fmt):
    """[(pass name, splits)]: the write passes, one scan each. All three splits in one when one
    file holds them (kaggle: train.txt, one scan instead of two); else (criteo1t) train from the
    days before the last, then test and val from the last day, each kept by --resume."""
    if fmt == "kaggle":
        return [("write_splits", ["train", "test", "val"])]
    return [("write_train", ["train"]), ("write_test_val", ["test", "val"])]


def count_distinct_ids(spark, tmp_dir, mod_idx):
    """Pass 4 (mod and hash ids): the exact number of distinct ids of each of C1..C26 over the
    written train + test + val (the table sizes)."""
    from pyspark.sql import functions as F

    t = time.time()
    log("counting distinct ids per column...")
    written = spark.read.parquet(*[uri(os.path.join(tmp_dir, s)) for s in SPLITS])
    sizes = [0] * NUM_SPARSE
    if mod_idx > 0:
        # column i's mod ids lie in [i * (mod_idx + 1), (i + 1) * (mod_idx + 1)): the id alone
        # is the key and gives its column (distinct single longs: 15% less time than distinct
        # (column, id) pairs on 3M rows, warm)
        ids = written.select(F.explode(F.array(*SPARSE_COLUMNS)).alias("id")).distinct()
        # (integer division: a double quotient could round up to the next column for moduli
        # near 2^58)
        counts = ids.groupBy(F.expr("id div %d" % (mod_idx + 1)).alias("pos"))
    else:  # hash ids of different columns may coincide
        pairs = written.select(F.posexplode(F.array(*SPARSE_COLUMNS)).alias("pos", "id"))
        counts = pairs.distinct().groupBy("pos")
    # The partial aggregation's first-level hash map holds 2^16 keys by default; a task's
    # distinct ids overflow it into the slower second level. 2^18 keys (~8 MB a task): this
    # pass 20% faster on 3M synthetic rows, warm (1.4 s instead of 1.8 s).
    conf = "spark.sql.codegen.aggregate.fastHashMap.capacityBit"
    before = spark.conf.get(conf, "16")
    spark.conf.set(conf, "18")
    try:
        for r in counts.count().collect():
            sizes[int(r["pos"])] = int(r["count"])
    finally:
        spark.conf.set(conf, before)
    log("table_size_array = %s (%.1f s)" % (sizes, time.time() - t))
    return sizes


def build_dataset_info(args, fmt, names, rows, check, sizes):
    """The dataset_info.json content: counts, table sizes, transforms, split rule, arguments."""
    vocab = args.min_frequency > 0
    return {
        "format_version": DATASET_INFO_VERSION,
        "input_format": fmt,
        "input_files": names,
        "rows": rows,
        "lines_read": check.lines_read,
        "malformed": check.malformed(),
        "bad_rows_policy": args.bad_rows,
        "table_size_array": sizes,
        "id_mode": "vocab" if vocab else "mod" if args.mod_idx > 0 else "hash",
        "mod_idx": None if vocab else args.mod_idx,
        "min_frequency": args.min_frequency,
        "vocabulary": {"dir": VOCAB_DIR, "columns": VOCAB_COLUMNS,
                       "frequent_values": [n - 1 for n in sizes],
                       "broadcast_vocab_rows": args.broadcast_vocab_rows} if vocab else None,
        "key_type": args.key_type,
        "columns": column_dtypes(args.key_type),
        "dense_transform": DENSE_TRANSFORM,
        "categorical_transform": categorical_transform_text(args.mod_idx, args.min_frequency),
        "split_rule": split_rule(fmt),
        "num_test_examples": args.num_test_examples if fmt == "criteo1t" else None,
        "seed": args.seed,
        "train_files": args.train_files,
        "eval_files": args.eval_files,
        "tool": TOOL,
    }


def _input_bytes(inputs, files):
    return sum(os.path.getsize(inputs.paths[i]) for i in files)


def _train_bytes(inputs):
    """Bytes of the train input: the days before the last, or 6/7 of kaggle's train.txt."""
    if len(inputs.paths) == 1:
        return _input_bytes(inputs, [0]) * 6 // 7
    return _input_bytes(inputs, range(inputs.split_file))


def pass_plan(args, fmt, inputs):
    """[(name, weight)] of the passes in run order; a weight is the input bytes the pass
    scans times a rough cost factor (benchmarks/bench_preprocess.py on 3 days: the train write
    took ~3x the check's time per input byte, test and val ~2x), used only for the whole run's
    ETA."""
    sf = inputs.split_file
    every = _input_bytes(inputs, range(len(inputs.paths)))
    split_file = _input_bytes(inputs, [sf])
    # kaggle's train write scans the whole train.txt
    train = split_file if len(inputs.paths) == 1 else _train_bytes(inputs)
    plan = [("check_rows", every)]  # (its aggregation moves less than a scan's bytes)
    if args.min_frequency > 0:
        plan.append(("build_vocabulary", 2 * train))
    plan += [(name, 3 * train if "train" in splits else 2 * split_file)
             for name, splits in write_passes(fmt)]
    if args.min_frequency <= 0:
        plan.append(("count_distinct_ids", every))
    return plan


def pass_outputs(name):
    """The directories of tmp_dir a pass writes (none for the passes that only count)."""
    writes = {name: splits for fmt in ("kaggle", "criteo1t") for name, splits in write_passes(fmt)}
    return {"build_vocabulary": [VOCAB_DIR], **writes}.get(name, [])


def finished_outputs(state):
    """The directories the passes that state records as finished wrote."""
    return [d for name in state.finished for d in pass_outputs(name)]


def _row_check_from(d):
    check = RowCheck(**d)
    if check.first_bad is not None:
        check.first_bad = tuple(check.first_bad)
    return check


def run(args, fmt, paths, state):
    """All passes into state.dir (a resume.WorkState): each one that state records as finished
    is reused (one line each), the others run and are recorded. Returns the dataset_info
    dict."""
    import dataclasses

    tmp_dir = state.dir
    spark = start_spark(args)
    try:
        inputs = Inputs(spark, paths)

        def check_partitions():
            state.check_partitions(
                [spark.read.text(uri(p)).rdd.getNumPartitions() for p in paths], inputs.names)

        # before anything is reused; in a new run once the first pass has warmed up Spark's
        # planner (cold, planning the scans only to count their partitions took ~1 s)
        if state.finished:
            check_partitions()
        state.remove_unfinished(keep=finished_outputs(state))
        room = (args, spark, tmp_dir, _train_bytes(inputs),
                _input_bytes(inputs, range(len(paths))))
        with Progress(spark, args.progress_interval, pass_plan(args, fmt, inputs)) as progress:

            def step(name, compute, save, restore, reused_text):
                done = state.done(name)
                if done is not None:
                    value = restore(done)
                    progress.reused(name)
                    log("%s: reused from the interrupted run (%s)" % (progress.position(name),
                                                                      reused_text(value)))
                    return value
                with progress.named(name), unreadable_input_check(), \
                        disk_full_check(name, *room):
                    value = compute()
                state.finish(name, save(value))
                return value

            def restore_check(d):
                inputs.offsets = d["offsets"]
                split_file = SplitFile(d["lines"], {k: tuple(v) for k, v in d["bounds"].items()})
                return split_file, _row_check_from(d["check"])

            def first_pass():
                value = check_rows(inputs, fmt, args.num_test_examples, args.bad_rows,
                                   args.max_malformed_fraction)
                check_partitions()  # recorded before the pass is
                return value

            split_file, check = step(
                "check_rows", first_pass,
                lambda v: {"lines": v[0].lines, "bounds": v[0].bounds, "offsets": inputs.offsets,
                           "check": dataclasses.asdict(v[1])},
                restore_check,
                lambda v: "%s: %d lines; %d lines read, %d malformed"
                % (inputs.names[inputs.split_file], v[0].lines, sum(v[1].lines_read.values()),
                   v[1].total_bad))
            vocab = None
            if args.min_frequency > 0:
                dest = os.path.join(tmp_dir, VOCAB_DIR)
                vocab = step(
                    "build_vocabulary",
                    lambda: build_vocabulary(spark, inputs, split_file, check, args, tmp_dir),
                    lambda v: {"sizes": v.sizes},
                    lambda d: Vocabulary(dest, d["sizes"], args.broadcast_vocab_rows),
                    lambda v: "%d frequent values" % (sum(v.sizes) - NUM_SPARSE))
            rows = {}
            for name, splits in write_passes(fmt):
                rows.update(step(
                    name, lambda splits=splits: write_splits(inputs, split_file, check, args,
                                                             tmp_dir, splits, vocab),
                    lambda v: {"rows": v}, lambda d: _check_reused_splits(tmp_dir, d),
                    lambda v: ", ".join("%s: %d rows" % kv for kv in v.items())))
            if vocab:
                sizes = vocab.sizes
            else:
                sizes = step("count_distinct_ids",
                             lambda: count_distinct_ids(spark, tmp_dir, args.mod_idx),
                             lambda v: {"sizes": v}, lambda d: d["sizes"],
                             lambda v: "%d ids" % sum(v))
        log("time per pass: %s" % progress.clock.summary())
        info = build_dataset_info(args, fmt, inputs.names, rows, check, sizes)
        with disk_full_check("build_dataset_info", *room):
            if args.export_dataset_info:
                write_original_readme(tmp_dir, rows, sizes)
            write_dataset_info(tmp_dir, info)
        return info
    finally:
        spark.stop()


def _check_reused_splits(tmp_dir, d):
    """A finished write pass's {split: rows}, checked against the parquet footers."""
    for split, rows in d["rows"].items():
        path = os.path.join(tmp_dir, split)
        written = _parquet_rows(path)[0] if os.path.isdir(path) else None
        if written != rows:
            raise PreprocessError("cannot resume: %s holds %s rows, the interrupted run "
                                  "recorded %d; rerun without --resume" % (path, written, rows), 1)
    return d["rows"]
