"""The training flags (`get_parser`, the original's CLI) and the resolved run configuration: parsed
flags, checked and turned into frozen objects once.

`resolve(args, world_size, cuda_available)` does every check that needs no model (flags, the
dataset's files, columns, table sizes, row groups), computes what the run derives from them
(device, per-rank batch sizes, the number of eval batches, table sizes) and returns a RunConfig.
Nothing downstream reads `args`; train_state.json stores `RunConfig.to_dict()`.
"""
import argparse
import dataclasses
import os
import sys
from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import psutil

from dlrm import schema
from dlrm.data import DataError, check_schema, eval_batches_per_rank, list_row_groups, shardable_row_groups, \
    split_files
from dlrm.optimizers import OPTIMIZERS
from dlrm.store import STORE_TYPES, check_store, make_store_options, rank_paths, \
    store_capacity

LOSS_SCALE_POLICIES = ("static", "dynamic")
INTERACTION_TYPES = ("dot", "dcn")


class ArgError(ValueError):
    """A bad flag: the message is one line naming it."""


def int_list(text):
    """argparse type of the comma-separated width lists (`--bottom_mlp 512,256,128`)."""
    return [int(x) for x in str(text).split(",") if x.strip()]


# ----------------------------------------------------------------------------- the flags (the original's CLI)
def get_parser():
    p = argparse.ArgumentParser(description="OneFlow DLRM training and evaluation (graph mode)")
    a = p.add_argument
    # Model (the original's flags and defaults)
    a("--disable_fusedmlp", action="store_true", help="use Linear+ReLU layers instead of nn.FusedMLP")
    a("--embedding_vec_size", type=int, default=128, help="embedding dimension; must equal bottom_mlp[-1]")
    a("--one_embedding_key_type", type=str, default="int64", choices=schema.KEY_TYPES,
      help="id dtype of the parquet: int32 or int64")
    a("--bottom_mlp", type=int_list, default="512,256,128", help="bottom MLP units")
    a("--top_mlp", type=int_list, default="1024,1024,512,256", help="top MLP units (a final 1 is appended)")
    a("--disable_interaction_padding", action="store_true", help="do not pad the interaction output to x8")
    a("--disable_dense_input_padding", action="store_true", help="do not pad the 13 dense inputs to 16")
    a("--interaction_itself", action="store_true", help="include self dot products in the interaction")
    a("--interaction_type", type=str, default="dot", choices=INTERACTION_TYPES,
      help="dot: pairwise dot products (the original's); dcn: DCNv2 low-rank cross layers")
    a("--dcn_num_layers", type=int, default=3, help="dcn: number of cross layers")
    a("--dcn_low_rank_dim", type=int, default=512, help="dcn: rank r of each cross layer's W = V U")
    # Checkpoints
    a("--model_load_dir", type=str, default=None, help="load weights (and resume, if it is ours) from here")
    a("--model_save_dir", type=str, default=None, help="write checkpoints and metrics here")
    a("--save_initial_model", action="store_true", help="save a checkpoint before training")
    a("--save_model_after_each_eval", action="store_true", help="save a checkpoint after each evaluation")
    # Data and schedule
    a("--data_dir", type=str, required=True, help="parquet dataset with train/ and test/ (and val/)")
    a("--eval_batches", type=int, default=1612, help="number of evaluation batches")
    a("--eval_batch_size", type=int, default=55296, help="global evaluation batch size")
    a("--eval_interval", type=int, default=10000, help="evaluate every N steps (<= 0: only at the end)")
    a("--train_batch_size", type=int, default=55296, help="global training batch size")
    a("--learning_rate", type=float, default=24, help="base learning rate")
    a("--warmup_batches", type=int, default=2750, help="linear warmup steps from 0")
    a("--decay_batches", type=int, default=27772, help="polynomial (power 2) decay steps to 0")
    a("--decay_start", type=int, default=49315, help="step at which the decay starts")
    a("--train_batches", type=int, default=75000, help="number of training steps")
    a("--loss_print_interval", type=int, default=1000, help="log the loss every N steps")
    a("--table_size_array", type=int_list, default=None,
      help="rows per table, 26 ints; default: data_dir/dataset_info.json, else the original's Criteo 1TB list")
    # OneEmbedding
    a("--persistent_path", type=str, default=None, help="OneEmbedding persistent store root (required on CUDA)")
    a("--store_type", type=str, default="cached_host_mem", choices=STORE_TYPES,
      help="device_mem, cached_host_mem or cached_ssd")
    a("--cache_memory_budget_mb", type=int, default=8192, help="per-GPU cache budget for the cached stores")
    a("--amp", action="store_true", help="automatic mixed precision (CUDA)")
    a("--loss_scale_policy", type=str, default="static", choices=LOSS_SCALE_POLICIES,
      help="AMP loss scaling: static (1024) or dynamic")
    # Ours
    a("--device", type=str, default="auto", choices=["auto", "cuda", "cpu"], help="auto: cuda when available")
    a("--eval_split", type=str, default="test", choices=["test", "val"], help="split to evaluate on")
    a("--target_auc", type=float, default=None, help="stop once an evaluation reaches this AUC")
    a("--seed", type=int, default=1234, help="seed for initialisation and the train shuffle")
    a("--metrics_file", type=str, default=None, help="JSON-lines metrics (default: model_save_dir/metrics.jsonl)")
    a("--save_interval", type=int, default=0, help="also checkpoint every N steps (0: off)")
    a("--keep_checkpoints", type=int, default=0,
      help="keep the N newest checkpoints, deleting older ones and their OneEmbedding snapshots (0: all)")
    a("--resume", action="store_true", help="continue from the newest checkpoint in --model_save_dir")
    a("--optimizer", type=str, default="sgd", choices=tuple(OPTIMIZERS), help="sgd (the original's), adagrad or adam")
    a("--reader_threads", type=int, default=0,
      help="parquet decode threads per rank (0: 1 on CPU, else the rank's share of the cores, at most 8)")
    a("--dense_embedding_update", action="store_true",
      help="CPU: update the whole embedding table every step instead of the rows a batch touches")
    return p


