"""Score rows with a trained DLRM checkpoint: click probabilities to a CSV or parquet file.

One process per device, as training:

    python -m oneflow.distributed.launch --nproc_per_node 2 dlrm_predict.py \
        --model_load_dir RUN/step_1000_val_auc_0.76 --input test.txt --output predictions.csv

The run: rank 0 checks the flags, the checkpoint (its train_state.json names the model and the
dataset) and the dataset against each other, and the input; raw Criteo text goes through one local
Spark job with the preprocessing's own transforms (dlrm.preprocess.rows) into temporary parquet
beside the output; a preprocessed parquet split is scored as it is. Every rank then scores a
contiguous slice of the rows with the evaluation graph, and rank 0 writes one row per input row,
in input order, atomically.
"""
import os
import shutil
import sys
import time
from types import SimpleNamespace

import numpy as np

from dlrm.launch import wait_for_rank0

wait_for_rank0()  # a launched rank: before OneFlow's import connects it to rank 0 (see there)
import oneflow as flow  # noqa: E402

from dlrm.checkpoint import load_found_weights, locate_checkpoint
from dlrm.config import CheckpointConfig, pick_device, reader_threads
from dlrm.data import BatchReader, eval_batches_per_rank, list_row_groups
from dlrm import failfast
from dlrm.distributed import broadcast_json, cpu_placement, gather_to_all, to_global
from dlrm.evaluation import log_loss, roc_auc
from dlrm.graphs import EvalGraph
from dlrm.model import DLRM
from dlrm.predict import (PredictError, check_parquet_input, dataset_info, get_parser, gpu_store_error,
                          model_arguments, new_id_bound, order_by_slices, output_format, plan_input, read_columns,
                          remove_stale_temps, temp_path, trained_from, write_output)
from dlrm.store import agreed_error, checkpoint_snapshot

# ----------------------------------------------------------------------------- rank 0's steps
def plan(args, world, device):
    """Everything checked before any work: returns the JSON-able plan every rank follows."""
    fmt = output_format(args.output, args.overwrite)
    for path in remove_stale_temps(args.output):
        print(f"note: removed {path}, left by a run of this tool that was killed", file=sys.stderr, flush=True)
    inp = plan_input(args.input)
    if len(args.model_load_dir) > 1 and args.persistent_path:
        raise PredictError("--persistent_path names one OneEmbedding store: with several --model_load_dir "
                           "checkpoints each reads the store it was trained with")
    models, data_dir, info = [], args.data_dir, None
    for path in args.model_load_dir:
        found = locate_checkpoint(CheckpointConfig(None, path, False, False, False, 0, 0))
        trained = trained_from(found)
        # the first model's dataset is the ensemble's: every other model must have been trained on it
        data_dir, info = dataset_info(trained, data_dir)
        # on GPUs each rank checks that its store directory holds the snapshot (gpu_store_error)
        snapshot = checkpoint_snapshot(found["path"]) if device == "cuda" and trained.holds_store else None
        models.append({"found": found, "trained": vars(trained), "snapshot": snapshot})
    batch = models[0]["trained"]["eval_batch_size"] if args.batch_size is None else args.batch_size
    if batch <= 0 or batch % world:
        raise PredictError(f"--batch_size {batch} is not a positive multiple of the number of ranks ({world})")
    out = {"models": models, "data_dir": data_dir, "info": info, "format": fmt,
           "kind": inp.kind, "files": inp.files, "batch_size": batch}
    if inp.kind == "parquet":
        check_parquet_input(inp.files, models[0]["trained"]["store"]["key_type"])
        return out
    if info is None:
        raise PredictError(f"dataset {data_dir} has no dataset_info.json: raw rows cannot be transformed as it was; "
                           f"score a preprocessed parquet split instead")
    from dlrm.preprocess.rows import has_labels, id_transform

    id_transform(info, data_dir)  # a dataset whose ids raw rows cannot get: stop now
    out["labeled"] = [has_labels(f) for f in inp.files]
    return out


def raw_rows(args, p, rows_dir):
    """Raw text -> rows_dir (dlrm.preprocess.rows on local Spark); returns the row groups in order
    and each file's line count."""
    from dlrm.preprocess.rows import ordered_row_groups, write_rows
    from dlrm.preprocess.spark import start_spark

    # the shuffles here (line counts, vocabulary joins) are small: a partition per core, not 200
    spark = start_spark(SimpleNamespace(spark_master=args.spark_master, spark_tmp_dir=None,
                                        shuffle_partitions=os.cpu_count() or 2,
                                        spark_driver_memory_gb=args.spark_driver_memory_gb))
    try:
        lines = write_rows(spark, p["files"], p["labeled"], p["info"], p["data_dir"], rows_dir)
    finally:
        spark.stop()
    return ordered_row_groups(rows_dir), lines


