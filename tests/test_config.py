"""Fast unit tests: the schema module and flag resolution into RunConfig (real parquet, no Spark)."""
import dataclasses
import json
import os

import pytest

from conftest import write_tiny_dataset
from dlrm import schema
from dlrm.config import ArgError, OptimizerConfig, check_args, cpu_embedding_bytes, get_parser, resolve
from dlrm.data import DataError


def flags(data_dir, *extra):
    return get_parser().parse_args(["--data_dir", str(data_dir), "--bottom_mlp", "32,16", "--embedding_vec_size", "16",
                                    "--top_mlp", "32", "--train_batch_size", "40", "--eval_batch_size", "20",
                                    "--eval_batches", "100", *extra])


def test_schema_columns_and_dtypes():
    assert len(schema.COLUMNS) == schema.NUM_FIELDS == 40
    assert schema.COLUMNS[:2] == ["label", "I1"] and schema.COLUMNS[-1] == "C26"
    assert len(schema.CRITEO1T_TABLE_SIZES) == schema.NUM_SPARSE
    assert sum(schema.CRITEO1T_TABLE_SIZES) == 187_767_399  # the README's 1TB sizing figure
    dtypes = schema.column_dtypes("int32")
    assert list(dtypes) == schema.COLUMNS and dtypes["C7"] == "int32" and dtypes["I3"] == "float32"


def test_table_sizes_from_dataset_info_or_the_originals_readme(tmp_path):
    assert schema.load_table_sizes(str(tmp_path)) is None
    sizes = list(range(1, 27))
    schema.write_original_readme(str(tmp_path), {"train": 10, "test": 2, "val": 3}, sizes)
    text = (tmp_path / "README.md").read_text()
    assert "train: 10\ntest: 2\nval: 3\n" in text
    assert schema.load_table_sizes(str(tmp_path)) == sizes
    schema.write_dataset_info(str(tmp_path), {"table_size_array": [5] * 26})  # preferred over README.md
    assert schema.load_table_sizes(str(tmp_path)) == [5] * 26
    assert json.load(open(tmp_path / "dataset_info.json")) == schema.read_dataset_info(str(tmp_path))


def test_resolve_computes_the_run_once(tiny_dataset, tmp_path):
    cfg = resolve(flags(tiny_dataset, "--model_save_dir", str(tmp_path / "ckpt")), world_size=2, cuda_available=False)
    assert cfg.device == "cpu" and cfg.world_size == 2
    assert cfg.model.table_sizes == (7,) * 26 and cfg.model.bottom_mlp == (32, 16)
    assert not cfg.model.fused_mlp  # plain layers are the fast path on CPU
    assert cfg.optimizer == OptimizerConfig("sgd", sparse_embedding=True)
    assert (cfg.data.train_batch_per_rank, cfg.data.eval_batch_per_rank) == (20, 10)
    # 100 test rows, 50 per rank, batches of 10 per rank: 5 of the 100 asked for
    assert (cfg.data.eval_batches, cfg.data.requested_eval_batches) == (5, 100)
    assert len(cfg.data.train_groups) == 12 and sum(n for *_, n in cfg.data.train_groups) == 240
    assert cfg.log.metrics_file == str(tmp_path / "ckpt" / "metrics.jsonl")
    d = cfg.to_dict()
    assert "train_groups" not in d["data"] and json.loads(json.dumps(d))["schedule"]["learning_rate"] == 24.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 1


def test_resolve_picks_the_device_and_drops_amp_on_cpu(tiny_dataset, capsys):
    cfg = resolve(flags(tiny_dataset, "--amp", "--persistent_path", "/ssd/p"), 1, cuda_available=True)
    assert cfg.device == "cuda" and cfg.amp and cfg.store.persistent_path == "/ssd/p" and cfg.model.fused_mlp
    assert not cfg.optimizer.sparse_embedding  # OneEmbedding updates its own rows
    cfg = resolve(flags(tiny_dataset, "--amp", "--device", "cpu"), 1, cuda_available=True)
    assert cfg.device == "cpu" and not cfg.amp
    assert "--amp is CUDA-only" in capsys.readouterr().err
    with pytest.raises(ArgError, match="--device cuda: no usable CUDA device"):
        resolve(flags(tiny_dataset, "--device", "cuda"), 1, cuda_available=False)


@pytest.mark.parametrize("extra,world,error", [
    (["--train_batch_size", "1000"], 1, "holds less than one batch of 1000 rows per rank"),
    ([], 13, "12 parquet row groups cannot be shared by 13 ranks"),
    (["--eval_split", "val", "--table_size_array", ",".join(["7"] * 25 + ["8"])], 1,
     r"--table_size_array differs from the table sizes .*/data records \(C26: 8 vs 7\); leave the flag out"),
    (["--table_size_array", "7,7"], 1, r"records \(2 entries vs 26\)"),
    (["--one_embedding_key_type", "int32"], 1, "column C1 holds int64 ids but --one_embedding_key_type is int32"),
    (["--interaction_type", "dcn", "--dcn_low_rank_dim", "0"], 1, "--dcn_num_layers and --dcn_low_rank_dim must be >= 1"),
    (["--interaction_type", "dcn", "--interaction_itself"], 1, "--interaction_itself is a setting of the dot"),
])
def test_resolve_refuses_in_one_line(tiny_dataset, extra, world, error):
    """Each refusal names its flag or file (the table sizes: a dataset's ids are offset by its own)."""
    if world == 13:
        extra = ["--train_batch_size", "13", "--eval_batch_size", "13"]
    with pytest.raises((ArgError, DataError), match=error):
        resolve(flags(tiny_dataset, *extra), world, cuda_available=False)


