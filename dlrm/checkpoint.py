"""Checkpoints: model weights as the original writes them, plus train_state.json, atomically.

Layout of <model_save_dir>/<name>/:
  pickled_data + tensor folders   flow.save(module.state_dict()) -- loadable by the original
                                  script's --model_load_dir (and the original's by ours). With
                                  OneEmbedding this holds the snapshot name; the embedding rows
                                  live under --persistent_path, which must stay the same.
  train_state.json                step, learning rate, reader positions and the resolved run
                                  configuration (RunConfig.to_dict(); ours only).
  graph_state/                    the train graph's own variables: optimizer state (Adagrad sums,
                                  Adam moments) and the step counter (ours only; with OneEmbedding
                                  the embedding's optimizer state is in its snapshot).
  MANIFEST.json                   every other file's size and sha256, written last (ours only):
                                  loading verifies it first, so a truncated or damaged file is one
                                  line naming it, and --resume falls back to an older checkpoint.
MLP parameters load in either layout (nn.FusedMLP's `weight_<i>` or the plain layers'
`<i>.features.0.weight`), so a checkpoint of a fused (GPU) run loads into an unfused (CPU) run and
back.
The folder is written as .tmp-<name> and renamed when complete, so a killed run never leaves a
checkpoint that looks whole; --resume takes the newest complete one.
"""
import dataclasses
import errno
import fcntl
import glob
import hashlib
import json
import os
import socket
import sys
import re
import shutil
import time

import numpy as np
import oneflow as flow

from dlrm.data import fresh_plan, resume_plan
from dlrm.failfast import Failure
from dlrm.distributed import broadcast_json, broadcast_rows, cpu_placement, sum_over_ranks
from dlrm.jsonfile import read_json, write_json
from dlrm.schedule import lr_at
from dlrm.optimizers import OPTIMIZERS
from dlrm.store import StoreError, dataset_ids, missing_snapshot, rank_paths, read_rows, store_to_table

STATE_FILE = "train_state.json"
LOCK_FILE = "RUN_LOCK"  # held (flock) by the run writing to the directory; says which run that is
MANIFEST_FILE = "MANIFEST.json"
GRAPH_STATE_DIR = "graph_state"
STEP_KEY = "System-Train-TrainStep"  # nn.Graph's step counter, which drives the LR schedulers
_FUSED_KEY = re.compile(r"^(?P<mlp>.*)\.linear_layers\.(?P<kind>weight|bias)_(?P<layer>\d+)$")
_PLAIN_KEY = re.compile(r"^(?P<mlp>.*)\.linear_layers\.(?P<layer>\d+)\.features(?:\.0)?\.(?P<kind>weight|bias)$")


def graph_variables(graph):
    """The compiled graph's own variables (optimizer state, step counter) by name.

    Read from the compiled graph directly: nn.Graph.state_dict() would also call the module's
    state_dict(), which makes OneEmbedding write a whole snapshot."""
    if graph is None or not graph._is_compiled:
        return {}
    c = graph._c_nn_graph
    variables = dict(zip(c.additional_var_names, c.additional_var_tensors))
    if hasattr(graph, "host_variables"):  # optimizer state kept outside the graph (dlrm.sparse_adagrad)
        variables.update(graph.host_variables())
    return variables


