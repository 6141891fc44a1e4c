"""CPU-side checks of the CUDA path's pieces that can run without a GPU (fast)."""
import dataclasses
import os
import shutil
import stat

import numpy as np
import oneflow as flow
import pytest

from conftest import write_tiny_dataset
from dlrm.checkpoint import load_weights, locate_checkpoint, restore, save_checkpoint, state_keys, train_state
from dlrm.config import resolve
from dlrm.distributed import cpu_placement
from dlrm.evaluation import EvalSet, real_rows_mask
from dlrm.metrics import gpu_memory_mib
from dlrm.model import DLRM
from dlrm_train_eval import get_parser


def test_eval_batches_are_read_once_and_cached(tmp_path):
    root = write_tiny_dataset(str(tmp_path / "d"))
    cfg = resolve(get_parser().parse_args(["--data_dir", root, "--train_batch_size", "20", "--eval_batch_size", "30",
                                           "--bottom_mlp", "16,8", "--embedding_vec_size", "8"]), 1, False)
    eval_set = EvalSet(cfg.data, 0, 1)
    first = list(eval_set)
    assert [b.rows for b in first] == [30, 30, 30, 10]
    shutil.rmtree(os.path.join(root, "test"))  # a re-read would fail now
    second = list(eval_set)
    assert [b.rows for b in second] == [30, 30, 30, 10]
    for a, b in zip(first, second):
        np.testing.assert_array_equal(a.sparse, b.sparse)


class NoStateDict(DLRM):
    """A model whose state_dict() fails, as a stand-in for OneEmbedding's, which writes a snapshot."""

    def state_dict(self, *args, **kwargs):
        raise AssertionError("state_dict() called while loading")


def saved_and_other(tmp_path, other_class):
    """A config on a tiny dataset, a DLRM and a model of other_class (global, on the CPU)."""
    root = write_tiny_dataset(str(tmp_path / "d"))
    cfg = resolve(get_parser().parse_args(["--data_dir", root, "--train_batch_size", "20",
                                           "--bottom_mlp", "16,8", "--embedding_vec_size", "8"]), 1, False)
    models = DLRM(cfg.model, cfg.store, "cpu"), other_class(cfg.model, cfg.store, "cpu")
    for m in models:
        m.to_global(cpu_placement(), flow.sbp.broadcast)
    return (cfg, *models)


def test_loading_weights_does_not_call_state_dict(tmp_path):
    cfg, saved, model = saved_and_other(tmp_path, NoStateDict)
    save_checkpoint(saved, str(tmp_path / "ckpt"), "w", train_state(0, cfg))
    assert sorted(state_keys(model)) == sorted(saved.state_dict())
    load_weights(model, str(tmp_path / "ckpt" / "w"))
    np.testing.assert_array_equal(model.embedding.weight.to_local().numpy(), saved.embedding.weight.to_local().numpy())


@pytest.fixture
def fake_nvidia_smi(tmp_path, monkeypatch):
    """nvidia-smi that reports the --id it was asked for as the memory used."""
    path = tmp_path / "bin" / "nvidia-smi"
    path.parent.mkdir()
    path.write_text('#!/bin/sh\nfor a in "$@"; do case "$a" in --id=*) echo "${a#--id=}000";; esac; done\n')
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{path.parent}:{os.environ['PATH']}")
    return path


def test_gpu_memory_asks_for_this_ranks_visible_device(fake_nvidia_smi, monkeypatch):
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    assert gpu_memory_mib("cuda") == 7000.0  # local rank 1 is physical GPU 7
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert gpu_memory_mib("cuda") == 1000.0
    assert gpu_memory_mib("cpu") is None


class SnapshotMissing(DLRM):
    """load_state_dict fails as OneEmbedding's does when its snapshot is not under --persistent_path."""

    def load_state_dict(self, *args, **kwargs):
        raise RuntimeError('Error(s) in loading state_dict for DLRM:\n\tWhile Loading OneEmbedding Snapshot named '
                           '"2026-11-26-10-00-00-000000" failed, please check whether the Snapshot exist')


def test_a_failed_snapshot_load_is_one_line(tmp_path):
    cfg, saved, model = saved_and_other(tmp_path, SnapshotMissing)
    save_checkpoint(saved, str(tmp_path / "ckpt"), "step_5", train_state(5, cfg))
    found = locate_checkpoint(dataclasses.replace(cfg.checkpoint, model_load_dir=str(tmp_path / "ckpt" / "step_5")))
    with pytest.raises(ValueError) as e:
        restore(model, None, found, cfg, cpu_placement())
    message = str(e.value)
    assert "\n" not in message and 'Snapshot named "2026-11-26-10-00-00-000000" failed' in message
    assert "same --persistent_path and number of GPUs" in message


def test_padding_mask_is_derived_from_the_slices(tmp_path):
    root = write_tiny_dataset(str(tmp_path / "d"))  # 100 test rows: slices of 33, 33, 34
    cfg = resolve(get_parser().parse_args(["--data_dir", root, "--train_batch_size", "21", "--eval_batch_size", "30",
                                           "--bottom_mlp", "16,8", "--embedding_vec_size", "8"]), 3, False)
    readers = [list(EvalSet(cfg.data, r, 3)) for r in range(3)]
    assert cfg.data.eval_batches == 4 == len(readers[0])
    gathered = np.concatenate([np.arange(10) < readers[r][i].rows for i in range(4) for r in range(3)])
    np.testing.assert_array_equal(real_rows_mask(cfg.data, 3, 4), gathered)
    assert real_rows_mask(cfg.data, 3, 4).sum() == 100
