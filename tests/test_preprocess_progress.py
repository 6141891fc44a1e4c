"""Progress lines of tools/criteo1t_parquet.py's passes (dlrm.preprocess.progress): the line
format (fast), and a real Spark run (local[2]) with a short --progress_interval."""
import re

import pytest

from conftest import SPARK, SYNTH_TOOL, requires_java, run_tool
from dlrm.preprocess.progress import RunClock, eta_text, human, progress_line
from test_preprocess import tool

ETA = r"(?:\d+:\d\d:\d\d|\?)"
LINE_RE = re.compile(r"^\[preprocess\] (?P<name>[a-z_]+(?: [a-z]+)?) \(pass (?P<k>\d+)/(?P<n>\d+)\): "
                     r"(?P<done>\d+)/(?P<total>\d+) tasks, (?:[\d.]+ [kMGT]?B/s, [\d.]+[kMGT]? rows/s, )?"
                     r"ETA (?P<eta>%s), run ETA (?P<run_eta>%s) \(stages? (?P<stages>[\d,]+)\)$" % (ETA, ETA))


def test_progress_line_format():
    stages = [{"id": 3, "tasks": 120, "done": 30, "started": 100.0, "bytes": 6e9,
               "rows": 3e7}]
    line = progress_line("check_rows", stages, now=110.0, position="2/6", run_eta=750.0)
    assert line == ("check_rows (pass 2/6): 30/120 tasks, 600.0 MB/s, 3.0M rows/s, ETA 0:00:30, "
                    "run ETA 0:12:30 (stage 3)")
    assert LINE_RE.match("[preprocess] " + line)
    two = [{"id": 5, "tasks": 10, "done": 0, "started": 0.0},
           {"id": 6, "tasks": 4, "done": 2, "started": 0.0}]
    line = progress_line("write_train", two, now=5.0, position="3/6", run_eta=None)
    assert line == ("write_train (pass 3/6): 2/14 tasks, ETA ?, run ETA ? "
                    "(stages 5,6)")  # no UI: no rates; a stage without a finished task: no ETA
    assert LINE_RE.match("[preprocess] " + line)
    assert (human(999), human(1234567, "B"), eta_text(3725.4)) == ("999", "1.2 MB", "1:02:05")



def test_run_eta_from_the_passes_measured():
    plan = [("count", 100), ("check", 300), ("write train", 600), ("write test", 200)]
    clock = RunClock(plan)
    assert clock.position("write train") == "3/4"
    clock.start("count", 0.0)
    # nothing finished yet: the running pass's own rate (10 s so far + 10 s left for 100)
    assert clock.eta(10.0, now=10.0) == 10.0 + (300 + 600 + 200) * 0.2
    assert clock.eta(None, now=10.0) is None
    clock.finish("count", 20.0)
    clock.reused.add("check")  # reused by --resume: neither measured nor still to do
    clock.start("write train", 20.0)
    # 20 s for weight 100 measured: 0.2 s per unit; the pass's ETA unknown yet -> its weight
    assert clock.eta(None, now=50.0) == (600 * 0.2 - 30.0) + 200 * 0.2
    assert clock.eta(60.0, now=50.0) == 60.0 + 200 * 0.2
    clock.finish("write train", 81.3)
    # the run's closing "time per pass" line: the passes that ran in order, then the reused
    assert clock.summary() == "count 20.0 s, write train 61.3 s, check reused"


@pytest.mark.slow
@requires_java
def test_progress_lines_during_a_run(tmp_path):
    """Small file splits (~170 tasks per input scan) and a 0.1 s interval: every pass that
    runs long enough reports, and a pass's task counts grow from line to line."""
    run_tool(SYNTH_TOOL, "--output_dir", tmp_path / "in", "--days", "2", "--rows_per_day", "20000",
             "--seed", "3", timeout=300)
    env = {"PYSPARK_SUBMIT_ARGS": "--conf spark.sql.files.maxPartitionBytes=65536 pyspark-shell"}
    r = tool(["--input_dir", str(tmp_path / "in"), "--output_dir", str(tmp_path / "out"),
              "--num_test_examples", "5000", "--train_files", "2", "--eval_files", "2",
              "--progress_interval", "0.1"] + SPARK, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    lines = [m.groupdict() for m in map(LINE_RE.match, r.stdout.splitlines()) if m]
    names = {d["name"] for d in lines}
    assert {"check_rows", "write_train"} <= names, r.stdout
    assert names <= {"check_rows", "write_train", "write_test_val", "count_distinct_ids"}
    check = [(int(d["done"]), int(d["total"]), d["stages"]) for d in lines if d["name"] == "check_rows"]
    assert len(check) >= 3 and all(done <= total for done, total, _ in check), check
    # check_rows scans (one stage) then aggregates (a later stage): within a stage it never goes back
    for stage in {s for *_, s in check}:
        done = [d for d, _, s in check if s == stage]
        assert done == sorted(done), check
    scan = [d for d, _, s in check if s == check[0][2]]
    assert scan[-1] > scan[0], check
    assert any(d["eta"] != "?" for d in lines if d["name"] == "check_rows")
    # pass k of 4 (the counting scan, the train write, the test+val write, distinct ids), and
    # a run ETA once measured
    assert {(d["name"], d["k"], d["n"]) for d in lines if d["name"] == "check_rows"} == {
        ("check_rows", "1", "4")}
    assert any(d["run_eta"] != "?" for d in lines if d["name"].startswith("write_"))
    # the rates come from the driver's UI
    assert any("rows/s" in ln for ln in r.stdout.splitlines() if "check_rows (pass" in ln)
    # the closing line: each of the four passes ran here, with its seconds, in run order
    took = re.findall(r"^\[preprocess\] time per pass: (.*)$", r.stdout, re.M)
    assert len(took) == 1, r.stdout
    assert re.fullmatch(r"check_rows ([\d.]+) s, write_train ([\d.]+) s, write_test_val ([\d.]+) s, "
                        r"count_distinct_ids ([\d.]+) s", took[0]), took
