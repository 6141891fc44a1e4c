"""Tests for dlrm/synthetic.py through its CLI tools/make_synthetic_criteo.py (small sizes, subprocesses)."""

import collections
import functools
import json
import os
import re

import numpy as np
import pytest

from conftest import SYNTH_TOOL, run_tool
from dlrm import schema
from dlrm import kaggle_shape
from dlrm import synthetic as synth

DAYS, ROWS = 2, 2000
DENSE_RE = re.compile(r"^(-?\d+)?$")
CAT_RE = re.compile(r"^([0-9a-f]{8})?$")


def synth_tool(*args):
    return run_tool(SYNTH_TOOL, *args, check=False)


def generate(out_dir, seed=7, *extra):
    return run_tool(SYNTH_TOOL, "--output_dir", out_dir, "--days", DAYS, "--rows_per_day", ROWS, "--seed", seed, *extra)


def read_bytes(out_dir, names):
    return [open(os.path.join(out_dir, n), "rb").read() for n in names]


DAY_FILES = [f"day_{d}" for d in range(DAYS)]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "data"
    r = generate(out)
    assert "planted_auc=" in r.stdout and len(r.stdout.strip().splitlines()) == 1
    return out


@pytest.fixture(scope="module")
def rows(data_dir):
    out = {}
    for name in DAY_FILES:
        with open(data_dir / name, "rb") as f:
            raw = f.read()
        assert raw.endswith(b"\n")
        out[name] = [line.split("\t") for line in raw.decode("ascii").split("\n")[:-1]]
    return out


def test_file_names(data_dir):
    assert sorted(os.listdir(data_dir)) == sorted(DAY_FILES + ["planted_model.json"])


def test_line_format(rows):
    all_rows = [r for name in DAY_FILES for r in rows[name]]
    assert all(len(r) == ROWS for r in rows.values())
    assert all(len(r) == schema.NUM_FIELDS for r in all_rows)
    assert {r[0] for r in all_rows} == {"0", "1"}
    dense = [r[1:14] for r in all_rows]
    cats = [r[14:] for r in all_rows]
    assert all(DENSE_RE.match(v) for r in dense for v in r)
    assert all(CAT_RE.match(v) for r in cats for v in r)
    dense_vals = [v for r in dense for v in r]
    assert "" in dense_vals
    assert any(v.startswith("-") for v in dense_vals)
    assert any(r[1].startswith("-") for r in dense)  # I2 takes -1/-2/... like the real data
    assert "" in [v for r in cats for v in r]
    assert not any(v == "" for r in cats for v in (r[0], r[1]))  # C1, C2 never missing


def test_categorical_vocab_and_heavy_tail(rows):
    all_rows = [r for name in DAY_FILES for r in rows[name]]
    for j, card in enumerate(synth.DEFAULT_CARDINALITIES):
        counts = collections.Counter(r[14 + j] for r in all_rows if r[14 + j])
        assert len(counts) <= card
        top_freq = counts.most_common(1)[0][1] / sum(counts.values())
        uniform = 1.0 / min(card, sum(counts.values()))
        assert top_freq > 1.3 * uniform, (j, top_freq, uniform)
        if card >= 100:
            assert top_freq > 0.05, (j, top_freq)


def test_days_differ_but_share_vocabulary(rows):
    a, b = rows["day_0"], rows["day_1"]
    assert a != b
    for j in range(schema.NUM_SPARSE):  # most frequent item of each column is the same hex string on both days
        top = [collections.Counter(r[14 + j] for r in day if r[14 + j]).most_common(1)[0][0]
               for day in (a, b)]
        assert top[0] == top[1], j


def test_planted_model_json(data_dir):
    with open(data_dir / "planted_model.json") as f:
        meta = json.load(f)
    assert meta["seed"] == 7 and meta["days"] == DAYS and meta["rows_per_day"] == ROWS
    assert meta["cardinalities"] == synth.DEFAULT_CARDINALITIES
    assert len(meta["missing_rates"]["categorical"]) == schema.NUM_SPARSE
    assert len(meta["missing_rates"]["dense"]) == schema.NUM_DENSE
    assert set(meta["planted_model"]["dense_weights"]) <= set(schema.DENSE_COLUMNS)
    assert set(meta["planted_model"]["categorical_effect_sigma"]) <= set(schema.SPARSE_COLUMNS)
    assert synth.read_planted_model(data_dir) == meta
    assert synth.read_planted_model(data_dir.parent) is None  # no planted model there
    assert 0.15 < meta["click_rate"] < 0.35
    assert 0.7 < meta["planted_auc"] < 0.86
    assert len(meta["per_day"]) == DAYS
    assert all(0.65 < d["planted_auc"] < 0.9 for d in meta["per_day"])


