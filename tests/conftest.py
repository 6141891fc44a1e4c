"""Shared test helpers and fixtures.

Two speeds: `bash scripts/run_tests.sh -m "not slow"` is the fast loop (unit tests, seconds);
tests marked `slow` run real Spark jobs and real training subprocesses (minutes).
Everything imports the installed `dlrm` package (scripts/setup_env.sh installs it editable).
"""
import os
import shutil
import subprocess
import sys

import pytest

from dlrm.metrics import read_metrics  # noqa: F401  (shared with the tests)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KAGGLE_HEAD = os.path.join(REPO, "..", "shared", "criteo", "kaggle_train_head10k.tsv")
TRAIN_SCRIPT = os.path.join(REPO, "dlrm_train_eval.py")
PREPROCESS_TOOL = os.path.join(REPO, "tools", "criteo1t_parquet.py")
SYNTH_TOOL = os.path.join(REPO, "tools", "make_synthetic_criteo.py")
PLOT_TOOL = os.path.join(REPO, "tools", "plot_metrics.py")
# Local Spark settings every preprocessing test uses (2 cores here, small driver).
SPARK = ["--spark_master", "local[2]", "--spark_driver_memory_gb", "2", "--shuffle_partitions", "4"]

requires_java = pytest.mark.skipif(shutil.which("java") is None and not os.environ.get("JAVA_HOME"),
                                   reason="Spark needs Java (no java on PATH and no JAVA_HOME)")


def run_tool(*args, timeout=600, check=True, env=None):
    """Run a repo script with this interpreter; with check, fail the test with its output if it fails."""
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)
    if check:
        assert proc.returncode == 0, \
            f"{args[0]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def error_lines(text):
    return [ln for ln in text.splitlines() if ln.startswith("error:")]


def preprocess(input_dir, output_dir, *extra):
    return run_tool(PREPROCESS_TOOL, "--input_dir", input_dir, "--output_dir", output_dir,
                    "--spark_master", "local[2]", "--spark_driver_memory_gb", "2", "--train_files", "8",
                    "--eval_files", "2", *extra)


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
