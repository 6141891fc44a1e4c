"""OneEmbedding stores written and read by OneFlow's own persistent table writer/reader on the CPU:
the store guards, checkpoint conversion (CPU <-> store, N -> M ranks) and CPU loading of store
checkpoints (fast; real stores, real checkpoints of in-process training runs)."""
import contextlib
import dataclasses
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import oneflow as flow
import pyarrow.parquet as pq
import pytest

import dlrm_train_eval as train
from conftest import REPO, read_metrics, write_tiny_dataset
from dlrm.checkpoint import load_weights, locate_checkpoint, restore
from dlrm.config import get_parser, resolve
from dlrm.convert import convert
from dlrm.distributed import cpu_placement
from dlrm.graphs import make_train_graph
from dlrm.model import DLRM
from dlrm.store import (StoreError, check_store, cpu_rows, dataset_ids, missing_snapshot, rank_paths, read_rows,
                        write_rows)

TINY = ["--bottom_mlp", "16,8", "--embedding_vec_size", "8", "--top_mlp", "16", "--train_batch_size", "20",
        "--eval_batch_size", "20", "--eval_interval", "0", "--eval_batches", "2", "--loss_print_interval", "5"]
MASK64 = (1 << 64) - 1
SNAPSHOT = "embedding.one_embedding.OneEmbeddingSnapshot"


def sharding_hash(key):
    """OneFlow's ShardingHash (hash_functions.cuh: xxh64 of the key as uint64, seed 1), in Python."""
    p1, p2, p3, p4, p5 = (0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0x85EBCA77C2B2AE63,
                          0x27D4EB2F165667C5)

    def rotl(x, r):
        return ((x << r) | (x >> (64 - r))) & MASK64

    acc = (1 + p5 + 8) & MASK64
    acc ^= (rotl((key & MASK64) * p2 & MASK64, 31) * p1) & MASK64
    acc = (rotl(acc, 27) * p1 + p4) & MASK64
    acc ^= acc >> 33
    acc = acc * p2 & MASK64
    acc ^= acc >> 29
    acc = acc * p3 & MASK64
    return acc ^ (acc >> 32)


@pytest.fixture(scope="module")
def adam_run(tmp_path_factory):
    """A CPU checkpoint after 10 Adam steps on the tiny dataset (182 rows of 8), with its dataset."""
    root = tmp_path_factory.mktemp("adam")
    data = write_tiny_dataset(str(root / "data"))
    assert train.main(["--data_dir", data, *TINY, "--optimizer", "adam", "--learning_rate", "0.01",
                       "--train_batches", "10", "--model_save_dir", str(root / "ckpt")]) == 0
    ckpt = root / "ckpt" / [p for p in os.listdir(root / "ckpt") if p.startswith("step_10")][0]
    return data, str(ckpt), root


def tensors(path):
    return {k: v.numpy() for k, v in flow.load(path).items() if isinstance(v, flow.Tensor)}


@pytest.mark.parametrize("world", [1, pytest.param(2, marks=pytest.mark.slow),
                                   pytest.param(8, marks=pytest.mark.slow)])
def test_cpu_to_store_to_cpu_is_bit_exact_and_store_rows_are_the_tables(adam_run, tmp_path, world):
    data, ckpt, _ = adam_run
    convert(ckpt, str(tmp_path / "gpu"), str(tmp_path / "store"), world)
    assert sorted(os.listdir(tmp_path / "store")) == [os.path.basename(p) for p in rank_paths(str(tmp_path / "store"),
                                                                                               world)]
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]
    convert(str(tmp_path / "gpu"), str(tmp_path / "cpu"))
    a, b = tensors(ckpt), tensors(str(tmp_path / "cpu"))
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    ga, gb = tensors(os.path.join(ckpt, "graph_state")), tensors(str(tmp_path / "cpu" / "graph_state"))
    assert ga.keys() == gb.keys() and "module.embedding.weight-v" in ga
    for k in ga:
        np.testing.assert_array_equal(ga[k], gb[k], err_msg=k)

    # The store: every id of every table, value = [embedding, Adam m, Adam v] of its CPU row,
    # each rank holding the ids OneFlow's ShardingHash deals it.
    snapshot = flow.load(str(tmp_path / "gpu"))[SNAPSHOT]
    keys, values = read_rows(rank_paths(str(tmp_path / "store"), world), snapshot)
    sizes = [7] * 26
    ids = dataset_ids(data, sizes)
    assert len(keys) == 182 and np.array_equal(keys, np.concatenate(ids))
    rows = np.concatenate([cpu_rows(i, j, sizes) for j, i in enumerate(ids)])
    np.testing.assert_array_equal(values[:, :8], a["embedding.weight"][rows])
    np.testing.assert_array_equal(values[:, 8:16], ga["module.embedding.weight-m"][rows])
    np.testing.assert_array_equal(values[:, 16:], ga["module.embedding.weight-v"][rows])
    for r, path in enumerate(rank_paths(str(tmp_path / "store"), world)):
        rank_keys, _ = read_rows([path], snapshot)
        assert all(sharding_hash(int(k)) % world == r for k in rank_keys)


