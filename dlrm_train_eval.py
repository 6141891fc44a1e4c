"""Train and evaluate DLRM on Criteo parquet data with OneFlow in graph mode.

One process per device:

    python -m oneflow.distributed.launch --nproc_per_node 8 dlrm_train_eval.py \
        --data_dir /data/criteo1t_parquet --persistent_path /ssd/dlrm_persistent

The run, top to bottom: parse and check the arguments and the dataset (before any work),
build the model (OneEmbedding on CUDA, a plain embedding on CPU), compile a train graph and an
eval graph, then loop: read a batch from this rank's shard, take an SGD step, log every
--loss_print_interval steps, evaluate AUC every --eval_interval steps, checkpoint.
"""
import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import oneflow as flow
import psutil

from dlrm.checkpoint import checkpoint_name, latest_checkpoint, load_weights, read_train_state, save_checkpoint
from dlrm.data import NUM_SPARSE, BatchReader, DataError, check_schema, full_batches_per_rank, \
    load_table_sizes, shardable_row_groups, split_files
from dlrm.model import DLRM, STORE_TYPES, make_store_options

# The original's Criteo 1TB table sizes, used when the dataset has no dataset_info.json.
CRITEO1T_TABLE_SIZES = [39884406, 39043, 17289, 7420, 20263, 3, 7120, 1543, 63, 38532951, 2953546, 403346, 10,
                        2208, 11938, 155, 4, 976, 14, 39979771, 25641295, 39664984, 585935, 12972, 108, 36]


# ----------------------------------------------------------------------------- arguments
def int_list(text):
    return [int(x) for x in str(text).split(",") if x.strip()]


def get_parser():
    p = argparse.ArgumentParser(description="OneFlow DLRM training and evaluation (graph mode)")
    a = p.add_argument
    # Model (the original's flags and defaults)
    a("--disable_fusedmlp", action="store_true", help="use Linear+ReLU layers instead of nn.FusedMLP")
    a("--embedding_vec_size", type=int, default=128, help="embedding dimension; must equal bottom_mlp[-1]")
    a("--one_embedding_key_type", type=str, default="int64", help="id dtype of the parquet: int32 or int64")
    a("--bottom_mlp", type=int_list, default="512,256,128", help="bottom MLP units")
    a("--top_mlp", type=int_list, default="1024,1024,512,256", help="top MLP units (a final 1 is appended)")
    a("--disable_interaction_padding", action="store_true", help="do not pad the interaction output to x8")
    a("--disable_dense_input_padding", action="store_true", help="do not pad the 13 dense inputs to 16")
    a("--interaction_itself", action="store_true", help="include self dot products in the interaction")
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
    a("--store_type", type=str, default="cached_host_mem", help="device_mem, cached_host_mem or cached_ssd")
    a("--cache_memory_budget_mb", type=int, default=8192, help="per-GPU cache budget for the cached stores")
    a("--amp", action="store_true", help="automatic mixed precision (CUDA)")
    a("--loss_scale_policy", type=str, default="static", help="AMP loss scaling: static (1024) or dynamic")
    # Ours
    a("--device", type=str, default="auto", choices=["auto", "cuda", "cpu"], help="auto: cuda when available")
    a("--eval_split", type=str, default="test", choices=["test", "val"], help="split to evaluate on")
    a("--target_auc", type=float, default=None, help="stop once an evaluation reaches this AUC")
    a("--seed", type=int, default=1234, help="seed for initialisation and the train shuffle")
    a("--metrics_file", type=str, default=None, help="JSON-lines metrics (default: model_save_dir/metrics.jsonl)")
    a("--save_interval", type=int, default=0, help="also checkpoint every N steps (0: off)")
    a("--resume", action="store_true", help="continue from the newest checkpoint in --model_save_dir")
    return p


class ArgError(ValueError):
    pass


def pick_device(choice):
    if choice == "auto":
        return "cuda" if flow.cuda.is_available() else "cpu"
    if choice == "cuda" and not flow.cuda.is_available():
        raise ArgError("--device cuda: no usable CUDA device (use --device cpu)")
    return choice


