"""Fast unit tests of checkpoints: atomic write, newest-complete lookup, loading and refusals (real OneFlow)."""
import dataclasses
import os

import numpy as np
import oneflow as flow
import pytest

from dlrm.checkpoint import (checkpoint_name, latest_checkpoint, load_weights, locate_checkpoint, mlp_key,
                             read_train_state, reader_plan, restore, save_checkpoint, train_state,
                             verify_manifest)
from dlrm.data import BatchReader, fresh_plan
from dlrm.config import get_parser, resolve
from dlrm.distributed import cpu_placement
from dlrm.graphs import make_train_graph
from dlrm.model import DLRM


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
    found = locate_checkpoint(dataclasses.replace(cfg.checkpoint, model_load_dir=str(tmp_path / "step_30")))
    assert restore(b, make_train_graph(b, cfg), found, cfg, cpu_placement()) == 30
    for k, v in params(a).items():
        np.testing.assert_array_equal(params(b)[k], v, err_msg=k)


def test_restore_with_another_batch_plans_the_rest_of_the_epoch_and_refuses_missing_tensors(cfg, tmp_path):
    tmp_path = tmp_path / "ckpt"
    module = model(cfg)
    save_checkpoint(module, str(tmp_path), "step_5", train_state(5, cfg))  # 100 of the 240 train rows read
    other = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, train_batch_size=40))
    found = locate_checkpoint(dataclasses.replace(cfg.checkpoint, model_load_dir=str(tmp_path / "step_5")))
    assert restore(module, make_train_graph(module, other), found, other, cpu_placement()) == 5
    plan = reader_plan(found["state"], other)
    assert plan["base_step"] == 5 and plan["first_epoch"] == 1
    assert sum(b - a for _, a, b in plan["prefix"][0]) == 140
    assert reader_plan(found["state"], cfg) == fresh_plan(1)  # the same processes and batch: its own plan
    bigger = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, top_mlp=(16, 8)))
    with pytest.raises(ValueError, match="lacks 2 of this model's tensors"):
        load_weights(model(bigger), str(tmp_path / "step_5"))
    found = locate_checkpoint(dataclasses.replace(cfg.checkpoint, model_load_dir=str(tmp_path / "nope")))
    with pytest.raises(ValueError, match="--model_load_dir .*nope: no such checkpoint directory"):
        restore(module, None, found, cfg, cpu_placement())


def test_weights_only_checkpoint_restores_no_step(cfg, tmp_path):
    tmp_path = tmp_path / "ckpt"
    module = model(cfg)
    save_checkpoint(module, str(tmp_path), "initial_checkpoint", train_state(0, cfg))
    for name in ("train_state.json", "MANIFEST.json"):  # as the original's checkpoints
        os.remove(tmp_path / "initial_checkpoint" / name)
    found = locate_checkpoint(dataclasses.replace(cfg.checkpoint, model_load_dir=str(tmp_path / "initial_checkpoint")))
    assert found["state"] is None and restore(module, None, found, cfg, cpu_placement()) == 0


def test_resume_takes_the_newest_checkpoint_of_the_save_dir(cfg, tmp_path):
    module = model(cfg)
    for step in (10, 20):
        save_checkpoint(module, str(tmp_path), checkpoint_name(step), train_state(step, cfg))
    ckpt = dataclasses.replace(cfg.checkpoint, model_save_dir=str(tmp_path), resume=True,
                               model_load_dir=str(tmp_path / "step_10"))
    assert locate_checkpoint(ckpt)["path"] == str(tmp_path / "step_20")
    assert locate_checkpoint(dataclasses.replace(ckpt, model_save_dir=str(tmp_path / "empty")))["path"] == \
        str(tmp_path / "step_10")  # nothing to resume yet: the weights to start from
    assert locate_checkpoint(dataclasses.replace(ckpt, resume=False, model_load_dir=None)) is None


