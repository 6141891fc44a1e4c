"""Vocabulary ids (--min_frequency) of tools/criteo1t_parquet.py: real Spark (local[2]) runs on
synthetic days and on the 10k real Kaggle rows, checked against ids recomputed in plain Python
from the raw text; training runs on the output. Argument checks run without Spark."""
import os
from collections import Counter

import numpy as np
import pytest

from conftest import (KAGGLE_HEAD, SPARK, SYNTH_TOOL, TRAIN_SCRIPT, error_lines, requires_java,
                      run_tool)
from dlrm.preprocess.cli import parse_args
from dlrm.preprocess.plan import INT32_MAX, PreprocessError, check_args, check_int32_ids
from dlrm.schema import NUM_FIELDS, NUM_SPARSE, SPARSE_COLUMNS, SPLITS
from test_preprocess import (FIRST_SPARSE, check_common, expected_row, kaggle_input, read_split,
                             row_tuples, tool, tool_ok)

pq = pytest.importorskip("pyarrow.parquet")

DAY_LINES = 800
NUM_TEST = 300
MIN_FREQ = 3


# ------------------------------------------------------------------------------------------
# the expected ids, from the raw text in plain Python
# ------------------------------------------------------------------------------------------


class Expected:
    """Per column: train counts of the hex values (as integers), the frequent ones ranked 1..
    by (descending count, value), table sizes 1 + frequent values, ids offset per column."""

    def __init__(self, train_lines, min_frequency):
        self.counts = [Counter() for _ in range(NUM_SPARSE)]
        for ln in train_lines:
            for i, v in enumerate(ln.split("\t")[FIRST_SPARSE:NUM_FIELDS]):
                if v:
                    self.counts[i][int(v, 16)] += 1
        self.ranks = []
        for c in self.counts:
            frequent = sorted((v for v, n in c.items() if n >= min_frequency),
                              key=lambda v: (-c[v], v))
            self.ranks.append({v: r + 1 for r, v in enumerate(frequent)})
        self.sizes = [1 + len(r) for r in self.ranks]
        self.offsets = [sum(self.sizes[:i]) for i in range(NUM_SPARSE)]

    def ids(self, line):
        fields = line.split("\t")[FIRST_SPARSE:NUM_FIELDS]
        return [self.offsets[i] + (self.ranks[i].get(int(v, 16), 0) if v else 0)
                for i, v in enumerate(fields)]

    def rows(self, lines):
        out = []
        for ln in lines:
            label, dense, _ = expected_row(ln, 1)
            out.append(tuple([label] + [float(d) for d in dense] + self.ids(ln)))
        return out


def check_vocab_output(out, info, lines, key_type):
    """lines: {split: raw lines in file order}. Everything the tool wrote, against Expected."""
    check_common(out, info, key_type=key_type)
    exp = Expected(lines["train"], info["min_frequency"])
    assert info["id_mode"] == "vocab" and info["mod_idx"] is None
    assert info["table_size_array"] == exp.sizes
    assert info["vocabulary"]["frequent_values"] == [s - 1 for s in exp.sizes]
    assert "rank 0" in info["categorical_transform"]
    train, _ = read_split(out, "train")
    assert Counter(row_tuples(train)) == Counter(exp.rows(lines["train"]))
    assert row_tuples(train) != exp.rows(lines["train"])  # shuffled
    for split in ("test", "val"):
        got, _ = read_split(out, split)
        assert row_tuples(got) == exp.rows(lines[split]), split  # exact order
    # every id inside its column's range [offset, offset + size); the CPU embedding's row
    # (id mod size) + offset is then one-to-one within the table: nothing folds
    sizes, offsets = np.array(exp.sizes), np.array(exp.offsets)
    for split in SPLITS:
        t, _ = read_split(out, split)
        ids = np.stack([t.column(c).to_numpy().astype(np.int64) for c in SPARSE_COLUMNS], 1)
        assert ((ids >= offsets) & (ids < offsets + sizes)).all()
    for i in range(NUM_SPARSE):
        all_ids = np.arange(offsets[i], offsets[i] + sizes[i])
        rows = (all_ids % sizes[i] + sizes[i]) % sizes[i] + offsets[i]
        assert sorted(rows) == list(all_ids)
    # the vocabulary files: (column, value, count, rank) of every frequent value
    vocab = pq.read_table(os.path.join(out, info["vocabulary"]["dir"])).to_pydict()
    got = {(int(c), v, n, r) for c, v, n, r in zip(vocab["column"], vocab["value"],
                                                   vocab["count"], vocab["rank"])}
    want = {(i, v, exp.counts[i][v], r) for i in range(NUM_SPARSE)
            for v, r in exp.ranks[i].items()}
    assert got == want
    return exp


def shared_id_uses(exp, lines):
    """Rows of lines by why a field got its column's shared id: rare in train, missing, unseen."""
    why = Counter()
    for ln in lines:
        for i, v in enumerate(ln.split("\t")[FIRST_SPARSE:NUM_FIELDS]):
            if not v:
                why["missing"] += 1
            elif int(v, 16) not in exp.ranks[i]:
                why["rare" if exp.counts[i][int(v, 16)] else "unseen"] += 1
    return why


# ------------------------------------------------------------------------------------------
# fast: argument checks
# ------------------------------------------------------------------------------------------


def args_of(*flags):
    return parse_args(["--input_dir", "i", "--output_dir", "o", *flags])


