"""The Python steps of scripts/quickstart.sh (dlrm/quickstart.py), in-process and as a subprocess,
on real synthetic raw data."""
import json
import os
import shutil

import pytest

from conftest import error_lines, run_tool, write_metrics
from dlrm import metrics, quickstart, schema, synthetic

# ----------------------------------------------------------------------------- dlrm/quickstart.py
@pytest.fixture(scope="module")
def planted_raw(tmp_path_factory):
    """A small real synthetic raw directory: 2 days x 500 rows, seed 3 (day_0, day_1, planted_model.json)."""
    raw = tmp_path_factory.mktemp("quickstart") / "raw"
    synthetic.generate(str(raw), days=2, rows_per_day=500, seed=3)
    return raw


def run_quickstart(capsys, *args):
    rc = quickstart.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_quickstart_same_raw(planted_raw, tmp_path, capsys):
    assert run_quickstart(capsys, "same-raw", planted_raw, 2, 500, 3) == (0, "", "")
    for days, rows, seed in [(3, 500, 3), (2, 400, 3), (2, 500, 0)]:
        assert run_quickstart(capsys, "same-raw", planted_raw, days, rows, seed)[0] == 1
    assert run_quickstart(capsys, "same-raw", tmp_path, 2, 500, 3)[0] == 1  # no planted_model.json
    partial = tmp_path / "partial"  # a day file missing
    shutil.copytree(planted_raw, partial)
    os.remove(partial / "day_1")
    assert run_quickstart(capsys, "same-raw", partial, 2, 500, 3)[0] == 1
    kaggle = tmp_path / "kaggle"  # the same settings in the kaggle layout (train.txt) do not count
    synthetic.generate(str(kaggle), days=2, rows_per_day=500, seed=3, kaggle=True)
    assert run_quickstart(capsys, "same-raw", kaggle, 2, 500, 3)[0] == 1


def test_quickstart_dataset(tmp_path, capsys):
    rows = {"train": 200000, "test": 50000, "val": 50000}
    sizes = [1460, 583, 50000] + [7] * (schema.NUM_SPARSE - 3)
    schema.write_dataset_info(str(tmp_path), {"rows": rows, "table_size_array": sizes})
    rc, out, _ = run_quickstart(capsys, "dataset", tmp_path)
    assert rc == 0
    assert out == f"dataset: train 200000, test 50000, val 50000 rows; table sizes {sizes}\n"
    rc, out, err = run_quickstart(capsys, "dataset", tmp_path / "missing")
    assert rc == 1 and out == ""
    assert error_lines(err) == [err.strip()] and "dataset_info.json does not exist" in err


def test_quickstart_planted_auc(planted_raw, tmp_path, capsys):
    test_day = synthetic.read_planted_model(planted_raw)["per_day"][-1]
    rc, out, _ = run_quickstart(capsys, "planted-auc", planted_raw)
    assert rc == 0 and float(out) == test_day["planted_auc"] and 0.6 < float(out) < 0.95
    assert run_quickstart(capsys, "planted-auc", tmp_path) == (0, "", "")  # RAW_DIR data: no planted model


def test_quickstart_summary(planted_raw, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    s = metrics.summarize(write_metrics(run / "metrics.jsonl"))
    (run / "summary.json").write_text(json.dumps(s))
    test_day = synthetic.read_planted_model(planted_raw)["per_day"][-1]
    rc, out, _ = run_quickstart(capsys, "summary", run, planted_raw)
    assert rc == 0
    assert out.splitlines() == [
        "final AUC:    0.7500 at step 1000 (best 0.7600 at step 750), 52 s of training",
        f"planted AUC:  {test_day['planted_auc']:.4f} (the synthetic data's true click model on its test day "
        f"day_1: the best any model can score)"]
    rc, out, _ = run_quickstart(capsys, "summary", run, tmp_path / "no_raw")
    assert rc == 0 and out.splitlines() == ["final AUC:    0.7500 at step 1000 (best 0.7600 at step 750), "
                                            "52 s of training"]
    rc, out, err = run_quickstart(capsys, "summary", tmp_path, planted_raw)
    assert rc == 1 and out == "" and error_lines(err) == [err.strip()] and "summary.json does not exist" in err


def test_quickstart_cli(planted_raw):
    proc = run_tool("-m", "dlrm.quickstart", "planted-auc", planted_raw)
    assert 0.6 < float(proc.stdout) < 0.95
    proc = run_tool("-m", "dlrm.quickstart", "same-raw", planted_raw, 2, 500, 4, check=False)
    assert proc.returncode == 1 and proc.stdout == proc.stderr == ""
    proc = run_tool("-m", "dlrm.quickstart", "no-such-step", check=False)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
    help_text = run_tool("-m", "dlrm.quickstart", "--help").stdout
    assert all(c in help_text for c in ("versions", "same-raw", "dataset", "planted-auc", "summary"))