def row_report(p, groups, lines, bad_rows):
    """Rank 0: per row, has a label / malformed reason (raw input); --bad_rows fail stops here."""
    if p["kind"] == "parquet":
        n = sum(g[2] for g in groups)
        return np.ones(n, bool), [None] * n
    table = read_columns(groups, ["row", "reason"])
    if not np.array_equal(table.column("row").to_numpy(), np.arange(table.num_rows)):
        raise PredictError(f"internal error: the transformed rows are not in input order ({len(groups)} groups)")
    reasons = table.column("reason").to_pylist()
    file_of = np.repeat(np.arange(len(lines)), lines)
    labeled = np.asarray(p["labeled"], bool)[file_of] if len(file_of) else np.zeros(0, bool)
    bad = [i for i, r in enumerate(reasons) if r is not None]
    if bad and bad_rows == "fail":
        i, f = bad[0], int(file_of[bad[0]])
        raise PredictError(f"malformed row in {p['files'][f]} line {i - sum(lines[:f]) + 1}: {reasons[i]} "
                           f"({len(bad)} malformed row(s) in total; --bad_rows fail, nothing scored)")
    return labeled, reasons


# ----------------------------------------------------------------------------- scoring
def build_model(trained, device, persistent_path, world, index=0, new_ids=0):
    """The index-th model of the run (dlrm.predict.model_arguments; on GPUs its OneEmbedding gets a
    name of its own: OneFlow keeps every store of a process until it exits, so all models'
    embeddings stay in GPU memory). Seeded with its run's seed, as training builds it: on CPU the
    rows of ids a GPU checkpoint's store lacks keep that run's initial values, on every run and
    rank (as tools/convert_checkpoint.py gives them); on GPUs OneEmbedding initialises such ids
    from the same seed as training's evaluation did."""
    if device == "cuda":
        flow.boxing.nccl.enable_all_to_all(True)
    kwargs = model_arguments(trained, device, persistent_path, world, index, new_ids)
    flow.manual_seed(kwargs["seed"])
    np.random.seed(kwargs["seed"])  # LocalEmbedding's initial rows
    module = DLRM(**kwargs)
    module.to_global(flow.env.all_device_placement(device), flow.sbp.broadcast)
    return module


def score(module, device, amp, groups, batch_size, placement, threads, keep):
    """Predictions of every row of groups in order (on rank 0; None elsewhere): each rank scores its
    contiguous slice (BatchReader(train=False), the last batch padded) with the evaluation graph, which
    is appended to keep: a graph freed while the other ranks may still run theirs can hang them (as
    dlrm.threads keeps its probe graph), so every model's graph lives until the run ends."""
    rank, world = flow.env.get_rank(), flow.env.get_world_size()
    per_rank = batch_size // world
    graph = EvalGraph(module, device, amp)
    keep.append(graph)
    module.eval()
    reader = BatchReader(groups, per_rank, rank, world, train=False,
                         max_batches=eval_batches_per_rank(groups, batch_size, world), workers=threads)
    preds = []
    try:
        for batch in reader:
            preds.append(gather_to_all(graph(to_global(batch.dense, placement), to_global(batch.sparse, placement))))
    finally:
        reader.close()
    if rank != 0:
        return None
    return order_by_slices(flow.cat(preds).numpy().reshape(-1), groups, per_rank, world)


def output_table(probs, labels, labeled, reasons, has_label_column):
    import pyarrow as pa

    bad = np.array([r is not None for r in reasons], bool)
    cols = {"row": pa.array(np.arange(len(probs), dtype=np.int64)),
            "probability": pa.array(probs.astype(np.float32), mask=bad)}
    if has_label_column:
        cols["label"] = pa.array(labels.astype(np.int8), mask=bad | ~labeled)
    return pa.table(cols), bad


def summary(args, probs, labels, labeled, bad):
    """The last line: rows, malformed rows and, with labels, AUC and log loss over the labeled rows."""
    keep = labeled & ~bad
    line = f"done: {len(probs)} rows -> {os.path.abspath(args.output)}; {int(bad.sum())} malformed row(s) skipped " \
           f"(empty probability)"
    if len(np.unique(labels[keep])) == 2:
        auc = roc_auc(flow.tensor(labels[keep].astype(np.float32)), flow.tensor(probs[keep].astype(np.float32)))
        line += f"; AUC {auc:.5f}, log loss {log_loss(labels[keep], probs[keep]):.5f} over {int(keep.sum())} " \
                f"labeled rows"
    return line


def fail(message):
    """Exit code 2 with one line: every rank takes this path together, rank 0 prints it."""
    if flow.env.get_rank() == 0:
        print(f"error: {message}", file=sys.stderr, flush=True)
    return 2


