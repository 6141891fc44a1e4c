"""The pieces of dlrm_predict.py that need no model: what the input is, which model and dataset a
checkpoint names (and that they match), the input's rows in order, and the output file.

Every check raises PredictError, one line naming the flag or file, before any scoring.
"""
import argparse
import glob
import os
from dataclasses import dataclass
from typing import List

import numpy as np

from dlrm import schema
from dlrm.config import ModelConfig, StoreConfig, store_capacity

OUTPUT_FORMATS = {".csv": "csv", ".parquet": "parquet"}
RAW_SUFFIXES = ("", ".txt", ".tsv", ".gz")
BAD_ROWS = ("skip", "fail")


class PredictError(ValueError):
    """A bad flag, input, checkpoint or dataset: the message is one line naming it."""


# ----------------------------------------------------------------------------- the flags
def get_parser():
    p = argparse.ArgumentParser(description="Score rows with a trained DLRM checkpoint (graph mode)")
    a = p.add_argument
    a("--model_load_dir", type=str, nargs="+", required=True,
      help="a checkpoint written by dlrm_train_eval.py; several (trained on the same dataset): the mean of their "
           "probabilities")
    a("--input", type=str, required=True,
      help="raw Criteo text (40 fields with label or 39 without, per file): a file, .gz, directory or glob; "
           "or a preprocessed parquet split directory")
    a("--output", type=str, required=True, help="OUT.csv or OUT.parquet: row, probability (and label)")
    a("--data_dir", type=str, default=None,
      help="the dataset the model was trained on (dataset_info.json, vocabulary/); default: the checkpoint's")
    a("--device", type=str, default="auto", choices=["auto", "cuda", "cpu"], help="auto: cuda when available")
    a("--batch_size", type=int, default=None, help="global batch size (default: the checkpoint's --eval_batch_size)")
    a("--persistent_path", type=str, default=None,
      help="OneEmbedding store of a CUDA checkpoint (default: the one it was trained with)")
    a("--bad_rows", type=str, default="skip", choices=BAD_ROWS,
      help="malformed raw rows: skip (empty probability, counted) or fail (stop naming file and line)")
    a("--spark_master", type=str, default="local[*]", help="Spark master for the raw-text transforms")
    a("--spark_driver_memory_gb", type=int, default=4, help="Spark driver memory (local mode: capped at 80%% of RAM)")
    return p


# ----------------------------------------------------------------------------- the input
@dataclass
class InputPlan:
    kind: str          # "parquet" (a preprocessed split) or "raw" (Criteo text files)
    files: List[str]   # parquet files, or raw files in sorted order


def plan_input(path):
    """--input -> InputPlan: a directory of *.parquet (a split), or raw text: a file (.gz too), a
    directory of them (hidden files skipped) or a glob; raw files in sorted order."""
    if os.path.isdir(path):
        parquet = sorted(glob.glob(os.path.join(path, "*.parquet")))
        if parquet:
            return InputPlan("parquet", parquet)
        files = sorted(os.path.join(path, f) for f in os.listdir(path)
                       if not f.startswith((".", "_")) and os.path.isfile(os.path.join(path, f)))
        if not files:
            raise PredictError(f"--input {path}: an empty directory (expected Criteo text files or *.parquet)")
    elif os.path.isfile(path):
        files = [path]
    else:
        files = sorted(f for f in glob.glob(path) if os.path.isfile(f))
        if not files:
            raise PredictError(f"--input {path}: no such file, directory or matching files")
    if any(f.endswith(".parquet") for f in files):
        raise PredictError(f"--input {path}: give a parquet split as its directory (e.g. DATASET/test)")
    return InputPlan("raw", files)


def output_format(path):
    """'csv' or 'parquet' from --output's extension; its directory must exist."""
    fmt = OUTPUT_FORMATS.get(os.path.splitext(path)[1].lower())
    if fmt is None:
        raise PredictError(f"--output {path}: the name must end in .csv or .parquet")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise PredictError(f"--output {path}: no such directory {parent}")
    if os.path.isdir(path):
        raise PredictError(f"--output {path} is a directory")
    return fmt


# ----------------------------------------------------------------------------- checkpoint and dataset
@dataclass
class Trained:
    """What a checkpoint's train_state.json says about its model and dataset."""
    path: str
    model: dict        # RunConfig.to_dict()["model"]
    store: dict        # ... ["store"]
    data_dir: str      # the dataset it was trained on (as recorded)
    eval_batch_size: int


