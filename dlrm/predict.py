"""The pieces of dlrm_predict.py that need no model: what the input is, which model and dataset a
checkpoint names (and that they match), the input's rows in order, and the output file.

Every check raises PredictError, one line naming the flag or file, before any scoring.
"""
import argparse
import glob
import os
import re
import shutil
import stat
from dataclasses import dataclass
from typing import List

import numpy as np

from dlrm import schema
from dlrm.model import EMBEDDING_NAME
from dlrm.config import ModelConfig, StoreConfig, store_capacity
from dlrm.store import check_store, missing_snapshot, rank_paths

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
    a("--overwrite", action="store_true", help="replace an existing --output file (never a directory)")
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


def output_format(path, overwrite=False):
    """'csv' or 'parquet' from --output's extension; its directory must exist, and the output must
    not, unless --overwrite and it is a regular file (what this tool writes: never a directory,
    a link or a device)."""
    fmt = OUTPUT_FORMATS.get(os.path.splitext(path)[1].lower())
    if fmt is None:
        raise PredictError(f"--output {path}: the name must end in .csv or .parquet")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise PredictError(f"--output {path}: no such directory {parent}")
    if os.path.lexists(path):
        if not stat.S_ISREG(os.lstat(path).st_mode):
            raise PredictError(f"--output {path} exists and is not a regular file: choose another name")
        if not overwrite:
            raise PredictError(f"--output {path} exists: pass --overwrite to replace it (or choose another name)")
    return fmt


# The temporary files of an output OUT: .OUT.tmp-<pid> (write_output) and .OUT.rows-<pid>/ (raw rows).
def temp_path(output, kind, pid=None):
    """The temporary `kind` ('tmp' or 'rows') of --output of process pid (default: this one)."""
    out = os.path.abspath(output)
    return os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.{kind}-{os.getpid() if pid is None else pid}")


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_temps(output):
    """Remove the temporary files and directories of --output that a killed run of this tool left
    (named after the same output, with the pid of a process no longer alive on this host); returns
    their paths. Anything else beside the output is left alone."""
    out = os.path.abspath(output)
    pattern = re.compile(r"^\.%s\.(tmp|rows)-(\d+)$" % re.escape(os.path.basename(out)))
    removed = []
    for name in sorted(os.listdir(os.path.dirname(out))):
        m = pattern.match(name)
        if not m or int(m.group(2)) == os.getpid() or pid_alive(int(m.group(2))):
            continue
        path = os.path.join(os.path.dirname(out), name)
        if m.group(1) == "rows" and os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif m.group(1) == "tmp" and os.path.isfile(path) and not os.path.islink(path):
            os.remove(path)
        else:
            continue
        removed.append(path)
    return removed


# ----------------------------------------------------------------------------- checkpoint and dataset
@dataclass
class Trained:
    """What a checkpoint's train_state.json says about its model and dataset."""
    path: str
    model: dict        # RunConfig.to_dict()["model"]
    store: dict        # ... ["store"]
    data_dir: str      # the dataset it was trained on (as recorded)
    eval_batch_size: int
    seed: int          # the run's --seed: its OneEmbedding's, and its CPU table's initial rows
    holds_store: bool  # its embedding rows are in a OneEmbedding store (else in the checkpoint)


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
                   cfg["data"]["eval_batch_size"], cfg["seed"], holds_store(state))


def holds_store(state):
    """Whether a checkpoint's train_state.json says its embedding rows are in a OneEmbedding store:
    a CUDA run's are, a CPU run's are in the checkpoint, a converted checkpoint's are where the
    converter put them (its config's persistent_path, None for a self-contained one)."""
    if "converted_from" in state:
        return bool(state["config"]["store"]["persistent_path"])
    return state["config"]["device"] == "cuda"


def model_config(trained, device):
    """The checkpoint's ModelConfig for device (fused MLP layers on CUDA only, as training picks)."""
    m = dict(trained.model)
    for k in ("table_sizes", "bottom_mlp", "top_mlp"):
        m[k] = tuple(m[k])
    m["fused_mlp"] = bool(m["fused_mlp"]) and device == "cuda"
    return ModelConfig(**m)


def store_config(trained, persistent_path, world_size, new_ids=0):
    """The checkpoint's StoreConfig, with --persistent_path when given (the store moved), its
    capacity counting new_ids more rows (new_id_bound: what scoring can add to the store)."""
    s = dict(trained.store)
    s["persistent_path"] = persistent_path or s["persistent_path"]
    s["capacity"] = store_capacity(sum(trained.model["table_sizes"]) + new_ids, world_size)
    return StoreConfig(**s)


