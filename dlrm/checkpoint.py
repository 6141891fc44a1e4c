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
MLP parameters load in either layout (nn.FusedMLP's `weight_<i>` or the plain layers'
`<i>.features.0.weight`), so a checkpoint of a fused (GPU) run loads into an unfused (CPU) run and
back.
The folder is written as .tmp-<name> and renamed when complete, so a killed run never leaves a
checkpoint that looks whole; --resume takes the newest complete one.
"""
import glob
import os
import re
import shutil

import oneflow as flow

from dlrm.distributed import sum_over_ranks
from dlrm.jsonfile import read_json, write_json
from dlrm.schedule import lr_at

STATE_FILE = "train_state.json"
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
    return dict(zip(c.additional_var_names, c.additional_var_tensors))


def save_checkpoint(module, save_dir, name, train_state, graph=None):
    """Collective: every rank calls it; rank 0 writes."""
    rank = flow.env.get_rank()
    final = os.path.join(save_dir, name)
    tmp = os.path.join(save_dir, f".tmp-{name}")
    if rank == 0:
        os.makedirs(save_dir, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    flow.comm.barrier()
    flow.save(module.state_dict(), tmp, global_dst_rank=0)
    variables = graph_variables(graph)
    if variables:
        flow.save(variables, os.path.join(tmp, GRAPH_STATE_DIR), global_dst_rank=0)
    if rank == 0:
        write_json(os.path.join(tmp, STATE_FILE), train_state, indent=1)
        if os.path.exists(final):  # e.g. a rerun reaching the same step: replace it whole
            shutil.rmtree(final)
        os.rename(tmp, final)
    flow.comm.barrier()
    return final


def read_train_state(path):
    return read_json(os.path.join(path, STATE_FILE))


def latest_checkpoint(save_dir):
    """Newest complete checkpoint (highest step) of ours in save_dir, or None."""
    best, best_step = None, -1
    for path in glob.glob(os.path.join(save_dir, "*", STATE_FILE)):
        step = read_train_state(os.path.dirname(path))["step"]
        if step > best_step:
            best, best_step = os.path.dirname(path), step
    return best


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


def load_weights(module, path):
    """Load weights saved by us or by the original script, in the fused or the plain MLP layout.

    Extra keys are ignored (as the original's strict=False), but a checkpoint that lacks any of
    this model's tensors is an error rather than a silently half-initialised model.
    """
    keys = state_keys(module)
    state_dict = match_mlp_layout(flow.load(path, global_src_rank=0), keys)
    missing = [k for k in keys if k not in state_dict]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {len(missing)} of this model's tensors "
                         f"(e.g. {', '.join(missing[:3])}): different --bottom_mlp/--top_mlp or device?")
    try:
        module.load_state_dict(state_dict, strict=False)
    except RuntimeError as e:  # OneEmbedding could not load its snapshot
        raise ValueError(f"checkpoint {path}: {str(e).splitlines()[-1].strip()} (same --persistent_path "
                         f"and number of GPUs as the run that wrote it?)") from None


def checkpoint_name(step, auc=None):
    if auc is None:
        return f"step_{step}"
    return f"step_{step}_val_auc_{auc:0.5f}"


def train_state(step, cfg, reader=None, auc=None):
    """What train_state.json holds: enough to resume exactly (with `reader`, the train reader)."""
    state = {"step": step, "lr": lr_at(step + 1, cfg.schedule), "auc": auc, "world_size": cfg.world_size,
             "config": cfg.to_dict()}
    if reader is not None:
        state["reader"] = {"batches_consumed_per_rank": step, "seed": cfg.seed,
                           "epoch_segment_row_per_rank": [reader.position(step, r) for r in range(cfg.world_size)]}
    return state


def locate_checkpoint(ckpt):
    """Rank 0 only: the checkpoint a run starts from, as a JSON-able dict (None: none).

    --resume takes the newest complete checkpoint in --model_save_dir, else --model_load_dir. Only
    rank 0 looks at the files and reads them (flow.load with global_src_rank=0): other nodes need
    not see the checkpoint directories; main broadcasts this to every rank."""
    path = (latest_checkpoint(ckpt.model_save_dir) if ckpt.resume else None) or ckpt.model_load_dir
    if not path:
        return None
    if not os.path.isdir(path):
        return {"path": path, "error": f"--model_load_dir {path}: no such checkpoint directory"}
    return {"path": path, "state": read_train_state(path),
            "graph_state": os.path.isdir(os.path.join(path, GRAPH_STATE_DIR))}


def load_found_weights(module, found, placement):
    """Load the weights of what locate_checkpoint found (load_weights) on every rank. Collective:
    every rank raises the same ValueError (one line) if any rank fails."""
    path, error = found["path"], found.get("error")
    if error is None:
        try:
            load_weights(module, path)
        except ValueError as e:
            error = str(e)
    failed = sum_over_ranks(1.0 if error else 0.0, placement)
    if failed:
        raise ValueError(error or f"checkpoint {path}: loading failed on {int(failed)} other rank(s)")


def restore(module, train_graph, found, cfg, placement):
    """Load what locate_checkpoint found: the weights and, for our checkpoints, the step, the optimizer
    state and so the LR schedule and the reader position. Collective; every rank raises the same
    ValueError (one line) if any rank fails. Returns the steps already taken (0: weights only)."""
    path, state = found["path"], found.get("state")
    load_found_weights(module, found, placement)
    if state is None or state["step"] == 0:
        return 0
    saved_batch = state["config"]["data"]["train_batch_size"] if "config" in state \
        else state["args"]["train_batch_size"]  # checkpoints of version 0.1 stored the flags
    if state["world_size"] != cfg.world_size or saved_batch != cfg.data.train_batch_size:
        raise ValueError(f"{path} was written by {state['world_size']} processes with --train_batch_size "
                         f"{saved_batch}; resume with the same (now {cfg.world_size}, "
                         f"{cfg.data.train_batch_size}), or pass a weights-only checkpoint")
    if found["graph_state"]:  # optimizer state and step counter, loaded when the graph compiles
        train_graph.load_state_dict(flow.load(os.path.join(path, GRAPH_STATE_DIR), global_src_rank=0),
                                    strict=False)
    else:  # checkpoints of version 0.1 hold no optimizer state (plain SGD has none): set the clock
        step = flow.tensor([state["step"]], dtype=flow.int64).to_global(placement=placement, sbp=flow.sbp.broadcast)
        train_graph.load_state_dict({STEP_KEY: step}, strict=False)
    return state["step"]
