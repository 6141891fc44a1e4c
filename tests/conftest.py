"""Shared test helpers and fixtures.

Two speeds: `bash scripts/run_tests.sh -m "not slow"` is the fast loop (unit tests, seconds);
tests marked `slow` run real Spark jobs and real training subprocesses (minutes).
Everything imports the installed `dlrm` package (scripts/setup_env.sh installs it editable).
"""
import contextlib
import json
import os
import stat
import subprocess
import sys

import pytest

import dlrm.threads
from dlrm.launch import PREPROCESS_TOOL, run_preprocess
from dlrm.metrics import read_metrics  # noqa: F401  (shared with the tests)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KAGGLE_HEAD = os.path.join(REPO, "..", "shared", "criteo", "kaggle_train_head10k.tsv")
TRAIN_SCRIPT = os.path.join(REPO, "dlrm_train_eval.py")
SYNTH_TOOL = os.path.join(REPO, "tools", "make_synthetic_criteo.py")
PLOT_TOOL = os.path.join(REPO, "tools", "plot_metrics.py")
SCRIPTS = os.path.join(REPO, "scripts")
# Local Spark settings every preprocessing test uses (2 cores here, small driver).
SPARK = ["--spark_master", "local[2]", "--spark_driver_memory_gb", "2", "--shuffle_partitions", "4"]


# Tests run CPU graphs in this process too: OneFlow's job launcher goes ahead at its first graph
# (SCHED_FIFO where permitted: without it OneFlow 0.9.0's launch race can crash this process in short
# graph steps, see dlrm.threads), but this process's other threads keep their policies, which the
# training subprocesses it starts would inherit.
dlrm.threads.LEAD_OTHERS = False


def _no_java():
    from dlrm.java import choose_java
    try:
        choose_java()
    except ValueError:
        return True
    return False


# Spark runs on the machine's Java 17+ or the environment's JDK (dlrm.java); skip only without either
requires_java = pytest.mark.skipif(_no_java(), reason="Spark needs Java 17+ (none here, and no environment JDK)")


def checked(proc, name, check):
    """proc; with check, fail the test with the output of `name` if it exited non-zero."""
    if check:
        assert proc.returncode == 0, \
            f"{name} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def run_tool(*args, timeout=600, check=True, env=None):
    """Run a repo script with this interpreter; with check, fail the test with its output if it fails."""
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)
    return checked(proc, args[0], check)


def error_lines(text):
    return [ln for ln in text.splitlines() if ln.startswith("error:")]


def preprocess_tool(args, timeout=600, env=None, check=False):
    """Run tools/criteo1t_parquet.py with args (dlrm.launch.run_preprocess), output captured as text;
    env: variables added to this process's environment; check: as run_tool's."""
    proc = run_preprocess(args, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, **env) if env else None)
    return checked(proc, PREPROCESS_TOOL, check)


def preprocess(input_dir, output_dir, *extra):
    """The session datasets' preprocessing: local[2] Spark, 8 train and 2 eval files; it must succeed."""
    return preprocess_tool(["--input_dir", input_dir, "--output_dir", output_dir, "--spark_master", "local[2]",
                            "--spark_driver_memory_gb", "2", "--train_files", "8", "--eval_files", "2", *extra],
                           check=True)


