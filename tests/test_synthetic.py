"""Tests for dlrm/synthetic.py through its CLI tools/make_synthetic_criteo.py (small sizes, subprocesses)."""

import collections
import json
import os
import re

import pytest

from conftest import SYNTH_TOOL, run_tool
from dlrm import schema
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