@dataclass(frozen=True)
class ModelConfig:
    table_sizes: Tuple[int, ...]
    embedding_vec_size: int
    bottom_mlp: Tuple[int, ...]
    top_mlp: Tuple[int, ...]
    fused_mlp: bool
    dense_input_padding: bool
    interaction_padding: bool
    interaction_itself: bool
    # DCNv2 (TorchRec's DLRM_DCN names and defaults); defaults let configs written without them load.
    interaction_type: str = "dot"
    dcn_num_layers: int = 3
    dcn_low_rank_dim: int = 512


@dataclass(frozen=True)
class StoreConfig:
    """OneEmbedding (CUDA) store settings; unused on CPU."""
    store_type: str
    persistent_path: Optional[str]
    cache_memory_budget_mb: int
    key_type: str
    capacity: int          # rows reserved across GPUs (with headroom for uneven hashing)
    size_factor: int       # the optimizer's Optimizer.size_factor (dlrm.optimizers)


@dataclass(frozen=True)
class OptimizerConfig:
    name: str
    sparse_embedding: bool  # CPU: update only the embedding rows a batch touches


@dataclass(frozen=True)
class DataConfig:
    data_dir: str
    eval_split: str
    train_batch_size: int          # global
    eval_batch_size: int           # global
    train_batch_per_rank: int
    eval_batch_per_rank: int
    eval_batches: int              # the whole split (last batch padded), at most --eval_batches
    requested_eval_batches: int
    reader_threads: int            # decode threads per rank
    train_groups: tuple = dataclasses.field(repr=False, compare=False)  # (file, row group, rows)
    eval_groups: tuple = dataclasses.field(repr=False, compare=False)