def trained_from(found):
    """A Trained from what dlrm.checkpoint.locate_checkpoint found (rank 0)."""
    if found.get("error"):
        raise PredictError(found["error"])
    state = found.get("state")
    if not state or "config" not in state:
        raise PredictError(f"--model_load_dir {found['path']}: no train_state.json with the run's configuration "
                           f"(a checkpoint of dlrm_train_eval.py is needed to know the model)")
    cfg = state["config"]
    return Trained(found["path"], cfg["model"], cfg["store"], cfg["data"]["data_dir"],
                   cfg["data"]["eval_batch_size"])


def model_config(trained, device):
    """The checkpoint's ModelConfig for device (fused MLP layers on CUDA only, as training picks)."""
    m = dict(trained.model)
    for k in ("table_sizes", "bottom_mlp", "top_mlp"):
        m[k] = tuple(m[k])
    m["fused_mlp"] = bool(m["fused_mlp"]) and device == "cuda"
    return ModelConfig(**m)


def store_config(trained, persistent_path, world_size):
    """The checkpoint's StoreConfig, with --persistent_path when given (the store moved)."""
    s = dict(trained.store)
    s["persistent_path"] = persistent_path or s["persistent_path"]
    s["capacity"] = store_capacity(sum(trained.model["table_sizes"]), world_size)
    return StoreConfig(**s)


IDENTITY = ("id_mode", "mod_idx", "min_frequency", "key_type", "table_size_array")


def dataset_info(trained, data_dir):
    """(data_dir, its dataset_info.json or None): --data_dir, else the checkpoint's recorded one;
    checked against the checkpoint's model (table sizes, key type) and, when --data_dir replaces a
    recorded dataset that still exists, against that one (id mode)."""
    recorded = trained.data_dir
    data_dir = data_dir or recorded
    if not os.path.isdir(data_dir):
        raise PredictError(f"dataset {data_dir} (recorded in {trained.path}) not found; pass --data_dir" if data_dir
                           == recorded else f"--data_dir {data_dir}: no such directory")
    info = schema.read_dataset_info(data_dir)
    table_sizes = schema.load_table_sizes(data_dir)
    model_table_sizes = list(trained.model["table_sizes"])
    if table_sizes is not None and list(table_sizes) != model_table_sizes:
        raise PredictError(f"dataset {data_dir} has table sizes {list(table_sizes)}, the checkpoint {trained.path} "
                           f"{model_table_sizes}: not the dataset this model was trained on (--data_dir)")
    if info and info.get("key_type", trained.store["key_type"]) != trained.store["key_type"]:
        raise PredictError(f"dataset {data_dir} has {info['key_type']} ids, the checkpoint {trained.path} "
                           f"{trained.store['key_type']}: not the dataset this model was trained on (--data_dir)")
    if info and data_dir != recorded and os.path.isdir(recorded):
        old = schema.read_dataset_info(recorded)
        diff = [k for k in IDENTITY if old and old.get(k) != info.get(k)]
        if diff:
            raise PredictError(f"--data_dir {data_dir} differs from the dataset {recorded} the checkpoint "
                               f"{trained.path} was trained on in {', '.join(diff)}")
    return data_dir, info


def check_parquet_input(files, key_type):
    """A parquet split must have the dataset's columns and the checkpoint's id type."""
    import pyarrow.parquet as pq

    for path in files:
        names = pq.read_schema(path)
        missing = [c for c in schema.COLUMNS if c not in names.names]
        if missing:
            raise PredictError(f"--input file {path}: missing columns {', '.join(missing)}")
        dtype = names.field(schema.SPARSE_COLUMNS[0]).type.to_pandas_dtype().__name__
        if dtype != key_type:
            raise PredictError(f"--input file {path} holds {dtype} ids, the checkpoint's model {key_type}")


# ----------------------------------------------------------------------------- rows in order
def read_columns(groups, columns):
    """The columns of the row groups, concatenated in order (pyarrow Table)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pa.concat_tables([pq.ParquetFile(path).read_row_group(rg, columns=columns) for path, rg, _ in groups])


def order_by_slices(preds, groups, batch_per_rank, world_size):
    """The predictions of BatchReader(train=False) batches gathered batch by batch (each rank's part
    in rank order) -> one per row in input order: rank r's rows are its contiguous eval_slice."""
    from dlrm.evaluation import slice_sizes

    per_rank = preds.reshape(-1, world_size, batch_per_rank).transpose(1, 0, 2).reshape(world_size, -1)
    return np.concatenate([per_rank[r, :n] for r, n in enumerate(slice_sizes(groups, world_size))])


def write_output(path, fmt, table):
    """The table to path (CSV with a header, or parquet), atomically: a temp file, then a rename."""
    import pyarrow.csv as csv
    import pyarrow.parquet as pq

    tmp = os.path.join(os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        if fmt == "csv":
            csv.write_csv(table, tmp)
        else:
            pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
