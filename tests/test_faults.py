"""Faults and bad inputs of training runs: each ends in one line, nothing hangs, nothing is lost
(docs/faults.md lists what each gets)."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO, read_metrics, tmpfs, write_tiny_dataset
from test_train import launch, newest, tiny_run_args

pytestmark = pytest.mark.slow  # real training subprocesses


def rank_processes(marker):
    """pids of live processes whose command line holds marker (a run's unique directory)."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines()[1:] if marker in line and "ps -eo" not in line]


@pytest.mark.parametrize("point", ["load", "step", "save"])
def test_a_failing_rank_ends_every_rank(tmp_path, point):
    """Rank 1 raises at a checkpoint load, at a training step or at a checkpoint write: rank 0 (blocked
    in a collective) stops within seconds with one line naming rank 1, and the launcher returns."""
    data = write_tiny_dataset(str(tmp_path / "data"))
    out = tmp_path / "run"
    common = tiny_run_args(data, "--train_batches", "12", "--save_interval", "4", "--model_save_dir", str(out))
    if point == "load":
        launch([*common, "--train_batches", "4"])
        common.append("--resume")
    cmd = [sys.executable, "-m", "oneflow.distributed.launch", "--nproc_per_node", "2", "--master_port",
           str(29500 + os.getpid() % 1000), "-m", "tests.fail_one_rank", "1", point, *common]
    start = time.time()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    took = time.time() - start
    assert proc.returncode != 0
    assert f"OSError: injected fault: rank 1 at {point}" in proc.stderr
    assert "error: rank 1 ended with an error (see its line above); stopping rank 0" in proc.stderr
    assert took < 60, took
    assert rank_processes(str(out)) == []
    if point != "load":
        assert not [p for p in os.listdir(out) if p.startswith("step_") and "val_auc" in p]  # no final checkpoint


def test_a_second_run_on_the_same_save_dir_is_refused_naming_the_first(tmp_path):
    data = write_tiny_dataset(str(tmp_path / "data"))
    out = tmp_path / "run"
    first = launch([*tiny_run_args(data, "--train_batches", "2000", "--model_save_dir", str(out))], popen=True)
    try:
        for line in first.stdout:  # the first run holds the directory once it trains
            if "Step 1," in line:
                break
        proc = subprocess.run([sys.executable, "dlrm_train_eval.py",
                               *tiny_run_args(data, "--train_batches", "4", "--model_save_dir", str(out))],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
    finally:
        os.killpg(first.pid, 9)
        first.wait()
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2 and errors == [
        f"error: --model_save_dir {out} is in use by another run (pid {first.pid} on {os.uname().nodename}, started "
        + errors[0].split(", started ")[1]]
    assert not [p for p in os.listdir(out) if p.startswith((".tmp", "step_"))]
    # the lock dies with its process: the directory is free again, and --resume starts over, saying so
    log = launch(tiny_run_args(data, "--train_batches", "4", "--model_save_dir", str(out), "--resume"))
    assert f"--resume: no complete checkpoint in {out}; starting at step 0" in log
    steps = [m["step"] for m in read_metrics(out / "metrics.jsonl") if m["kind"] == "train"]
    assert steps == [1, 2, 3, 4]  # the killed run's records of steps 1.. are gone: each step once


def test_resume_drops_the_records_of_steps_it_redoes(tmp_path):
    """Killed after its step-4 checkpoint but past it: the resumed run logs steps 5.. once."""
    data = write_tiny_dataset(str(tmp_path / "data"))
    out = tmp_path / "run"
    common = tiny_run_args(data, "--save_interval", "4", "--model_save_dir", str(out))
    launch([*common, "--train_batches", "7"])
    import shutil
    shutil.rmtree(newest(out, "step_7"))  # as if killed after step 7's records, before its checkpoint
    launch([*common, "--train_batches", "9", "--resume"])
    steps = [m["step"] for m in read_metrics(out / "metrics.jsonl") if m["kind"] == "train"]
    assert steps == list(range(1, 10))


@pytest.fixture
def small_disk(tmp_path):
    """A real 1 MiB tmpfs."""
    with tmpfs(tmp_path / "disk", "1m") as d:
        yield Path(d)


@pytest.mark.parametrize("nproc", [1, 2])
def test_a_full_disk_stops_the_run_in_one_line_naming_the_space(tmp_path, small_disk, nproc):
    """The model's checkpoint needs ~2 MiB: refused before writing, nothing half-written left; with two
    processes the other rank stops too."""
    data = write_tiny_dataset(str(tmp_path / "data"), table_sizes=(1000,) * 26)
    out = small_disk / "run"
    args = tiny_run_args(data, "--bottom_mlp", "32,16", "--embedding_vec_size", "16", "--train_batches", "4",
                         "--model_save_dir", str(out))
    cmd = [sys.executable, "dlrm_train_eval.py", *args] if nproc == 1 else \
        [sys.executable, "-m", "oneflow.distributed.launch", "--nproc_per_node", "2", "--master_port",
         str(29600 + os.getpid() % 1000), "dlrm_train_eval.py", *args]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error: --model_save_dir")]
    assert proc.returncode != 0 and len(errors) == 1, proc.stderr[-3000:]
    assert f"error: --model_save_dir {out}: no space for a checkpoint (needs ~" in errors[0]
    assert "MiB free): free some space (or --keep_checkpoints K) and --resume" in errors[0]
    assert sorted(os.listdir(out)) == ["RUN_LOCK", "metrics.jsonl"]
    assert rank_processes(str(out)) == []


def test_a_read_only_save_dir_is_one_line_before_training(tmp_path):
    data = write_tiny_dataset(str(tmp_path / "data"))
    with tmpfs(tmp_path / "ro", "1m", read_only=True) as d:
        ro = Path(d)
        proc = subprocess.run([sys.executable, "dlrm_train_eval.py",
                               *tiny_run_args(data, "--train_batches", "4", "--model_save_dir", str(ro / "run"))],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2 and errors == [
        f"error: --model_save_dir {ro / 'run'}: cannot write there (Read-only file system)"], proc.stderr[-2000:]
    assert "Step 1," not in proc.stdout and "Traceback" not in proc.stderr


@pytest.mark.parametrize("change,differ", [
    (["--bottom_mlp", "16,4", "--embedding_vec_size", "4"], "--embedding_vec_size 8 -> 4; --bottom_mlp 16,8 -> 16,4"),
    (["--interaction_type", "dcn", "--dcn_num_layers", "1", "--dcn_low_rank_dim", "4"], "--interaction_type dot -> dcn"),
])
def test_resume_with_another_model_is_one_line_naming_the_flags(tmp_path, change, differ):
    data = write_tiny_dataset(str(tmp_path / "data"))
    out = tmp_path / "run"
    launch(tiny_run_args(data, "--train_batches", "2", "--model_save_dir", str(out)))
    proc = subprocess.run([sys.executable, "dlrm_train_eval.py",
                           *tiny_run_args(data, "--train_batches", "4", "--model_save_dir", str(out), "--resume",
                                          *change)], cwd=REPO, capture_output=True, text=True, timeout=120)
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert errors[0].startswith(f"error: checkpoint {newest(out, 'step_2')} holds another model than these flags "
                                f"build ({differ}")