def model_arguments(trained, device, persistent_path, world_size, index=0, new_ids=0):
    """The keyword arguments of dlrm.model.DLRM for the index-th model of a run: the checkpoint's
    architecture and store, its own seed (OneEmbedding initialises an id its store lacks from it,
    curand_init(seed, id, col) in one_embedding_kernels.cu's InitValueKernel, at every lookup of an
    evaluation job with a full cache: training's own evaluation used the run's seed) and, on GPUs,
    an embedding name of its own (OneFlow keeps every store of a process until it exits)."""
    trained = Trained(**trained) if isinstance(trained, dict) else trained
    return {"model": model_config(trained, device), "store": store_config(trained, persistent_path, world_size, new_ids),
            "device": device, "seed": trained.seed,
            "embedding_name": EMBEDDING_NAME if index == 0 else f"{EMBEDDING_NAME}_{index}"}


def new_id_bound(groups, info, store_type):
    """How many rows scoring `groups` (the input's row groups) can add to a store of store_type.

    OneFlow 0.9.0 puts the rows of ids its store lacks into the store at lookup, evaluation
    included, unless the first cache is a full one (put_to_store = !is_full_cache in
    one_embedding_kernels.cu): device_mem adds nothing; cached_ssd's LRU spills to the persistent
    table, which grows as needed; cached_host_mem's LRU spills to a full host cache whose capacity
    is fixed at build and whose insert has no bound check (full_cache.cu). With vocabulary ids
    every id is one of the dataset's (unseen values share an id); with mod or hash ids the input
    may hold ids the dataset lacks: at most its distinct ids, counted per column (pyarrow)."""
    if store_type != "cached_host_mem" or (info or {}).get("id_mode") == "vocab":
        return 0
    import pyarrow.compute as pc

    return sum(pc.count_distinct(read_columns(groups, [c]).column(c)).as_py() for c in schema.SPARSE_COLUMNS)


def gpu_store_error(models, persistent_path, world_size, rank):
    """Before any model is built on GPUs, on every rank (then dlrm.store.agreed_error): one line for
    what would abort OneFlow or corrupt a store: a checkpoint whose rows are not in a store (a CPU
    run's); two models on the same store directory (a process's own fcntl lock does not exclude
    itself, and both would append to its chunk files); this rank's directory of a store written
    with another key or value size, held by another process (dlrm.store.check_store), or lacking
    the checkpoint's snapshot (OneFlow would create an empty store there). models: the plan's
    (found, trained, snapshot), the same on every rank."""
    seen = {}
    for m in models:
        trained, path = m["trained"], m["found"]["path"]
        if not trained["holds_store"]:
            return (f"checkpoint {path} holds its embedding table itself (a CPU run's): score it with --device cpu, "
                    f"or write its rows to a store with tools/convert_checkpoint.py --persistent_path P --world_size "
                    f"{world_size}")
        root = persistent_path or trained["store"]["persistent_path"]
        if not root:
            return f"checkpoint {path} records no OneEmbedding store: pass --persistent_path"
        real = os.path.realpath(root)
        if real in seen:
            return (f"checkpoints {seen[real]} and {path} use the same OneEmbedding store {root}: one process "
                    f"cannot open one store twice; copy it or convert one checkpoint to a store of its own "
                    f"(tools/convert_checkpoint.py --persistent_path)")
        seen[real] = path
        store, dim = trained["store"], trained["model"]["embedding_vec_size"]
        here = rank_paths(root, world_size)[rank]
        try:
            check_store([here], np.dtype(store["key_type"]).itemsize, 4 * dim * store["size_factor"],
                        f"the checkpoint's {dim} x {store['size_factor']}",
                        fix=f"not the store checkpoint {path} was trained with; pass that one (--persistent_path)")
        except ValueError as e:
            return str(e)
        error = missing_snapshot(here, m["snapshot"], world_size) if m.get("snapshot") else None
        if error:
            return error
    return None


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


def write_output(path, fmt, table, overwrite=False):
    """The table to path (CSV with a header, or parquet), atomically: a temp file, then a rename
    (with overwrite; without, a hard link, which fails if the output appeared meanwhile)."""
    import pyarrow.csv as csv
    import pyarrow.parquet as pq

    tmp = temp_path(path, "tmp")
    try:
        if fmt == "csv":
            csv.write_csv(table, tmp)
        else:
            pq.write_table(table, tmp)
        if overwrite:
            output_format(path, overwrite=True)  # still a regular file, or gone
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise PredictError(f"--output {path} appeared while scoring: pass --overwrite to replace it") from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
