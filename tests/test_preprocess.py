"""Tests of tools/criteo1t_parquet.py: real Spark (local[2]) runs as subprocesses, real parquet.

Spark costs ~10-20 s a start here, so each tool run is a module-scoped fixture and several
checks share it (those tests are marked slow). The expected values are recomputed independently
from the raw text with plain Python and compared with what the tool wrote. The tests of bad
command lines run the tool too, but it stops before Spark starts.
"""

import gzip
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from argparse import Namespace
from collections import Counter

import numpy as np
import pytest

from conftest import (KAGGLE_HEAD, PREPROCESS_TOOL, SPARK, SYNTH_TOOL, assert_one_line_error, error_lines,
                      requires_java, run_tool, tmpfs, write_tiny_dataset)
from conftest import preprocess_tool as tool  # unchecked: tests look at its exit code and output
from dlrm.preprocess.cli import parse_args
from dlrm.preprocess.passes import WRITE_DIR
from dlrm.preprocess.plan import driver_memory_gb
from dlrm.preprocess.resume import STATE_FILE, describe_inputs, first_difference, settings_of
from dlrm.schema import (COLUMNS, DATASET_INFO_VERSION, DENSE_COLUMNS, LABEL, NUM_DENSE, NUM_FIELDS,
                         SPARSE_COLUMNS, SPLITS, column_dtypes)

pq = pytest.importorskip("pyarrow.parquet")

MOD = 1000  # small modulus so the pmod actually folds the 32-bit hex values
FIRST_SPARSE = 1 + NUM_DENSE  # field index of C1 in a raw line


# ------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------


