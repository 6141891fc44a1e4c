"""The command line of tools/criteo1t_parquet.py: ``main(argv=None)`` returns the exit code.

Exit codes: 0 done, 2 bad arguments or input/output directories (found before Spark starts),
1 a failure during the run (malformed row with --bad_rows fail, a row count check), 130
interrupted. Every error is one line ``error: ...`` on stderr; a failed run leaves no output.
A run that is interrupted, fails in Spark or fills a disk keeps its temporary directory with
the passes it finished (resume.WorkState) for ``--resume``; a run that stops on its input
(malformed rows, a changed file) removes it.
"""
import argparse
import os
import shutil
import sys
import time

from dlrm.preprocess.passes import finished_outputs, reasons_text, run
from dlrm.preprocess.plan import (CRITEO1T_RULE, DEFAULT_MOD_IDX, KAGGLE_RULE, PreprocessError,
                                  check_args, check_output_outside_input, log, pid_alive,
                                  plan_inputs, prepare_output, publish_output, temp_prefix)
from dlrm.preprocess.resume import WorkState, find_resumable


def build_parser():
    p = argparse.ArgumentParser(
        prog="criteo1t_parquet.py",
        description="Convert the raw Criteo click logs (1TB day_N files or Kaggle train.txt) "
        "into DLRM parquet: output_dir/{train,test,val}/ and output_dir/dataset_info.json.",
        epilog="Split rules. " + CRITEO1T_RULE + ". " + KAGGLE_RULE + ". Malformed rows "
        "(reasons: field_count, label, dense, categorical) are skipped and counted, or stop the "
        "run with --bad_rows fail. Output is written to a temporary sibling directory and renamed "
        "to output_dir only when complete.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--resume", action="store_true",
                   help="continue the newest killed or failed run into the same output_dir: "
                   "reuse the passes it finished (refused, naming it, if an input or setting "
                   "changed); without it a new run deletes what a killed run left")
    p.add_argument("--input_dir", type=str, required=True,
                   help="directory holding day_0..day_K (criteo1t) or train.txt (kaggle)")
    p.add_argument("--output_dir", type=str, required=True,
                   help="output directory (must not exist or be empty, unless --overwrite)")
    p.add_argument("--spark_tmp_dir", type=str, default=None,
                   help="Spark scratch directory (spark.local.dir); None keeps Spark's default")
    p.add_argument("--spark_driver_memory_gb", type=int, default=360,
                   help="spark.driver.memory in GB; in local mode capped at 80%% of physical RAM")
    p.add_argument("--mod_idx", type=int, default=DEFAULT_MOD_IDX,
                   help="categorical id modulus; <= 0 means hash ids (xxhash64)")
    p.add_argument("--min_frequency", type=int, default=0,
                   help="> 0: vocabulary ids instead of mod/hash ids: per column, the values seen "
                   "at least this often in train get ids 1.. (most frequent first), all others "
                   "(rare, missing, not in train) share id 0; ids offset by the earlier "
                   "columns' table sizes (exact sizes in dataset_info.json). 0: off")
    p.add_argument("--broadcast_vocab_rows", type=int, default=1000000,
                   help="--min_frequency: a column whose vocabulary has at most this many values "
                   "is joined by broadcast, a larger one by a shuffle join")
    p.add_argument("--num_test_examples", type=int, default=89137319,
                   help="criteo1t: number of first lines of the last day that go to test")
    p.add_argument("--export_dataset_info", action="store_true",
                   help="also write output_dir/README.md with the example counts and the "
                   "table size array (dataset_info.json is always written)")
    p.add_argument("--spark_master", type=str, default="local[*]",
                   help="Spark master; ignored under spark-submit when spark.master is set")
    p.add_argument("--input_format", choices=["auto", "criteo1t", "kaggle"], default="auto",
                   help="auto: train.txt present -> kaggle, day_N files -> criteo1t")
    p.add_argument("--train_files", type=int, default=1024,
                   help="number of parquet files for train")
    p.add_argument("--eval_files", type=int, default=256,
                   help="number of parquet files for test and for val (fewer if fewer rows)")
    p.add_argument("--seed", type=int, default=1234, help="seed of the train shuffle")
    p.add_argument("--key_type", choices=["int64", "int32"], default="int64",
                   help="dtype of C1..C26; int32 only with mod or vocabulary ids and if the max "
                   "id fits")
    p.add_argument("--bad_rows", choices=["skip", "fail"], default="skip",
                   help="malformed rows: skip and count them, or stop before writing anything")
    # 1%: the real Criteo rows here have none (kaggle_train_head10k, 117k sample), so a share
    # that large means the wrong file or format (a non-Criteo file is 100% malformed), not a
    # few damaged lines, which are still skipped and counted
    p.add_argument("--max_malformed_fraction", type=float, default=0.01,
                   help="stop before writing anything when more than this share of the lines "
                   "(or all of them, whatever the value) is malformed")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing non-empty output_dir that this tool wrote (its "
                   "dataset_info.json, splits, README.md, vocabulary and nothing else), once the "
                   "new one is complete; any other directory is refused")
    p.add_argument("--shuffle_partitions", type=int, default=None,
                   help="spark.sql.shuffle.partitions (None keeps Spark's default)")
    p.add_argument("--progress_interval", type=float, default=30.0,
                   help="seconds between the progress lines of a running pass (tasks done, "
                   "rows/s, ETA)")
    return p


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def main(argv=None):
    """Plan (no Spark), run the passes into a temporary directory, publish it; the exit code."""
    t0 = time.time()
    tmp_dir = state = None
    published = keep = False
    try:
        args = parse_args(argv)
        check_args(args)
        input_dir = os.path.abspath(args.input_dir)
        fmt, paths = plan_inputs(input_dir, args.input_format)
        log("input: %s layout, %d file(s) in %s" % (fmt, len(paths), input_dir))
        check_output_outside_input(args.input_dir, args.output_dir)
        tmp_dir, state = start_work(args, paths)
        info = run(args, fmt, paths, state)
        state.close()
        try:
            publish_output(tmp_dir, args.output_dir, args.overwrite)
        finally:  # published, or refused with tmp_dir named as holding the complete dataset
            published = True
        m = info["malformed"]
        log("done in %.1f s: train %d, test %d, val %d rows; %d malformed row(s) skipped%s; "
            "output %s" % (time.time() - t0, info["rows"]["train"], info["rows"]["test"],
                           info["rows"]["val"], m["total"],
                           " (%s)" % reasons_text(m["by_reason"]) if m["total"] else "",
                           os.path.abspath(args.output_dir)))
        return 0
    except PreprocessError as e:
        keep = e.resumable
        print("error: %s" % e, file=sys.stderr, flush=True)
        return e.code
    except KeyboardInterrupt:
        keep = True
        print("error: interrupted", file=sys.stderr, flush=True)
        return 130
    except BaseException:  # a Spark failure (lost executors, out of memory): kept, re-raised
        keep = True
        raise
    finally:
        if tmp_dir and not published and os.path.isdir(tmp_dir):
            if keep and state is not None and state.finished:
                state.remove_unfinished(keep=finished_outputs(state))
                log("kept %s with %d finished pass(es) (%s): the same command with --resume "
                    "reuses them" % (tmp_dir, len(state.finished), ", ".join(state.finished)))
            else:
                shutil.rmtree(tmp_dir, ignore_errors=True)


