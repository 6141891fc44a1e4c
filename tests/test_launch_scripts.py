"""The launch scripts in scripts/ (training, preprocessing, try_multinode_netns.sh) and common.sh's
launch_dlrm, run as real bash subprocesses.

Fast (a few seconds): nothing here trains or starts Spark. The scripts are run with PY set to this
interpreter (so scripts/setup_env.sh is not needed) and, where a command line is checked, DRY_RUN=1
(print the command instead of running it) and a fake `nvidia-smi` on PATH (conftest's fake_gpus).
"""
import glob
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO, SCRIPTS, assert_one_line_error, run
from dlrm.config import get_parser

GPU_SCRIPTS = ["train_1gpu.sh", "train_8gpu_criteo1t.sh", "train_8gpu_dlrmv2.sh", "train_multinode.sh"]
PREPROCESS_SCRIPTS = ["preprocess_local.sh", "preprocess_spark_submit.sh"]
LAUNCH_SCRIPTS = GPU_SCRIPTS + PREPROCESS_SCRIPTS
# Environment each script needs to get past its variable checks to the path checks.
SCRIPT_ENV = {
    "train_multinode.sh": {"NNODES": "2", "NODE_RANK": "0", "MASTER_ADDR": "10.0.0.1"},
    "preprocess_spark_submit.sh": {"SPARK_MASTER": "spark://head:7077"},
}