def test_deterministic(data_dir, tmp_path):
    generate(tmp_path / "same", 7)
    assert read_bytes(tmp_path / "same", DAY_FILES) == read_bytes(data_dir, DAY_FILES)
    generate(tmp_path / "other", 8)
    other = read_bytes(tmp_path / "other", DAY_FILES)
    assert all(x != y for x, y in zip(other, read_bytes(data_dir, DAY_FILES)))


def test_refuses_non_empty_dir_unless_overwrite(data_dir, tmp_path):
    out = tmp_path / "d"
    generate(out, 1)
    before = read_bytes(out, DAY_FILES)
    r = synth_tool("--output_dir", out, "--days", 1, "--rows_per_day", 100, "--seed", 2)
    assert r.returncode != 0
    assert "--overwrite" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert read_bytes(out, DAY_FILES) == before
    # --overwrite replaces the generated files, including the now stale day_1
    r = synth_tool("--output_dir", out, "--days", 1, "--rows_per_day", 100, "--seed", 2, "--overwrite")
    assert r.returncode == 0, r.stderr
    assert sorted(os.listdir(out)) == ["day_0", "planted_model.json"]


def test_kaggle_layout_and_cardinalities(tmp_path):
    cards = [3, 5, 40, 1] + [10] * (schema.NUM_SPARSE - 4)
    generate(tmp_path / "days", 3, "--cardinalities", ",".join(map(str, cards)))
    generate(tmp_path / "kaggle", 3, "--cardinalities", ",".join(map(str, cards)), "--kaggle")
    assert sorted(os.listdir(tmp_path / "kaggle")) == ["planted_model.json", "train.txt"]
    train = read_bytes(tmp_path / "kaggle", ["train.txt"])[0]
    assert train == b"".join(read_bytes(tmp_path / "days", DAY_FILES))
    lines = train.decode().split("\n")[:-1]
    assert len(lines) == DAYS * ROWS
    for j, card in enumerate(cards):
        assert len({line.split("\t")[14 + j] for line in lines} - {""}) <= card
    with open(tmp_path / "kaggle" / "planted_model.json") as f:
        assert json.load(f)["cardinalities"] == cards


@pytest.mark.parametrize("args, message", [
    (["--days", "0"], "--days"),
    (["--rows_per_day", "0"], "--rows_per_day"),
    (["--cardinalities", "1,2,3"], "26"),
    (["--cardinalities", ",".join(["x"] * schema.NUM_SPARSE)], "--cardinalities"),
])
def test_bad_flags_one_line_error(tmp_path, args, message):
    with pytest.raises(SystemExit) as e:  # in-process via main(argv) (importable CLI)
        synth.main(["--output_dir", str(tmp_path / "out"), *args])
    assert e.value.code == 2
    r = synth_tool("--output_dir", tmp_path / "out", *args)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and message in r.stderr
    assert not (tmp_path / "out").exists()


# --------------------------------------------------------------------------------------------
# --layout kaggle: train.txt + test.txt shaped like Kaggle's (dlrm/kaggle_shape.py)
# --------------------------------------------------------------------------------------------
KAGGLE_SAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "..", "shared", "criteo", "kaggle_sample_train117k.tsv")
KAGGLE_ROWS = 210_000  # three blocks, the last one partial


def real_sample():
    if not os.path.isfile(KAGGLE_SAMPLE):
        pytest.skip(f"the real Kaggle sample is not at {KAGGLE_SAMPLE} (shared/criteo is not next to this checkout)")
    return _read_real_sample()


@functools.lru_cache(maxsize=1)
def _read_real_sample():
    return kaggle_shape.read_sample(KAGGLE_SAMPLE)


def column_stats(values):
    """(distinct, singletons) of a categorical column's non-missing values."""
    _, counts = np.unique(np.asarray(values), return_counts=True)
    return len(counts), int(np.sum(counts == 1))


def noise(count):
    """Two standard deviations of a Poisson count: what a count of a handful varies by between samples."""
    return 2 * count ** 0.5 + 1


def within(got, want, rel, slack):
    """got is within rel (a share) of want, give or take slack (the Poisson noise of a handful)."""
    return abs(got - want) <= rel * want + slack


@pytest.fixture(scope="module")
def kaggle_subsample():
    """A real-sample-sized subsample of full-size kaggle-layout data: rows are i.i.d., so n draws
    from the generator's distributions are exactly that (the full 45.8M rows are not needed)."""
    labels, _, _ = real_sample()
    spec = synth.build_kaggle_spec(0, calibrate=False)
    return synth.sample_features(spec, synth._rng(0, 99), len(labels))


