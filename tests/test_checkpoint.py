"""Fast unit tests of checkpoints: atomic write, newest-complete lookup, loading and refusals (real OneFlow)."""
import dataclasses
import os

import numpy as np
import oneflow as flow
import pytest

from dlrm.checkpoint import (checkpoint_name, latest_checkpoint, load_weights, read_train_state, restore,
                             save_checkpoint, train_state)
from dlrm.config import resolve
from dlrm.data import BatchReader
from dlrm.distributed import cpu_placement
from dlrm.graphs import TrainGraph, make_grad_scaler
from dlrm.model import DLRM
from dlrm.schedule import make_lr_scheduler
from dlrm_train_eval import get_parser


@pytest.fixture
def cfg(tiny_dataset):
    args = get_parser().parse_args(["--data_dir", tiny_dataset, "--bottom_mlp", "16,8", "--embedding_vec_size", "8",
                                    "--top_mlp", "16", "--train_batch_size", "20", "--eval_batch_size", "20",
                                    "--warmup_batches", "10", "--learning_rate", "2"])
    return resolve(args, 1, cuda_available=False)


def model(cfg, seed=0):
    np.random.seed(seed)
    flow.manual_seed(seed)
    module = DLRM(cfg.model, cfg.store, "cpu")
    module.to_global(cpu_placement(), flow.sbp.broadcast)
    return module


def params(module):
    return {k: v.to_local().numpy().copy() for k, v in module.state_dict().items()}


def test_save_is_atomic_and_latest_takes_the_highest_complete_step(cfg, tmp_path):
    tmp_path = tmp_path / "ckpt"
    module = model(cfg)
    reader = BatchReader(cfg.data.train_groups, 20, 0, 1, train=True)
    try:
        for step in (5, 40, 12):
            save_checkpoint(module, str(tmp_path), checkpoint_name(step), train_state(step, cfg, reader))
    finally:
        reader.close()
    os.makedirs(tmp_path / ".tmp-step_99")  # a killed save: never taken
    assert sorted(os.listdir(tmp_path)) == [".tmp-step_99", "step_12", "step_40", "step_5"]
    assert latest_checkpoint(str(tmp_path)) == str(tmp_path / "step_40")
    state = read_train_state(str(tmp_path / "step_40"))
    assert state["step"] == 40 and state["lr"] == 2.0 and state["world_size"] == 1
    assert state["config"]["data"]["train_batch_size"] == 20 and state["config"]["model"]["table_sizes"] == [7] * 26
    assert state["reader"]["epoch_segment_row_per_rank"] == [[3, 4, 0]]  # 800 rows = 3 epochs of 240 + 4 groups
    assert checkpoint_name(7, 0.712341) == "step_7_val_auc_0.71234"


def test_weights_round_trip_and_restore_sets_the_step(cfg, tmp_path):
    tmp_path = tmp_path / "ckpt"
    a = model(cfg, seed=1)
    save_checkpoint(a, str(tmp_path), "step_30", train_state(30, cfg))
    b = model(cfg, seed=2)
    assert any((params(a)[k] != params(b)[k]).any() for k in params(a))
    opt = flow.optim.SGD(b.parameters(), lr=cfg.schedule.learning_rate)
    graph = TrainGraph(b, opt, make_lr_scheduler(opt, cfg.schedule), "cpu", False, make_grad_scaler("static"))
    assert restore(b, graph, str(tmp_path / "step_30"), cfg, cpu_placement()) == 30
    for k, v in params(a).items():
        np.testing.assert_array_equal(params(b)[k], v, err_msg=k)


def test_restore_refuses_other_ranks_or_batch_and_missing_tensors(cfg, tmp_path):
    tmp_path = tmp_path / "ckpt"
    module = model(cfg)
    save_checkpoint(module, str(tmp_path), "step_30", train_state(30, cfg))
    other = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, train_batch_size=40))
    with pytest.raises(ValueError, match="written by 1 processes with --train_batch_size 20; resume with the same "
                                         r"\(now 1, 40\)"):
        restore(module, None, str(tmp_path / "step_30"), other, cpu_placement())
    bigger = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, top_mlp=(16, 8)))
    with pytest.raises(ValueError, match="lacks 2 of this model's tensors"):
        load_weights(model(bigger), str(tmp_path / "step_30"))
    with pytest.raises(FileNotFoundError, match="no such checkpoint directory"):
        load_weights(module, str(tmp_path / "nope"))


def test_weights_only_checkpoint_restores_no_step(cfg, tmp_path):
    tmp_path = tmp_path / "ckpt"
    module = model(cfg)
    save_checkpoint(module, str(tmp_path), "initial_checkpoint", train_state(0, cfg))
    os.remove(tmp_path / "initial_checkpoint" / "train_state.json")  # e.g. the original's checkpoint
    assert restore(module, None, str(tmp_path / "initial_checkpoint"), cfg, cpu_placement()) == 0
