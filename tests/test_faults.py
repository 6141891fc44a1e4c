"""Faults and bad inputs of training runs: each ends in one line, nothing hangs, nothing is lost
(docs/faults.md lists what each gets)."""
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO, read_metrics, write_tiny_dataset
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