def take_save_dir(save_dir):
    """Rank 0: make save_dir this run's for as long as the process lives (an flock on LOCK_FILE, which
    the kernel drops when the process ends, however it ends), or ValueError (one line) naming the run
    that has it or why the directory cannot be written. Returns the open lock file: keep it."""
    path = os.path.join(save_dir, LOCK_FILE)
    try:
        os.makedirs(save_dir, exist_ok=True)
        f = open(path, "a+")
    except OSError as e:
        raise ValueError(f"--model_save_dir {save_dir}: cannot write there ({e.strerror})") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        if e.errno in (errno.EAGAIN, errno.EACCES):
            raise ValueError(f"--model_save_dir {save_dir} is in use by another run ({holder}): wait for it to "
                             f"end, or save to another directory") from None
        raise ValueError(f"--model_save_dir {save_dir}: cannot lock {path} ({e.strerror}); runs sharing the "
                         f"directory would overwrite each other's checkpoints") from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()} on {socket.gethostname()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    f.flush()
    return f


def tensor_bytes(tensors):
    return sum(t.nelement() * t.element_size() for t in tensors if isinstance(t, flow.Tensor))


def write_failure(save_dir, error, need):
    """The one line for a checkpoint that could not be written to save_dir."""
    try:
        free = f"{shutil.disk_usage(save_dir).free / 2**20:,.0f} MiB free"
    except OSError:
        free = "free space unknown"
    if getattr(error, "errno", None) == errno.ENOSPC or error is None:
        return (f"--model_save_dir {save_dir}: no space for a checkpoint (needs ~{need / 2**20:,.0f} MiB, "
                f"{free}): free some space (or --keep_checkpoints K) and --resume")
    return f"--model_save_dir {save_dir}: writing a checkpoint failed: {error.strerror or error} ({free})"


def save_checkpoint(module, save_dir, name, train_state, graph=None):
    """Collective: every rank calls it; rank 0 writes. A checkpoint that cannot be written (no space,
    a read-only or failing disk) raises failfast.Failure on rank 0 (one line) and leaves nothing
    behind: the other ranks are stopped by dlrm.failfast."""
    rank = flow.env.get_rank()
    final = os.path.join(save_dir, name)
    tmp = os.path.join(save_dir, f".tmp-{name}")
    if rank == 0:
        os.makedirs(save_dir, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    flow.comm.barrier()
    state_dict = module.state_dict()  # with OneEmbedding, this writes a snapshot of the store
    variables = graph_variables(graph)
    need = tensor_bytes(state_dict.values()) + tensor_bytes(variables.values())
    if rank == 0 and shutil.disk_usage(save_dir).free < need:  # before writing anything
        raise Failure(write_failure(save_dir, None, need), code=4)
    try:
        flow.save(state_dict, tmp, global_dst_rank=0)
        if variables:
            flow.save(variables, os.path.join(tmp, GRAPH_STATE_DIR), global_dst_rank=0)
        if rank == 0:
            entry = store_entry(state_dict)
            if entry:  # the snapshot's name, for prune_checkpoints
                train_state = dict(train_state, snapshot=entry[0])
            write_json(os.path.join(tmp, STATE_FILE), train_state, indent=1)
            write_manifest(tmp)
            if os.path.exists(final):  # e.g. a rerun reaching the same step: replace it whole
                shutil.rmtree(final)
            os.rename(tmp, final)
    except OSError as e:
        if rank != 0:
            raise
        shutil.rmtree(tmp, ignore_errors=True)  # ours, half written
        raise Failure(write_failure(save_dir, e, need), code=4) from None
    flow.comm.barrier()
    return final


def prune_checkpoints(save_dir, keep, persistent_path=None):
    """Collective: delete all but the `keep` newest checkpoints of ours in save_dir, and each rank
    its own directory of their OneEmbedding snapshots under persistent_path (the rows stay in the
    store's files, which only grow). Returns the deleted checkpoints."""
    rank, world = flow.env.get_rank(), flow.env.get_world_size()
    old = [(path, (read_train_state(path) or {}).get("snapshot")) for path in complete_checkpoints(save_dir)[keep:]] \
        if rank == 0 else None
    old = broadcast_json(old, cpu_placement())
    if persistent_path:
        mine = rank_paths(persistent_path, world)[rank]
        for _, snapshot in old:
            if snapshot:
                shutil.rmtree(os.path.join(mine, "snapshots", snapshot), ignore_errors=True)
    if rank == 0:
        for path, _ in old:
            shutil.rmtree(path)
    flow.comm.barrier()
    return [path for path, _ in old]


def read_train_state(path):
    return read_json(os.path.join(path, STATE_FILE))


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def checkpoint_files(folder):
    """Relative paths of the files under folder, sorted, without the manifest."""
    out = []
    for root, _, files in os.walk(folder):
        out += [os.path.relpath(os.path.join(root, f), folder) for f in files]
    return sorted(f for f in out if f != MANIFEST_FILE)


def write_manifest(folder):
    """MANIFEST.json: {file: {size, sha256}} of every file under folder (written last, before the rename)."""
    files = {f: {"size": os.path.getsize(os.path.join(folder, f)), "sha256": file_sha256(os.path.join(folder, f))}
             for f in checkpoint_files(folder)}
    write_json(os.path.join(folder, MANIFEST_FILE), {"files": files}, indent=1)


def verify_manifest(folder):
    """None when every file the manifest lists is there with its size and checksum (or when there is
    no manifest: the original's checkpoints), else one line naming the file."""
    manifest = read_json(os.path.join(folder, MANIFEST_FILE))
    if manifest is None:
        return None
    for name, want in manifest["files"].items():
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            return f"checkpoint {folder}: {name} is missing (listed in {MANIFEST_FILE})"
        size = os.path.getsize(path)
        if size != want["size"]:
            return (f"checkpoint {folder}: {name} is {size} bytes, {MANIFEST_FILE} says {want['size']} "
                    f"(damaged or partly copied)")
        if file_sha256(path) != want["sha256"]:
            return f"checkpoint {folder}: {name} differs from its sha256 in {MANIFEST_FILE} (damaged)"
    extra = [f for f in checkpoint_files(folder) if f not in manifest["files"]]
    if extra:
        return f"checkpoint {folder}: {extra[0]} is not listed in {MANIFEST_FILE} (written after the save?)"
    return None


def complete_checkpoints(save_dir):
    """Our complete checkpoints in save_dir, newest (highest step) first."""
    found = [(read_train_state(os.path.dirname(p))["step"], os.path.dirname(p))
             for p in glob.glob(os.path.join(save_dir, "*", STATE_FILE))]
    return [path for _, path in sorted(found, key=lambda x: (-x[0], x[1]))]


def latest_checkpoint(save_dir, log=None):
    """Newest complete checkpoint of ours in save_dir that verifies against its manifest, or None.
    A newer one that does not verify is skipped with one line to `log` saying why."""
    for path in complete_checkpoints(save_dir):
        error = verify_manifest(path)
        if error is None:
            return path
        if log:
            log(f"warning: skipping {path}: {error}")
    return None


def mlp_key(key):
    """(mlp, layer, weight|bias) of an MLP parameter name in either layout, else None."""
    m = _FUSED_KEY.match(key) or _PLAIN_KEY.match(key)
    return (m["mlp"], int(m["layer"]), m["kind"]) if m else None


def match_mlp_layout(state_dict, keys):
    """state_dict plus, for each of `keys` it lacks, the same MLP parameter under its other layout's name."""
    other = {mlp_key(k): k for k in state_dict if mlp_key(k)}
    out = dict(state_dict)
    for k in keys:
        if k not in out and mlp_key(k) in other:
            out[k] = state_dict[other[mlp_key(k)]]
    return out


def state_keys(module):
    """The keys module.state_dict() has, without calling it (with OneEmbedding that writes a snapshot)."""
    keys = [name for name, _ in module.named_parameters()]
    for prefix, sub in module.named_modules():
        dot = prefix + "." if prefix else ""
        keys += [dot + n for n in sub._buffers if n not in sub._non_persistent_buffers_set]
        if isinstance(sub, flow.one_embedding.MultiTableEmbedding):
            keys.append(dot + "OneEmbeddingSnapshot")
    return keys


SNAPSHOT_KEY = "OneEmbeddingSnapshot"        # with OneEmbedding: the snapshot name (a string) ...
OPTIONS_KEY = "OneEmbeddingKeyValueOptions"  # ... and its store options (JSON: path, parallel_num)
TABLE_KEY = "embedding.weight"               # a CPU run's table (model.LocalEmbedding)
GRAPH_MODULE = "module."                     # how TrainGraph's variables name the module's parameters


def one_embedding_of(module):
    """The model's flow.one_embedding.MultiTableEmbedding, or None (a CPU model)."""
    for _, sub in module.named_modules():
        if isinstance(sub, flow.one_embedding.MultiTableEmbedding):
            return sub
    return None


def store_entry(state_dict):
    """(snapshot name, store options dict) of a checkpoint written with OneEmbedding, else None."""
    for key, value in state_dict.items():
        if key.split(".")[-1] == SNAPSHOT_KEY:
            options = state_dict.get(key[:-len(SNAPSHOT_KEY)] + OPTIONS_KEY)
            return value, json.loads(options) if isinstance(options, str) else None
    return None


def recorded_data_dir(path):
    state = read_train_state(path)
    return state["config"]["data"]["data_dir"] if state and "config" in state else None


def store_paths(options, persistent_path=None):
    """Every rank's directory of the store a checkpoint names (persistent_path overrides its root)."""
    return rank_paths(persistent_path or options["kv_store"]["persistent_table"]["path"], options["parallel_num"])


def read_store_rows(path, entry, dim, persistent_path=None):
    """(keys, values) of the snapshot the checkpoint at path names (entry: store_entry), each value
    the embedding (dim floats) followed by the optimizer state the store keeps."""
    snapshot, options = entry
    if options is None:
        raise StoreError(f"checkpoint {path} names snapshot {snapshot!r} but not its store options")
    keys, values = read_rows(store_paths(options, persistent_path), snapshot)
    if values.shape[1] % dim:
        raise StoreError(f"checkpoint {path}: its store keeps {values.shape[1]} floats per row, not a multiple of "
                         f"its embedding size {dim}")
    return keys, values


def checkpoint_dataset_ids(data_dir, table_sizes, path):
    """store.dataset_ids of the dataset a checkpoint's store rows are mapped to CPU rows with (and
    back): StoreError (one line) when data_dir is not here."""
    if not data_dir or not os.path.isdir(data_dir):
        raise StoreError(f"checkpoint {path}: the ids of its store rows are mapped to CPU rows with the dataset's "
                         f"ids, and its data_dir {data_dir} is not here: pass --data_dir")
    return dataset_ids(data_dir, table_sizes)


def store_as_table(keys, values, base, ids, table_sizes):
    """The store's rows as a CPU table, (rows, values' width) float32: the embedding of every id in
    ids (checkpoint_dataset_ids) and, after it, the optimizer state; rows of ids the store lacks keep
    `base`'s values (and zero state)."""
    rows = np.zeros((len(base), values.shape[1]), dtype=np.float32)
    rows[:, :base.shape[1]] = base
    store_to_table(keys, values, ids, table_sizes, rows)
    return rows


def read_store_table(embedding, path, entry, persistent_path=None, data_dir=None):
    """A GPU checkpoint's rows as a CPU table (store_as_table) over `embedding`'s current values."""
    weight = embedding.weight.to_local().numpy()
    keys, values = read_store_rows(path, entry, weight.shape[1], persistent_path)
    table_sizes = embedding.table_sizes.to_local().numpy().reshape(-1)
    ids = checkpoint_dataset_ids(data_dir or recorded_data_dir(path), table_sizes, path)
    return store_as_table(keys, values, weight, ids, table_sizes)


def split_table_state(rows, dim):
    """A table with its optimizer state side by side, (n, dim x factor) -> (table, {graph variable name:
    state}): the names under which a CPU checkpoint keeps the state in graph_state/."""
    state = {f"{GRAPH_MODULE}{TABLE_KEY}-{s}": rows[:, (i + 1) * dim:(i + 2) * dim]
             for i, s in enumerate(state_suffixes(rows.shape[1] // dim))}
    return rows[:, :dim], state


def state_suffixes(factor):
    """The optimizer state names (Optimizer.state) a store of size_factor `factor` holds."""
    return next((o.state for o in OPTIMIZERS.values() if o.size_factor == factor), ())


def agree(error, path):
    """Collective: every rank raises the same ValueError (one line) if any rank has an error."""
    failed = sum_over_ranks(1.0 if error else 0.0, cpu_placement())
    if failed:
        raise ValueError(error or f"checkpoint {path}: loading failed on {int(failed)} other rank(s)")


def load_weights(module, path, verify=True, persistent_path=None, data_dir=None):
    """Load weights saved by us or by the original script, in the fused or the plain MLP layout, on
    CUDA (OneEmbedding) or CPU, from a checkpoint of either: a CPU model reads a GPU checkpoint's
    rows from its store (the root the checkpoint records, or persistent_path; ids mapped with the
    dataset at data_dir, default the recorded one).

    Collective; every rank raises the same ValueError (one line) if any rank fails. With verify,
    rank 0 first checks the checkpoint against its manifest. Extra keys are ignored (as the
    original's strict=False), but a checkpoint that lacks any of this model's tensors is an error
    rather than a silently half-initialised model; with OneEmbedding every rank checks that its
    snapshot exists first (OneFlow would only log it and go on with fresh rows).
    Returns {graph variable name: tensor}: the embedding's optimizer state read from a store into a
    CPU model (restore loads it into the train graph), else {}.
    """
    if verify:
        error = broadcast_json(verify_manifest(path) if flow.env.get_rank() == 0 else None, cpu_placement())
        if error:
            raise ValueError(error)
    keys = state_keys(module)
    state_dict = match_mlp_layout(flow.load(path, global_src_rank=0), keys)
    entry, one_embedding = store_entry(state_dict), one_embedding_of(module)
    from_store = entry is not None and one_embedding is None and TABLE_KEY in keys
    error, rows = None, None
    try:
        if one_embedding is not None and entry is None and TABLE_KEY in state_dict:
            raise ValueError(f"checkpoint {path} holds the embedding table itself (a CPU run's): write its rows to a "
                             f"store with tools/convert_checkpoint.py --persistent_path P --world_size N")
        missing = [k for k in keys if k not in state_dict and not (from_store and k == TABLE_KEY)]
        if missing:
            raise ValueError(f"checkpoint {path} lacks {len(missing)} of this model's tensors "
                             f"(e.g. {', '.join(missing[:3])}): different --bottom_mlp/--top_mlp?")
        if one_embedding is not None:  # this rank's snapshot, before OneFlow silently skips it
            options = json.loads(one_embedding.key_value_store_options)
            error = missing_snapshot(store_paths(options)[flow.env.get_rank()], entry[0], options["parallel_num"])
        if from_store and flow.env.get_rank() == 0:  # rank 0 reads the store (it may be on node 0 only)
            rows = read_store_table(module.embedding, path, entry, persistent_path, data_dir)
    except ValueError as e:
        error = str(e)
    agree(error, path)
    extra = {}
    if from_store:
        weight = module.embedding.weight
        factor = int(broadcast_json(rows.shape[1] // weight.shape[1] if rows is not None else None, cpu_placement()))
        rows = broadcast_rows(rows, (weight.shape[0], weight.shape[1] * factor), weight.placement)
        state_dict[TABLE_KEY], extra = split_table_state(rows, weight.shape[1])
    module.load_state_dict(state_dict, strict=False)
    return extra


def checkpoint_name(step, auc=None):
    if auc is None:
        return f"step_{step}"
    return f"step_{step}_val_auc_{auc:0.5f}"


def train_state(step, cfg, reader=None, auc=None):
    """What train_state.json holds: enough to resume exactly (with `reader`, the train reader)."""
    state = {"step": step, "lr": lr_at(step + 1, cfg.schedule), "auc": auc, "world_size": cfg.world_size,
             "config": cfg.to_dict()}
    if reader is not None:
        state["reader"] = {"batches_consumed_per_rank": step, "seed": cfg.seed, "plan": reader.plan,
                           "epoch_segment_row_per_rank": [reader.position(step, r) for r in range(cfg.world_size)]}
    return state


def locate_checkpoint(ckpt):
    """Rank 0 only: the checkpoint a run starts from, as a JSON-able dict (None: none).

    --resume takes the newest complete checkpoint in --model_save_dir, else --model_load_dir. Only
    rank 0 looks at the files and reads them (flow.load with global_src_rank=0): other nodes need
    not see the checkpoint directories; main broadcasts this to every rank."""
    def warn(line):
        print(line, file=sys.stderr, flush=True)

    path = latest_checkpoint(ckpt.model_save_dir, warn) if ckpt.resume else None  # verified there
    if path is None:
        path = ckpt.model_load_dir
        if not path:
            return None
        if not os.path.isdir(path):
            return {"path": path, "error": f"--model_load_dir {path}: no such checkpoint directory"}
        error = verify_manifest(path)
        if error:
            return {"path": path, "error": error}
    return {"path": path, "state": read_train_state(path),
            "graph_state": os.path.isdir(os.path.join(path, GRAPH_STATE_DIR))}


def graph_state_for(module, saved):
    """A train graph's saved variables (`module.<parameter>-<state>`) named after this module's
    parameters: the MLPs' optimizer state of a fused (GPU) run loads into a plain (CPU) one and back."""
    names = [GRAPH_MODULE + k for k, _ in module.named_parameters()]
    out = {}
    for key, value in saved.items():
        param, dash, suffix = key.rpartition("-")
        if dash and param.startswith(GRAPH_MODULE) and param not in names:
            match = match_mlp_layout({param[len(GRAPH_MODULE):]: None},
                                     [n[len(GRAPH_MODULE):] for n in names])
            renamed = [k for k in match if k != param[len(GRAPH_MODULE):]]
            if renamed:
                key = f"{GRAPH_MODULE}{renamed[0]}-{suffix}"
        out[key] = value
    return out


def saved_train_batch(state):
    return state["config"]["data"]["train_batch_size"] if "config" in state \
        else state["args"]["train_batch_size"]  # checkpoints of version 0.1 stored the flags


def reader_plan(state, cfg):
    """The train reader's plan (data.reader_stream) to continue a checkpoint's run: its own with the
    same processes and batch size; else the rows its ranks had not read of the epochs they had
    started, dealt to this run's ranks first (data.resume_plan)."""
    reader = state.get("reader") or {}
    plan = reader.get("plan") or fresh_plan(state["world_size"])
    world, batch = state["world_size"], saved_train_batch(state)
    if (world, batch) == (cfg.world_size, cfg.data.train_batch_size):
        return plan
    groups = cfg.data.train_groups
    if any(g >= len(groups) for part in plan["prefix"] or [] for g, _, _ in part) or \
            len(groups) < plan["world_size"]:
        raise ValueError(f"train_state.json's reader plan does not fit the {len(groups)} row groups of "
                         f"{cfg.data.data_dir}/train: resume on the dataset the run was trained on")
    return resume_plan(groups, reader.get("seed", cfg.seed), plan, batch // world, state["step"], cfg.world_size)


def load_found_weights(module, found, persistent_path=None, data_dir=None):
    """Load the weights of what locate_checkpoint found (load_weights, which it verified already) on
    every rank; returns load_weights' embedding state. Collective: every rank raises the same
    ValueError (one line) if any rank fails."""
    if found.get("error"):  # every rank has the same `found` (rank 0's, broadcast)
        raise ValueError(found["error"])
    return load_weights(module, found["path"], verify=False, persistent_path=persistent_path, data_dir=data_dir)


# ModelConfig fields a checkpoint's weights depend on, and the flag that sets each
MODEL_FLAGS = {"embedding_vec_size": "--embedding_vec_size", "bottom_mlp": "--bottom_mlp", "top_mlp": "--top_mlp",
               "interaction_type": "--interaction_type", "interaction_itself": "--interaction_itself",
               "dense_input_padding": "--disable_dense_input_padding",
               "interaction_padding": "--disable_interaction_padding", "dcn_num_layers": "--dcn_num_layers",
               "dcn_low_rank_dim": "--dcn_low_rank_dim", "table_sizes": "--table_size_array (the dataset's)"}


def model_differences(saved, model):
    """The flags whose values differ between a checkpoint's recorded model (train_state.json's
    config.model) and this run's ModelConfig, as 'flag saved -> now' strings; [] when they agree.
    The DCN sizes count only for a DCN model."""
    now = dataclasses.asdict(model)
    defaults = {f.name: f.default for f in dataclasses.fields(model) if f.default is not dataclasses.MISSING}
    out = []
    for field, flag in MODEL_FLAGS.items():
        if field.startswith("dcn_") and now["interaction_type"] != "dcn":
            continue
        old = saved.get(field, defaults.get(field))  # fields added later have defaults
        if old is not None and list(np.atleast_1d(old)) != list(np.atleast_1d(now[field])):
            out.append(f"{flag} {fmt_value(old)} -> {fmt_value(now[field])}")
    return out


def fmt_value(value):
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value)) if len(value) <= 8 else f"[{len(value)} sizes, {sum(value):,} rows]"
    return str(value)


def restore(module, train_graph, found, cfg, placement):
    """Load what locate_checkpoint found: the weights and, for our checkpoints, the step, the optimizer
    state and so the LR schedule (reader_plan gives the reader position, on any number of processes
    and batch size). Collective; every rank raises the same ValueError (one line) if any rank fails.
    Returns the steps already taken (0: weights only)."""
    path, state = found["path"], found.get("state")
    if state and "config" in state:  # before any tensor is read: one line naming what differs
        differ = model_differences(state["config"]["model"], cfg.model)
        if differ:
            raise ValueError(f"checkpoint {path} holds another model than these flags build ({'; '.join(differ)}): "
                             f"pass the flags it was trained with, or another --model_save_dir")
    embedding_state = load_found_weights(module, found, cfg.store.persistent_path, cfg.data.data_dir)
    if state is None or state["step"] == 0:
        return 0
    if found["graph_state"]:  # optimizer state and step counter, loaded when the graph compiles
        saved = flow.load(os.path.join(path, GRAPH_STATE_DIR), global_src_rank=0)
        saved = {**graph_state_for(module, saved), **embedding_state}
        if hasattr(train_graph, "load_host_variables"):  # dlrm.sparse_adagrad keeps the table's sums itself
            saved = train_graph.load_host_variables(saved)
        train_graph.load_state_dict(saved, strict=False)
    else:  # checkpoints of version 0.1 hold no optimizer state (plain SGD has none): set the clock
        step = flow.tensor([state["step"]], dtype=flow.int64).to_global(placement=placement, sbp=flow.sbp.broadcast)
        train_graph.load_state_dict({STEP_KEY: step}, strict=False)
    return state["step"]
