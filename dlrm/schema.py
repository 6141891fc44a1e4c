"""The Criteo schema and the dataset description: the one place they are written down.

A raw Criteo line is ``label  I1..I13  C1..C26`` (40 tab-separated fields). The preprocessing
tool writes parquet with the same column names (label and I* float32, C* int32/int64 ids) and a
``dataset_info.json`` beside the splits; training reads the table sizes back from it (or from the
``table_size_array = [...]`` line of the README.md the original OneFlow tool writes).
"""
import os
import re

from dlrm.jsonfile import read_json, write_json

NUM_DENSE = 13
NUM_SPARSE = 26
NUM_FIELDS = 1 + NUM_DENSE + NUM_SPARSE
LABEL = "label"
DENSE_COLUMNS = [f"I{i}" for i in range(1, NUM_DENSE + 1)]
SPARSE_COLUMNS = [f"C{i}" for i in range(1, NUM_SPARSE + 1)]
COLUMNS = [LABEL] + DENSE_COLUMNS + SPARSE_COLUMNS
SPLITS = ("train", "test", "val")
KEY_TYPES = ("int32", "int64")

# The original's Criteo 1TB table sizes (mod 40M), used when a dataset records none.
CRITEO1T_TABLE_SIZES = [39884406, 39043, 17289, 7420, 20263, 3, 7120, 1543, 63, 38532951, 2953546, 403346, 10,
                        2208, 11938, 155, 4, 976, 14, 39979771, 25641295, 39664984, 585935, 12972, 108, 36]

DATASET_INFO_FILE = "dataset_info.json"
ORIGINAL_README_FILE = "README.md"
DATASET_INFO_VERSION = 1
_README_SIZES_RE = re.compile(r"table_size_array\s*=\s*\[([\d,\s]+)\]")


def column_dtypes(key_type):
    """{column: dtype name} of a dataset whose ids are key_type."""
    return dict([(LABEL, "float32")] + [(c, "float32") for c in DENSE_COLUMNS]
                + [(c, key_type) for c in SPARSE_COLUMNS])


def write_dataset_info(out_dir, info):
    return write_json(os.path.join(out_dir, DATASET_INFO_FILE), info)


def read_dataset_info(data_dir):
    """The dataset's dataset_info.json as a dict, or None when it has none."""
    return read_json(os.path.join(data_dir, DATASET_INFO_FILE))


def original_readme_text(rows, table_sizes):
    """The README.md the original OneFlow tool writes (example counts and table sizes)."""
    return ("## number of examples:\ntrain: %d\ntest: %d\nval: %d\n## table size array\n"
            "table_size_array = [%s]\n" % (rows["train"], rows["test"], rows["val"],
                                           ", ".join(str(s) for s in table_sizes)))


def write_original_readme(out_dir, rows, table_sizes):
    with open(os.path.join(out_dir, ORIGINAL_README_FILE), "w") as f:
        f.write(original_readme_text(rows, table_sizes))


def load_table_sizes(data_dir):
    """Table sizes recorded with the dataset: dataset_info.json, else the original tool's
    README.md; None if neither."""
    info = read_dataset_info(data_dir)
    if info is not None:
        return info["table_size_array"]
    readme = os.path.join(data_dir, ORIGINAL_README_FILE)
    if os.path.exists(readme):
        with open(readme) as f:
            m = _README_SIZES_RE.search(f.read())
        if m:
            return [int(x) for x in m.group(1).split(",") if x.strip()]
    return None