@dataclass(frozen=True)
class ScheduleConfig:
    learning_rate: float
    warmup_batches: int
    decay_start: int
    decay_batches: int
    train_batches: int


@dataclass(frozen=True)
class LogConfig:
    loss_print_interval: int
    eval_interval: int
    target_auc: Optional[float]
    metrics_file: Optional[str]


@dataclass(frozen=True)
class CheckpointConfig:
    model_save_dir: Optional[str]
    model_load_dir: Optional[str]
    resume: bool
    save_initial_model: bool
    save_model_after_each_eval: bool
    save_interval: int
    keep_checkpoints: int  # 0: all


@dataclass(frozen=True)
class RunConfig:
    device: str
    world_size: int
    seed: int
    amp: bool
    loss_scale_policy: str
    model: ModelConfig
    store: StoreConfig
    optimizer: OptimizerConfig
    data: DataConfig
    schedule: ScheduleConfig
    log: LogConfig
    checkpoint: CheckpointConfig

    def to_dict(self):
        """JSON-able, without the row-group lists (they follow from data_dir)."""
        d = dataclasses.asdict(self)
        for key in ("train_groups", "eval_groups"):
            d["data"].pop(key)
        return d


def pick_device(choice, cuda_available):
    if choice == "auto":
        return "cuda" if cuda_available else "cpu"
    if choice == "cuda" and not cuda_available:
        raise ArgError("--device cuda: no usable CUDA device (use --device cpu)")
    return choice


def check_args(args, world_size, device):
    """One-line errors for everything argparse cannot check (its `choices` check the closed sets)
    that can be checked before the data is read."""
    if args.interaction_type == "dcn" and args.interaction_itself:
        raise ArgError("--interaction_itself is a setting of the dot interaction; --interaction_type dcn has no "
                       "self dot products")
    if args.dcn_num_layers < 1 or args.dcn_low_rank_dim < 1:
        raise ArgError(f"--dcn_num_layers and --dcn_low_rank_dim must be >= 1, not {args.dcn_num_layers} and "
                       f"{args.dcn_low_rank_dim}")
    if args.embedding_vec_size != args.bottom_mlp[-1]:
        raise ArgError(f"--embedding_vec_size {args.embedding_vec_size} must equal the last --bottom_mlp width "
                       f"{args.bottom_mlp[-1]}")
    for flag in ("train_batch_size", "eval_batch_size"):
        value = getattr(args, flag)
        if value <= 0 or value % world_size:
            raise ArgError(f"--{flag} {value} is not a positive multiple of the number of ranks ({world_size})")
    if args.reader_threads < 0:
        raise ArgError(f"--reader_threads must be >= 0 (0: automatic), not {args.reader_threads}")
    for flag in ("train_batches", "decay_batches", "loss_print_interval"):
        if getattr(args, flag) <= 0:
            raise ArgError(f"--{flag} must be > 0, not {getattr(args, flag)}")
    if args.keep_checkpoints < 0:
        raise ArgError(f"--keep_checkpoints must be >= 0 (0: keep all), not {args.keep_checkpoints}")
    if args.warmup_batches < 0 or args.decay_start < 0:
        raise ArgError("--warmup_batches and --decay_start must be >= 0")
    if args.resume and not args.model_save_dir:
        raise ArgError("--resume needs --model_save_dir (where the checkpoints are)")
    if device == "cuda" and not args.persistent_path:
        raise ArgError("--persistent_path is required on CUDA (OneEmbedding keeps the embedding tables there)")
    if not os.path.isdir(args.data_dir):
        raise ArgError(f"--data_dir {args.data_dir}: no such directory")
    # --model_load_dir is checked by rank 0 alone (dlrm.checkpoint.locate_checkpoint): it may be
    # on rank 0's disk only.