def check_args(args, world_size, device):
    """One-line errors for everything that can be checked before the data is read."""
    if args.one_embedding_key_type not in ("int32", "int64"):
        raise ArgError(f"--one_embedding_key_type must be int32 or int64, not {args.one_embedding_key_type!r}")
    if args.store_type not in STORE_TYPES:
        raise ArgError(f"--store_type {args.store_type!r} is not one of {', '.join(STORE_TYPES)}")
    if args.loss_scale_policy not in ("static", "dynamic"):
        raise ArgError(f"--loss_scale_policy must be static or dynamic, not {args.loss_scale_policy!r}")
    if args.embedding_vec_size != args.bottom_mlp[-1]:
        raise ArgError(f"--embedding_vec_size {args.embedding_vec_size} must equal the last --bottom_mlp width "
                       f"{args.bottom_mlp[-1]}")
    for flag in ("train_batch_size", "eval_batch_size"):
        value = getattr(args, flag)
        if value <= 0 or value % world_size:
            raise ArgError(f"--{flag} {value} is not a positive multiple of the number of ranks ({world_size})")
    for flag in ("train_batches", "decay_batches", "loss_print_interval"):
        if getattr(args, flag) <= 0:
            raise ArgError(f"--{flag} must be > 0, not {getattr(args, flag)}")
    if args.warmup_batches < 0 or args.decay_start < 0:
        raise ArgError("--warmup_batches and --decay_start must be >= 0")
    if args.resume and not args.model_save_dir:
        raise ArgError("--resume needs --model_save_dir (where the checkpoints are)")
    if device == "cuda" and not args.persistent_path:
        raise ArgError("--persistent_path is required on CUDA (OneEmbedding keeps the embedding tables there)")
    if not os.path.isdir(args.data_dir):
        raise ArgError(f"--data_dir {args.data_dir}: no such directory")
    if args.model_load_dir and not os.path.isdir(args.model_load_dir):
        raise ArgError(f"--model_load_dir {args.model_load_dir}: no such checkpoint directory")


def resolve_table_sizes(args, device):
    """--table_size_array, else the dataset's recorded sizes, else the original's default; checked."""
    if args.table_size_array is None:
        args.table_size_array = load_table_sizes(args.data_dir)
        if args.table_size_array is None:
            print(f"note: {args.data_dir} records no table sizes (dataset_info.json or README.md); "
                  f"using the original's Criteo 1TB table sizes", file=sys.stderr)
            args.table_size_array = CRITEO1T_TABLE_SIZES
    if len(args.table_size_array) != NUM_SPARSE:
        raise ArgError(f"--table_size_array has {len(args.table_size_array)} entries; the data has "
                       f"{NUM_SPARSE} categorical columns (C1..C26)")
    if min(args.table_size_array) <= 0:
        raise ArgError("--table_size_array entries must be > 0")
    if device == "cpu":  # the CPU embedding is one dense table, replicated on every rank
        need = sum(args.table_size_array) * args.embedding_vec_size * 4 * 3  # weights, grads, update
        if need > 0.5 * psutil.virtual_memory().total:
            raise ArgError(f"the CPU embedding for {sum(args.table_size_array):,} rows x {args.embedding_vec_size} "
                           f"needs ~{need / 2**30:.1f} GiB per process; use CUDA (OneEmbedding) or smaller tables")


def parse_args(argv=None):
    args = get_parser().parse_args(argv)
    if args.metrics_file is None and args.model_save_dir:
        args.metrics_file = os.path.join(args.model_save_dir, "metrics.jsonl")
    return args


# ----------------------------------------------------------------------------- learning rate
def lr_at(step, args):
    """LR used by training step `step` (1-based): warmup from 0, flat, then (1 - t/decay)^2 decay."""
    t = step - 1  # the schedulers count steps already taken
    if t < args.decay_start:
        if args.warmup_batches > 0 and t < args.warmup_batches:
            return args.learning_rate * t / args.warmup_batches
        return args.learning_rate
    t = min(t - args.decay_start, args.decay_batches)
    return args.learning_rate * (1.0 - t / args.decay_batches) ** 2