def start_work(args, paths):
    """(temporary directory, WorkState): with --resume the newest killed run's directory,
    checked against this run's inputs and settings and renamed to this process's name;
    otherwise (or when there is none) a new one. Stale directories of other killed runs are
    removed."""
    parent, prefix = temp_prefix(args.output_dir)
    old = find_resumable(parent, prefix, pid_alive) if args.resume else None
    if old:
        state = WorkState.load(old)
        state.check_same_run(paths, args)  # before anything is removed
    elif args.resume:
        log("--resume: no interrupted run of %s found; starting from the beginning"
            % os.path.abspath(args.output_dir))
    try:  # the run's first writes: a read-only or unwritable output file system stops here
        tmp_dir = prepare_output(args.output_dir, args.overwrite, keep=old)
        if not old:
            return tmp_dir, WorkState.start(tmp_dir, paths, args)
        os.rename(old, tmp_dir)
    except OSError as e:
        where = os.path.dirname(e.filename) if e.filename else os.path.dirname(
            os.path.abspath(args.output_dir))
        raise PreprocessError("cannot write in %s (--output_dir %s): %s; choose an output "
                              "directory on a writable file system"
                              % (where, args.output_dir, e.strerror or e), 2) from None
    state = state.moved_to(tmp_dir)
    log("--resume: continuing %s (finished: %s)" % (old, ", ".join(state.finished) or "none"))
    return tmp_dir, state