@pytest.mark.parametrize("optimizer,factor,sparse", [("sgd", 1, True), ("adagrad", 2, True), ("adam", 3, True)])
def test_optimizer_sets_store_size_and_sparse_update(tiny_dataset, optimizer, factor, sparse):
    cuda = resolve(flags(tiny_dataset, "--optimizer", optimizer, "--persistent_path", "/p", "--eval_batch_size", "40"),
                   8, cuda_available=True)
    assert cuda.store.size_factor == factor
    # 182 distinct ids over 8 GPUs: 4 sigma of each GPU's hashed share plus 1024 rows of headroom each (one GPU too)
    assert cuda.store.capacity == int(182 + 8 * (4 * (182 / 8) ** 0.5 + 1024))
    cpu = resolve(flags(tiny_dataset, "--optimizer", optimizer), 1, cuda_available=False)
    assert cpu.optimizer.sparse_embedding == sparse and cpu.store.capacity == int(182 + 4 * 182 ** 0.5 + 1024)
    assert not resolve(flags(tiny_dataset, "--dense_embedding_update"), 1, False).optimizer.sparse_embedding
    assert cpu_embedding_bytes(1000, 16, cpu.optimizer) == 1000 * 16 * 4 * (factor + (0 if sparse else 2))


@pytest.mark.parametrize("flag,value", [("--store_type", "gpu_mem"), ("--loss_scale_policy", "sometimes"),
                                        ("--optimizer", "lamb"), ("--interaction_type", "cross"),
                                        ("--one_embedding_key_type", "int16")])
def test_closed_sets_are_checked_by_argparse(flag, value, capsys):
    with pytest.raises(SystemExit) as e:
        get_parser().parse_args(["--data_dir", os.getcwd(), flag, value])
    assert e.value.code == 2 and f"argument {flag}: invalid choice: '{value}'" in capsys.readouterr().err


def test_cuda_only_checks():
    args = get_parser().parse_args(["--data_dir", os.getcwd()])
    with pytest.raises(ArgError, match="--persistent_path is required on CUDA"):
        check_args(args, 1, "cuda")
    args.persistent_path = "/ssd/p"
    check_args(args, 1, "cuda")
    with pytest.raises(ArgError, match="not a positive multiple of the number of ranks"):
        check_args(args, 7, "cpu")


def test_original_1tb_sizes_are_refused_on_cpu(tmp_path):
    root = write_tiny_dataset(str(tmp_path / "d"))
    os.remove(os.path.join(root, "dataset_info.json"))  # no recorded sizes: the original's 1TB list
    with pytest.raises(ArgError, match="the CPU embedding for 187,767,399 rows x 128 needs"):
        resolve(get_parser().parse_args(["--data_dir", root, "--train_batch_size", "40"]), 1, False)


def test_table_sizes_of_a_dataset_that_records_none(tiny_dataset):
    os.remove(os.path.join(tiny_dataset, "dataset_info.json"))
    with pytest.raises(ArgError, match="entries must be > 0"):
        resolve(flags(tiny_dataset, "--table_size_array", ",".join(["0"] * 26)), 1, cuda_available=False)
    cfg = resolve(flags(tiny_dataset, "--table_size_array", ",".join(["9"] * 26)), 1, cuda_available=False)
    assert cfg.model.table_sizes == (9,) * 26


@pytest.mark.parametrize("split", ["test", "val"])
def test_an_empty_eval_split_is_refused_before_training(tiny_dataset, split):
    """A split of empty files: found at resolve, not at the first evaluation hours later."""
    import pyarrow.parquet as pq

    path = os.path.join(tiny_dataset, split, "part-00000.parquet")
    pq.write_table(pq.read_table(path).slice(0, 0), path)
    with pytest.raises(DataError, match=f"{tiny_dataset}/{split} holds no rows: nothing to evaluate on"):
        resolve(flags(tiny_dataset, "--eval_split", split), 1, cuda_available=False)


def test_truncated_parquet_file_is_named_before_training(tiny_dataset):
    """A dataset file cut short (a copy that stopped, a full disk): pyarrow's own error ("Parquet
    magic bytes not found in footer") names no file; resolve names it, in one line."""
    path = os.path.join(tiny_dataset, "val", "part-00000.parquet")
    os.truncate(path, os.path.getsize(path) // 2)
    with pytest.raises(DataError) as e:
        resolve(flags(tiny_dataset, "--eval_split", "val"), 1, cuda_available=False)
    msg = str(e.value)
    assert msg.startswith(f"{path}: not a readable parquet file (Parquet magic bytes not found") and "\n" not in msg
    resolve(flags(tiny_dataset), 1, cuda_available=False)  # evaluating on test: val is not read
    path = os.path.join(tiny_dataset, "train", "part-00002.parquet")
    os.truncate(path, 100)
    with pytest.raises(DataError, match=f"^{path}: not a readable parquet file"):
        resolve(flags(tiny_dataset), 1, cuda_available=False)