def test_vocab_args():
    a = args_of()
    assert (a.min_frequency, a.broadcast_vocab_rows) == (0, 1000000)
    check_args(args_of("--min_frequency", "2", "--key_type", "int32"))  # sizes checked later
    for flags, msg in [(["--min_frequency", "-1"], "--min_frequency must be >= 0"),
                       (["--min_frequency", "2", "--mod_idx", "1000"], "drop one"),
                       (["--min_frequency", "2", "--mod_idx", "0"], "drop one"),
                       (["--broadcast_vocab_rows", "-1"], "--broadcast_vocab_rows")]:
        with pytest.raises(PreprocessError) as e:
            check_args(args_of(*flags))
        assert e.value.code == 2 and msg in str(e.value)
    check_int32_ids([INT32_MAX // 2, INT32_MAX - INT32_MAX // 2 + 1])  # largest id INT32_MAX
    with pytest.raises(PreprocessError, match="does not fit int32"):
        check_int32_ids([INT32_MAX // 2, INT32_MAX - INT32_MAX // 2 + 2])


def test_vocab_with_mod_idx_fails_before_spark(tmp_path):
    r = tool(["--input_dir", str(tmp_path), "--output_dir", str(tmp_path / "o"),
              "--min_frequency", "3", "--mod_idx", "1000"] + SPARK, timeout=60)
    assert r.returncode == 2 and "Spark" not in r.stdout
    assert len(error_lines(r.stderr)) == 1 and "--min_frequency" in r.stderr


# ------------------------------------------------------------------------------------------
# Spark runs
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_days(tmp_path_factory):
    """criteo1t (day_0, day_1 -> train, day_2 -> test/val), --min_frequency 3, a broadcast
    threshold that sends some columns through broadcast joins and the others through shuffle
    joins, and one malformed train row (not counted)."""
    d = tmp_path_factory.mktemp("vocab_days")
    run_tool(SYNTH_TOOL, "--output_dir", d / "in", "--days", "3", "--rows_per_day", DAY_LINES,
             "--seed", "21", timeout=300)
    lines = {}
    for day in range(3):
        with open(str(d / "in" / ("day_%d" % day))) as f:
            lines[day] = f.read().splitlines()
    bad = lines[0][0].split("\t")
    bad[2] = "x"  # dense: malformed, its categorical values must not count
    with open(str(d / "in" / "day_0"), "w") as f:
        f.write("\n".join(["\t".join(bad)] + lines[0][1:]) + "\n")
    out = str(d / "out")
    r, info = tool_ok(["--input_dir", str(d / "in"), "--output_dir", out, "--min_frequency",
                       str(MIN_FREQ), "--broadcast_vocab_rows", "50", "--num_test_examples",
                       str(NUM_TEST), "--train_files", "3", "--eval_files", "2", "--seed", "5"]
                      + SPARK, out)
    split = {"train": lines[0][1:] + lines[1], "test": lines[2][:NUM_TEST],
             "val": lines[2][NUM_TEST:]}
    return {"out": out, "info": info, "proc": r, "lines": split}


@pytest.mark.slow
@requires_java
def test_vocab_ids_days(run_days):
    info, lines = run_days["info"], run_days["lines"]
    exp = check_vocab_output(run_days["out"], info, lines, "int64")
    assert info["min_frequency"] == MIN_FREQ and info["malformed"]["total"] == 1
    assert info["vocabulary"]["broadcast_vocab_rows"] == 50
    # both join kinds were used, and the shared id for each reason
    assert min(exp.sizes) - 1 <= 50 < max(exp.sizes) - 1
    why = shared_id_uses(exp, lines["test"] + lines["val"])
    assert why["missing"] and why["rare"] and why["unseen"], why
    assert "table_size_array = %s" % exp.sizes in run_days["proc"].stdout


@pytest.fixture(scope="module")
def run_kaggle_vocab(tmp_path_factory):
    d = tmp_path_factory.mktemp("vocab_kaggle")
    out = str(d / "out")
    r, info = tool_ok(["--input_dir", kaggle_input(d / "in"), "--output_dir", out,
                       "--min_frequency", "2", "--key_type", "int32", "--train_files", "4",
                       "--eval_files", "2", "--export_dataset_info"] + SPARK, out)
    return {"out": out, "info": info, "proc": r}


@pytest.mark.slow
@requires_java
def test_vocab_ids_kaggle_real_rows(run_kaggle_vocab):
    out, info = run_kaggle_vocab["out"], run_kaggle_vocab["info"]
    with open(KAGGLE_HEAD) as f:
        raw = f.read().splitlines()
    lines = {"train": raw[:8571], "test": raw[8571:8571 + 714], "val": raw[8571 + 714:]}
    exp = check_vocab_output(out, info, lines, "int32")
    assert info["rows"] == {"train": 8571, "test": 714, "val": 715}
    why = shared_id_uses(exp, lines["test"] + lines["val"])
    assert why["missing"] and why["rare"] and why["unseen"], why
    with open(os.path.join(out, "README.md")) as f:
        assert "table_size_array = [%s]" % ", ".join(map(str, exp.sizes)) in f.read()


@pytest.mark.slow
@requires_java
def test_training_on_vocab_ids(run_kaggle_vocab):
    r = run_tool(TRAIN_SCRIPT, "--data_dir", run_kaggle_vocab["out"], "--bottom_mlp", "64,32,16",
                 "--embedding_vec_size", "16", "--top_mlp", "64,32", "--train_batch_size", "256",
                 "--eval_batch_size", "500", "--train_batches", "50", "--eval_batches", "2",
                 "--loss_print_interval", "25", "--warmup_batches", "10", "--decay_start", "30",
                 "--decay_batches", "20", "--learning_rate", "1",
                 "--one_embedding_key_type", "int32", timeout=900)  # the fixture's int32 ids
    sizes = run_kaggle_vocab["info"]["table_size_array"]
    assert "table_size_array .............. %s" % sizes in r.stdout  # the exact sizes
    assert "done: 50 steps, final AUC" in r.stdout
