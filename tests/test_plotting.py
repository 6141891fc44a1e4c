"""tools/plot_metrics.py (dlrm/plotting.py) as a real subprocess on a real metrics.jsonl, and
dlrm.metrics' summary of a resumed run."""
import json

import pytest

from conftest import PLOT_TOOL, error_lines, run_tool, write_metrics
from dlrm import metrics

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_plot_metrics_cli(tmp_path):
    metrics = tmp_path / "run" / "metrics.jsonl"
    metrics.parent.mkdir()
    write_metrics(metrics)
    proc = run_tool(PLOT_TOOL, metrics, timeout=120)
    png = tmp_path / "run" / "metrics.png"  # default: next to the metrics file
    data = png.read_bytes()
    assert data[:8] == PNG_SIGNATURE and len(data) > 10_000
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["best_auc"] == 0.76 and summary["best_auc_step"] == 750
    assert summary["final_auc"] == 0.75 and summary["final_auc_step"] == 1000
    assert summary["steps"] == 1000 and summary["evaluations"] == 4
    # the first record (throughput 1000, graph compilation) is left out of the mean
    assert summary["mean_throughput"] == pytest.approx(sum(5000 + s for s in range(100, 1001, 50)) / 19)
    assert summary["total_time_s"] == pytest.approx(1000 / 20 + 2.0)  # + the final eval, logged after
    assert "best AUC: 0.76000 at step 750" in proc.stdout
    assert "final AUC: 0.75000 at step 1000" in proc.stdout

    out = tmp_path / "elsewhere" / "plot.png"
    run_tool(PLOT_TOOL, metrics, "--output", out, "--reference_auc", "0.78", timeout=120)
    assert out.read_bytes()[:8] == PNG_SIGNATURE
    assert json.loads((tmp_path / "elsewhere" / "summary.json").read_text())["best_auc_step"] == 750


@pytest.mark.parametrize("content,needle", [(None, "does not exist"), ("", "is empty"), ("\n\n", "is empty"),
                                            ('{"kind": "other"}\n', "no train or eval records"),
                                            ("garbage\n" + json.dumps({"kind": "train", "step": 1}) + "\n",
                                             "not a JSON object")])
def test_plot_metrics_bad_file(tmp_path, content, needle):
    path = tmp_path / "metrics.jsonl"
    if content is not None:
        path.write_text(content)
    proc = run_tool(PLOT_TOOL, path, timeout=60, check=False)
    assert proc.returncode == 1
    assert error_lines(proc.stderr) == [proc.stderr.strip()] and needle in proc.stderr
    assert not (tmp_path / "metrics.png").exists()


def test_summarize_resumed_run(tmp_path):
    """A resumed run appends to the file: the curves keep the later record of a step, times add up."""
    path = tmp_path / "metrics.jsonl"
    recs = write_metrics(path)
    # killed after the step-500 eval, resumed from a step-450 checkpoint: steps 500..1000 logged again
    first = [r for r in recs if r["step"] <= 500]
    second = [dict(r, auc=r["auc"] + 0.001) if r["kind"] == "eval" else dict(r, elapsed_s=r["elapsed_s"] - 20)
              for r in recs if r["step"] >= 500]
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in first + second)
        f.write('{"kind": "train", "st')  # a run killed mid-write
    records = metrics.read_metrics(str(path))
    s = metrics.summarize(records)
    assert s["segments"] == 2 and s["steps"] == 1000 and s["evaluations"] == 4
    assert s["best_auc"] == pytest.approx(0.761) and s["best_auc_step"] == 750
    assert s["total_time_s"] == pytest.approx(500 / 20 + 2.0 + (1000 / 20 - 20) + 2.0)  # each segment: + evals after its last train record
    assert metrics.curves(records)["eval"][1]["auc"] == pytest.approx(0.741)  # step 500: the later one
