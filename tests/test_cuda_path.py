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


def test_gpu_predict_builds_each_model_with_its_checkpoints_seed_and_room_for_new_ids(tmp_path):
    """dlrm_predict.py's DLRM arguments (dlrm.predict.model_arguments) for a checkpoint of a run with
    --seed 77: OneEmbedding's seed 77 (DLRM passes it to MultiTableEmbedding(seed=...)). In an
    evaluation job with a full cache OneFlow 0.9.0 does not put missing ids into the store and
    initialises them at every lookup from that seed (one_embedding_kernels.cu: put_to_store =
    !is_full_cache; InitValueKernel: curand_init(seed, id, col, ...)), so scoring gives an id training
    never saw the vector training's own evaluation gave it; OneFlow's default seed is 0. The store's
    capacity counts the rows scoring may add (new_id_bound)."""
    from dlrm.checkpoint import locate_checkpoint
    from dlrm.config import CheckpointConfig, store_capacity
    from dlrm.predict import model_arguments, trained_from
    root = write_tiny_dataset(str(tmp_path / "d"))
    cfg = resolve(get_parser().parse_args(["--data_dir", root, "--train_batch_size", "20", "--seed", "77",
                                           "--bottom_mlp", "16,8", "--embedding_vec_size", "8",
                                           "--store_type", "cached_host_mem"]), 1, False)
    module = DLRM(cfg.model, cfg.store, "cpu")
    module.to_global(cpu_placement(), flow.sbp.broadcast)
    path = save_checkpoint(module, str(tmp_path / "ckpt"), "w", train_state(0, cfg))
    trained = vars(trained_from(locate_checkpoint(CheckpointConfig(None, path, False, False, False, 0, 0))))
    first = model_arguments(trained, "cuda", str(tmp_path / "store"), 2)
    assert first["seed"] == 77 and first["embedding_name"] == "sparse_embedding" and first["device"] == "cuda"
    assert first["model"] == cfg.model  # (a CPU run: unfused MLPs, as recorded)
    assert first["store"].persistent_path == str(tmp_path / "store")
    assert first["store"].capacity == store_capacity(7 * 26, 2)
    second = model_arguments(trained, "cuda", None, 2, index=1, new_ids=500)
    assert second["seed"] == 77 and second["embedding_name"] == "sparse_embedding_1"
    assert second["store"].capacity == store_capacity(7 * 26 + 500, 2)


def test_new_ids_scoring_can_add_to_a_store(tmp_path):
    """dlrm.predict.new_id_bound: OneFlow 0.9.0 puts ids its store lacks into it at lookup unless the
    first cache is full (one_embedding_kernels.cu: put_to_store = !is_full_cache); cached_host_mem's
    LRU spills into a full host cache whose insert has no bound check (full_cache.cu), so its capacity
    must count them: at most the input's distinct ids per column (mod or hash ids; vocabulary ids are
    all the dataset's). device_mem (full first cache) and cached_ssd (no full cache) add nothing."""
    import pyarrow.parquet as pq

    from dlrm.data import list_row_groups, split_files
    from dlrm.predict import new_id_bound
    from dlrm.schema import SPARSE_COLUMNS
    root = write_tiny_dataset(str(tmp_path / "d"))
    groups = list_row_groups(split_files(root, "test"))
    table = pq.read_table(split_files(root, "test")[0])
    distinct = sum(len(np.unique(table.column(c).to_numpy())) for c in SPARSE_COLUMNS)
    assert distinct == 7 * 26
    for info in ({"id_mode": "mod"}, {"id_mode": "hash"}, None):
        assert new_id_bound(groups, info, "cached_host_mem") == distinct
    assert new_id_bound(groups, {"id_mode": "vocab"}, "cached_host_mem") == 0
    assert new_id_bound(groups, {"id_mode": "mod"}, "device_mem") == 0
    assert new_id_bound(groups, {"id_mode": "mod"}, "cached_ssd") == 0