def test_kaggle_shape_matches_real_sample_per_column(kaggle_subsample):
    """The acceptance test: per column, the distinct count and the share of values seen once of a
    random subsample of full-size synthetic data, of the real sample's size, are the real sample's
    within 10% (or the Poisson noise of the count, for the columns where it is a handful)."""
    _, _, cats = real_sample()
    _, _, synth_cats = kaggle_subsample
    misses = []
    for j, name in enumerate(schema.SPARSE_COLUMNS):
        real_d, real_s = column_stats([v for v in cats[j] if v])
        col = synth_cats[:, j]
        got_d, got_s = column_stats(col[col >= 0])
        if not (within(got_d, real_d, 0.10, noise(real_d))
                and within(got_s / got_d, real_s / real_d, 0.10, noise(real_s) / real_d)):
            misses.append((name, real_d, got_d, round(real_s / real_d, 3), round(got_s / got_d, 3)))
    assert not misses, misses
    # the columns with thousands of values in the sample are within 2% on both
    for j in (2, 3, 6, 9, 11, 14, 15, 20, 23, 25):  # C3 C4 C7 C10 C12 C15 C16 C21 C24 C26
        real_d, real_s = column_stats([v for v in cats[j] if v])
        col = synth_cats[:, j]
        got_d, got_s = column_stats(col[col >= 0])
        assert within(got_d, real_d, 0.02, 0) and within(got_s / got_d, real_s / real_d, 0.02, 0), j


def test_kaggle_shape_missing_and_dense_like_real_sample(kaggle_subsample):
    _, dense, cats = real_sample()
    synth_dense, synth_dmiss, synth_cats = kaggle_subsample
    for i in range(schema.NUM_DENSE):
        real = np.array([int(v) for v in dense[i] if v])
        assert abs(synth_dmiss[:, i].mean() - (1 - len(real) / len(dense[i]))) < 0.01, i
        got = synth_dense[~synth_dmiss[:, i], i]
        for q in (0.1, 0.25, 0.5, 0.75, 0.9, 0.99):
            want = np.quantile(real, q)
            assert within(np.quantile(got, q), want, 0.15, 1), (schema.DENSE_COLUMNS[i], q)
    assert (synth_dense[:, 1] < 0).any()  # I2's -1, -2 like the real data
    for j in range(schema.NUM_SPARSE):
        real_missing = np.mean([v == "" for v in cats[j]])
        assert abs((synth_cats[:, j] < 0).mean() - real_missing) < 0.01, j
    # fields missing together in the real data still are (C3 C4 C12 C16 C21 C24: one missing pattern)
    group = synth_cats[:, [2, 3, 11, 15, 20, 23]] < 0
    assert group.any() and (group.all(axis=1) == group.any(axis=1)).all()


def test_kaggle_shape_constants_record_the_real_sample():
    """The shipped constants hold the real sample's statistics beside the fitted parameters, and the
    model's expectations at the sample's size and at Kaggle's full size are on target."""
    labels, _, cats = real_sample()
    shape = kaggle_shape.shipped_shape()
    assert shape["sample_rows"] == len(labels)
    full = kaggle_shape.expected_distinct(shape, kaggle_shape.KAGGLE_TRAIN_ROWS)
    for j, name in enumerate(schema.SPARSE_COLUMNS):
        col = shape["categorical"][name]
        assert col["sample"] == kaggle_shape.sample_statistics(cats[j])
        full_d = full[j][0]
        assert within(full_d, col["full_distinct_target"], 0.01, 1), name
        table = kaggle_shape.KAGGLE_TABLE_SIZES[j]
        assert col["full_distinct_target"] == table - (1 if col["sample"]["nonmissing"] < len(labels) else 0)


def kaggle_generate(out_dir, *extra):
    return run_tool(SYNTH_TOOL, "--output_dir", out_dir, "--layout", "kaggle", "--seed", 5, *extra)


@pytest.fixture(scope="module")
def kaggle_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("kaggle") / "data"
    r = kaggle_generate(out, "--rows", KAGGLE_ROWS, "--workers", 2)
    assert "planted_auc=" in r.stdout and "2 worker(s)" in r.stdout
    return out


def test_kaggle_layout_files_and_fields(kaggle_dir):
    assert sorted(os.listdir(kaggle_dir)) == ["planted_model.json", "test.txt", "train.txt"]
    test_rows = round(KAGGLE_ROWS * 6_042_135 / 45_840_617)
    for name, fields, rows in (("train.txt", 40, KAGGLE_ROWS), ("test.txt", 39, test_rows)):
        raw = (kaggle_dir / name).read_bytes()
        assert raw.endswith(b"\n")
        lines = [line.split("\t") for line in raw.decode("ascii").split("\n")[:-1]]
        assert len(lines) == rows
        assert {len(f) for f in lines} == {fields}
        first_dense = fields - 39
        if fields == 40:
            assert {f[0] for f in lines} == {"0", "1"}
        assert all(DENSE_RE.match(v) for f in lines[:2000] for v in f[first_dense:first_dense + 13])
        assert all(CAT_RE.match(v) for f in lines[:2000] for v in f[first_dense + 13:])
        assert any(v == "" for f in lines[:2000] for v in f[first_dense + 13:])