def tool_ok(args, out, env=None):
    """Run the tool, which must succeed; (its process, the dataset_info.json it wrote in out)."""
    r = tool(args, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    with open(os.path.join(out, "dataset_info.json")) as f:
        return r, json.load(f)


def kaggle_input(d):
    """d/train.txt -> the real Kaggle rows (the test is skipped when they are missing)."""
    if not os.path.exists(KAGGLE_HEAD):
        pytest.skip("real Criteo rows not found at %s (shared/criteo is not checked out next "
                    "to the repo)" % os.path.normpath(KAGGLE_HEAD))
    os.makedirs(str(d), exist_ok=True)
    os.symlink(os.path.abspath(KAGGLE_HEAD), os.path.join(str(d), "train.txt"))
    return str(d)


def edge_cases(line, rng):
    """Rewrite a few fields of a valid line into other valid forms the tool must handle:
    1-3 digit and upper-case hex, big and negative integers."""
    f = line.split("\t")
    for i in range(FIRST_SPARSE, NUM_FIELDS):
        r = rng.random()
        if f[i] and r < 0.03:
            f[i] = "%x" % rng.randint(0, 4095)
        elif f[i] and r < 0.06:
            f[i] = f[i].upper()
    for j in range(1, FIRST_SPARSE):
        r = rng.random()
        if r < 0.01:
            f[j] = str(rng.randint(10**9, 10**12))
        elif j == 2 and r < 0.1:
            f[j] = str(rng.choice([-1, -2, -3]))
    return "\t".join(f)


def expected_row(line, mod):
    """(label, dense[13], ids[26]) from a raw line, with plain Python."""
    f = line.split("\t")
    label = float(f[0])
    dense = [np.float32(float(v) + 1) if v != "" else np.float32(1.0) for v in f[1:FIRST_SPARSE]]
    ids = []
    for i, v in enumerate(f[FIRST_SPARSE:NUM_FIELDS]):
        ids.append(int(v, 16) % mod + i * (mod + 1) if v != "" else i * (mod + 1) + mod)
    return label, dense, ids


def read_split(out_dir, split):
    """The split's parquet files in name order (part 0 first) as one pyarrow table."""
    import pyarrow as pa

    d = os.path.join(out_dir, split)
    files = sorted(f for f in os.listdir(d) if f.endswith(".parquet"))
    return pa.concat_tables([pq.read_table(os.path.join(d, f)) for f in files]), files


def row_tuples(table, ids_only=False):
    cols = SPARSE_COLUMNS if ids_only else COLUMNS
    arrays = [table.column(c).to_pylist() for c in cols]
    return list(zip(*arrays))


def expected_tuples(lines, mod, ids_only=False):
    out = []
    for ln in lines:
        label, dense, ids = expected_row(ln, mod)
        out.append(tuple(ids) if ids_only else tuple([label] + [float(d) for d in dense] + ids))
    return out


def check_common(out_dir, info, key_type="int64"):
    """dtypes, column order, no NaN/inf, rows in dataset_info == parquet rows."""
    import pyarrow as pa

    want = pa.int64() if key_type == "int64" else pa.int32()
    for split in SPLITS:
        t, _ = read_split(out_dir, split)
        assert t.column_names == COLUMNS
        assert t.schema.field(LABEL).type == pa.float32()
        for c in DENSE_COLUMNS:
            assert t.schema.field(c).type == pa.float32()
        for c in SPARSE_COLUMNS:
            assert t.schema.field(c).type == want
        for c in [LABEL] + DENSE_COLUMNS:
            a = t.column(c).to_numpy()
            assert np.isfinite(a).all(), (split, c)
            assert t.column(c).null_count == 0
        for c in SPARSE_COLUMNS:
            assert t.column(c).null_count == 0
        assert t.num_rows == info["rows"][split]
    assert info["format_version"] == DATASET_INFO_VERSION == 1
    assert info["key_type"] == key_type
    assert list(info["columns"]) == COLUMNS
    assert info["columns"] == column_dtypes(key_type)
    assert info["tool"] == "tools/criteo1t_parquet.py"


def distinct_per_column(out_dir):
    sets = [set() for _ in SPARSE_COLUMNS]
    for split in SPLITS:
        t, _ = read_split(out_dir, split)
        for i, c in enumerate(SPARSE_COLUMNS):
            sets[i].update(t.column(c).to_pylist())
    return sets


# ------------------------------------------------------------------------------------------
# inputs
# ------------------------------------------------------------------------------------------

# Malformed rows injected into the criteo1t input: (day, 1-based line, reason, text)
BAD = [
    (0, 5, "dense"),
    (0, 20, "field_count"),
    (1, 7, "label"),
    (2, 10, "categorical"),  # in test (first 250 lines of day_2)
    (2, 500, "categorical"),  # in val
]
DAY_LINES = 600
NUM_TEST = 250


def _corrupt(line, reason, rng):
    f = line.split("\t")
    if reason == "dense":
        f[3] = "1.5"
    elif reason == "field_count":
        f = f[:39]
    elif reason == "label":
        f[0] = "2"
    elif reason == "categorical":
        f[20] = rng.choice(["xyz12345", "123456789"])  # not hex / 9 digits
    return "\t".join(f)


@pytest.fixture(scope="module")
def days_input(tmp_path_factory):
    """day_0, day_1.gz, day_2 from tools/make_synthetic_criteo.py, with a few edge-case values
    and the BAD rows; returns (dir, {day: the valid lines})."""
    d = tmp_path_factory.mktemp("days")
    run_tool(SYNTH_TOOL, "--output_dir", d, "--days", "3", "--rows_per_day", DAY_LINES, "--seed", "11",
             timeout=300)
    rng = random.Random(7)
    good = {}
    for day in range(3):
        with open(str(d / ("day_%d" % day))) as f:
            lines = [edge_cases(ln, rng) for ln in f.read().splitlines()]
        assert len(lines) == DAY_LINES
        raw = list(lines)
        for bday, lno, reason in BAD:
            if bday == day:
                raw[lno - 1] = _corrupt(raw[lno - 1], reason, rng)
        good[day] = [ln for k, ln in enumerate(lines)
                     if not any(bd == day and bl == k + 1 for bd, bl, _ in BAD)]
        text = ("\n".join(raw) + "\n").encode()
        if day == 1:
            os.remove(str(d / "day_1"))
            with gzip.open(str(d / "day_1.gz"), "wb") as f:
                f.write(text)
        else:
            (d / ("day_%d" % day)).write_bytes(text)
    return str(d), good


def _killed_run(args, parent):
    """Start the tool, kill -9 its process group once it writes; returns the temp dir name."""
    p = subprocess.Popen([sys.executable, PREPROCESS_TOOL] + args, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    name = ".out.incomplete-%d" % p.pid
    deadline = time.time() + 300
    try:
        while time.time() < deadline and p.poll() is None:
            if os.path.isdir(os.path.join(parent, name, "train")):
                break
            time.sleep(0.05)
        assert p.poll() is None, "the tool finished before it could be killed"
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    return name


@pytest.fixture(scope="module")
def run_mod(days_input, tmp_path_factory):
    """criteo1t, mod ids, skip policy, --export_dataset_info; a first run into the same
    output_dir is killed (kill -9 of the process group) while it writes."""
    in_dir, _ = days_input
    parent = str(tmp_path_factory.mktemp("mod"))
    out = os.path.join(parent, "out")
    args = ["--input_dir", in_dir, "--output_dir", out, "--mod_idx", str(MOD),
            "--num_test_examples", str(NUM_TEST), "--train_files", "3", "--eval_files", "2",
            "--seed", "5", "--export_dataset_info"] + SPARK
    stale = _killed_run(args, parent)
    after_kill = sorted(os.listdir(parent))
    r, info = tool_ok(args, out)
    return {"out": out, "args": args, "proc": r, "info": info, "stale": stale,
            "after_kill": after_kill, "after_rerun": sorted(os.listdir(parent))}


# ------------------------------------------------------------------------------------------
# fast checks: the tool stops before Spark starts
# ------------------------------------------------------------------------------------------


def _fast_error(args, tmp_path):
    t = time.time()
    r = tool(args + ["--output_dir", str(tmp_path / "o")] + SPARK, timeout=60)
    took = time.time() - t
    assert r.returncode == 2, r.stdout + r.stderr
    errs = error_lines(r.stderr)
    assert len(errs) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "Spark" not in r.stdout and took < 20, (took, r.stdout)
    assert not os.path.exists(str(tmp_path / "o"))
    return errs[0]


def test_missing_input_dir(tmp_path):
    msg = _fast_error(["--input_dir", str(tmp_path / "nope")], tmp_path)
    assert "does not exist" in msg


def test_gap_in_days(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    for k in (0, 1, 3):
        (d / ("day_%d" % k)).write_text("0" + "\t" * 39 + "\n")
    msg = _fast_error(["--input_dir", str(d)], tmp_path)
    assert "day_2" in msg and "contiguous" in msg


def test_single_day_empty_file_and_no_files(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    (d / "day_0").write_text("0" + "\t" * 39 + "\n")
    assert "at least two days" in _fast_error(["--input_dir", str(d)], tmp_path)
    (d / "day_1").write_text("")
    assert "empty" in _fast_error(["--input_dir", str(d)], tmp_path)
    e = tmp_path / "other"
    e.mkdir()
    (e / "notes.txt").write_text("x")
    assert "no Criteo files" in _fast_error(["--input_dir", str(e)], tmp_path)


def test_int32_needs_mod_ids(tmp_path, days_input):
    msg = _fast_error(["--input_dir", days_input[0], "--mod_idx", "0", "--key_type", "int32"],
                      tmp_path)
    assert "int32" in msg
    msg = _fast_error(["--input_dir", days_input[0], "--mod_idx", "100000000",
                       "--key_type", "int32"], tmp_path)
    assert "does not fit int32" in msg


def test_refuses_non_empty_output_dir(tmp_path, days_input):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    t = time.time()
    r = tool(["--input_dir", days_input[0], "--output_dir", str(out)] + SPARK, timeout=60)
    assert r.returncode == 2
    errs = error_lines(r.stderr)
    assert len(errs) == 1 and "--overwrite" in errs[0] and time.time() - t < 20
    assert (out / "keep.txt").read_text() == "precious"


def test_refuses_output_containing_input(days_input):
    parent = os.path.dirname(days_input[0])
    for out in (days_input[0], parent):  # --overwrite would delete the input with the old output
        r = tool(["--input_dir", days_input[0], "--output_dir", out, "--overwrite"] + SPARK,
                 timeout=60)
        assert r.returncode == 2 and "contains --input_dir" in error_lines(r.stderr)[0]
    assert sorted(os.listdir(days_input[0]))[:3] == ["day_0", "day_1.gz", "day_2"]


def test_overwrite_refuses_a_directory_the_tool_did_not_write(tmp_path, days_input):
    """The typo `--output_dir ~ --overwrite`: refused in one line before Spark starts; nothing in
    it renamed or removed (the rule: tests/test_preprocess_plan.py)."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("key")
    (home / "notes.txt").write_text("precious")
    t = time.time()
    r = tool(["--input_dir", days_input[0], "--output_dir", str(home), "--overwrite"] + SPARK,
             timeout=60)
    assert_one_line_error(r, "--output_dir %s is not an output of tools/criteo1t_parquet.py (it "
                          "holds dataset_info.json (missing), .ssh, notes.txt)" % home)
    assert r.returncode == 2 and "Spark" not in r.stdout and time.time() - t < 20
    assert sorted(os.listdir(str(tmp_path))) == ["home"]
    assert (home / ".ssh" / "id_ed25519").read_text() == "key"
    assert (home / "notes.txt").read_text() == "precious"


@pytest.fixture
def read_only_dir(tmp_path):
    """A read-only file system (a real tmpfs): writes there fail with OSError [Errno 30]."""
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as d:
        yield d


def test_read_only_output_file_system(days_input, read_only_dir):
    out = os.path.join(read_only_dir, "out")
    with pytest.raises(OSError):  # the file system is really read-only (root included)
        os.mkdir(out)
    t = time.time()
    r = tool(["--input_dir", days_input[0], "--output_dir", out] + SPARK, timeout=60)
    assert_one_line_error(r, "cannot write in %s (--output_dir %s): Read-only file system"
                          % (read_only_dir, out))
    assert r.returncode == 2 and "Spark" not in r.stdout and time.time() - t < 20
    assert os.listdir(read_only_dir) == []


def test_help_states_split_rules():
    r = tool(["--help"], timeout=60)
    assert r.returncode == 0
    text = " ".join(r.stdout.split())
    assert "floor(6n/7)" in text and "(n - floor(6n/7)) // 2" in text
    for flag in ("--input_format", "--train_files", "--eval_files", "--key_type",
                 "--bad_rows", "--overwrite", "--shuffle_partitions", "--spark_master"):
        assert flag in text


def test_parser_contract():
    a = parse_args(["--input_dir", "i", "--output_dir", "o"])
    assert (a.spark_tmp_dir, a.spark_driver_memory_gb, a.mod_idx, a.num_test_examples) == (
        None, 360, 40000000, 89137319)
    assert (a.export_dataset_info, a.spark_master, a.input_format, a.train_files,
            a.eval_files, a.seed, a.key_type, a.bad_rows, a.overwrite,
            a.shuffle_partitions) == (False, "local[*]", "auto", 1024, 256, 1234, "int64",
                                      "skip", False, None)
    assert driver_memory_gb(10**6, "local[2]") < 10**6  # capped at 80% of RAM
    assert driver_memory_gb(10**6, "yarn") == 10**6


# ------------------------------------------------------------------------------------------
# criteo1t, mod ids, malformed rows skipped
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
@requires_java
def test_mod_counts_and_malformed(run_mod):
    info = run_mod["info"]
    bad_by_split = {"train": 3, "test": 1, "val": 1}
    lines = {"train": 2 * DAY_LINES, "test": NUM_TEST, "val": DAY_LINES - NUM_TEST}
    assert info["lines_read"] == lines
    for s in lines:
        assert info["rows"][s] == lines[s] - bad_by_split[s]
    m = info["malformed"]
    assert m["total"] == 5
    assert m["by_reason"] == {"field_count": 1, "label": 1, "dense": 1, "categorical": 2}
    assert m["by_file"]["day_0"]["total"] == 2 and m["by_file"]["day_0"]["dense"] == 1
    assert m["by_file"]["day_1.gz"] == {"label": 1, "total": 1}
    assert m["by_file"]["day_2"] == {"categorical": 2, "total": 2}
    assert info["input_format"] == "criteo1t"
    assert info["input_files"] == ["day_0", "day_1.gz", "day_2"]
    assert info["bad_rows_policy"] == "skip" and info["id_mode"] == "mod"
    assert info["mod_idx"] == MOD and info["seed"] == 5
    assert "raw + 1" in info["dense_transform"]
    out = run_mod["proc"].stdout
    assert "[preprocess] counting lines" in out and "[preprocess] wrote train: 1197 rows" in out
    assert "malformed" in out.splitlines()[-1]


@pytest.mark.slow
@requires_java
def test_mod_values(run_mod, days_input):
    _, good = days_input
    out = run_mod["out"]
    check_common(out, run_mod["info"])
    test_lines = good[2][:NUM_TEST - 1]  # one malformed row among the first NUM_TEST lines
    val_lines = good[2][NUM_TEST - 1:]
    train_lines = good[0] + good[1]
    train, files = read_split(out, "train")
    assert len(files) == 3
    assert Counter(row_tuples(train)) == Counter(expected_tuples(train_lines, MOD))
    assert row_tuples(train) != expected_tuples(train_lines, MOD)  # shuffled
    test, files = read_split(out, "test")
    assert len(files) == 2  # --eval_files
    assert row_tuples(test) == expected_tuples(test_lines, MOD)  # exact order
    val, files = read_split(out, "val")
    assert len(files) == 2
    assert row_tuples(val) == expected_tuples(val_lines, MOD)
    # table sizes = exact distinct counts, missing id included; ids stay in their column range
    sets = distinct_per_column(out)
    assert run_mod["info"]["table_size_array"] == [len(s) for s in sets]
    for i, s in enumerate(sets):
        assert min(s) >= i * (MOD + 1) and max(s) <= i * (MOD + 1) + MOD
    assert any(i * (MOD + 1) + MOD in s for i, s in enumerate(sets))


@pytest.mark.slow
@requires_java
def test_export_dataset_info_readme(run_mod):
    info = run_mod["info"]
    with open(os.path.join(run_mod["out"], "README.md")) as f:
        text = f.read()
    want = ("## number of examples:\ntrain: %d\ntest: %d\nval: %d\n## table size array\n"
            "table_size_array = [%s]\n" % (info["rows"]["train"], info["rows"]["test"],
                                           info["rows"]["val"],
                                           ", ".join(map(str, info["table_size_array"]))))
    assert text == want


@pytest.mark.slow
@requires_java
def test_bad_rows_fail(days_input, tmp_path):
    out = tmp_path / "out"
    r = tool(["--input_dir", days_input[0], "--output_dir", str(out), "--mod_idx", str(MOD),
              "--num_test_examples", str(NUM_TEST), "--bad_rows", "fail"] + SPARK)
    assert r.returncode != 0
    errs = error_lines(r.stderr)
    assert len(errs) == 1, r.stderr
    assert "day_0 line 5: dense" in errs[0] and "5 malformed" in errs[0]
    assert "Traceback" not in r.stderr
    assert not out.exists()
    assert not [p for p in os.listdir(str(tmp_path)) if "incomplete" in p]


@pytest.mark.slow
@requires_java
def test_unusable_inputs_stop_in_one_line(tmp_path):
    """Two inputs found unusable only by reading them (in the first pass, before anything is
    written): 2 MB of random bytes as train.txt (every line malformed) and a truncated
    day_1.gz. Each: exit 1, one error line naming the file (with the count), no Traceback and
    no Java stack trace, no output and no temporary directory left."""
    def run(input_dir, *extra):
        out = tmp_path / "out"
        r = tool(["--input_dir", str(input_dir), "--output_dir", str(out), *extra] + SPARK)
        assert r.returncode == 1, r.stdout + r.stderr
        errs = error_lines(r.stderr)
        assert len(errs) == 1, r.stderr
        assert "Traceback" not in r.stderr and not re.search(r"^\s+at ", r.stderr, re.M), r.stderr
        assert not [p for p in os.listdir(str(tmp_path)) if "out" in p]  # no output, no temp dir
        return errs[0]

    garbage = tmp_path / "garbage"
    garbage.mkdir()
    data = random.Random(3).randbytes(2 * 2**20)
    (garbage / "train.txt").write_bytes(data)
    pieces = re.split(rb"\r\n|\r|\n", data)  # Spark's text lines end at any of these
    n = len(pieces) - (pieces[-1] == b"")
    assert n > 10000
    err = run(garbage)
    assert err == ("error: %d of %d lines malformed (100.0%%: field_count %d), %d of them in %s: "
                   "every line; is it Criteo text (40 tab-separated fields)? nothing written"
                   % (n, n, n, n, garbage / "train.txt")), err

    days = tmp_path / "days"
    run_tool(SYNTH_TOOL, "--output_dir", days, "--days", "3", "--rows_per_day", 3000, "--seed", "1")
    os.remove(str(days / "planted_model.json"))
    with open(str(days / "day_1"), "rb") as f, gzip.open(str(days / "day_1.gz"), "wb") as g:
        g.write(f.read())
    os.remove(str(days / "day_1"))
    os.truncate(str(days / "day_1.gz"), os.path.getsize(str(days / "day_1.gz")) // 2)
    err = run(days, "--num_test_examples", "1000")
    gz = days / "day_1.gz"
    assert err == ("error: cannot read %s: Unexpected end of input stream (EOFException): a "
                   "truncated or corrupt gzip file? (gzip -t %s checks it) replace the file and "
                   "rerun" % (gz, gz)), err


# ------------------------------------------------------------------------------------------
# hash ids, under spark-submit, --overwrite
# ------------------------------------------------------------------------------------------


def _spark_submit():
    import pyspark

    path = os.path.join(os.path.dirname(pyspark.__file__), "bin", "spark-submit")
    return path if os.path.exists(path) else shutil.which("spark-submit")


@pytest.fixture(scope="module")
def run_hash(days_input, tmp_path_factory):
    out = tmp_path_factory.mktemp("hash") / "out"
    write_tiny_dataset(str(out))  # a previous output, which --overwrite replaces
    submit = _spark_submit()
    if submit is None:
        pytest.skip("spark-submit not found")
    cmd = [submit, "--master", "local[2]", "--driver-memory", "2g",
           "--conf", "spark.sql.shuffle.partitions=4", PREPROCESS_TOOL,
           "--input_dir", days_input[0], "--output_dir", str(out), "--mod_idx", "0",
           "--num_test_examples", str(NUM_TEST), "--train_files", "3", "--eval_files", "2",
           "--seed", "5", "--spark_master", "local[1]", "--overwrite"]
    env = dict(os.environ, PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable)
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    with open(str(out / "dataset_info.json")) as f:
        info = json.load(f)
    return {"out": str(out), "proc": r, "info": info}


@pytest.mark.slow
@requires_java
def test_hash_ids_under_spark_submit_with_overwrite(run_hash, days_input):
    out, info = run_hash["out"], run_hash["info"]
    assert "spark-submit: using its spark.master local[2]" in run_hash["proc"].stdout
    assert "part-00000.parquet" not in os.listdir(os.path.join(out, "train"))  # replaced
    assert not [p for p in os.listdir(os.path.dirname(out)) if p.startswith(".out.")]
    check_common(out, info)
    assert info["id_mode"] == "hash" and info["rows"] == {"train": 1197, "test": 249,
                                                          "val": 349}
    sets = distinct_per_column(out)
    assert info["table_size_array"] == [len(s) for s in sets]
    union = set()
    for s in sets:
        assert not (union & s), "hash ids collide across columns"
        union |= s
    # same (column, hex) -> same id; the mapping is a function of the raw value
    _, good = days_input
    test, _ = read_split(out, "test")
    got = row_tuples(test, ids_only=True)
    mapping = {}
    for ln, ids in zip(good[2][:NUM_TEST - 1], got):
        for i, v in enumerate(ln.split("\t")[FIRST_SPARSE:NUM_FIELDS]):
            assert mapping.setdefault((i, v), ids[i]) == ids[i]
    # distinct raw values of a column map to distinct ids (no collisions on this data)
    for i in range(len(SPARSE_COLUMNS)):
        vals = {v for (c, v) in mapping if c == i}
        assert len({mapping[(i, v)] for v in vals}) == len(vals)


# ------------------------------------------------------------------------------------------
# real Kaggle rows
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_kaggle(tmp_path_factory):
    d = kaggle_input(tmp_path_factory.mktemp("kaggle"))
    out = os.path.join(d, "out")
    # small file splits: train.txt is read as ~10 partitions, so line positions must be
    # stitched across partitions
    env = {"PYSPARK_SUBMIT_ARGS": "--conf spark.sql.files.maxPartitionBytes=262144 "
                                  "pyspark-shell"}
    r, info = tool_ok(["--input_dir", d, "--output_dir", out, "--train_files", "4",
                       "--eval_files", "3", "--key_type", "int32"] + SPARK, out, env=env)
    return {"out": out, "proc": r, "info": info}


@pytest.mark.slow
@requires_java
def test_kaggle_real_rows(run_kaggle):
    out, info = run_kaggle["out"], run_kaggle["info"]
    assert "kaggle" in run_kaggle["proc"].stdout and "in 10 partitions" in run_kaggle["proc"].stdout
    # one pass, one scan of train.txt, writes the three splits
    assert ("writing train (shuffled, seed 1234) into 4 files, test and val (file order) into up to 3 files "
            "each") in run_kaggle["proc"].stdout
    assert info["input_format"] == "kaggle" and info["malformed"]["total"] == 0
    assert info["rows"] == {"train": 8571, "test": 714, "val": 715}
    assert info["lines_read"] == info["rows"]
    check_common(out, info, key_type="int32")
    with open(KAGGLE_HEAD) as f:
        lines = f.read().splitlines()
    mod = 40000000
    train, files = read_split(out, "train")
    assert len(files) == 4
    assert Counter(row_tuples(train)) == Counter(expected_tuples(lines[:8571], mod))
    test, files = read_split(out, "test")
    assert len(files) == 3  # --eval_files
    assert row_tuples(test) == expected_tuples(lines[8571:8571 + 714], mod)
    val, files = read_split(out, "val")
    assert len(files) == 3
    assert row_tuples(val) == expected_tuples(lines[8571 + 714:], mod)
    # I2 has negative raw values: stored as raw + 1 (0, -1), finite, and log(max(x,0)+1) too
    i2 = np.concatenate([t.column("I2").to_numpy() for t in (train, test, val)])
    raw_i2 = [int(ln.split("\t")[2]) for ln in lines if ln.split("\t")[2] != ""]
    assert min(raw_i2) < 0 and i2.min() == min(raw_i2) + 1
    assert np.isfinite(np.log(np.maximum(i2, 0) + 1)).all()
    assert info["table_size_array"] == [len(s) for s in distinct_per_column(out)]


# ------------------------------------------------------------------------------------------
# killed run, rerun, determinism
# ------------------------------------------------------------------------------------------


@pytest.mark.slow
@requires_java
def test_kill_during_write_then_rerun(run_mod):
    # the killed run left only its temp dir, no output_dir
    assert run_mod["after_kill"] == [run_mod["stale"]]
    out = run_mod["proc"].stdout
    assert "removing stale temporary directory" in out and run_mod["stale"] in out
    assert run_mod["after_rerun"] == ["out"]


@pytest.mark.slow
@requires_java
def test_train_shuffle_deterministic(run_mod, run_hash):
    """Same input, seed and file count -> the same row order (the shuffle depends only on the
    seed and the input order, not on the id mode): labels and dense values match row for row."""
    for split in SPLITS:
        a, fa = read_split(run_mod["out"], split)
        b, fb = read_split(run_hash["out"], split)
        assert len(fa) == len(fb)
        for c in [LABEL] + DENSE_COLUMNS:
            assert a.column(c).equals(b.column(c)), (split, c)


# ------------------------------------------------------------------------------------------
# --resume: runs killed (kill -9 of the process group, the JVM included) at points found from
# their log lines, continued to the uninterrupted run's output (run_mod: same arguments)
# ------------------------------------------------------------------------------------------

REUSED_RE = re.compile(r"^\[preprocess\] pass \d+/\d+ (.+): reused from the interrupted run",
                       re.M)


def test_first_difference_names_the_change(tmp_path):
    f = tmp_path / "day_0"
    f.write_text("x")
    args = Namespace(seed=5, mod_idx=1000, resume=False, progress_interval=30.0)
    old = {"inputs": describe_inputs([str(f)]), "settings": settings_of(args)}
    same = dict(vars(args), resume=True, progress_interval=1.0)  # not compared
    assert first_difference(old, {"inputs": old["inputs"],
                                  "settings": settings_of(Namespace(**same))}) is None
    new = {"inputs": old["inputs"], "settings": settings_of(Namespace(**dict(same, seed=6)))}
    assert first_difference(old, new) == "--seed 5 -> 6"
    f.write_text("xy")
    assert first_difference(old, {"inputs": describe_inputs([str(f)]),
                                  "settings": old["settings"]}) == "input day_0: size 1 -> 2"
    os.utime(str(f), ns=(1, 1))
    new = {"inputs": describe_inputs([str(f)]), "settings": old["settings"]}
    new["inputs"][0]["size"] = 1
    assert first_difference(old, new).startswith("input day_0: modification time ")


def _run_until(args, parent, when):
    """Run the tool in its own process group and kill -9 the group once when(line, tmp_dir)
    holds for a line of its output; returns that output."""
    p = subprocess.Popen([sys.executable, "-u", PREPROCESS_TOOL] + args, stdout=subprocess.PIPE,
                         stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    tmp_dir = os.path.join(parent, ".out.incomplete-%d" % p.pid)
    out = []
    try:
        for line in p.stdout:
            out.append(line)
            if when(line, tmp_dir):
                break
        assert p.poll() is None, "the tool ended before the kill point:\n" + "".join(out)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    return "".join(out)


def _wait_for(path, timeout=120):
    deadline = time.time() + timeout
    while not os.path.exists(path) and time.time() < deadline:
        time.sleep(0.05)
    return os.path.exists(path)


@pytest.mark.slow
@requires_java
def test_killed_runs_resume_to_the_uninterrupted_output(run_mod, tmp_path):
    parent = str(tmp_path)
    out = os.path.join(parent, "out")
    args = [out if a == run_mod["out"] else a for a in run_mod["args"]]
    assert out in args
    # 1: killed while Spark writes train (check_rows finished; Spark's output directory exists)
    _run_until(args, parent,
               lambda ln, d: "writing train" in ln and _wait_for(os.path.join(d, WRITE_DIR)))
    # 2: resumed, killed while it writes test and val (train finished)
    log = _run_until(args + ["--resume"], parent, lambda ln, d: "writing test and val" in ln)
    assert REUSED_RE.findall(log) == ["check_rows"], log
    assert "half-written by the interrupted pass" in log  # train's partial directory
    [work] = os.listdir(parent)
    # a changed setting: refused in one line naming it, the work left as it was
    r = tool(args + ["--resume", "--seed", "6"], timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    [err] = error_lines(r.stderr)
    assert "--seed 5 -> 6" in err and "cannot resume" in err, err
    assert os.listdir(parent) == [work]
    # 3: resumed to the end, with another scratch directory (allowed: it changes no output)
    r = tool(args + ["--resume", "--spark_tmp_dir", str(tmp_path / "scratch")])
    assert r.returncode == 0, r.stdout + r.stderr
    assert REUSED_RE.findall(r.stdout) == ["check_rows", "write_train"], \
        r.stdout
    assert re.search(r"^\[preprocess\] time per pass: write_test_val [\d.]+ s, count_distinct_ids "
                     r"[\d.]+ s, check_rows reused, write_train reused$", r.stdout, re.M), r.stdout
    assert sorted(os.listdir(parent)) == ["out", "scratch"]
    # the same output as the uninterrupted run: files, rows in order, dataset_info.json
    ref = run_mod["out"]
    assert sorted(os.listdir(out)) == sorted(os.listdir(ref))
    assert STATE_FILE not in os.listdir(out)
    for name in ("dataset_info.json", "README.md"):
        with open(os.path.join(out, name)) as a, open(os.path.join(ref, name)) as b:
            assert a.read() == b.read(), name
    with open(os.path.join(out, "dataset_info.json")) as f:
        assert json.load(f)["rows"] == run_mod["info"]["rows"]
    for split in SPLITS:
        a, fa = read_split(out, split)
        b, fb = read_split(ref, split)
        assert len(fa) == len(fb) and a.num_rows == b.num_rows > 0
        for c in COLUMNS:
            assert a.column(c).equals(b.column(c)), (split, c)


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 128 kB tmpfs on tmp_path/scratch: a full scratch disk."""
    with tmpfs(tmp_path / "scratch", "128k") as d:
        yield d


@pytest.mark.slow
@requires_java
def test_full_scratch_disk_then_resume(run_mod, small_tmpfs, tmp_path):
    """The train shuffle (~200 kB here) fills a 128 kB --spark_tmp_dir: one error line naming it,
    the half-written train removed, the counting pass kept for --resume (which may change
    --spark_tmp_dir: test_killed_runs_resume_to_the_uninterrupted_output)."""
    out = str(tmp_path / "out")
    args = [out if a == run_mod["out"] else a for a in run_mod["args"]]
    r = tool(args + ["--spark_tmp_dir", small_tmpfs])
    assert r.returncode == 1, r.stdout + r.stderr
    [err] = error_lines(r.stderr)
    assert err.startswith("error: no space left on device in %s (--spark_tmp_dir" % small_tmpfs)
    assert "during write_train" in err and "--resume" in err, err
    assert "Traceback" not in r.stderr
    [work] = [p for p in os.listdir(str(tmp_path)) if p.startswith(".out.incomplete-")]
    assert sorted(os.listdir(str(tmp_path / work))) == [STATE_FILE]  # no half-written train
    with open(str(tmp_path / work / STATE_FILE)) as f:
        assert list(json.load(f)["passes"]) == ["check_rows"]
    assert not os.path.exists(out)
