import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
KAGGLE_HEAD = os.path.join(REPO, "..", "shared", "criteo", "kaggle_train_head10k.tsv")


def run_tool(*args, timeout=600):
    """Run a repo script with this interpreter; fail the test with its output if it fails."""
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args[0]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def preprocess(input_dir, output_dir, *extra):
    return run_tool("tools/criteo1t_parquet.py", "--input_dir", str(input_dir), "--output_dir", str(output_dir),
                    "--spark_master", "local[2]", "--spark_driver_memory_gb", "2", "--train_files", "8",
                    "--eval_files", "2", *extra)


@pytest.fixture(scope="session")
def synthetic_parquet(tmp_path_factory):
    """3 synthetic days x 30000 rows through the real Spark tool: train 60000, test 15000, val 15000."""
    root = tmp_path_factory.mktemp("synthetic")
    run_tool("tools/make_synthetic_criteo.py", "--output_dir", str(root / "raw"), "--days", "3",
             "--rows_per_day", "30000", "--seed", "7")
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
