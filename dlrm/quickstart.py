"""The Python steps of scripts/quickstart.sh (and gpu_check.sh's report), as one small command line.

    python -m dlrm.quickstart versions                                 # python, oneflow, pyspark versions
    python -m dlrm.quickstart same-raw RAW_DIR DAYS ROWS_PER_DAY SEED  # exit 0: that synthetic data is there
    python -m dlrm.quickstart dataset PARQUET_DIR                      # rows per split and table sizes
    python -m dlrm.quickstart planted-auc RAW_DIR                      # the planted model's test-day AUC
    python -m dlrm.quickstart summary RUN_DIR RAW_DIR                  # the final AUC (and planted AUC) lines
    python -m dlrm.quickstart test-rows RAW_DIR PARQUET_DIR OUT        # the test split's raw lines -> OUT
    python -m dlrm.quickstart gpu-report WORK_DIR STEPS CHECK...       # scripts/gpu_check.sh's pass/fail table

Each subcommand is the function of the same name below (its docstring is its help); a missing
or unreadable input is one line ``error: ...`` and exit 1.
"""
import argparse
import json
import math
import os
import re
import sys

from dlrm.plotting import MetricsError, curves, load_metrics, summarize
from dlrm.schema import DATASET_INFO_FILE, read_dataset_info
from dlrm.synthetic import read_planted_model


class QuickstartError(Exception):
    """A missing or unusable input, reported as one line."""


def versions(args):
    """Print the python, oneflow and pyspark versions (fails when oneflow or pyspark does not import)."""
    import oneflow
    import pyspark

    print(f"python {sys.version.split()[0]}, oneflow {oneflow.__version__}, pyspark {pyspark.__version__}")


def same_raw(args):
    """Exit 0 when RAW_DIR holds the synthetic day files of DAYS, ROWS_PER_DAY and SEED (all of them), else 1."""
    m = read_planted_model(args.raw_dir)
    if m is None:
        return 1
    settings = (m.get("days"), m.get("rows_per_day"), m.get("seed"), m.get("kaggle"))
    ok = settings == (args.days, args.rows_per_day, args.seed, False)
    ok = ok and all(os.path.isfile(os.path.join(args.raw_dir, f)) for f in m.get("files", []))
    return 0 if ok else 1


def dataset_info(parquet_dir):
    info = read_dataset_info(parquet_dir)
    if info is None:
        raise QuickstartError(f"{os.path.join(parquet_dir, DATASET_INFO_FILE)} does not exist")
    return info


def epoch_batches(rows, batch_size, epochs):
    """Batches of batch_size rows that cover `rows` rows `epochs` times (rounded up, at least 1)."""
    return max(1, math.ceil(rows * epochs / batch_size))


def dataset(args):
    """Print the dataset's rows per split and table sizes (from its dataset_info.json) in one line."""
    info = dataset_info(args.parquet_dir)
    print("dataset: train {train}, test {test}, val {val} rows;".format(**info["rows"]),
          "table sizes", info["table_size_array"])


def batches(args):
    """Print how many batches of BATCH_SIZE rows cover SPLIT of the dataset EPOCHS times (rounded up)."""
    info = dataset_info(args.parquet_dir)
    if args.batch_size <= 0 or args.epochs <= 0:
        raise QuickstartError("BATCH_SIZE and EPOCHS must be > 0")
    print(epoch_batches(info["rows"][args.split], args.batch_size, args.epochs))


def planted_test_day(raw_dir):
    """planted_model.json's record of the last (test) day {day, rows, click_rate, planted_auc}, or None
    without a planted model (e.g. RAW_DIR data) or AUC."""
    m = read_planted_model(raw_dir)
    day = m["per_day"][-1] if m else None
    return day if day and day.get("planted_auc") is not None else None


def planted_auc(args):
    """Print the planted model's AUC on the test day of RAW_DIR (nothing for data without one)."""
    day = planted_test_day(args.raw_dir)
    if day is not None:
        print(day["planted_auc"])


def summary(args):
    """Print the run's final AUC (RUN_DIR/summary.json) and, for synthetic data, the planted AUC."""
    path = os.path.join(args.run_dir, "summary.json")
    if not os.path.isfile(path):
        raise QuickstartError(f"{path} does not exist (the plot step writes it)")
    with open(path) as f:
        s = json.load(f)
    if s["final_auc"] is not None:
        print(f"final AUC:    {s['final_auc']:.4f} at step {s['final_auc_step']} "
              f"(best {s['best_auc']:.4f} at step {s['best_auc_step']}), {s['total_time_s']:.0f} s of training")
    day = planted_test_day(args.raw_dir)
    if day is not None:
        print(f"planted AUC:  {day['planted_auc']:.4f} (the synthetic data's true click model on its test day "
              f"day_{day['day']}: the best any model can score)")


def test_rows(args):
    """Write the raw lines of the dataset's test split to OUT (the split file's lines by the dataset's split rule,
    malformed ones included): new rows for dlrm_predict.py."""
    from dlrm.preprocess.plan import split_bounds
    from dlrm.preprocess.rows import open_text

    info = dataset_info(args.parquet_dir)
    name, read = info["input_files"][-1], info["lines_read"]
    lines = sum(read.values()) if info["input_format"] == "kaggle" else read["test"] + read["val"]
    first, end = split_bounds(info["input_format"], lines, info["num_test_examples"] or 0, name)["test"]
    tmp = f"{args.out}.tmp-{os.getpid()}"
    with open_text(os.path.join(args.raw_dir, name)) as src, open(tmp, "w") as dst:
        for i, line in enumerate(src):
            if i >= end:
                break
            if i >= first:
                dst.write(line)
    os.replace(tmp, args.out)
    print(f"{end - first} test rows of {name} -> {args.out}")