def test_store_resharded_and_loaded_on_cpu_with_its_optimizer_state(adam_run, tmp_path):
    data, ckpt, _ = adam_run
    convert(ckpt, str(tmp_path / "g2"), str(tmp_path / "s2"), 2)
    convert(str(tmp_path / "g2"), str(tmp_path / "g3"), str(tmp_path / "s3"), 3)  # store -> store
    cfg = resolve(get_parser().parse_args(["--data_dir", data, *TINY, "--optimizer", "adam"]), 1, False)
    np.random.seed(5)
    module = DLRM(cfg.model, cfg.store, "cpu")
    module.to_global(cpu_placement(), flow.sbp.broadcast)
    graph = make_train_graph(module, cfg)
    found = locate_checkpoint(dataclasses.replace(cfg.checkpoint, model_load_dir=str(tmp_path / "g3")))
    assert restore(module, graph, found, cfg, cpu_placement()) == 10
    a, ga = tensors(ckpt), tensors(os.path.join(ckpt, "graph_state"))
    np.testing.assert_array_equal(module.embedding.weight.to_local().numpy(), a["embedding.weight"])
    extra = load_weights(module, str(tmp_path / "g3"))
    assert sorted(extra) == ["module.embedding.weight-m", "module.embedding.weight-v"]
    for k, v in extra.items():
        np.testing.assert_array_equal(v.to_local().numpy(), ga[k], err_msg=k)


