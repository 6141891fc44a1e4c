"""Train and evaluate DLRM on Criteo parquet data with OneFlow in graph mode.

One process per device:

    python -m oneflow.distributed.launch --nproc_per_node 8 dlrm_train_eval.py \
        --data_dir /data/criteo1t_parquet --persistent_path /ssd/dlrm_persistent

The run, top to bottom: parse the flags; check them and the dataset and resolve them into a
RunConfig (dlrm/config.py) before any work; build the model (OneEmbedding on CUDA, a plain
embedding on CPU), the optimizer and the two compiled graphs; load or resume a checkpoint; then
loop: read a batch from this rank's shard, take an SGD step, log every --loss_print_interval
steps, evaluate AUC every --eval_interval steps, checkpoint.
"""
import datetime
import math
import os
import sys
import time

import numpy as np

from dlrm.launch import wait_for_rank0

wait_for_rank0()  # a launched rank: before OneFlow's import connects it to rank 0 (see there)
import oneflow as flow  # noqa: E402

from dlrm.checkpoint import checkpoint_name, locate_checkpoint, prune_checkpoints, reader_plan, restore, \
    save_checkpoint, saved_train_batch, take_save_dir, train_state
from dlrm.config import get_parser, resolve
from dlrm.data import BatchReader
from dlrm import failfast
from dlrm.distributed import broadcast_json, cpu_placement, gather_to_all, to_global
from dlrm.evaluation import EvalSet, evaluate
from dlrm.graphs import EvalGraph, Graph, make_train_graph
from dlrm.metrics import Metrics, gpu_memory_mib, host_memory_mib
from dlrm.model import DLRM
from dlrm.schedule import lr_at
from dlrm.store import agreed_error, found_snapshot_error
from dlrm.threads import launcher_note


def print_arguments(args, cfg):
    """Rank 0's banner: every flag, with the values the run resolved (table sizes, metrics file, AMP)."""
    shown = dict(vars(args), table_size_array=list(cfg.model.table_sizes), metrics_file=cfg.log.metrics_file,
                 amp=cfg.amp)
    print("-" * 24 + " arguments " + "-" * 24)
    for k, v in sorted(shown.items()):
        print(f"{k} {'.' * (30 - len(k))} {v}")
    print(f"device ........................ {cfg.device} x {cfg.world_size} ranks")
    if cfg.data.eval_batches < cfg.data.requested_eval_batches:
        print(f"note: the {cfg.data.eval_split} split fills {cfg.data.eval_batches} eval batches per rank (the last "
              f"one padded); evaluating on {cfg.data.eval_batches} instead of {cfg.data.requested_eval_batches}")
    print("-" * 59, flush=True)


def build(cfg):
    """The model (replicated on every rank; OneEmbedding shards itself), the optimizers with their LR
    schedules, and the two graphs."""
    if cfg.device == "cuda":
        # OneEmbedding shuffles ids and rows between GPUs: NCCL all-to-all, as the original
        flow.boxing.nccl.enable_all_to_all(True)
    flow.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)  # LocalEmbedding's init: identical on every rank
    module = DLRM(cfg.model, cfg.store, cfg.device, seed=cfg.seed)
    module.to_global(flow.env.all_device_placement(cfg.device), flow.sbp.broadcast)
    return module, make_train_graph(module, cfg), EvalGraph(module, cfg.device, cfg.amp)


def read_losses(losses, cfg):
    """[(step, loss)] of the steps since the last log line, read in one go (one collective per interval).

    Raises FloatingPointError naming the first non-finite step, except under AMP's dynamic loss
    scaling, which skips such steps itself."""
    gathered = gather_to_all(flow.stack([loss.reshape(-1) for _, loss in losses])).numpy().reshape(-1)
    values = [(s, float(v)) for (s, _), v in zip(losses, gathered)]
    bad = [(s, v) for s, v in values if not math.isfinite(v)]
    if bad and not (cfg.amp and cfg.loss_scale_policy == "dynamic"):
        raise FloatingPointError(f"loss is {bad[0][1]} at step {bad[0][0]}; stopping (lower --learning_rate "
                                 f"or check the data)")
    return values