# ----------------------------------------------------------------------------- scripts/gpu_check.sh
# Each check NAME ran in WORK_DIR/NAME: train.log, exit_code (of its launch; of the resumed launch
# for the kill-and-resume check), ckpt/metrics.jsonl; or a file `skipped` holding the reason.
RESUME_CHECK, RESUME_REFERENCE = "kill_resume", "device_mem"  # the resumed run repeats the reference's settings
RESUMED = re.compile(r"resuming after step (\d+)")


def _read(path):
    with open(path) as f:
        return f.read()


def check_result(work_dir, name, steps):
    """One row of the GPU check table: {check, result (PASS, FAIL, SKIP), steps, throughput, auc, note}."""
    d = os.path.join(work_dir, name)
    row = {"check": name, "result": "FAIL", "steps": None, "throughput": None, "auc": None, "note": ""}
    if os.path.isfile(os.path.join(d, "skipped")):
        return dict(row, result="SKIP", note=_read(os.path.join(d, "skipped")).strip())
    if not os.path.isfile(os.path.join(d, "exit_code")):
        return dict(row, note="did not run")
    code = int(_read(os.path.join(d, "exit_code")).strip() or -1)
    try:
        records = load_metrics(os.path.join(d, "ckpt", "metrics.jsonl"))
    except MetricsError as e:
        records, row["note"] = [], str(e)
    s = summarize(records) if records else {}
    row.update(steps=s.get("steps"), throughput=s.get("mean_throughput"), auc=s.get("final_auc"))
    losses = {r["step"]: r["loss"] for r in curves(records)["train"]} if records else {}
    problems = []
    if code != 0:
        problems.append(f"exit code {code}" + (" (killed: timeout?)" if code in (124, 137) else "")
                        + f", see {os.path.join(d, 'train.log')}")
    if records and s["steps"] != steps:
        problems.append(f"stopped at step {s['steps']} of {steps}")
    if records and not all(math.isfinite(v) for v in losses.values()):
        problems.append("non-finite loss")
    if records and s["final_auc"] is None:
        problems.append("no evaluation")
    if name == RESUME_CHECK:
        problems += resume_notes(work_dir, d, losses, row, steps)
    if problems:
        row["note"] = "; ".join(p for p in [row["note"], *problems] if p)
    elif records:
        row["result"] = "PASS"
    return row


def resume_notes(work_dir, d, losses, row, steps):
    """The kill-and-resume check: it must have resumed from before the end; its losses against the
    uninterrupted reference run's are reported (GPU kernels need not be bit-exact)."""
    log = _read(os.path.join(d, "train.log")) if os.path.isfile(os.path.join(d, "train.log")) else ""
    m = RESUMED.findall(log)
    if not m:
        return ["never resumed (no 'resuming after step' in train.log)"]
    after = int(m[-1])
    row["note"] = f"resumed after step {after}"
    if after >= steps:
        return ["the first run had finished before it was killed: nothing was resumed"]
    try:
        ref = {r["step"]: r["loss"] for r in curves(load_metrics(os.path.join(
            work_dir, RESUME_REFERENCE, "ckpt", "metrics.jsonl")))["train"]}
    except MetricsError:
        return []
    common = [k for k in losses if k > after and k in ref]
    if common:
        diff = max(abs(losses[k] - ref[k]) for k in common)
        row["note"] += f"; loss vs {RESUME_REFERENCE}: max |diff| {diff:.2e} over {len(common)} steps"
    return []


def gpu_report(args):
    """Print the pass/fail table of scripts/gpu_check.sh's checks in WORK_DIR (in the order given, each
    expected to reach STEPS); exit 1 when any check failed."""
    rows = [check_result(args.work_dir, name, args.steps) for name in args.checks]

    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    table = [("check", "result", "steps", "samples/s", "AUC", "note")]
    table += [(r["check"], r["result"], fmt(r["steps"], "d"), fmt(r["throughput"], ",.0f"), fmt(r["auc"], ".4f"),
               r["note"]) for r in rows]
    widths = [max(len(t[i]) for t in table) for i in range(5)]
    for t in table:
        print("  ".join(c.ljust(w) for c, w in zip(t, widths)) + "  " + t[5])
    failed = [r["check"] for r in rows if r["result"] == "FAIL"]
    print(f"{len(rows) - len(failed)} of {len(rows)} checks passed or skipped" + (f"; failed: {', '.join(failed)}"
                                                                               if failed else ""))
    with open(os.path.join(args.work_dir, "report.json"), "w") as f:
        json.dump(rows, f, indent=1)
    return 1 if failed else 0


def build_parser():
    p = argparse.ArgumentParser(prog="python -m dlrm.quickstart", description="The Python steps of scripts/quickstart.sh and gpu_check.sh.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(func, *positionals, **types):
        c = sub.add_parser(func.__name__.replace("_", "-"), help=func.__doc__.splitlines()[0],
                           description=func.__doc__)
        for name in positionals:
            c.add_argument(name, metavar=name.upper(), type=types.get(name, str))
        c.set_defaults(func=func)
        return c

    command(versions)
    command(same_raw, "raw_dir", "days", "rows_per_day", "seed", days=int, rows_per_day=int, seed=int)
    command(dataset, "parquet_dir")
    command(batches, "parquet_dir", "split", "batch_size", "epochs", batch_size=int, epochs=float)
    command(planted_auc, "raw_dir")
    command(summary, "run_dir", "raw_dir")
    command(test_rows, "raw_dir", "parquet_dir", "out")
    command(gpu_report, "work_dir", "steps", steps=int).add_argument("checks", metavar="CHECK", nargs="+")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (QuickstartError, OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