def test_conversion_errors_are_one_line(adam_run, tmp_path):
    data, ckpt, _ = adam_run
    convert(ckpt, str(tmp_path / "g2"), str(tmp_path / "s2"), 2)
    cases = [
        (dict(model_load_dir=ckpt, output_dir=str(tmp_path / "o")), "is self-contained already"),
        (dict(model_load_dir=ckpt, output_dir=str(tmp_path / "o"), persistent_path=str(tmp_path / "s")),
         "--persistent_path needs --world_size"),
        (dict(model_load_dir=ckpt, output_dir=str(tmp_path / "g2"), persistent_path=str(tmp_path / "s"),
              world_size=2), "exists: give a new directory"),
        (dict(model_load_dir=ckpt, output_dir=str(tmp_path / "o"), persistent_path=str(tmp_path / "s2"),
              world_size=2), "is not empty: converting writes a fresh store"),
        (dict(model_load_dir=str(tmp_path / "g2"), output_dir=str(tmp_path / "o"),
              source_persistent_path=str(tmp_path / "nowhere")), "not found: no"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message) as e:
            convert(**kwargs)
        assert "\n" not in str(e.value)
    # a directory where the conversion writes first (o.tmp) that it did not make: refused, not removed
    os.makedirs(tmp_path / "o.tmp" / "mine")
    with pytest.raises(ValueError) as e:
        convert(ckpt, str(tmp_path / "o"), str(tmp_path / "s3"), 2)
    assert str(e.value) == (f"{tmp_path / 'o.tmp'} exists (left by an interrupted conversion?): the conversion "
                            f"writes there first; remove it yourself, or give another destination")
    assert os.listdir(tmp_path / "o.tmp") == ["mine"] and not os.path.exists(tmp_path / "s3")


@pytest.mark.slow  # two tool subprocesses
def test_tool_converts_and_reports_errors(adam_run, tmp_path):
    _, ckpt, _ = adam_run
    tool = os.path.join(REPO, "tools", "convert_checkpoint.py")
    run = subprocess.run([sys.executable, tool, "--model_load_dir", ckpt, "--output_dir", str(tmp_path / "g"),
                          "--persistent_path", str(tmp_path / "s"), "--world_size", "2"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and f"wrote {tmp_path / 'g'}: a store of 2 rank(s)" in run.stdout, run.stderr
    run = subprocess.run([sys.executable, tool, "--model_load_dir", ckpt, "--output_dir", str(tmp_path / "g")],
                         capture_output=True, text=True, timeout=120)
    errors = [line for line in run.stderr.splitlines() if line.startswith("error:")]
    assert run.returncode == 2 and errors == [f"error: --output_dir {tmp_path / 'g'} exists: give a new directory"]


# ----------------------------------------------------------------------------- guards
@contextlib.contextmanager
def holding_store(paths, dim):
    """Another process holding the store at paths open (OneFlow's writer takes each LOCK), as a training
    still running does; killed afterwards."""
    holder = subprocess.Popen([sys.executable, "-c", (
        "import time, oneflow as flow\n"
        f"w = flow.one_embedding.make_persistent_table_writer({paths!r}, 's2', flow.int64, flow.float, {dim})\n"
        "print('holding', flush=True)\n"
        "time.sleep(120)\n")], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        yield
    finally:
        holder.kill()
        holder.wait()


def written_store(root, world, dim, key_dtype=np.int64, snapshot="s1"):
    paths = rank_paths(str(root), world)
    keys = np.arange(1, 41, dtype=key_dtype)
    write_rows(paths, snapshot, keys, np.ones((40, dim), np.float32))
    return paths


def test_a_store_of_another_value_or_key_size_is_one_line_before_build(tmp_path):
    data = write_tiny_dataset(str(tmp_path / "data"))
    written_store(tmp_path / "p", 2, 8)  # SGD with 8-float embeddings wrote it
    args = ["--data_dir", data, *TINY, "--persistent_path", str(tmp_path / "p")]
    resolve(get_parser().parse_args(args), 2, cuda_available=True)  # the same: fine
    with pytest.raises(StoreError, match=r"store .*0-2 holds 32-byte values \(8 floats\), this run needs 96 "
                                         r"\(--embedding_vec_size 8 x 3 for --optimizer adam\): use the optimizer "
                                         r"and --embedding_vec_size that wrote it, or a fresh --persistent_path$"):
        resolve(get_parser().parse_args(args + ["--optimizer", "adam"]), 2, cuda_available=True)
    int32 = written_store(tmp_path / "q", 1, 8, np.int32)
    with pytest.raises(StoreError, match="holds 4-byte keys, this run uses 8"):
        check_store(int32, 8, 32, "")


def test_a_held_lock_is_one_line(tmp_path):
    paths = written_store(tmp_path / "p", 2, 8)
    check_store(paths, 8, 32, "")  # nobody holds it
    with holding_store(paths, 8):
        with pytest.raises(StoreError, match=f"store {paths[0]} is in use by another process"):
            check_store(paths, 8, 32, "")
    check_store(paths, 8, 32, "")


def test_a_lock_that_cannot_be_tested_is_one_line(tmp_path):
    """OneFlow PCHECKs its fcntl lock (PosixFileLockGuard::Lock, posix_file.h): any failure other than
    another holder (no lock support, no permission, not a file) is one line here, not a traceback."""
    from dlrm.store import lock_held
    paths = written_store(tmp_path / "p", 1, 8)
    os.remove(os.path.join(paths[0], "LOCK"))
    os.mkdir(os.path.join(paths[0], "LOCK"))
    with pytest.raises(StoreError, match=rf"^--persistent_path store {paths[0]}: cannot take a write lock on "
                                         rf"{paths[0]}/LOCK as OneFlow does \(Is a directory\): the store needs a "
                                         rf"local filesystem with fcntl locks that this user can write$"):
        lock_held(paths[0])
    with pytest.raises(StoreError, match="cannot take a write lock"):
        check_store(paths, 8, 32, "")


def test_reading_a_store_whose_ranks_differ_is_one_line(tmp_path):
    """The converter and CPU loads read stores with OneFlow's reader, which LOG(FATAL)s on a rank
    directory of another VALUE_SIZE (InitOrCheckMetaValue, persistent_table.cpp): the same guard
    as training's (without the lock test: the read-only table takes no lock) stops it first."""
    paths = written_store(tmp_path / "p", 2, 8)
    other = written_store(tmp_path / "q", 2, 4)
    shutil.rmtree(paths[1])
    shutil.copytree(other[1], paths[1])
    with pytest.raises(StoreError, match=rf"^--persistent_path store {paths[1]} holds 16-byte values \(4 floats\), "
                                         rf"this run needs 32 \(as {paths[0]}\): the ranks' directories are of "
                                         rf"different stores$"):
        read_rows(paths, "s1")


def gpu_checkpoint(adam_run, tmp_path, world=2):
    """The adam run's checkpoint in GPU form: rows in a store of `world` ranks at tmp_path/store."""
    _, ckpt, _ = adam_run
    convert(ckpt, str(tmp_path / "gpu"), str(tmp_path / "store"), world)
    return str(tmp_path / "gpu")


def gpu_plan(tmp_path, world, *load, extra=()):
    """dlrm_predict.plan's models for a GPU run of `world` ranks of the checkpoints `load`."""
    import dlrm_predict
    from dlrm.predict import get_parser as predict_parser
    data = os.path.join(json.load(open(os.path.join(load[0], "train_state.json")))["config"]["data"]["data_dir"],
                        "test")
    args = predict_parser().parse_args(["--model_load_dir", *map(str, load), "--input", data, "--output",
                                        str(tmp_path / "p.csv"), *map(str, extra)])
    return dlrm_predict.plan(args, world, "cuda")["models"]


def test_gpu_predict_guards_each_store_before_it_is_opened(adam_run, tmp_path):
    """What dlrm_predict.py checks on every rank before a GPU model is built (gpu_store_error, its
    one line agreed across ranks): each of these would abort OneFlow (InitOrCheckMetaValue's
    LOG(FATAL), PosixFileLockGuard's PCHECK: persistent_table.cpp, posix_file.h), corrupt a store, or
    make OneFlow create an empty one (RecursiveCreateDirectory on a rank path without the store)."""
    from dlrm.predict import gpu_store_error
    gpu = gpu_checkpoint(adam_run, tmp_path)
    _, cpu_ckpt, _ = adam_run
    models = gpu_plan(tmp_path, 2, gpu)
    snapshot = flow.load(gpu)[SNAPSHOT]
    assert models[0]["snapshot"] == snapshot and models[0]["trained"]["seed"] == 1234
    paths = rank_paths(str(tmp_path / "store"), 2)
    assert [gpu_store_error(models, None, 2, r) for r in (0, 1)] == [None, None]
    # a CPU run's checkpoint: the converter or --device cpu
    assert gpu_store_error(gpu_plan(tmp_path, 2, cpu_ckpt), None, 2, 0) == (
        f"checkpoint {cpu_ckpt} holds its embedding table itself (a CPU run's): score it with --device cpu, or write "
        f"its rows to a store with tools/convert_checkpoint.py --persistent_path P --world_size 2")
    # --persistent_path naming a store of another value size (SGD's 8 floats): not the checkpoint's store
    written_store(tmp_path / "sgd", 2, 8)
    assert gpu_store_error(models, str(tmp_path / "sgd"), 2, 1) == (
        f"--persistent_path store {tmp_path / 'sgd' / '1-2'} holds 32-byte values (8 floats), this run needs 96 (the "
        f"checkpoint's 8 x 3): not the store checkpoint {gpu} was trained with; pass that one (--persistent_path)")
    # two models on one store directory (also through a symlink)
    os.symlink(tmp_path / "store", tmp_path / "alias")
    shutil.copytree(gpu, tmp_path / "gpu2")
    state = json.load(open(tmp_path / "gpu2" / "train_state.json"))
    state["config"]["store"]["persistent_path"] = str(tmp_path / "alias")
    json.dump(state, open(tmp_path / "gpu2" / "train_state.json", "w"))
    os.remove(tmp_path / "gpu2" / "MANIFEST.json")
    two = gpu_plan(tmp_path, 2, gpu, tmp_path / "gpu2")
    assert gpu_store_error(two, None, 2, 0) == (
        f"checkpoints {gpu} and {tmp_path / 'gpu2'} use the same OneEmbedding store {tmp_path / 'alias'}: one process "
        f"cannot open one store twice; copy it or convert one checkpoint to a store of its own "
        f"(tools/convert_checkpoint.py --persistent_path)")
    # four GPUs on a store of two: the snapshot is missing, and nothing is created
    assert gpu_store_error(gpu_plan(tmp_path, 4, gpu), None, 4, 3) == (
        f"OneEmbedding snapshot {snapshot!r} not found: no {tmp_path / 'store' / '3-4'}/snapshots/{snapshot}/LIST; "
        f"{tmp_path / 'store'} holds a store of 2 ranks: reshard it with tools/convert_checkpoint.py --world_size 4")
    assert sorted(os.listdir(tmp_path / "store")) == ["0-2", "1-2"]
    # the store held by another process (a training still running)
    with holding_store(paths, 24):
        assert gpu_store_error(models, None, 2, 1) == (
            f"--persistent_path store {paths[1]} is in use by another process (it holds {paths[1]}/LOCK): stop that "
            f"run or use another --persistent_path")


def test_a_resume_on_another_gpu_count_stops_before_the_store_is_opened(adam_run, tmp_path):
    """dlrm_train_eval.py on CUDA checks its rank's directory for the checkpoint's snapshot before
    building the model (found_snapshot_error): OneFlow would first create an empty <rank>-<world>
    store there (RecursiveCreateDirectory, persistent_table.cpp). Here: 1 process, a 2-rank store."""
    from dlrm.config import CheckpointConfig
    from dlrm.store import found_snapshot_error
    gpu = gpu_checkpoint(adam_run, tmp_path)
    found = locate_checkpoint(CheckpointConfig(None, gpu, False, False, False, 0, 0))
    snapshot = flow.load(gpu)[SNAPSHOT]
    assert found_snapshot_error(found, str(tmp_path / "store"), cpu_placement()) == (
        f"OneEmbedding snapshot {snapshot!r} not found: no {tmp_path / 'store' / '0-1'}/snapshots/{snapshot}/LIST; "
        f"{tmp_path / 'store'} holds a store of 2 ranks: reshard it with tools/convert_checkpoint.py --world_size 1")
    assert sorted(os.listdir(tmp_path / "store")) == ["0-2", "1-2"]
    convert(gpu, str(tmp_path / "gpu1"), str(tmp_path / "store1"), 1)
    found = locate_checkpoint(CheckpointConfig(None, str(tmp_path / "gpu1"), False, False, False, 0, 0))
    assert found_snapshot_error(found, str(tmp_path / "store1"), cpu_placement()) is None


def test_a_missing_snapshot_names_the_rank_and_the_fix(tmp_path):
    paths = written_store(tmp_path / "p", 2, 8)
    assert missing_snapshot(paths[0], "s1", 2) is None and missing_snapshot(paths[1], "s1", 2) is None
    os.remove(os.path.join(paths[1], "snapshots", "s1", "LIST"))
    assert missing_snapshot(paths[0], "s1", 2) is None
    message = missing_snapshot(paths[1], "s1", 2)
    assert message.startswith(f"OneEmbedding snapshot 's1' not found: no {paths[1]}/snapshots/s1/LIST; same "
                              f"--persistent_path")
    other = rank_paths(str(tmp_path / "p"), 4)[3]  # a 4-GPU run looking at a 2-GPU store
    assert missing_snapshot(other, "s1", 4).endswith(f"{tmp_path / 'p'} holds a store of 2 ranks: reshard it with "
                                                     f"tools/convert_checkpoint.py --world_size 4")
    with pytest.raises(StoreError, match="snapshot 's1' not found"):
        read_rows(paths, "s1")


def test_keep_checkpoints_deletes_older_checkpoints_with_their_snapshots(tmp_path):
    from dlrm.checkpoint import prune_checkpoints, save_checkpoint, train_state
    data = write_tiny_dataset(str(tmp_path / "data"))
    cfg = resolve(get_parser().parse_args(["--data_dir", data, *TINY]), 1, False)
    module = DLRM(cfg.model, cfg.store, "cpu")
    module.to_global(cpu_placement(), flow.sbp.broadcast)
    paths = rank_paths(str(tmp_path / "store"), 1)
    for step in (10, 20, 30):
        write_rows(paths, f"snap{step}", np.arange(3, dtype=np.int64), np.ones((3, 8), np.float32))
        save_checkpoint(module, str(tmp_path / "ckpt"), f"step_{step}", dict(train_state(step, cfg),
                                                                             snapshot=f"snap{step}"))
    assert prune_checkpoints(str(tmp_path / "ckpt"), 1, str(tmp_path / "store")) == \
        [str(tmp_path / "ckpt" / "step_20"), str(tmp_path / "ckpt" / "step_10")]
    assert os.listdir(tmp_path / "ckpt") == ["step_30"]
    assert os.listdir(os.path.join(paths[0], "snapshots")) == ["snap30"]
    assert len(read_rows(paths, "snap30")[0]) == 3


@pytest.mark.slow  # a training run
def test_keep_checkpoints_in_a_run(tmp_path):
    data = write_tiny_dataset(str(tmp_path / "data"))
    assert train.main(["--data_dir", data, *TINY, "--train_batches", "20", "--save_interval", "5",
                       "--keep_checkpoints", "2", "--model_save_dir", str(tmp_path / "ckpt")]) == 0
    assert sorted(p for p in os.listdir(tmp_path / "ckpt") if p.startswith("step_")) == \
        ["step_15", [p for p in os.listdir(tmp_path / "ckpt") if p.startswith("step_20_val_auc")][0]]


@pytest.mark.slow  # two training runs
def test_a_cpu_run_resumes_from_a_store_checkpoint_like_from_the_cpu_one(adam_run, tmp_path, capsys):
    """dlrm_train_eval.py --device cpu on a GPU-form checkpoint whose store has moved
    (--persistent_path names where it is now): the same losses as resuming the CPU checkpoint."""
    data, ckpt, _ = adam_run
    convert(ckpt, str(tmp_path / "gpu"), str(tmp_path / "store"), 2)
    os.rename(tmp_path / "store", tmp_path / "moved")
    common = ["--data_dir", data, *TINY, "--optimizer", "adam", "--learning_rate", "0.01", "--train_batches", "15",
              "--loss_print_interval", "1", "--device", "cpu"]
    for name, load in (("from_cpu", [ckpt]), ("from_store", [str(tmp_path / "gpu"), "--persistent_path",
                                                              str(tmp_path / "moved")])):
        assert train.main([*common, "--model_load_dir", *load, "--model_save_dir", str(tmp_path / name)]) == 0
    losses = {name: [m["loss"] for m in read_metrics(tmp_path / name / "metrics.jsonl") if m["kind"] == "train"]
              for name in ("from_cpu", "from_store")}
    assert len(losses["from_cpu"]) == 5 and losses["from_cpu"] == losses["from_store"]
    capsys.readouterr()
    snapshot = flow.load(str(tmp_path / "gpu"))[SNAPSHOT]
    assert train.main([*common, "--model_load_dir", str(tmp_path / "gpu"), "--model_save_dir",
                       str(tmp_path / "x")]) == 2  # the store is not where the checkpoint says
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert errors == [f"error: OneEmbedding snapshot {snapshot!r} not "
                      f"found: no {tmp_path / 'store' / '0-2'}/snapshots/"
                      f"{snapshot}/LIST; same --persistent_path (and node-local "
                      f"disks) as the run that wrote the checkpoint?"]


@pytest.mark.slow  # three conversions
def test_rows_a_store_lacks_keep_their_initial_values(adam_run, tmp_path):
    """Ids a GPU run never looked up have no row in its store: the CPU table keeps their initial rows
    (the run's seed), with zero optimizer state."""
    from dlrm.convert import initial_table
    data, ckpt, _ = adam_run
    convert(ckpt, str(tmp_path / "gpu"), str(tmp_path / "store"), 2)
    snapshot = flow.load(str(tmp_path / "gpu"))[SNAPSHOT]
    keys, values = read_rows(rank_paths(str(tmp_path / "store"), 2), snapshot)
    keep = keys >= 7  # table 0 (ids 0..6) never looked up
    write_rows(rank_paths(str(tmp_path / "partial"), 2), snapshot, keys[keep], values[keep])
    convert(str(tmp_path / "gpu"), str(tmp_path / "cpu"), source_persistent_path=str(tmp_path / "partial"))
    trained, out = tensors(ckpt)["embedding.weight"], tensors(str(tmp_path / "cpu"))["embedding.weight"]
    state = json.load(open(os.path.join(ckpt, "train_state.json")))["config"]
    np.testing.assert_array_equal(out[:7], initial_table(state["model"], state["seed"])[:7])
    assert (out[:7] != trained[:7]).any()  # training had moved them
    np.testing.assert_array_equal(out[7:], trained[7:])
    assert not tensors(str(tmp_path / "cpu" / "graph_state"))["module.embedding.weight-v"][:7].any()


@pytest.mark.slow  # two 2-process launches
def test_two_cpu_processes_resume_from_a_store_checkpoint_like_from_the_cpu_one(adam_run, tmp_path):
    """Rank 0 reads the store and sends the rows to the other rank: the same losses and AUC as the
    CPU checkpoint (which was written by one process: the rest of its epoch is shared by two)."""
    from test_train import launch
    data, ckpt, _ = adam_run
    convert(ckpt, str(tmp_path / "gpu"), str(tmp_path / "store"), 2)
    common = ["--data_dir", data, *TINY, "--optimizer", "adam", "--learning_rate", "0.01", "--train_batches", "14",
              "--loss_print_interval", "1"]
    for name, load in (("from_cpu", ckpt), ("from_store", str(tmp_path / "gpu"))):
        log = launch([*common, "--model_load_dir", load, "--model_save_dir", str(tmp_path / name)], nproc=2)
        assert "resuming after step 10" in log and "the 40 rows its ranks had not read" in log
    metrics = {name: [(m["kind"], m.get("loss"), m.get("auc")) for m in read_metrics(tmp_path / name / "metrics.jsonl")
                      if m["kind"] in ("train", "eval")] for name in ("from_cpu", "from_store")}
    assert len(metrics["from_cpu"]) == 5 and metrics["from_cpu"] == metrics["from_store"]


def store_bytes(root):
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(root) for f in fs
               if os.path.basename(r) in ("keys", "values"))


@pytest.mark.slow  # three conversions
def test_converting_to_a_fresh_path_compacts_the_store(adam_run, tmp_path):
    """Later saves append their changed rows (here: 5 more snapshots of every row); a conversion copies
    only the checkpoint's snapshot."""
    _, ckpt, _ = adam_run
    convert(ckpt, str(tmp_path / "gpu"), str(tmp_path / "store"), 2)
    paths = rank_paths(str(tmp_path / "store"), 2)
    snapshot = flow.load(str(tmp_path / "gpu"))[SNAPSHOT]
    keys, values = read_rows(paths, snapshot)
    one = store_bytes(tmp_path / "store")
    for i in range(5):
        write_rows(paths, f"later{i}", keys, values + i + 1)
    assert store_bytes(tmp_path / "store") >= 6 * one
    convert(str(tmp_path / "gpu"), str(tmp_path / "gpu2"), str(tmp_path / "compact"), 2)
    assert store_bytes(tmp_path / "compact") == one
    snapshot2 = flow.load(str(tmp_path / "gpu2"))[SNAPSHOT]
    keys2, values2 = read_rows(rank_paths(str(tmp_path / "compact"), 2), snapshot2)
    np.testing.assert_array_equal(keys2, keys)
    np.testing.assert_array_equal(values2, values)


def test_predictions_equal_from_all_three_forms(adam_run, tmp_path, capsys):
    """A CPU-trained checkpoint, the same converted to a 2-rank store by tools/convert_checkpoint.py (in
    this process) and that store converted back to self-contained: dlrm_predict.py --device cpu gives
    the same probabilities, bit for bit, on the test split (reading the store's rows through
    dlrm.checkpoint), also after the store moved (--persistent_path names where it is now)."""
    import runpy

    from test_predict import predict
    data, ckpt, _ = adam_run
    tool = runpy.run_path(os.path.join(REPO, "tools", "convert_checkpoint.py"))["main"]
    assert tool(["--model_load_dir", ckpt, "--output_dir", str(tmp_path / "gpu"), "--persistent_path",
                 str(tmp_path / "store"), "--world_size", "2"]) == 0
    assert tool(["--model_load_dir", str(tmp_path / "gpu"), "--output_dir", str(tmp_path / "cpu")]) == 0
    shutil.copytree(tmp_path / "store", tmp_path / "copied")
    forms = {"trained": [ckpt], "store": [tmp_path / "gpu"], "back": [tmp_path / "cpu"],
             "copied": [tmp_path / "gpu", "--persistent_path", tmp_path / "copied"]}
    probs = {}
    for name, load in forms.items():
        if name == "copied":
            shutil.rmtree(tmp_path / "store")  # only the copy is left
        code, out, err = predict(capsys, "--model_load_dir", *load, "--input", os.path.join(data, "test"),
                                 "--output", tmp_path / f"{name}.parquet", "--batch_size", "20")
        assert code == 0, (name, err)
        assert "done: 100 rows" in out.strip().splitlines()[-1]
        probs[name] = pq.read_table(tmp_path / f"{name}.parquet").column("probability").to_numpy()
    assert len(probs["trained"]) == 100 and len(np.unique(probs["trained"])) > 1
    for name in ("store", "back", "copied"):
        np.testing.assert_array_equal(probs[name], probs["trained"], err_msg=name)
    # the store gone from where the checkpoint says and no --persistent_path: one line, nothing written
    code, _, err = predict(capsys, "--model_load_dir", tmp_path / "gpu", "--input", os.path.join(data, "test"),
                           "--output", tmp_path / "gone.parquet")
    assert code == 2 and not os.path.exists(tmp_path / "gone.parquet")
    snapshot = flow.load(str(tmp_path / "gpu"))[SNAPSHOT]
    assert [ln for ln in err.splitlines() if ln.startswith("error:")] == [
        f"error: OneEmbedding snapshot {snapshot!r} not found: no {tmp_path / 'store' / '0-2'}/snapshots/{snapshot}"
        f"/LIST; same --persistent_path (and node-local disks) as the run that wrote the checkpoint?"], err


def test_a_store_checkpoint_scored_on_cpu_is_deterministic(adam_run, tmp_path, capsys):
    score_a_store_checkpoint_twice(adam_run, tmp_path, capsys)


def score_a_store_checkpoint_twice(adam_run, tmp_path, capsys):
    """A GPU checkpoint whose store lacks table 0's rows (ids a GPU run never looked up), scored on
    CPU: its run's initial rows stand in for them (the seed its train_state.json records, as
    tools/convert_checkpoint.py gives them), so two runs in one process, and the self-contained
    conversion, give the same probabilities bit for bit."""
    from test_predict import predict
    data, _, _ = adam_run
    gpu = gpu_checkpoint(adam_run, tmp_path)
    snapshot = flow.load(gpu)[SNAPSHOT]
    keys, values = read_rows(rank_paths(str(tmp_path / "store"), 2), snapshot)
    keep = keys >= 7  # table 0 (ids 0..6): every test row looks one up
    write_rows(rank_paths(str(tmp_path / "partial"), 2), snapshot, keys[keep], values[keep])
    convert(gpu, str(tmp_path / "cpu"), source_persistent_path=str(tmp_path / "partial"))
    probs = []
    for i, load in enumerate(([gpu, "--persistent_path", tmp_path / "partial"],
                              [gpu, "--persistent_path", tmp_path / "partial"], [tmp_path / "cpu"])):
        code, _, err = predict(capsys, "--model_load_dir", *load, "--input", os.path.join(data, "test"),
                               "--output", tmp_path / f"{i}.parquet", "--batch_size", "20")
        assert code == 0, err
        probs.append(pq.read_table(tmp_path / f"{i}.parquet").column("probability").to_numpy())
    assert len(np.unique(probs[0])) > 1
    np.testing.assert_array_equal(probs[1], probs[0])
    np.testing.assert_array_equal(probs[2], probs[0])
    return gpu, probs[0]


@pytest.mark.slow  # a 2-process launch
def test_a_store_checkpoint_scored_by_two_processes_on_cpu_is_the_same(adam_run, tmp_path, capsys):
    """As above with two processes (rank 0 reads the store, the other gets its rows): the same
    probabilities as one process, bit for bit."""
    from conftest import run_tool
    from dlrm.launch import free_port
    gpu, one = score_a_store_checkpoint_twice(adam_run, tmp_path, capsys)
    run_tool("-m", "oneflow.distributed.launch", "--nproc_per_node", "2", "--master_port", free_port(),
             os.path.join(REPO, "dlrm_predict.py"), "--model_load_dir", gpu, "--persistent_path",
             tmp_path / "partial", "--input", os.path.join(adam_run[0], "test"), "--output", tmp_path / "two.parquet",
             "--batch_size", "40", "--device", "cpu")  # 20 rows per rank's batch, as one process's (MKL's
    # GEMM kernel depends on the row count: bits would differ otherwise)
    np.testing.assert_array_equal(pq.read_table(tmp_path / "two.parquet").column("probability").to_numpy(), one)


AGREE = """import sys
import oneflow as flow
from dlrm.distributed import cpu_placement
from dlrm.store import agreed_error
rank = flow.env.get_rank()
for case in ([None, None], [None, "rank 1's store: in use"], ["rank 0's line", "rank 1's line"]):
    print(f"rank {rank}: {agreed_error(case[rank], cpu_placement())!r}\\n", end="", flush=True)
"""


@pytest.mark.slow  # a 2-process launch
def test_store_errors_are_agreed_across_ranks(tmp_path):
    """dlrm.store.agreed_error, each rank's own check: every rank gets the lowest failing rank's line
    (so all stop together and rank 0 prints it), or None on every rank."""
    from dlrm.launch import free_port
    (tmp_path / "agree.py").write_text(AGREE)
    proc = subprocess.run([sys.executable, "-m", "oneflow.distributed.launch", "--nproc_per_node", "2",
                           "--master_port", str(free_port()), str(tmp_path / "agree.py")], cwd=REPO,
                          capture_output=True, text=True, timeout=300, env=dict(os.environ, PYTHONPATH=REPO))
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("rank ")]
    for rank in (0, 1):
        assert [ln.split(": ", 1)[1] for ln in lines if ln.startswith(f"rank {rank}:")] == \
            ["None", "\"rank 1's store: in use\"", "\"rank 0's line\""]