# ----------------------------------------------------------------------------- the run
def main(argv=None):
    args = get_parser().parse_args(argv)
    rank, world = flow.env.get_rank(), flow.env.get_world_size()
    local_world = world // flow.env.get_node_size()  # ranks on this machine
    cpu = cpu_placement()
    failfast.watch(cpu)  # from here on, a rank that fails ends every rank

    # 1. Check everything cheap to check, and resolve the flags, before building anything.
    cfg, error = None, None
    try:
        cfg = resolve(args, world, flow.cuda.is_available(), local_world, rank)
    except ValueError as e:  # ArgError, DataError and the store checks (each rank its own directory)
        error = str(e)
    error = agreed_error(error, cpu)  # every rank stops together, rank 0 prints the line
    if error:
        if rank == 0:
            print(f"error: {error}", file=sys.stderr)
        return 2
    if rank == 0:
        print_arguments(args, cfg)
    sched, data, ckpt = cfg.schedule, cfg.data, cfg.checkpoint

    # 2. Take --model_save_dir for this run: rank 0 holds its lock (`taken`) until the process ends.
    #    Rank 0 finds the checkpoint to start from (node-local directories are fine); on CUDA each
    #    rank's store must hold its snapshot before the model opens the store (which creates it).
    taken = None  # the lock file, open until the run ends: the lock lives as long as it
    if rank == 0:
        try:
            taken = take_save_dir(ckpt.model_save_dir) if ckpt.model_save_dir else None
            found = {"run": locate_checkpoint(ckpt)}
        except ValueError as e:
            found = {"error": str(e)}
    found = broadcast_json(found if rank == 0 else None, cpu)
    error = found.get("error")
    if not error and cfg.device == "cuda":
        error = found_snapshot_error(found["run"], cfg.store.persistent_path, cpu)
    if error:
        if rank == 0:
            print(f"error: {error}", file=sys.stderr)
        return 2
    found, start_step, plan = found["run"], 0, None

    # 3. Model, optimizer, LR schedule and the two graphs.
    module, train_graph, eval_graph = build(cfg)
    metrics = Metrics(cfg.log.metrics_file, rank)

    # 4. Load weights; resume step, optimizer state, LR schedule and reader position from our checkpoints.
    if ckpt.resume and not found:
        metrics.log(f"--resume: no complete checkpoint in {ckpt.model_save_dir}; starting at step 0")
    if found:
        try:
            start_step = restore(module, train_graph, found, cfg, cpu)
            plan = reader_plan(found["state"], cfg) if start_step else None
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        metrics.log(f"Loaded {found['path']}" + (f", resuming after step {start_step}" if start_step else ""))
        if plan and plan["base_step"] == start_step and plan["prefix"]:
            rows = sum(b - a for part in plan["prefix"] for _, a, b in part)
            metrics.log(f"Written by {found['state']['world_size']} processes with --train_batch_size "
                        f"{saved_train_batch(found['state'])}: the {rows} rows its ranks had not read of epoch(s) "
                        f"up to {plan['first_epoch'] - 1} come first, shared by {world} processes")
    if ckpt.resume:
        metrics.continue_from(start_step)
    reader = BatchReader(data.train_groups, data.train_batch_per_rank, rank, world, train=True, seed=cfg.seed,
                         start_batch=start_step, workers=data.reader_threads, plan=plan)
    eval_set = EvalSet(data, rank, world, local_world)

    def save(name, state):
        path = save_checkpoint(module, ckpt.model_save_dir, name, state, train_graph)
        metrics.log(f"Saved checkpoint {path}")
        if ckpt.keep_checkpoints:
            store = cfg.store.persistent_path if cfg.device == "cuda" else None
            for old in prune_checkpoints(ckpt.model_save_dir, ckpt.keep_checkpoints, store):
                metrics.log(f"Deleted checkpoint {old} (--keep_checkpoints {ckpt.keep_checkpoints})")

    if ckpt.save_initial_model and ckpt.model_save_dir and start_step == 0:
        save("initial_checkpoint", train_state(0, cfg))

    # 5. Train.
    losses = []  # (step, loss tensor) since the last log line
    blas = (f"BLAS: {os.environ.get('DLRM_BLAS_LIBRARY', 'OneFlow OpenBLAS')}, "
            f"MKL_NUM_THREADS={os.environ.get('MKL_NUM_THREADS', '-')}")
    last_time, last_step = time.time(), start_step
    run_start, auc, step, saved_step = time.time(), None, start_step, None
    try:
        for step in range(start_step + 1, sched.train_batches + 1):
            label, dense, sparse, _ = next(reader)
            loss = train_graph(to_global(label, cpu), to_global(dense, cpu), to_global(sparse, cpu))
            if cfg.device == "cpu" and step == start_step + 1:
                # every rank prints this line to the launcher's one pipe, unbuffered (python -u): the
                # newline in the same write keeps two ranks' lines apart (print writes it separately)
                print(f"rank {rank}: {launcher_note(*Graph.launcher)} (dlrm.threads); {blas}\n", end="", flush=True)
            losses.append((step, loss))

            if step % cfg.log.loss_print_interval == 0 or step == sched.train_batches:
                try:
                    values, losses = read_losses(losses, cfg), []
                except FloatingPointError as e:
                    print(f"error: {e}", file=sys.stderr)
                    return 3
                latency = (time.time() - last_time) / (step - last_step)
                eta = datetime.timedelta(seconds=int(latency * (sched.train_batches - step)))
                metrics.log(
                    f"Step {step}, Loss {values[-1][1]:.4f}, Latency {latency * 1000:.3f} ms, "
                    f"Throughput {data.train_batch_size / latency:.1f}, ETA {eta}",
                    kind="train", step=step, loss=values[-1][1], mean_loss=float(np.mean([v for _, v in values])),
                    lr=lr_at(step, sched), latency_ms=latency * 1000, throughput=data.train_batch_size / latency,
                    elapsed_s=time.time() - run_start, host_memory_mib=host_memory_mib())
                last_time, last_step = time.time(), step

            eval_due = (cfg.log.eval_interval > 0 and step % cfg.log.eval_interval == 0) or step == sched.train_batches
            if eval_due:
                t0 = time.time()
                auc, logloss, n = evaluate(eval_graph, module, eval_set, cpu)
                eval_time, gpu_mib, host_mib = time.time() - t0, gpu_memory_mib(cfg.device), host_memory_mib()
                metrics.log(
                    f"Step {step}, AUC {auc:.5f}, Log_loss {logloss:.5f}, Eval_time {eval_time:.2f} s, Eval_samples {n}, "
                    f"GPU_Memory {gpu_mib}, Host_Memory {host_mib:.0f} MiB",
                    kind="eval", step=step, auc=auc, logloss=logloss, eval_time_s=eval_time, eval_samples=n,
                    split=data.eval_split, host_memory_mib=host_mib, gpu_memory_mib=gpu_mib)
                reached = cfg.log.target_auc is not None and auc >= cfg.log.target_auc
                if ckpt.model_save_dir and (ckpt.save_model_after_each_eval or reached or step == sched.train_batches):
                    save(checkpoint_name(step, auc), train_state(step, cfg, reader, auc))
                    saved_step = step
                last_time, last_step = time.time(), step  # keep eval time out of the step latency
                if reached:
                    metrics.log(f"Step {step}, reached target AUC {cfg.log.target_auc}; stopping",
                                kind="target_reached", step=step, auc=auc)
                    break

            if ckpt.save_interval > 0 and step % ckpt.save_interval == 0 and ckpt.model_save_dir \
                    and saved_step != step:
                save(checkpoint_name(step), train_state(step, cfg, reader))
    finally:
        reader.close()
    if rank == 0:
        final = "no evaluation" if auc is None else f"final AUC {auc:.5f}"
        print(f"done: {step} steps, {final}, {time.time() - run_start:.1f} s", flush=True)
    if taken:
        taken.close()  # --model_save_dir is free for the next run
    return 0


if __name__ == "__main__":
    sys.exit(failfast.run(main))
