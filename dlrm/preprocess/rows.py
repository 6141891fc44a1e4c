"""Raw Criteo lines -> model input rows for predictions, with the preprocessing's own transforms.

One Spark job (plus one line-count pass per file) turns raw text files into parquet with the
columns ``row`` (0-based position across the files in the given order), ``reason`` (null, or the
malformed-row reason of spark.reason_expr) and the dataset's columns (label, I1..I13, C1..C26).
The transforms are spark.transform_exprs and, for vocabulary ids, passes.Vocabulary.apply: the
expressions tools/criteo1t_parquet.py writes its splits with, so a raw line gets exactly the
values its row would have in the dataset. Nothing is dropped: a malformed line keeps its row,
with placeholder features (an all-missing line) that the caller must not report.
"""
import gzip
import os
from collections import Counter

from dlrm.preprocess.passes import VOCAB_DIR, Vocabulary, transformed
from dlrm.preprocess.spark import Inputs, reason_expr, transform_exprs, union, uri
from dlrm.schema import NUM_FIELDS

# A well-formed, all-missing line: what a malformed line is replaced by before the transforms,
# so that its row keeps its place (its prediction is never reported).
PLACEHOLDER_LINE = "0" + "\t" * (NUM_FIELDS - 1)
SAMPLE_LINES = 100  # lines read to tell a file with labels (40 fields) from one without (39)


class RowsError(ValueError):
    """Bad raw input or dataset for the transforms: one line naming the file."""


def open_text(path):
    return gzip.open(path, "rt", errors="replace") if path.endswith(".gz") else open(path, errors="replace")


def has_labels(path):
    """True for a file of 40-field lines (label first), False for 39 (Kaggle test.txt), by the most
    common field count among its first lines that is one of the two (an empty file: True)."""
    counts = Counter()
    with open_text(path) as f:
        for i, line in enumerate(f):
            if i >= SAMPLE_LINES:
                break
            counts[line.rstrip("\r\n").count("\t") + 1] += 1
    for n, _ in counts.most_common():
        if n in (NUM_FIELDS, NUM_FIELDS - 1):
            return n == NUM_FIELDS
    if not counts:
        return True
    n = counts.most_common(1)[0][0]
    raise RowsError(f"{path}: its first lines have {n} tab-separated fields; expected {NUM_FIELDS} "
                    f"(label first, as train.txt or day_N) or {NUM_FIELDS - 1} (no label, as test.txt)")


def id_transform(info, data_dir):
    """(mod_idx, Vocabulary or None) of a dataset_info.json: how its tool run made the ids."""
    mode = info.get("id_mode")
    if mode == "vocab":
        vocab = info["vocabulary"]
        path = os.path.join(data_dir, vocab.get("dir", VOCAB_DIR))
        if not os.path.isdir(path):
            raise RowsError(f"{data_dir} has vocabulary ids but no {path} directory: raw rows cannot get them")
        return 0, Vocabulary(path, list(info["table_size_array"]), vocab["broadcast_vocab_rows"])
    if mode == "mod":
        return int(info["mod_idx"]), None
    if mode == "hash":
        return 0, None
    raise RowsError(f"{data_dir}/dataset_info.json records no id mode (mod, hash or vocab): raw rows cannot be "
                    f"transformed as the dataset was; score a preprocessed parquet split instead")


def write_rows(spark, paths, labeled, info, data_dir, out_dir):
    """Write the model input rows of the raw files `paths` (labeled: has_labels of each) to out_dir
    as parquet, transformed as the dataset of info (dataset_info.json) in data_dir. Returns the
    number of lines of each file.

    A file without labels gets label 0 prepended to each line, so the preprocessing's checks and
    transforms apply unchanged (its label column is not reported). The rows are written in row
    order within each file and, with vocabulary ids (joins), range-partitioned by row first;
    readers order the files by their row ranges (rows.ordered_row_groups)."""
    from pyspark.sql import functions as F

    mod_idx, vocab = id_transform(info, data_dir)
    key_type = info["key_type"]
    inputs = Inputs(spark, paths)
    scans, lines, first = [], [], 0
    for idx, with_label in enumerate(labeled):
        counts = inputs.count_partitions(idx)
        offsets = [first + sum(counts[:k]) for k in range(len(counts))]
        value = F.col("value") if with_label else F.concat(F.lit("0\t"), F.col("value"))
        scans.append(inputs.scan(idx).select(value.alias("value"), inputs.line_index(offsets).alias("row")))
        lines.append(sum(counts))
        first += lines[-1]
    df = union(scans).select("value", "row", reason_expr(F.col("value")).alias("reason"))
    df = df.select(F.when(F.col("reason").isNull(), F.col("value")).otherwise(F.lit(PLACEHOLDER_LINE))
                   .alias("value"), "row", "reason")
    df = transformed(df, transform_exprs(F.col("_f"), mod_idx, key_type, vocab=bool(vocab)), "row", "reason")
    if vocab:
        df = vocab.apply(spark, df, key_type)
        df = df.repartitionByRange(max(1, df.rdd.getNumPartitions()), "row").sortWithinPartitions("row")
    df.write.mode("errorifexists").parquet(uri(out_dir))
    return lines


def ordered_row_groups(out_dir):
    """[(file, row_group, rows)] of write_rows' output in row order, from the footers' min/max of
    `row`; checked to cover rows 0..n-1 once each."""
    import pyarrow.parquet as pq

    files = sorted(os.path.join(out_dir, f) for f in os.listdir(out_dir) if f.endswith(".parquet"))
    groups = []
    for path in files:
        meta = pq.ParquetFile(path).metadata
        col = meta.schema.to_arrow_schema().get_field_index("row")
        for i in range(meta.num_row_groups):
            rg = meta.row_group(i)
            if rg.num_rows:
                stats = rg.column(col).statistics
                groups.append((stats.min, stats.max, path, i, rg.num_rows))
    groups.sort()
    expected = 0
    for lo, hi, path, _, n in groups:
        if lo != expected or hi - lo + 1 != n:
            raise RowsError(f"internal error: {path} holds rows {lo}..{hi} ({n}), expected from row {expected}")
        expected = hi + 1
    return [(path, i, n) for _, _, path, i, n in groups]