@pytest.mark.parametrize("saved_fused", [True, False])
def test_fused_and_plain_mlp_checkpoints_load_into_each_other(cfg, tmp_path, saved_fused):
    saved = model(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, fused_mlp=saved_fused)), seed=3)
    save_checkpoint(saved, str(tmp_path), "w", train_state(0, cfg))
    other = model(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, fused_mlp=not saved_fused)), seed=4)
    load_weights(other, str(tmp_path / "w"))
    a, b = params(saved), params(other)
    assert sorted(a) != sorted(b) and len(a) == len(b)
    by_layer = {mlp_key(k) or k: v for k, v in a.items()}
    for k, v in b.items():
        np.testing.assert_array_equal(v, by_layer[mlp_key(k) or k], err_msg=k)
    dense = flow.tensor(np.random.default_rng(0).random((4, 13), dtype=np.float32)).to_global(
        cpu_placement(), flow.sbp.broadcast)
    ids = flow.tensor(np.arange(4 * 26).reshape(4, 26)).to_global(cpu_placement(), flow.sbp.broadcast)
    np.testing.assert_allclose(saved(dense, ids).to_local().numpy(), other(dense, ids).to_local().numpy(), rtol=1e-5)


def biggest_tensor_file(checkpoint):
    files = [os.path.join(r, f) for r, _, fs in os.walk(checkpoint) for f in fs if f == "out"]
    return max(files, key=os.path.getsize)


def test_a_damaged_checkpoint_is_one_line_and_resume_takes_the_newest_that_verifies(cfg, tmp_path, capsys):
    module = model(cfg)
    for step in (10, 20, 30):
        save_checkpoint(module, str(tmp_path), checkpoint_name(step), train_state(step, cfg))
    assert os.path.isfile(tmp_path / "step_30" / "MANIFEST.json")
    assert verify_manifest(str(tmp_path / "step_30")) is None
    truncated = biggest_tensor_file(tmp_path / "step_30")  # the embedding table: 182 x 8 floats
    size = os.path.getsize(truncated)
    with open(truncated, "r+b") as f:
        f.truncate(size - 100)
    name = os.path.relpath(truncated, tmp_path / "step_30")
    state_size = os.path.getsize(tmp_path / "step_20" / "train_state.json")
    with open(tmp_path / "step_20" / "train_state.json", "a") as f:  # one byte more
        f.write(" ")
    ckpt = dataclasses.replace(cfg.checkpoint, model_save_dir=str(tmp_path), resume=True)
    assert locate_checkpoint(ckpt)["path"] == str(tmp_path / "step_10")
    err = capsys.readouterr().err.splitlines()
    assert err == [f"warning: skipping {tmp_path / 'step_30'}: checkpoint {tmp_path / 'step_30'}: {name} is "
                   f"{size - 100} bytes, MANIFEST.json says {size} (damaged or partly copied)",
                   f"warning: skipping {tmp_path / 'step_20'}: checkpoint {tmp_path / 'step_20'}: train_state.json "
                   f"is {state_size + 1} bytes, MANIFEST.json says {state_size} (damaged or partly copied)"]
    found = locate_checkpoint(dataclasses.replace(ckpt, resume=False, model_load_dir=str(tmp_path / "step_30")))
    with pytest.raises(ValueError, match=f"{name} is {size - 100} bytes"):
        restore(module, None, found, cfg, cpu_placement())
    with pytest.raises(ValueError, match=f"{name} is {size - 100} bytes"):
        load_weights(module, str(tmp_path / "step_30"))
    with open(truncated, "ab") as f:  # the right size again, other bytes
        f.write(b"\0" * 100)
    assert verify_manifest(str(tmp_path / "step_30")) == \
        f"checkpoint {tmp_path / 'step_30'}: {name} differs from its sha256 in MANIFEST.json (damaged)"


def test_graph_state_of_a_fused_run_is_named_after_a_plain_models_parameters(cfg):
    from dlrm.checkpoint import graph_state_for
    plain = model(cfg)  # CPU: plain layers
    saved = {"module.bottom_mlp.linear_layers.weight_0-m": 1, "module.top_mlp.linear_layers.bias_1-v": 2,
             "module.embedding.weight-m": 3, "System-Train-TrainStep": 4}
    assert graph_state_for(plain, saved) == {
        "module.bottom_mlp.linear_layers.0.features.0.weight-m": 1, "module.top_mlp.linear_layers.1.features.bias-v": 2,
        "module.embedding.weight-m": 3, "System-Train-TrainStep": 4}
