"""The environment's set-up pieces: on a machine without GPUs OneFlow runs on stand-ins for the CUDA
libraries it links (scripts/oneflow_preload.py, built by scripts/setup_env.sh), 1.3 GB less."""
import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig

import pytest

from conftest import REPO, SCRIPTS, read_metrics, write_tiny_dataset

PRELOAD = os.path.join(SCRIPTS, "oneflow_preload.py")
SITE = sysconfig.get_paths()["purelib"]


def load_preload():
    spec = importlib.util.spec_from_file_location("oneflow_preload_under_test", PRELOAD)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# A training run in an interpreter without site's .pth hook (-S), preloading what `sites`/`stubs` name
RUN = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("p", {preload!r})
p = importlib.util.module_from_spec(spec); spec.loader.exec_module(p)
flags = p.cpu_flags(); p.tune_openblas(flags); p.choose_blas(flags)
p.preload_cuda_libs(sites={sites!r}, stub_dir={stubs!r})
import dlrm_train_eval as train
code = train.main({argv!r})
maps = open("/proc/self/maps").read()
print("code", code, "real", "nvidia/cudnn" in maps, "stand-ins", {stubs!r} in maps)
"""


def train_with(libs, stubs, data, out):
    argv = ["--data_dir", data, "--bottom_mlp", "16,8", "--embedding_vec_size", "8", "--top_mlp", "16",
            "--train_batch_size", "20", "--eval_batch_size", "20", "--train_batches", "12", "--eval_batches", "2",
            "--loss_print_interval", "1", "--optimizer", "adagrad", "--learning_rate", "0.05",
            "--model_save_dir", out]
    code = RUN.format(preload=PRELOAD, sites=[SITE] if libs == "real" else [], stubs=stubs, argv=argv)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([SITE, REPO]))
    proc = subprocess.run([sys.executable, "-S", "-c", code], cwd=REPO, capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout.splitlines()[-1], [(m["kind"], m.get("loss"), m.get("auc")) for m in
                                          read_metrics(os.path.join(out, "metrics.jsonl"))]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler to build the stand-ins")
@pytest.mark.skipif(not os.path.isdir(os.path.join(SITE, "nvidia")), reason="no real CUDA libraries to compare with")
def test_training_on_the_cuda_stand_ins_equals_training_on_the_real_libraries(tmp_path):
    stubs = str(tmp_path / "stubs")
    load_preload().make_cuda_stubs(stubs, os.path.join(SCRIPTS, "oneflow_cuda_symbols.txt"))
    assert sum(os.path.getsize(os.path.join(stubs, n)) for n in os.listdir(stubs)) < 1 << 20  # vs 1.3 GB
    data = write_tiny_dataset(str(tmp_path / "data"))
    real_line, real = train_with("real", stubs, data, str(tmp_path / "real"))
    stub_line, stand_in = train_with("stubs", stubs, data, str(tmp_path / "stubs_run"))
    assert real_line == "code 0 real True stand-ins False"
    assert stub_line == "code 0 real False stand-ins True"  # the loader took the stand-ins, never the wheels
    assert len(real) == 13 and stand_in == real  # 12 losses and the AUC, to the bit


def test_the_symbols_file_is_what_the_installed_oneflow_imports():
    """The stand-ins define what scripts/oneflow_cuda_symbols.txt lists: every CUDA function the pinned
    oneflow's binaries import (read with readelf)."""
    if shutil.which("readelf") is None:
        pytest.skip("no readelf")
    preload = load_preload()
    listed = preload.read_symbols(os.path.join(SCRIPTS, "oneflow_cuda_symbols.txt"))
    imported = preload.imported_cuda_symbols(SITE)
    assert sorted(f"{n}@{lib}" for lib, names in listed.items() for n in names) == imported
    assert len(imported) == 90


def test_stand_ins_need_a_working_compiler(tmp_path):
    with pytest.raises((OSError, subprocess.CalledProcessError)):
        load_preload().make_cuda_stubs(str(tmp_path / "stubs"), os.path.join(SCRIPTS, "oneflow_cuda_symbols.txt"),
                                       cc=str(tmp_path / "no-such-cc"))