@pytest.fixture
def dirs(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    return data, tmp_path / "persistent"


# ----------------------------------------------------------------------------- every script
@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(SCRIPTS, "*.sh"))), ids=os.path.basename)
def test_bash_syntax(path):
    proc = subprocess.run(["bash", "-n", path], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("script", LAUNCH_SCRIPTS + ["quickstart.sh", "gpu_check.sh", "try_multinode_netns.sh"])
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help(script, flag):
    proc = run(script, flag)
    assert proc.returncode == 0, proc.stderr
    assert "usage:" in proc.stdout and script in proc.stdout, proc.stdout
    assert proc.stderr == ""
    assert not proc.stdout.startswith("!"), "the shebang leaked into the usage text"


@pytest.mark.parametrize("script", LAUNCH_SCRIPTS)
def test_missing_data_path(script, tmp_path):
    missing = tmp_path / "no_such_dir"
    proc = run(script, missing, tmp_path / "second", env=SCRIPT_ENV.get(script))
    line = assert_one_line_error(proc, str(missing), "does not exist")
    assert script in line


@pytest.mark.parametrize("script", LAUNCH_SCRIPTS)
def test_missing_arguments(script):
    proc = run(script, env=SCRIPT_ENV.get(script))
    assert_one_line_error(proc, "expected 2 path argument(s), got 0")
    proc = run(script, "/tmp", env=SCRIPT_ENV.get(script))
    assert_one_line_error(proc, "got 1")


# ----------------------------------------------------------------------------- GPU checks
@pytest.mark.parametrize("script", GPU_SCRIPTS)
def test_gpu_scripts_fail_without_gpus_here(script, dirs):
    if shutil.which("nvidia-smi"):
        pytest.skip("this machine has nvidia-smi; the fake-GPU tests below cover the check")
    data, persistent = dirs
    proc = run(script, data, persistent, env=SCRIPT_ENV.get(script))
    assert_one_line_error(proc, "GPU(s) but found 0", "nvidia-smi not found")
    assert not persistent.exists(), "nothing should be created before the checks pass"


@pytest.mark.parametrize("script,want", [("train_1gpu.sh", 1), ("train_8gpu_criteo1t.sh", 8),
                                         ("train_8gpu_dlrmv2.sh", 8), ("train_multinode.sh", 8)])
def test_gpu_count_mismatch(script, want, dirs, fake_gpus):
    data, persistent = dirs
    have = want - 1
    proc = run(script, data, persistent, env={**SCRIPT_ENV.get(script, {}), "FAKE_GPUS": str(have)},
               path_prefix=fake_gpus)
    assert_one_line_error(proc, f"asked for {want} GPU(s) but found {have}", f"nvidia-smi -L lists {have}")


def test_cuda_visible_devices_limits_the_count(dirs, fake_gpus):
    data, persistent = dirs
    proc = run("train_8gpu_criteo1t.sh", data, persistent, env={"FAKE_GPUS": "8", "CUDA_VISIBLE_DEVICES": "0,1"},
               path_prefix=fake_gpus)
    assert_one_line_error(proc, "asked for 8 GPU(s) but found 2", "CUDA_VISIBLE_DEVICES='0,1'")


def test_multinode_environment_checks(dirs, fake_gpus):
    data, persistent = dirs
    proc = run("train_multinode.sh", data, persistent, env={"NNODES": "2", "MASTER_ADDR": "h"})
    assert_one_line_error(proc, "NODE_RANK is required")
    proc = run("train_multinode.sh", data, persistent, env={"NNODES": "2", "NODE_RANK": "2", "MASTER_ADDR": "h"})
    assert_one_line_error(proc, "NODE_RANK 2 must be < NNODES 2")
    proc = run("train_multinode.sh", data, persistent, env={"NNODES": "x", "NODE_RANK": "0", "MASTER_ADDR": "h"})
    assert_one_line_error(proc, "NNODES must be")
    proc = run("train_multinode.sh", data, persistent,
               env={"NNODES": "2", "NODE_RANK": "1", "MASTER_ADDR": "h", "GPUS_PER_NODE": "4", "FAKE_GPUS": "4",
                    "DRY_RUN": "1"}, path_prefix=fake_gpus)
    assert proc.returncode == 0, proc.stderr
    assert (f"-m oneflow.distributed.launch --nproc_per_node 4 --nnodes 2 --node_rank 1 --master_addr h "
            f"--master_port 29500 {REPO}/dlrm_train_eval.py --data_dir {data} --persistent_path {persistent}"
            in proc.stdout), proc.stdout


# ----------------------------------------------------------------------------- command lines (DRY_RUN)
def test_8gpu_command_line(dirs, fake_gpus, tmp_path):
    data, persistent = dirs
    proc = run("train_8gpu_criteo1t.sh", data, persistent, "--train_batches", "100",
               env={"FAKE_GPUS": "8", "DRY_RUN": "1", "AMP": "1", "MODEL_SAVE_DIR": str(tmp_path / "ckpt")},
               path_prefix=fake_gpus)
    assert proc.returncode == 0, proc.stderr
    cmd = proc.stdout.replace("\\,", ",")
    assert "-m oneflow.distributed.launch --nproc_per_node 8 --nnodes 1 --node_rank 0" in cmd
    for flag in ["--train_batch_size 55296", "--learning_rate 24", "--warmup_batches 2750", "--decay_start 49315",
                 "--decay_batches 27772", "--train_batches 75000", "--eval_batches 1612", "--eval_interval 10000",
                 "--embedding_vec_size 128", "--bottom_mlp 512,256,128", "--top_mlp 1024,1024,512,256",
                 f"--persistent_path {persistent}", "--amp", f"--model_save_dir {tmp_path / 'ckpt'}"]:
        assert flag in cmd, flag
    assert cmd.rstrip().endswith("--train_batches 100"), "extra arguments must come last (they override)"
    assert persistent.is_dir()


def test_dlrmv2_command_line(dirs, fake_gpus):
    """MLPerf DLRMv2's settings, and a command line dlrm_train_eval.py's own parser accepts."""
    data, persistent = dirs
    proc = run("train_8gpu_dlrmv2.sh", data, persistent, "--train_batches", "100",
               env={"FAKE_GPUS": "8", "DRY_RUN": "1", "AMP": "1"}, path_prefix=fake_gpus)
    assert proc.returncode == 0, proc.stderr
    cmd = proc.stdout.replace("\\,", ",").split()
    args = get_parser().parse_args(cmd[cmd.index(f"{REPO}/dlrm_train_eval.py") + 1:])
    assert (args.bottom_mlp, args.top_mlp, args.embedding_vec_size) == ([512, 256, 128], [1024, 1024, 512, 256], 128)
    assert (args.interaction_type, args.dcn_num_layers, args.dcn_low_rank_dim) == ("dcn", 3, 512)
    assert (args.optimizer, args.learning_rate, args.train_batch_size) == ("adagrad", 0.005, 65536)
    assert (args.warmup_batches, args.decay_start) == (0, 64014)  # flat: no warmup, no decay in the epoch
    assert (args.eval_split, args.eval_interval, args.amp) == ("val", 3200, True)
    assert args.train_batches == 100  # extra arguments come last and override
    assert str(persistent) == args.persistent_path and args.data_dir == str(data)


def test_1gpu_command_line(dirs, fake_gpus):
    data, persistent = dirs
    proc = run("train_1gpu.sh", data, persistent, "--amp", env={"FAKE_GPUS": "2", "DRY_RUN": "1"},
               path_prefix=fake_gpus)
    assert proc.returncode == 0, proc.stderr
    assert "--nproc_per_node 1 " in proc.stdout and proc.stdout.rstrip().endswith("--amp")
    assert "using the first 1" in proc.stderr  # 2 visible, 1 used: a note, not an error


def test_preprocess_scripts(tmp_path):
    if not shutil.which("java"):
        pytest.skip("no java here")
    raw, out = tmp_path / "raw", tmp_path / "out"
    raw.mkdir()
    out.mkdir()
    (out / "old_file").write_text("x")
    proc = run("preprocess_local.sh", raw, out)
    assert_one_line_error(proc, f"OUTPUT_DIR {out} exists and is not empty", "--overwrite")
    proc = run("preprocess_local.sh", raw, out, "--overwrite", "--train_files", "8",
               env={"DRY_RUN": "1", "DRIVER_MEMORY_GB": "6", "SPARK_TMP_DIR": str(tmp_path / "spark_tmp")})
    assert proc.returncode == 0, proc.stderr
    assert (f"tools/criteo1t_parquet.py --input_dir {raw} --output_dir {out} --spark_master local\\[\\*\\] "
            f"--spark_driver_memory_gb 6" in proc.stdout), proc.stdout
    assert f"--spark_tmp_dir {tmp_path / 'spark_tmp'}" in proc.stdout
    assert proc.stdout.rstrip().endswith("--overwrite --train_files 8")

    proc = run("preprocess_spark_submit.sh", raw, tmp_path / "new")
    assert_one_line_error(proc, "SPARK_MASTER is required")
    proc = run("preprocess_spark_submit.sh", raw, tmp_path / "new", "--mod_idx", "0",
               env={"SPARK_MASTER": "spark://head:7077", "DRY_RUN": "1", "EXECUTOR_MEMORY": "64g",
                    "EXECUTOR_CORES": "8", "SPARK_SUBMIT": "/bin/echo"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("/bin/echo --master spark://head:7077 --deploy-mode client"), proc.stdout
    assert "--executor-memory 64g --executor-cores 8" in proc.stdout
    assert f"tools/criteo1t_parquet.py --input_dir {raw} --output_dir {tmp_path / 'new'}" in proc.stdout
    proc = run("preprocess_spark_submit.sh", raw, tmp_path / "new",
               env={"SPARK_MASTER": "yarn", "SPARK_SUBMIT": str(tmp_path / "nope")})
    assert_one_line_error(proc, "spark-submit")


# ----------------------------------------------------------------------------- launch_dlrm (common.sh)
def launch_dlrm_dry_run(*args, env=None):
    """DRY_RUN=1 launch_dlrm ARGS in a shell that sources scripts/common.sh: the command it would run."""
    e = {k: v for k, v in os.environ.items() if k not in ("AMP", "MODEL_SAVE_DIR")}
    e.update(PY=sys.executable, DRY_RUN="1", **(env or {}))
    proc = subprocess.run(["bash", "-c", 'source "$0"; launch_dlrm "$@"', os.path.join(SCRIPTS, "common.sh"),
                           *map(str, args)], env=e, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_launch_dlrm_without_persistent_path(tmp_path):
    data = tmp_path / "data"
    cmd = launch_dlrm_dry_run(data, "", 2, 1, 0, "127.0.0.1", 1234, "--train_batches", 10)
    assert cmd.endswith(f"-m oneflow.distributed.launch --nproc_per_node 2 --nnodes 1 --node_rank 0 "
                        f"--master_addr 127.0.0.1 --master_port 1234 {REPO}/dlrm_train_eval.py --data_dir {data} "
                        f"--train_batches 10"), cmd
    cmd = launch_dlrm_dry_run(data, tmp_path / "p", 1, 1, 0, "h", 1, "--x",
                              env={"AMP": "1", "MODEL_SAVE_DIR": str(tmp_path / "m")})
    assert cmd.endswith(f"--data_dir {data} --persistent_path {tmp_path / 'p'} --amp "
                        f"--model_save_dir {tmp_path / 'm'} --x"), cmd


# ----------------------------------------------------------------------------- try_multinode_netns.sh
def test_try_multinode_netns_dry_run(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    env = {"DRY_RUN": "1", "NETNS_NAME": "tst", "NETNS_SUBNET": "10.9.8", "MASTER_PORT": "1234"}
    proc = run("try_multinode_netns.sh", "run", data, tmp_path / "w", "--train_batches", "10", env=env)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.replace("\\,", ",").splitlines()
    assert "ip link add tstv0 netns tst0 type veth peer name tstv1 netns tst1" in lines
    for k in (0, 1):
        assert f"ip -n tst{k} addr add 10.9.8.{k + 1}/24 dev tstv{k}" in lines
        assert f"ip -n tst{k} link set lo up" in lines
    launches = [ln for ln in lines if "dlrm_train_eval.py" in ln]
    assert len(launches) == 2 and not (tmp_path / "w").exists()
    for k, cmd in enumerate(launches):
        assert cmd.startswith("env -u MASTER_ADDR -u MASTER_PORT ") and f" ip netns exec tst{k} " in cmd
        assert (f"--nproc_per_node 1 --nnodes 2 --node_rank {k} --master_addr 10.9.8.1 --master_port 1234 "
                f"{REPO}/dlrm_train_eval.py --data_dir {data} --model_save_dir checkpoints --train_batches 10"
                in cmd), cmd
    proc = run("try_multinode_netns.sh", "exec", "1", "true", env=env)
    assert proc.stdout.strip() == "env -u MASTER_ADDR -u MASTER_PORT -u RANK -u LOCAL_RANK -u WORLD_SIZE " \
                                  "-u NODE_RANK -u NNODES ip netns exec tst1 true"
    assert run("try_multinode_netns.sh", "down", env=env).stdout.split("\n")[:2] == ["ip netns del tst0",
                                                                                    "ip netns del tst1"]


def test_try_multinode_netns_errors(tmp_path):
    assert_one_line_error(run("try_multinode_netns.sh"), "expected a command: run, up, down or exec")
    assert_one_line_error(run("try_multinode_netns.sh", "up", env={"NETNS_NAME": "much_too_long_name"}),
                          "NETNS_NAME 'much_too_long_name' must be 1-12")
    assert_one_line_error(run("try_multinode_netns.sh", "up", env={"NETNS_SUBNET": "10.1"}), "NETNS_SUBNET")
    assert_one_line_error(run("try_multinode_netns.sh", "exec", "2", "true"), "node must be 0 or 1")
    assert_one_line_error(run("try_multinode_netns.sh", "run", tmp_path / "nope", tmp_path / "w"),
                          "DATA_DIR", "does not exist")


# ----------------------------------------------------------------------------- dlrm.launch.wait_for_rank0
def test_a_launched_rank_waits_until_rank0_listens():
    import socket
    import threading
    import time

    from dlrm.launch import free_port, wait_for_rank0

    port = free_port()
    env = {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    server = socket.socket()

    def listen_later():
        time.sleep(0.5)
        server.bind(("127.0.0.1", port))
        server.listen()

    threading.Thread(target=listen_later).start()
    t = time.monotonic()
    wait_for_rank0(env, timeout=30)
    waited = time.monotonic() - t
    server.close()
    assert 0.5 <= waited < 5
    t = time.monotonic()
    wait_for_rank0(dict(env, RANK="0"), timeout=30)  # rank 0 itself, and a plain run (RANK -1 or unset)
    wait_for_rank0(dict(env, RANK="-1"), timeout=30)
    wait_for_rank0({}, timeout=30)
    wait_for_rank0({k: v for k, v in env.items() if k != "WORLD_SIZE"}, timeout=30)  # OneFlow runs it alone
    wait_for_rank0(env, timeout=0.3)  # nobody listens: gives up after the timeout
    assert time.monotonic() - t < 2


@pytest.mark.parametrize("env,args,want", [
    ("", [], ""), ("dcn", [], "dcn"), ("", ["--interaction_type", "dcn"], "dcn"),
    ("", ["--seed", "3", "--interaction_type=dcn"], "dcn"), ("dcn", ["--interaction_type", "dcn"], "dcn"),
    ("dot", ["--interaction_type", "dcn"], "error"),
])
def test_a_quickstart_setting_is_one_thing_as_flag_or_variable(env, args, want):
    """quickstart.sh --interaction_type dcn gets the recipe's cross layers, as INTERACTION_TYPE=dcn does
    (the flag alone used to get TorchRec's 3 x 512)."""
    proc = subprocess.run(["bash", "-c", 'source scripts/common.sh; one_setting INTERACTION_TYPE "$@"', "-", env,
                           "--interaction_type", *args], cwd=REPO, capture_output=True, text=True)
    if want == "error":
        assert proc.returncode == 2 and "INTERACTION_TYPE=dot and --interaction_type dcn disagree: give the setting " \
            "once" in proc.stderr
    else:
        assert proc.returncode == 0 and proc.stdout == want, proc.stderr


@pytest.mark.slow
def test_setup_without_python310_tries_uv_and_ends_in_one_line(tmp_path):
    """A machine with some python3 but no 3.10 (and no pyenv): the setup installs uv from PyPI and asks
    it for a CPython 3.10. Where that download cannot happen (this workplace: only package registries
    are reached) it ends in one line naming why, and makes no venv a later run could trust."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for folder in ("/usr/bin", "/bin"):
        for name in os.listdir(folder):
            if not name.startswith("python3.10") and not (bin_dir / name).exists():
                (bin_dir / name).symlink_to(os.path.join(folder, name))
    if not (bin_dir / "python3").exists():
        pytest.skip("no system python3 to start from")
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path / "home"), "DLRM_VENV": str(tmp_path / "venv"),
           "DLRM_UV_DIR": str(tmp_path / "uv")}
    proc = subprocess.run(["bash", os.path.join(SCRIPTS, "setup_env.sh"), "--which-python"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode == 0:  # a machine that reaches uv's downloads: a real CPython 3.10
        out = subprocess.run([proc.stdout.strip(), "--version"], capture_output=True, text=True)
        assert out.stdout.startswith("Python 3.10."), proc.stderr
        return
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert proc.returncode == 1 and len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert errors[0].startswith("error: Python 3.10 not found (oneflow 0.9.0 has wheels for CPython 3.7-3.10 only) "
                                "and ")
    assert ("'uv python install 3.10' could not get one (cause: " in errors[0]
            or "installing uv from PyPI failed" in errors[0]), errors[0]
    assert errors[0].endswith("or set PYTHON=/path/to/python3.10")
    assert not (tmp_path / "venv").exists()