def make_lr_scheduler(optimizer, args):
    """The same schedule as lr_at, as OneFlow schedulers the graph compiles in."""
    sched = flow.optim.lr_scheduler
    warmup = sched.LinearLR(optimizer, start_factor=0.0 if args.warmup_batches > 0 else 1.0,
                            total_iters=max(args.warmup_batches, 1))
    decay = sched.PolynomialLR(optimizer, decay_batch=args.decay_batches, end_learning_rate=0.0, power=2.0,
                               cycle=False)
    return sched.SequentialLR(optimizer, schedulers=[warmup, decay], milestones=[args.decay_start],
                              interval_rescaling=True)


# ----------------------------------------------------------------------------- graphs
class TrainGraph(flow.nn.Graph):
    def __init__(self, module, optimizer, lr_scheduler, device, amp, grad_scaler):
        super().__init__()
        self.module = module
        self.device = device
        self.loss_fn = flow.nn.BCEWithLogitsLoss(reduction="mean")
        self.add_optimizer(optimizer, lr_sch=lr_scheduler)
        if device == "cuda":
            self.config.allow_fuse_model_update_ops(True)
            self.config.allow_fuse_add_to_output(True)
            self.config.allow_fuse_cast_scale(True)
        if amp:
            self.config.enable_amp(True)
            self.set_grad_scaler(grad_scaler)

    def build(self, labels, dense, sparse):
        logits = self.module(dense.to(self.device), sparse.to(self.device))
        loss = self.loss_fn(logits, labels.to(self.device))
        loss.backward()
        return loss.to("cpu")


class EvalGraph(flow.nn.Graph):
    def __init__(self, module, device, amp):
        super().__init__()
        self.module = module
        self.device = device
        if amp:
            self.config.enable_amp(True)

    def build(self, dense, sparse):
        return self.module(dense.to(self.device), sparse.to(self.device)).sigmoid().to("cpu")


def make_grad_scaler(policy):
    if policy == "static":
        return flow.amp.StaticGradScaler(1024)
    return flow.amp.GradScaler(init_scale=2 ** 30, growth_factor=2.0, backoff_factor=0.5, growth_interval=2000)


# ----------------------------------------------------------------------------- helpers
def to_global(array, placement):
    """A rank's local numpy batch -> its split(0) part of a global CPU tensor (no metadata exchange)."""
    return flow.from_numpy(array).to_global(placement=placement, sbp=flow.sbp.split(0), check_meta=False)


def gather_to_all(tensor):
    return tensor.to_global(sbp=flow.sbp.broadcast).to_local()


def broadcast_float(value, placement):
    """Rank 0's Python float, on every rank."""
    t = flow.tensor([value if flow.env.get_rank() == 0 else 0.0], dtype=flow.float64)
    return float(t.to_global(placement=placement, sbp=flow.sbp.partial_sum).to_global(
        sbp=flow.sbp.broadcast).to_local().numpy()[0])


def host_memory_mib():
    return psutil.Process().memory_info().rss / 2 ** 20


def gpu_memory_mib(device):
    if device != "cuda":
        return None
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                              f"--id={flow.env.get_local_rank()}"], capture_output=True, text=True, timeout=10)
        return float(out.stdout.strip().splitlines()[0])
    except Exception:
        return None


class Metrics:
    """Rank 0's log lines and JSON-lines metrics file."""

    def __init__(self, path, rank):
        self.rank = rank
        self.file = None
        if path and rank == 0:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self.file = open(path, "a")

    def log(self, line, **record):
        if self.rank != 0:
            return
        print(f"Rank[0], {line}, {datetime.datetime.now():%Y-%m-%d %H:%M:%S}", flush=True)
        if self.file and record:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()


# ----------------------------------------------------------------------------- evaluation
def roc_auc(labels, preds):
    """ROC AUC with ties averaged (OneFlow's CPU op; equals sklearn.metrics.roc_auc_score)."""
    return float(flow.roc_auc_score(labels.reshape(-1), preds.reshape(-1)).numpy()[0])


