"""Checkpoint conversion (tools/convert_checkpoint.py): a CPU run's self-contained checkpoint, with
the embedding table inside, <-> a GPU run's, whose rows live in a OneEmbedding store; and a store
of N ranks -> one of M (resharding, which also compacts: only the snapshot's rows are copied).

Works on one CPU process without building a model: the checkpoint's tensors are read with
flow.load, the store with OneFlow's persistent table reader and written with its writer (which
deals the ids to the ranks as a GPU run of that many ranks does). The optimizer's state of the
embedding travels with the rows (the store keeps it after the embedding in each value; a CPU
checkpoint keeps it in graph_state/ as module.embedding.weight-<m|v|sum>).
"""
import datetime
import json
import os

import numpy as np
import oneflow as flow

from dlrm.checkpoint import (GRAPH_MODULE, GRAPH_STATE_DIR, OPTIONS_KEY, SNAPSHOT_KEY, STATE_FILE, TABLE_KEY,
                             checkpoint_dataset_ids, read_store_rows, read_train_state, split_table_state,
                             state_suffixes, store_as_table, store_entry, verify_manifest, write_manifest)
from dlrm.jsonfile import write_json
from dlrm.store import StoreError, rank_paths, table_to_store, write_rows

ONE_EMBEDDING_PREFIX = "embedding.one_embedding."  # model.OneEmbedding's MultiTableEmbedding


class ConvertError(ValueError):
    """A checkpoint or destination that cannot be converted: one line naming it."""


def snapshot_name():
    """A new snapshot name, in OneEmbedding's own format (UTC)."""
    return "converted-" + datetime.datetime.utcnow().strftime("%Y-%m-%d-%H-%M-%S-%f")


def local(tensors):
    return {k: (v.numpy() if isinstance(v, flow.Tensor) else v) for k, v in tensors.items()}


def read_checkpoint(path):
    """(weights, graph variables, train_state) of a checkpoint of ours, as NumPy, verified first."""
    if not os.path.isdir(path):
        raise ConvertError(f"--model_load_dir {path}: no such checkpoint directory")
    error = verify_manifest(path)
    if error:
        raise ConvertError(error)
    state = read_train_state(path)
    if state is None or "config" not in state:
        raise ConvertError(f"{path} has no {STATE_FILE} with the run's configuration (table sizes, embedding "
                           f"size, seed): only checkpoints of dlrm_train_eval.py convert")
    graph_dir = os.path.join(path, GRAPH_STATE_DIR)
    graph = local(flow.load(graph_dir)) if os.path.isdir(graph_dir) else {}
    return local(flow.load(path)), graph, state


def initial_table(model_config, seed):
    """The CPU table a run with this seed starts from (LocalEmbedding's init): the rows of ids a
    store lacks (never looked up on the GPU) are still at their initial values."""
    from dlrm.model import LocalEmbedding
    np.random.seed(seed)
    return LocalEmbedding(model_config["table_sizes"], model_config["embedding_vec_size"]).weight.numpy()


def cpu_rows_of(weights, graph, config, path):
    """The CPU table with its optimizer state side by side, (rows, dim x factor), of a self-contained checkpoint."""
    table = weights[TABLE_KEY]
    table_sizes, dim = config["model"]["table_sizes"], config["model"]["embedding_vec_size"]
    if table.shape != (sum(table_sizes), dim):
        raise ConvertError(f"{path}: {TABLE_KEY} is {table.shape[0]} x {table.shape[1]}, its {STATE_FILE} says "
                           f"{sum(table_sizes)} x {dim}")
    suffixes = state_suffixes(config["store"]["size_factor"])
    state = [graph[f"{GRAPH_MODULE}{TABLE_KEY}-{s}"] for s in suffixes if f"{GRAPH_MODULE}{TABLE_KEY}-{s}" in graph]
    return np.concatenate([table] + state, axis=1) if len(state) == len(suffixes) else table


def store_options(persistent_path, world_size, key_type, storage_dim):
    """What a GPU run records under OneEmbeddingKeyValueOptions (the fields loading reads)."""
    return {"name": "sparse_embedding", "key_type_size": np.dtype(key_type).itemsize, "value_type_size": 4,
            "value_type": "oneflow.float32", "storage_dim": storage_dim, "parallel_num": world_size,
            "kv_store": {"persistent_table": {"path": persistent_path, "physical_block_size": 4096}}}


def temp_dirs(output_dir, persistent_path):
    """The directories a conversion writes first and renames into place when complete."""
    return [output_dir.rstrip("/") + ".tmp"] + ([persistent_path.rstrip("/") + f".tmp-{os.getpid()}"]
                                                 if persistent_path else [])


def check_destinations(output_dir, persistent_path):
    """Nothing the conversion would write over exists: it replaces and removes nothing it did not write."""
    if os.path.exists(output_dir):
        raise ConvertError(f"--output_dir {output_dir} exists: give a new directory")
    if persistent_path and os.path.exists(persistent_path) and os.listdir(persistent_path):
        raise ConvertError(f"--persistent_path {persistent_path} is not empty: converting writes a fresh store")
    for tmp in temp_dirs(output_dir, persistent_path):
        if os.path.lexists(tmp):
            raise ConvertError(f"{tmp} exists (left by an interrupted conversion?): the conversion writes there "
                               f"first; remove it yourself, or give another destination")


