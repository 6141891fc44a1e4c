"""Checkpoints: model weights as the original writes them, plus train_state.json, atomically.

Layout of <model_save_dir>/<name>/:
  pickled_data + tensor folders   flow.save(module.state_dict()) -- loadable by the original
                                  script's --model_load_dir (and the original's by ours). With
                                  OneEmbedding this holds the snapshot name; the embedding rows
                                  live under --persistent_path, which must stay the same.
  train_state.json                step, learning rate, reader positions and the resolved run
                                  configuration (RunConfig.to_dict(); ours only).
The folder is written as .tmp-<name> and renamed when complete, so a killed run never leaves a
checkpoint that looks whole; --resume takes the newest complete one.
"""
import glob
import json
import os
import shutil

import oneflow as flow

from dlrm.schedule import lr_at

STATE_FILE = "train_state.json"


def save_checkpoint(module, save_dir, name, train_state):
    """Collective: every rank calls it; rank 0 writes."""
    rank = flow.env.get_rank()
    final = os.path.join(save_dir, name)
    tmp = os.path.join(save_dir, f".tmp-{name}")
    if rank == 0:
        os.makedirs(save_dir, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
    flow.comm.barrier()
    flow.save(module.state_dict(), tmp, global_dst_rank=0)
    if rank == 0:
        with open(os.path.join(tmp, STATE_FILE), "w") as f:
            json.dump(train_state, f, indent=1)
        if os.path.exists(final):  # e.g. a rerun reaching the same step: replace it whole
            shutil.rmtree(final)
        os.rename(tmp, final)
    flow.comm.barrier()
    return final


def read_train_state(path):
    state_file = os.path.join(path, STATE_FILE)
    if not os.path.exists(state_file):
        return None
    with open(state_file) as f:
        return json.load(f)


def latest_checkpoint(save_dir):
    """Newest complete checkpoint (highest step) of ours in save_dir, or None."""
    best, best_step = None, -1
    for path in glob.glob(os.path.join(save_dir, "*", STATE_FILE)):
        step = read_train_state(os.path.dirname(path))["step"]
        if step > best_step:
            best, best_step = os.path.dirname(path), step
    return best


def load_weights(module, path):
    """Load weights saved by us or by the original script.

    Extra keys are ignored (as the original's strict=False), but a checkpoint that lacks any of
    this model's tensors is an error rather than a silently half-initialised model.
    """
    if not os.path.isdir(path):
        raise FileNotFoundError(f"--model_load_dir {path}: no such checkpoint directory")
    state_dict = flow.load(path, global_src_rank=0)
    missing = [k for k in module.state_dict() if k not in state_dict]
    if missing:
        raise ValueError(f"checkpoint {path} lacks {len(missing)} of this model's tensors "
                         f"(e.g. {', '.join(missing[:3])}): different --bottom_mlp/--top_mlp/"
                         f"--disable_fusedmlp or device?")
    module.load_state_dict(state_dict, strict=False)


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


def restore(module, train_graph, path, cfg, placement):
    """Load weights; for our checkpoints also the step, so the LR schedule and the reader resume.

    Returns the number of steps already taken (0 for weights-only checkpoints)."""
    load_weights(module, path)
    state = read_train_state(path)
    if state is None or state["step"] == 0:
        return 0
    saved_batch = state["config"]["data"]["train_batch_size"] if "config" in state \
        else state["args"]["train_batch_size"]  # checkpoints of version 0.1 stored the flags
    if state["world_size"] != cfg.world_size or saved_batch != cfg.data.train_batch_size:
        raise ValueError(f"{path} was written by {state['world_size']} processes with --train_batch_size "
                         f"{saved_batch}; resume with the same (now {cfg.world_size}, "
                         f"{cfg.data.train_batch_size}), or pass a weights-only checkpoint")
    step = flow.tensor([state["step"]], dtype=flow.int64).to_global(placement=placement, sbp=flow.sbp.broadcast)
    train_graph.load_state_dict({"System-Train-TrainStep": step}, strict=False)  # the LR schedule's clock
    return state["step"]