def evaluate(eval_graph, module, files, num_batches, args, placement):
    """AUC over all ranks' predictions: every rank evaluates its shard, rank 0 scores the union."""
    rank, world = flow.env.get_rank(), flow.env.get_world_size()
    module.eval()
    reader = BatchReader(files, args.eval_batch_size // world, rank, world, train=False, max_batches=num_batches)
    labels, preds = [], []
    try:
        for label, dense, sparse in reader:
            pred = eval_graph(to_global(dense, placement), to_global(sparse, placement))
            preds.append(gather_to_all(pred))
            labels.append(gather_to_all(to_global(label, placement)))
    finally:
        reader.close()
    module.train()
    auc = roc_auc(flow.cat(labels), flow.cat(preds)) if rank == 0 else 0.0
    flow.comm.barrier()
    return broadcast_float(auc, placement), sum(len(x) for x in labels)


# ----------------------------------------------------------------------------- checkpoints
def restore(module, train_graph, path, args, world_size, placement):
    """Load weights; for our checkpoints also the step, so the LR schedule and the reader resume.

    Returns the number of steps already taken (0 for weights-only checkpoints)."""
    load_weights(module, path)
    state = read_train_state(path)
    if state is None or state["step"] == 0:
        return 0
    saved = state["args"]
    if state["world_size"] != world_size or saved["train_batch_size"] != args.train_batch_size:
        raise ValueError(f"{path} was written by {state['world_size']} processes with --train_batch_size "
                         f"{saved['train_batch_size']}; resume with the same (now {world_size}, "
                         f"{args.train_batch_size}), or pass a weights-only checkpoint")
    step = flow.tensor([state["step"]], dtype=flow.int64).to_global(placement=placement, sbp=flow.sbp.broadcast)
    train_graph.load_state_dict({"System-Train-TrainStep": step}, strict=False)  # the LR schedule's clock
    return state["step"]


# ----------------------------------------------------------------------------- main
def main(argv=None):
    args = parse_args(argv)
    rank, world = flow.env.get_rank(), flow.env.get_world_size()
    cpu = flow.env.all_device_placement("cpu")

    # 1. Check everything cheap to check before building anything.
    try:
        device = pick_device(args.device)
        check_args(args, world, device)
        train_files = split_files(args.data_dir, "train")
        eval_files = split_files(args.data_dir, args.eval_split)
        check_schema(train_files + eval_files, args.one_embedding_key_type)
        resolve_table_sizes(args, device)
        if device == "cuda":  # build (not construct) the OneEmbedding options to validate them early
            make_store_options(args.store_type, args.persistent_path, sum(args.table_size_array),
                               args.cache_memory_budget_mb)
        eval_batches = min(args.eval_batches, full_batches_per_rank(eval_files, args.eval_batch_size, world))
        shardable_row_groups(train_files, world)
        if full_batches_per_rank(train_files, args.train_batch_size, world) == 0:
            raise DataError(f"{args.data_dir}/train holds less than one batch of {args.train_batch_size // world} "
                            f"rows per rank; lower --train_batch_size")
    except ValueError as e:  # ArgError, DataError and the store options' checks
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.amp and device != "cuda":
        print("warning: --amp is CUDA-only; training in fp32 on CPU", file=sys.stderr)
        args.amp = False
    if rank == 0:
        print("-" * 24 + " arguments " + "-" * 24)
        for k, v in sorted(vars(args).items()):
            print(f"{k} {'.' * (30 - len(k))} {v}")
        print(f"device ........................ {device} x {world} ranks")
        if eval_batches < args.eval_batches:
            print(f"note: the {args.eval_split} split holds {eval_batches} full eval batches per rank; "
                  f"evaluating on {eval_batches} instead of {args.eval_batches}")
        print("-" * 59, flush=True)

    # 2. Model, optimizer, LR schedule and the two graphs.
    flow.manual_seed(args.seed)
    np.random.seed(args.seed)  # LocalEmbedding's init: identical on every rank
    module = DLRM(args, device)
    module.to_global(flow.env.all_device_placement(device), flow.sbp.broadcast)
    optimizer = flow.optim.SGD(module.parameters(), lr=args.learning_rate)
    train_graph = TrainGraph(module, optimizer, make_lr_scheduler(optimizer, args), device, args.amp,
                             make_grad_scaler(args.loss_scale_policy))
    eval_graph = EvalGraph(module, device, args.amp)
    metrics = Metrics(args.metrics_file, rank)

    # 3. Load weights; resume step, LR schedule and reader position from our checkpoints.
    load_dir = args.model_load_dir
    if args.resume:
        load_dir = latest_checkpoint(args.model_save_dir) or load_dir
    start_step = 0
    if load_dir:
        try:
            start_step = restore(module, train_graph, load_dir, args, world, cpu)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        metrics.log(f"Loaded {load_dir}" + (f", resuming after step {start_step}" if start_step else ""))

    reader = BatchReader(train_files, args.train_batch_size // world, rank, world, train=True, seed=args.seed,
                         start_batch=start_step)

    def checkpoint(step, auc=None):
        state = {"step": step, "lr": lr_at(step + 1, args), "auc": auc, "world_size": world,
                 "reader": {"batches_consumed_per_rank": step, "seed": args.seed,
                            "epoch_segment_row_per_rank": [reader.position(step, r) for r in range(world)]},
                 "args": vars(args)}
        path = save_checkpoint(module, args.model_save_dir, checkpoint_name(step, auc), state)
        metrics.log(f"Saved checkpoint {path}")

    if args.save_initial_model and args.model_save_dir and start_step == 0:
        path = save_checkpoint(module, args.model_save_dir, "initial_checkpoint",
                               {"step": 0, "args": vars(args), "world_size": world})
        metrics.log(f"Saved checkpoint {path}")

    # 4. Train.
    losses = []  # (step, loss tensor) since the last log line; read together to avoid a sync per step
    last_time, last_step = time.time(), start_step
    run_start, auc, step, saved_step = time.time(), None, start_step, None
    eval_due = lambda s: (args.eval_interval > 0 and s % args.eval_interval == 0) or s == args.train_batches
    try:
        for step in range(start_step + 1, args.train_batches + 1):
            label, dense, sparse = next(reader)
            loss = train_graph(to_global(label, cpu), to_global(dense, cpu), to_global(sparse, cpu))
            losses.append((step, loss))
            if step % args.loss_print_interval == 0 or step == args.train_batches:
                values = [(s, float(gather_to_all(l).numpy())) for s, l in losses]
                losses = []
                bad = [(s, v) for s, v in values if not math.isfinite(v)]
                if bad and not (args.amp and args.loss_scale_policy == "dynamic"):
                    print(f"error: loss is {bad[0][1]} at step {bad[0][0]}; stopping (lower --learning_rate "
                          f"or check the data)", file=sys.stderr)
                    return 3
                latency = (time.time() - last_time) / (step - last_step)
                eta = latency * (args.train_batches - step)
                metrics.log(
                    f"Step {step}, Loss {values[-1][1]:.4f}, Latency {latency * 1000:.3f} ms, "
                    f"Throughput {args.train_batch_size / latency:.1f}, ETA {datetime.timedelta(seconds=int(eta))}",
                    kind="train", step=step, loss=values[-1][1], mean_loss=float(np.mean([v for _, v in values])),
                    lr=lr_at(step, args), latency_ms=latency * 1000, throughput=args.train_batch_size / latency,
                    elapsed_s=time.time() - run_start, host_memory_mib=host_memory_mib())
                last_time, last_step = time.time(), step
            if eval_due(step):
                t0 = time.time()
                auc, n = evaluate(eval_graph, module, eval_files, eval_batches, args, cpu)
                metrics.log(
                    f"Step {step}, AUC {auc:.5f}, Eval_time {time.time() - t0:.2f} s, Eval_samples {n}, "
                    f"GPU_Memory {gpu_memory_mib(device)}, Host_Memory {host_memory_mib():.0f} MiB",
                    kind="eval", step=step, auc=auc, eval_time_s=time.time() - t0, eval_samples=n,
                    split=args.eval_split, host_memory_mib=host_memory_mib(), gpu_memory_mib=gpu_memory_mib(device))
                reached = args.target_auc is not None and auc >= args.target_auc
                if args.model_save_dir and (args.save_model_after_each_eval or reached or step == args.train_batches):
                    checkpoint(step, auc)
                    saved_step = step
                last_time, last_step = time.time(), step  # keep eval time out of the step latency
                if reached:
                    metrics.log(f"Step {step}, reached target AUC {args.target_auc}; stopping",
                                kind="target_reached", step=step, auc=auc)
                    break
            if args.save_interval > 0 and step % args.save_interval == 0 and args.model_save_dir \
                    and saved_step != step:
                checkpoint(step)
    finally:
        reader.close()
    if rank == 0:
        final = "no evaluation" if auc is None else f"final AUC {auc:.5f}"
        print(f"done: {step} steps, {final}, {time.time() - run_start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