def cpu_embedding_bytes(rows, dim, optimizer):
    """Peak memory of the CPU embedding per process: the table and the optimizer's state and, when
    the whole table is updated every step (--dense_embedding_update), a full gradient and update.
    Measured (26 x 1.3M x 16, 2.0 GiB table): peak RSS = base + 1.0x with sparse SGD, + 4.0x with
    Adagrad (dense)."""
    dense_update = 0 if optimizer.sparse_embedding else 2
    return rows * dim * 4 * (OPTIMIZERS[optimizer.name].size_factor + dense_update)


def resolve_table_sizes(requested, data_dir, device, embedding_vec_size, optimizer):
    """The dataset's recorded sizes (--table_size_array must agree with them), else --table_size_array,
    else the original's default; checked."""
    recorded = schema.load_table_sizes(data_dir)
    table_sizes = requested if requested is not None else recorded
    if requested is not None and recorded is not None and list(requested) != list(recorded):
        # the dataset's ids are offset by its own table sizes: other sizes fold them into the wrong rows
        # silently, and the checkpoint could not score its own dataset
        where = next((f"C{i + 1}: {a} vs {b}" for i, (a, b) in enumerate(zip(requested, recorded)) if a != b),
                     f"{len(requested)} entries vs {len(recorded)}")
        raise ArgError(f"--table_size_array differs from the table sizes {data_dir} records ({where}); leave the "
                       f"flag out to use the dataset's")
    if table_sizes is None:
        print(f"note: {data_dir} records no table sizes (dataset_info.json or README.md); "
              f"using the original's Criteo 1TB table sizes", file=sys.stderr)
        table_sizes = schema.CRITEO1T_TABLE_SIZES
    if len(table_sizes) != schema.NUM_SPARSE:
        raise ArgError(f"--table_size_array has {len(table_sizes)} entries; the data has "
                       f"{schema.NUM_SPARSE} categorical columns (C1..C26)")
    if min(table_sizes) <= 0:
        raise ArgError("--table_size_array entries must be > 0")
    if device == "cpu":  # the CPU embedding is one table, replicated on every rank
        need = cpu_embedding_bytes(sum(table_sizes), embedding_vec_size, optimizer)
        if need > 0.5 * psutil.virtual_memory().total:
            raise ArgError(f"the CPU embedding for {sum(table_sizes):,} rows x {embedding_vec_size} "
                           f"needs ~{need / 2**30:.1f} GiB per process; use CUDA (OneEmbedding) or smaller tables")
    return tuple(table_sizes)


