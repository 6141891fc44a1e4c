"""The Python steps of scripts/quickstart.sh, as one small command line.

    python -m dlrm.quickstart versions                                 # python, oneflow, pyspark versions
    python -m dlrm.quickstart same-raw RAW_DIR DAYS ROWS_PER_DAY SEED  # exit 0: that synthetic data is there
    python -m dlrm.quickstart dataset PARQUET_DIR                      # rows per split and table sizes
    python -m dlrm.quickstart planted-auc RAW_DIR                      # the planted model's test-day AUC
    python -m dlrm.quickstart summary RUN_DIR RAW_DIR                  # the final AUC (and planted AUC) lines
    python -m dlrm.quickstart test-rows RAW_DIR PARQUET_DIR OUT        # the test split's raw lines -> OUT

Each subcommand is the function of the same name below (its docstring is its help); a missing
or unreadable input is one line ``error: ...`` and exit 1.
"""
import argparse
import math
import os
import sys

from dlrm.jsonfile import read_json
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
    s = read_json(path)
    if s is None:
        raise QuickstartError(f"{path} does not exist (the plot step writes it)")
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


def build_parser():
    p = argparse.ArgumentParser(prog="python -m dlrm.quickstart", description="The Python steps of scripts/quickstart.sh.")
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
