"""CPU-side checks of the CUDA path's pieces that can run without a GPU (fast)."""
import os
import shutil
import stat

import numpy as np
import oneflow as flow
import pytest

from conftest import write_tiny_dataset
from dlrm.checkpoint import load_weights, save_checkpoint, state_keys, train_state
from dlrm.config import get_parser, resolve
from dlrm.distributed import cpu_placement
from dlrm.evaluation import EvalSet, real_rows_mask
from dlrm.metrics import gpu_memory_mib
from dlrm.model import DLRM


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


def test_padding_mask_is_derived_from_the_slices(tmp_path):
    root = write_tiny_dataset(str(tmp_path / "d"))  # 100 test rows: slices of 33, 33, 34
    cfg = resolve(get_parser().parse_args(["--data_dir", root, "--train_batch_size", "21", "--eval_batch_size", "30",
                                           "--bottom_mlp", "16,8", "--embedding_vec_size", "8"]), 3, False)
    readers = [list(EvalSet(cfg.data, r, 3)) for r in range(3)]
    assert cfg.data.eval_batches == 4 == len(readers[0])
    gathered = np.concatenate([np.arange(10) < readers[r][i].rows for i in range(4) for r in range(3)])
    np.testing.assert_array_equal(real_rows_mask(cfg.data, 3, 4), gathered)
    assert real_rows_mask(cfg.data, 3, 4).sum() == 100


def test_eval_padding_rows_carry_a_real_rows_ids(tmp_path):
    root = write_tiny_dataset(str(tmp_path / "d"))  # test rows 240..339: ids r % 7 + 7 j
    cfg = resolve(get_parser().parse_args(["--data_dir", root, "--train_batch_size", "20", "--eval_batch_size", "30",
                                           "--bottom_mlp", "16,8", "--embedding_vec_size", "8"]), 1, False)
    batches = list(EvalSet(cfg.data, 0, 1))
    assert [b.rows for b in batches] == [30, 30, 30, 10]
    first = 240 % 7 + 7 * np.arange(26)
    np.testing.assert_array_equal(batches[0].sparse[0], first)
    np.testing.assert_array_equal(batches[3].sparse[10:], np.tile(first, (20, 1)))
    assert not batches[3].label[10:].any() and not batches[3].dense[10:].any()
    assert (batches[3].sparse[10:] != 0).all()  # id 0 is table 0's row 0, not the padding's