def test_kaggle_layout_planted_model_recorded(kaggle_dir):
    meta = synth.read_planted_model(kaggle_dir)
    assert meta["layout"] == "kaggle" and meta["seed"] == 5 and meta["workers"] == 2
    assert meta["total_rows"] == KAGGLE_ROWS and meta["test_rows"] == round(KAGGLE_ROWS * 6_042_135 / 45_840_617)
    assert meta["kaggle_table_sizes"] == kaggle_shape.KAGGLE_TABLE_SIZES
    assert 0.2 < meta["click_rate"] < 0.3
    assert 0.75 < meta["planted_auc"] < 0.8 and abs(meta["planted_auc"] - meta["planted_model"]["expected_auc"]) < 0.01
    assert meta["expected_distinct_train"]["C9"] == 3 and meta["expected_distinct_train"]["C3"] > 50_000


def test_binned_auc_is_the_exact_auc():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    probs = rng.random(200_000)
    labels = (rng.random(200_000) < probs).astype(np.uint8)
    bins = np.minimum((probs * synth.AUC_BINS).astype(np.int64), synth.AUC_BINS - 1)
    hist = np.stack([np.bincount(bins, weights=labels, minlength=synth.AUC_BINS),
                     np.bincount(bins, weights=1 - labels, minlength=synth.AUC_BINS)])
    assert abs(synth.binned_auc(hist) - roc_auc_score(labels, probs)) < 1e-5


def test_kaggle_layout_same_bytes_for_any_worker_count(kaggle_dir, tmp_path):
    kaggle_generate(tmp_path / "one", "--rows", KAGGLE_ROWS, "--workers", 1)
    for name in ("train.txt", "test.txt"):
        assert (tmp_path / "one" / name).read_bytes() == (kaggle_dir / name).read_bytes(), name
    # another seed, other rows; a fraction of Kaggle's size gives Kaggle's rows times it
    kaggle_generate(tmp_path / "other", "--fraction", "0.001", "--seed", 6, "--workers", 3)
    meta = synth.read_planted_model(tmp_path / "other")
    assert meta["total_rows"] == 45_841 and meta["test_rows"] == 6_042
    other = (tmp_path / "other" / "train.txt").read_bytes()
    assert other.count(b"\n") == 45_841 and other[:200] != (kaggle_dir / "train.txt").read_bytes()[:200]


@pytest.mark.parametrize("args, message", [
    (["--layout", "kaggle"], "--rows N and --fraction F"),
    (["--layout", "kaggle", "--rows", "10", "--fraction", "0.1"], "--rows N and --fraction F"),
    (["--layout", "kaggle", "--rows", "0"], "--rows"),
    (["--layout", "kaggle", "--fraction", "1.5"], "--fraction"),
    (["--layout", "kaggle", "--rows", "10", "--days", "2"], "--days is a flag of --layout criteo1t"),
    (["--layout", "kaggle", "--rows", "10", "--kaggle"], "--kaggle is a flag of --layout criteo1t"),
    (["--rows", "10"], "--rows is a flag of --layout kaggle"),
    (["--layout", "kaggle", "--rows", "10", "--workers", "-1"], "--workers"),
])
def test_kaggle_layout_bad_flags_one_line_error(tmp_path, args, message):
    r = synth_tool("--output_dir", tmp_path / "out", *args)
    assert r.returncode == 2
    assert len(r.stderr.strip().splitlines()) == 1 and message in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow  # ~1 minute of scipy fits
def test_fit_shape_reproduces_shipped_constants():
    """The shipped constants are what dlrm/kaggle_shape.py fits on the shared sample (rerun with
    `python -m dlrm.kaggle_shape SAMPLE.tsv` when the fit changes)."""
    real_sample()
    fitted, shipped = kaggle_shape.fit_shape(KAGGLE_SAMPLE), kaggle_shape.shipped_shape()
    assert fitted["missing_patterns"] == shipped["missing_patterns"]
    assert fitted["dense"] == shipped["dense"]
    for name in schema.SPARSE_COLUMNS:
        got, want = fitted["categorical"][name], shipped["categorical"][name]
        assert got["sample"] == want["sample"] and got["head"] == want["head"], name
        # the same expectations (the parameters of a column the fit cannot match exactly, C14 or
        # C22, sit on a flat optimum and move with the last bits of the sums)
        n = want["sample_nonmissing"]
        for rows in (n, n * kaggle_shape.KAGGLE_TRAIN_ROWS / want["sample"]["rows"]):
            for x, y in zip(kaggle_shape.column_expectations(got, rows), kaggle_shape.column_expectations(want, rows)):
                assert within(x, y, 0.005, 0.5), (name, rows)