def reader_threads(requested, device, local_world_size):
    """--reader_threads, or by default: 1 on CPU (training there is far slower than one decode
    thread), else this rank's share of the host's cores, at most 8."""
    if requested > 0:
        return requested
    if device == "cpu":
        return 1
    return max(1, min(8, (os.cpu_count() or 1) // max(local_world_size, 1)))


def check_run_store(store, embedding_vec_size, optimizer, world_size, rank=None):
    """An existing store under --persistent_path fits this run (key and value sizes) and no other
    process holds it: OneFlow would abort every rank at model build (StoreError, one line). With
    `rank`, only that rank's directory: the others may be on other nodes, or already opened by
    their own rank (which holds their LOCK) while this one is still checking."""
    paths = rank_paths(store.persistent_path, world_size)
    check_store(paths if rank is None else [paths[rank]], np.dtype(store.key_type).itemsize,
                4 * embedding_vec_size * store.size_factor,
                f"--embedding_vec_size {embedding_vec_size} x {store.size_factor} for --optimizer {optimizer}")


def full_batches_per_rank(groups, batch_size, world_size):
    """Full per-rank batches in one pass over a split's row groups (training needs at least one)."""
    return sum(n for _, _, n in groups) // world_size // (batch_size // world_size)


def resolve(args, world_size, cuda_available, local_world_size=1, rank=None):
    """Parsed flags -> RunConfig, or ArgError / DataError / StoreError (one line) before any model is
    built. rank: the process's (its store directory is checked; None: every rank's)."""
    device = pick_device(args.device, cuda_available)
    check_args(args, world_size, device)
    train_files = split_files(args.data_dir, "train")
    eval_files = split_files(args.data_dir, args.eval_split)
    check_schema(train_files + eval_files, args.one_embedding_key_type)
    optimizer = OptimizerConfig(args.optimizer, sparse_embedding=device == "cpu" and not args.dense_embedding_update
                                and OPTIMIZERS[args.optimizer].sparse_cpu)
    table_sizes = resolve_table_sizes(args.table_size_array, args.data_dir, device, args.embedding_vec_size,
                                      optimizer)
    store = StoreConfig(args.store_type, args.persistent_path, args.cache_memory_budget_mb,
                        args.one_embedding_key_type, capacity=store_capacity(sum(table_sizes), world_size),
                        size_factor=OPTIMIZERS[args.optimizer].size_factor)
    if device == "cuda":  # build (not construct) the OneEmbedding options to validate them early
        make_store_options(store.store_type, store.persistent_path, store.capacity, store.cache_memory_budget_mb,
                           store.size_factor)
        check_run_store(store, args.embedding_vec_size, args.optimizer, world_size, rank)
    eval_groups = list_row_groups(eval_files)
    if not eval_groups:  # found now, not at the first evaluation after hours of training
        raise DataError(f"{args.data_dir}/{args.eval_split} holds no rows: nothing to evaluate on (use "
                        f"--eval_split {'val' if args.eval_split == 'test' else 'test'}, or re-run the preprocessing)")
    train_groups = shardable_row_groups(train_files, world_size)
    if full_batches_per_rank(train_groups, args.train_batch_size, world_size) == 0:
        raise DataError(f"{args.data_dir}/train holds less than one batch of {args.train_batch_size // world_size} "
                        f"rows per rank; lower --train_batch_size")
    amp = args.amp
    if amp and device != "cuda":
        print("warning: --amp is CUDA-only; training in fp32 on CPU", file=sys.stderr)
        amp = False
    return RunConfig(
        device=device, world_size=world_size, seed=args.seed, amp=amp, loss_scale_policy=args.loss_scale_policy,
        model=ModelConfig(
            table_sizes=table_sizes, embedding_vec_size=args.embedding_vec_size,
            bottom_mlp=tuple(args.bottom_mlp), top_mlp=tuple(args.top_mlp),
            # nn.FusedMLP is the fast path on GPUs and ~2x slower than plain layers on CPU
            fused_mlp=not args.disable_fusedmlp and device == "cuda",
            dense_input_padding=not args.disable_dense_input_padding,
            interaction_padding=not args.disable_interaction_padding, interaction_itself=args.interaction_itself,
            interaction_type=args.interaction_type, dcn_num_layers=args.dcn_num_layers,
            dcn_low_rank_dim=args.dcn_low_rank_dim),
        store=store, optimizer=optimizer,
        data=DataConfig(
            data_dir=args.data_dir, eval_split=args.eval_split,
            train_batch_size=args.train_batch_size, eval_batch_size=args.eval_batch_size,
            train_batch_per_rank=args.train_batch_size // world_size,
            eval_batch_per_rank=args.eval_batch_size // world_size,
            eval_batches=min(args.eval_batches, eval_batches_per_rank(eval_groups, args.eval_batch_size, world_size)),
            requested_eval_batches=args.eval_batches,
            reader_threads=reader_threads(args.reader_threads, device, local_world_size),
            train_groups=tuple(train_groups), eval_groups=tuple(eval_groups)),
        schedule=ScheduleConfig(args.learning_rate, args.warmup_batches, args.decay_start, args.decay_batches,
                                args.train_batches),
        log=LogConfig(args.loss_print_interval, args.eval_interval, args.target_auc,
                      args.metrics_file if args.metrics_file or not args.model_save_dir
                      else os.path.join(args.model_save_dir, "metrics.jsonl")),
        checkpoint=CheckpointConfig(args.model_save_dir, args.model_load_dir, args.resume, args.save_initial_model,
                                    args.save_model_after_each_eval, args.save_interval, args.keep_checkpoints),
    )