def convert(model_load_dir, output_dir, persistent_path=None, world_size=None, data_dir=None,
            source_persistent_path=None):
    """Convert the checkpoint at model_load_dir into output_dir: with persistent_path, a store of
    world_size ranks there plus a checkpoint naming its snapshot; without, a self-contained one.
    Returns a one-line summary."""
    if persistent_path and not world_size:
        raise ConvertError("--persistent_path needs --world_size (the number of GPUs that will load the store)")
    if world_size and not persistent_path:
        raise ConvertError("--world_size is for a store: give --persistent_path too")
    check_destinations(output_dir, persistent_path)
    weights, graph, state = read_checkpoint(model_load_dir)
    config = state["config"]
    table_sizes, dim = config["model"]["table_sizes"], config["model"]["embedding_vec_size"]
    entry = store_entry(weights)
    if entry is None and TABLE_KEY not in weights:
        raise ConvertError(f"{model_load_dir} holds neither {TABLE_KEY} nor a OneEmbedding snapshot")
    if entry is None and persistent_path is None:
        raise ConvertError(f"{model_load_dir} is self-contained already: give --persistent_path P --world_size N "
                           f"to write its rows to a store")

    keys = values = rows = None
    data_dir = data_dir or config["data"]["data_dir"]
    if entry is not None:  # the source rows are in a store
        keys, values = read_store_rows(model_load_dir, entry, dim, source_persistent_path)
    else:
        rows = cpu_rows_of(weights, graph, config, model_load_dir)
    if (entry is None) != (persistent_path is None):  # CPU rows <-> store keys: the dataset's ids map them
        ids = checkpoint_dataset_ids(data_dir, table_sizes, model_load_dir)
    if persistent_path is None:  # store -> self-contained
        rows = store_as_table(keys, values, initial_table(config["model"], config["seed"]), ids, table_sizes)
    elif rows is not None:  # CPU -> store
        keys, values = table_to_store(rows, ids, table_sizes)
        keys = keys.astype(config["store"]["key_type"])

    weights = {k: v for k, v in weights.items() if not k.startswith(ONE_EMBEDDING_PREFIX) and k != TABLE_KEY}
    graph = {k: v for k, v in graph.items() if not k.startswith(f"{GRAPH_MODULE}{TABLE_KEY}-")}
    factor = (rows if persistent_path is None else values).shape[1] // dim
    tmp_store = None
    if persistent_path is None:
        weights[TABLE_KEY], table_state = split_table_state(rows, dim)
        graph.update(table_state)
    else:
        snapshot = snapshot_name()
        tmp_store = temp_dirs(output_dir, persistent_path)[1]  # absent: check_destinations
        write_rows(rank_paths(tmp_store, world_size), snapshot, keys, values)
        weights[ONE_EMBEDDING_PREFIX + "shadow"] = np.zeros(1, np.float32)  # MultiTableEmbedding's parameter
        weights[ONE_EMBEDDING_PREFIX + SNAPSHOT_KEY] = snapshot
        weights[ONE_EMBEDDING_PREFIX + OPTIONS_KEY] = json.dumps(
            store_options(persistent_path, world_size, config["store"]["key_type"], values.shape[1]))
    config["store"]["persistent_path"] = persistent_path
    config["store"]["size_factor"] = factor
    state["converted_from"] = os.path.abspath(model_load_dir)
    write_checkpoint(output_dir, weights, graph, state)
    if tmp_store:
        if os.path.isdir(persistent_path):
            os.rmdir(persistent_path)  # empty (check_destinations)
        os.rename(tmp_store, persistent_path)
    os.rename(output_dir.rstrip("/") + ".tmp", output_dir)
    what = (f"a store of {world_size} rank(s) at {persistent_path} ({len(keys)} rows)" if persistent_path
            else f"a self-contained checkpoint ({len(rows)} rows)")
    return f"wrote {output_dir}: {what}, {factor - 1} optimizer state value(s) per embedding value"


def write_checkpoint(output_dir, weights, graph, state):
    """output_dir + '.tmp' (the caller renames it): the weights, graph_state/, train_state.json, manifest."""
    tmp = temp_dirs(output_dir, None)[0]  # absent: check_destinations
    as_tensors = {k: flow.tensor(v) if isinstance(v, np.ndarray) else v for k, v in weights.items()}
    flow.save(as_tensors, tmp)
    if graph:
        flow.save({k: flow.tensor(v) for k, v in graph.items()}, os.path.join(tmp, GRAPH_STATE_DIR))
    write_json(os.path.join(tmp, STATE_FILE), state, indent=1)
    write_manifest(tmp)


__all__ = ["convert", "ConvertError", "StoreError"]