def main(argv=None):
    args = get_parser().parse_args(argv)
    rank, world = flow.env.get_rank(), flow.env.get_world_size()
    local_world = world // flow.env.get_node_size()
    cpu = cpu_placement()
    failfast.watch(cpu)  # from here on, a rank that fails ends every rank
    t0 = time.time()
    try:
        device = pick_device(args.device, flow.cuda.is_available())
    except ValueError as e:
        return fail(e)

    # 1. Rank 0 checks flags, checkpoint, dataset and input (they may be on its disk only).
    def checked(step):
        """step()'s result or {"error": one line}: every failure on rank 0 reaches the other ranks,
        which wait for it in a collective (a Spark failure too: its first line, with its type)."""
        try:
            return step()
        except (PredictError, ValueError, OSError) as e:
            return {"error": str(e).strip().splitlines()[0] if str(e).strip() else repr(e)}
        except Exception as e:  # noqa: BLE001
            text = str(e).strip().splitlines()
            return {"error": f"{type(e).__name__}: {text[0] if text else ''} (while preparing {args.input})"}

    p = broadcast_json(checked(lambda: plan(args, world, device)) if rank == 0 else None, cpu)
    if "error" in p:
        return fail(p["error"])
    if device == "cuda":  # every rank its own store directories, before any store is opened
        error = agreed_error(gpu_store_error(p["models"], args.persistent_path, world, rank), cpu)
        if error:
            return fail(error)

    # 2. Rank 0 turns raw text into model rows (Spark) beside the output; the others wait.
    rows_dir = temp_path(args.output, "rows") if rank == 0 else None
    try:
        def prepared():
            if p["kind"] == "parquet":
                groups, lines = list_row_groups(p["files"]), None
            else:
                groups, lines = raw_rows(args, p, rows_dir)
            if not groups:
                raise PredictError(f"--input {args.input}: no rows")
            report.extend(row_report(p, groups, lines, args.bad_rows))
            # rows scoring may add to each model's store (sized for them: OneFlow's host cache has no bound check)
            bound = {}
            for m in p["models"] if device == "cuda" else []:
                kind = m["trained"]["store"]["store_type"]
                bound.setdefault(kind, new_id_bound(groups, p["info"], kind))
            return {"groups": groups, "new_ids": [bound.get(m["trained"]["store"]["store_type"], 0)
                                                  for m in p["models"]]}

        report = []  # rank 0: (labeled, reasons) per row
        rows = broadcast_json(checked(prepared) if rank == 0 else None, cpu)
        if "error" in rows:
            return fail(rows["error"])
        if rank == 0:
            print(f"scoring {sum(g[2] for g in rows['groups'])} rows of {args.input} on {device} x {world} "
                  f"({time.time() - t0:.1f} s to prepare)", flush=True)

        # 3. Each model and its weights (dlrm.checkpoint's loader); every rank scores its slice. Several
        # models (an ensemble: the same recipe, other seeds) give the mean of their probabilities.
        groups = [tuple(g) for g in rows["groups"]]
        t_score, probs, graphs = time.time(), None, []
        for i, m in enumerate(p["models"]):
            module = build_model(m["trained"], device, args.persistent_path, world, index=i,
                                 new_ids=rows["new_ids"][i])
            try:
                load_found_weights(module, m["found"], args.persistent_path, p["data_dir"])
            except ValueError as e:
                return fail(e)
            amp = device == "cuda" and bool(m["found"]["state"]["config"].get("amp"))
            member = score(module, device, amp, groups, p["batch_size"], cpu, reader_threads(0, device, local_world),
                           graphs)
            if rank == 0:
                probs = member if probs is None else probs + member
        if rank == 0:
            probs = probs / len(p["models"])
        t_score = time.time() - t_score

        # 4. Rank 0 writes the file and the last line (a failure, e.g. the output appeared meanwhile,
        # reaches every rank).
        def written():
            labeled, reasons = report
            labels = read_columns(groups, ["label"]).column("label").to_numpy()
            table, bad = output_table(probs, labels, labeled, reasons, bool(labeled.any()))
            write_output(args.output, p["format"], table, args.overwrite)
            models = f"the mean of {len(p['models'])} models' probabilities, " if len(p["models"]) > 1 else ""
            print(f"scored in {t_score:.2f} s ({models}{len(probs) * len(p['models']) / t_score:.0f} rows/s)",
                  flush=True)
            print(summary(args, probs, labels, labeled, bad) + f" ({time.time() - t0:.1f} s)", flush=True)
            return {}

        done = broadcast_json(checked(written) if rank == 0 else None, cpu)
        if "error" in done:
            return fail(done["error"])
    finally:
        if rank == 0 and rows_dir and os.path.isdir(rows_dir):
            shutil.rmtree(rows_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(failfast.run(main))