def write_tiny_dataset(root, rows_per_file=(60, 60, 60, 60), rows_per_group=20, eval_rows=100, key_type="int64",
                       table_sizes=(7,) * 26, seed=0):
    """A real parquet dataset in the tool's layout, written with pyarrow in milliseconds (no Spark).

    Row r of the train split has label r % 2, I1 = r (its global row number, to trace where a
    batch came from) and ids r % table_size + column offset; dataset_info.json records table_sizes."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from dlrm import schema

    def table(first, n):
        r = np.arange(first, first + n)
        cols = {schema.LABEL: (r % 2).astype(np.float32)}
        cols.update({c: (r if j == 0 else np.full(n, j)).astype(np.float32) for j, c in enumerate(schema.DENSE_COLUMNS)})
        offset = 0
        for j, c in enumerate(schema.SPARSE_COLUMNS):
            cols[c] = (r % table_sizes[j] + offset).astype(key_type)
            offset += table_sizes[j]
        return pa.table(cols)

    first = 0
    for split, sizes in (("train", rows_per_file), ("test", (eval_rows,)), ("val", (eval_rows,))):
        os.makedirs(os.path.join(root, split))
        for i, n in enumerate(sizes):
            pq.write_table(table(first, n), os.path.join(root, split, f"part-{i:05d}.parquet"),
                           row_group_size=rows_per_group)
            first += n
    schema.write_dataset_info(root, {"table_size_array": list(table_sizes), "key_type": key_type})
    return root


@pytest.fixture
def tiny_dataset(tmp_path):
    return write_tiny_dataset(str(tmp_path / "data"))


@pytest.fixture(scope="session")
def synthetic_parquet(tmp_path_factory):
    """3 synthetic days x 30000 rows through the real Spark tool: train 60000, test 15000, val 15000."""
    root = tmp_path_factory.mktemp("synthetic")
    run_tool(SYNTH_TOOL, "--output_dir", root / "raw", "--days", "3", "--rows_per_day", "30000", "--seed", "7")
    preprocess(root / "raw", root / "parquet", "--num_test_examples", "15000")
    return root


@pytest.fixture(scope="session")
def kaggle_head_parquet(tmp_path_factory):
    """The 10,000 real Kaggle rows through the real Spark tool (kaggle layout)."""
    if not os.path.exists(KAGGLE_HEAD):
        pytest.skip(f"real Criteo rows not found at {KAGGLE_HEAD} (shared/criteo is not in this checkout)")
    root = tmp_path_factory.mktemp("kaggle")
    (root / "raw").mkdir()
    os.symlink(os.path.abspath(KAGGLE_HEAD), root / "raw" / "train.txt")
    preprocess(root / "raw", root / "parquet")
    return root / "parquet"


# ----------------------------------------------------------------------------- scripts/*.sh and their metrics
def run(script, *args, env=None, path_prefix=None, timeout=60):
    # The scripts' own knobs are cleared; MASTER_PORT too, which an in-process oneflow import (other
    # test files) leaves in os.environ.
    e = {k: v for k, v in os.environ.items() if k not in ("NNODES", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT",
                                                          "SPARK_MASTER", "AMP", "MODEL_SAVE_DIR", "DRY_RUN",
                                                          "CUDA_VISIBLE_DEVICES", "DATA_DIR", "WORK_DIR", "STEPS",
                                                          "NETNS_NAME", "NETNS_SUBNET")}
    e["PY"] = sys.executable
    e.update(env or {})
    if path_prefix:
        e["PATH"] = f"{path_prefix}{os.pathsep}{e['PATH']}"
    return subprocess.run(["bash", os.path.join(SCRIPTS, script), *map(str, args)], cwd=REPO, env=e,
                          capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc, *needles):
    assert proc.returncode != 0, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


@pytest.fixture
def fake_gpus(tmp_path):
    """A directory with an `nvidia-smi` that lists $FAKE_GPUS GPUs (put it first on PATH)."""
    d = tmp_path / "fakebin"
    d.mkdir()
    smi = d / "nvidia-smi"
    smi.write_text('#!/bin/sh\n[ "$1" = "-L" ] || exit 1\n'
                   'i=0; while [ $i -lt "${FAKE_GPUS:-0}" ]; do\n'
                   '  echo "GPU $i: NVIDIA A100-SXM4-80GB (UUID: GPU-0000000$i)"; i=$((i+1)); done\n')
    smi.chmod(smi.stat().st_mode | stat.S_IEXEC)
    return str(d)



def write_metrics(path, resumed=False):
    recs = []
    for step in range(50, 1001, 50):
        recs.append({"kind": "train", "step": step, "loss": 0.6 - step / 10000, "mean_loss": 0.61 - step / 10000,
                     "lr": 1.0 if step <= 600 else (1 - (step - 600) / 400) ** 2, "latency_ms": 50.0,
                     "throughput": 1000.0 if step == 50 else 5000.0 + step, "elapsed_s": step / 20,
                     "host_memory_mib": 500.0})
        if step % 250 == 0 or step == 1000:
            auc = {250: 0.70, 500: 0.74, 750: 0.76, 1000: 0.75}[step]
            recs.append({"kind": "eval", "step": step, "auc": auc, "eval_time_s": 2.0, "eval_samples": 20000,
                         "split": "test"})
    with open(path, "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in recs)
    return recs


@contextlib.contextmanager
def tmpfs(path, size, read_only=False):
    """A real tmpfs of `size` (mount's syntax: 1m, 128k) mounted on the new directory `path`, remounted
    read-only if asked (writes then fail with [Errno 30], root included), unmounted afterwards; the
    test is skipped where mounting is not allowed (not root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    os.makedirs(path)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True,
                       text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(path)], check=True)
        yield str(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
