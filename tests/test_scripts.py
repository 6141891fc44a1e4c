"""The launch scripts in scripts/, tools/plot_metrics.py (dlrm/plotting.py) and the Python steps of
scripts/quickstart.sh (dlrm/quickstart.py), run as real subprocesses or in-process on real files.

Fast (a few seconds): nothing here trains or starts Spark, except the one test marked slow (a
rehearsal of scripts/gpu_check.sh on CPU). The scripts are run with PY set to
this interpreter (so scripts/setup_env.sh is not needed) and, where a command line is checked,
DRY_RUN=1 (print the command instead of running it) and a fake `nvidia-smi` on PATH.
"""
import glob
import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

from conftest import PLOT_TOOL, REPO, error_lines, run_tool, write_tiny_dataset
from dlrm import gpu_report, metrics, quickstart, schema, synthetic

SCRIPTS = os.path.join(REPO, "scripts")
GPU_SCRIPTS = ["train_1gpu.sh", "train_8gpu_criteo1t.sh", "train_8gpu_dlrmv2.sh", "train_multinode.sh"]
PREPROCESS_SCRIPTS = ["preprocess_local.sh", "preprocess_spark_submit.sh"]
LAUNCH_SCRIPTS = GPU_SCRIPTS + PREPROCESS_SCRIPTS
# Environment each script needs to get past its variable checks to the path checks.
SCRIPT_ENV = {
    "train_multinode.sh": {"NNODES": "2", "NODE_RANK": "0", "MASTER_ADDR": "10.0.0.1"},
    "preprocess_spark_submit.sh": {"SPARK_MASTER": "spark://head:7077"},
}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


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
    from dlrm.config import get_parser
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


# ----------------------------------------------------------------------------- plot_metrics.py
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


# ----------------------------------------------------------------------------- gpu_check.sh
def gpu_check_dry_run(tmp_path, fake_gpus, gpus, env=None):
    """gpu_check.sh's DRY_RUN output with `gpus` fake GPUs: (data commands, training commands)."""
    proc = run("gpu_check.sh", "--seed", "5", path_prefix=fake_gpus,
               env={"FAKE_GPUS": str(gpus), "DRY_RUN": "1", "WORK_DIR": str(tmp_path / "gc"), **(env or {})})
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.replace("\\,", ",").splitlines()
    train = [ln for ln in lines if "dlrm_train_eval.py" in ln]
    assert len(lines) == len(train) + (0 if env and "DATA_DIR" in env else 2), lines
    assert not (tmp_path / "gc").exists(), "a dry run creates nothing"
    return [ln for ln in lines if ln not in train], train


@pytest.mark.parametrize("gpus", [1, 2])
def test_gpu_check_command_lines(tmp_path, fake_gpus, gpus):
    data_cmds, train = gpu_check_dry_run(tmp_path, fake_gpus, gpus)
    work = tmp_path / "gc"
    assert data_cmds[0].split()[1:3] == [f"{REPO}/tools/make_synthetic_criteo.py", "--output_dir"]
    assert f"tools/criteo1t_parquet.py --input_dir {work}/raw --output_dir {work}/data" in data_cmds[1]
    checks = ["device_mem", "cached_host_mem", "cached_ssd", "amp_static", "amp_dynamic", "kill_resume",
              "kill_resume"] + (["2gpu"] if gpus == 2 else [])
    assert len(train) == len(checks), train
    for check, cmd in zip(checks, train):
        assert f"--data_dir {work}/data --persistent_path {work}/{check}/persistent " \
               f"--model_save_dir {work}/{check}/ckpt " in cmd, cmd
        assert cmd.endswith("--seed 5"), "extra arguments go last"
        assert "--train_batches 200 " in cmd and "--train_batch_size 2048 " in cmd
    store = [cmd.split("--store_type ")[1].split()[0] for cmd in train]
    assert store == ["device_mem", "cached_host_mem", "cached_ssd"] + ["device_mem"] * (len(train) - 3)
    assert [("--amp" in c, "--loss_scale_policy dynamic" in c, "--loss_scale_policy static" in c) for c in train] \
        == [(False, False, False)] * 3 + [(True, False, True), (True, True, False)] + [(False, False, False)] * (gpus + 1)
    assert ["--resume" in c for c in train] == [False] * 6 + [True] + [False] * (gpus - 1)
    assert all("--save_interval 100 " in c for c in train[5:7])
    # every run has a timeout except the one killed on purpose (its own process group, a read timeout)
    assert [c.startswith("timeout -s KILL 900 ") for c in train] == [True] * 5 + [False, True] + [True] * (gpus - 1)
    assert ["--nproc_per_node 2 " in c for c in train] == [False] * 7 + [True] * (gpus - 1)
    assert all("--nproc_per_node 1 " in c for c in train[:7])


def test_gpu_check_data_dir_and_errors(tmp_path, fake_gpus):
    data = tmp_path / "mydata"
    data.mkdir()
    _, train = gpu_check_dry_run(tmp_path, fake_gpus, 1, env={"DATA_DIR": str(data), "STEPS": "50"})
    assert all(f"--data_dir {data} " in c and "--train_batches 50 " in c and "--save_interval" not in c
               for c in train[:5])
    assert "--save_interval 25 " in train[5]
    proc = run("gpu_check.sh", path_prefix=fake_gpus, env={"FAKE_GPUS": "0", "DRY_RUN": "1"})
    assert_one_line_error(proc, "asked for 1 GPU(s) but found 0", "gpu_check.sh")
    proc = run("gpu_check.sh", path_prefix=fake_gpus, env={"FAKE_GPUS": "1", "DRY_RUN": "1",
                                                           "DATA_DIR": str(tmp_path / "nope")})
    assert_one_line_error(proc, "DATA_DIR", "does not exist")
    proc = run("gpu_check.sh", path_prefix=fake_gpus, env={"FAKE_GPUS": "1", "STEPS": "x"})
    assert_one_line_error(proc, "STEPS must be a non-negative integer")


def run_gpu_report(capsys, *args):
    rc = gpu_report.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def write_check(work, name, exit_code=0, log=""):
    """A check directory of gpu_check.sh: a run of 1000 steps (write_metrics), its exit code and log."""
    d = work / name
    (d / "ckpt").mkdir(parents=True)
    recs = write_metrics(d / "ckpt" / "metrics.jsonl")
    (d / "exit_code").write_text(f"{exit_code}\n")
    (d / "train.log").write_text(log)
    return recs


def test_gpu_report(tmp_path, capsys):
    write_check(tmp_path, "device_mem")
    write_check(tmp_path, "cached_ssd", exit_code=137)
    resumed = write_check(tmp_path, "kill_resume", log="Rank[0], Loaded x, resuming after step 500, t\n")
    step550 = [r for r in resumed if r["kind"] == "train" and r["step"] == 550][0]
    with open(tmp_path / "kill_resume" / "ckpt" / "metrics.jsonl", "a") as f:  # step 550 again, 0.001 off
        f.write(json.dumps(dict(step550, loss=step550["loss"] + 0.001)) + "\n")
    (tmp_path / "2gpu").mkdir()
    (tmp_path / "2gpu" / "skipped").write_text("1 GPU visible\n")
    rc, out, _ = run_gpu_report(capsys, tmp_path, 1000, "device_mem", "cached_ssd", "kill_resume",
                                "2gpu", "amp_static")
    assert rc == 1
    rows = {ln.split()[0]: ln for ln in out.splitlines()[1:-1]}
    assert rows["device_mem"].split()[1:5] == ["PASS", "1000", "5,550", "0.7500"]  # mean of 5100..6000
    assert "FAIL" in rows["cached_ssd"] and "exit code 137 (killed: timeout?)" in rows["cached_ssd"]
    assert "PASS" in rows["kill_resume"]
    assert "resumed after step 500; loss vs device_mem: max |diff| 1.00e-03 over 10 steps" in rows["kill_resume"]
    assert rows["2gpu"].split()[1] == "SKIP" and "1 GPU visible" in rows["2gpu"]
    assert "FAIL" in rows["amp_static"] and "did not run" in rows["amp_static"]
    assert out.splitlines()[-1] == "3 of 5 checks passed or skipped; failed: cached_ssd, amp_static"
    report = json.loads((tmp_path / "report.json").read_text())
    assert [r["result"] for r in report] == ["PASS", "FAIL", "PASS", "SKIP", "FAIL"]

    write_check(tmp_path / "b", "kill_resume", log="resuming after step 1000\n")
    rc, out, _ = run_gpu_report(capsys, tmp_path / "b", 1000, "kill_resume")
    assert rc == 1 and "had finished before it was killed" in out
    write_check(tmp_path / "c", "kill_resume")
    rc, out, _ = run_gpu_report(capsys, tmp_path / "c", 900, "kill_resume")
    assert rc == 1 and "stopped at step 1000 of 900" in out and "never resumed" in out


@pytest.mark.slow
def test_gpu_check_rehearsal_on_cpu(tmp_path, fake_gpus):
    """The whole script for real, its GPU runs on CPU (fake nvidia-smi with 2 GPUs; the store types
    and --amp do not apply on CPU): the checks, the kill after the checkpoint, the resume, the table."""
    data = write_tiny_dataset(str(tmp_path / "data"), rows_per_file=(1024,) * 4, rows_per_group=128, eval_rows=400)
    proc = run("gpu_check.sh", "--eval_batch_size", "200", path_prefix=fake_gpus, timeout=900,
               env={"FAKE_GPUS": "2", "WORK_DIR": str(tmp_path / "gc"), "DATA_DIR": data, "STEPS": "40",
                    "BATCH_SIZE": "128", "CHECK_TIMEOUT": "300"})
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    rows = {ln.split()[0]: ln.split() for ln in proc.stdout.splitlines() if ln.split()}
    for check in ["device_mem", "cached_host_mem", "cached_ssd", "amp_static", "amp_dynamic", "kill_resume", "2gpu"]:
        assert rows[check][1:3] == ["PASS", "40"], rows[check]
    # killed right after its step-20 checkpoint, resumed; on CPU the losses equal device_mem's exactly
    assert "resumed after step 20; loss vs device_mem: max |diff| 0.00e+00 over 10 steps" in proc.stdout
    log = (tmp_path / "gc" / "kill_resume" / "train.log").read_text()
    assert "Step 22," not in log.split("---- killed")[0], "killed right after the checkpoint"
    assert "7 of 7 checks passed or skipped" in proc.stdout


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


# ----------------------------------------------------------------------------- dlrm/quickstart.py
@pytest.fixture(scope="module")
def planted_raw(tmp_path_factory):
    """A small real synthetic raw directory: 2 days x 500 rows, seed 3 (day_0, day_1, planted_model.json)."""
    raw = tmp_path_factory.mktemp("quickstart") / "raw"
    synthetic.generate(str(raw), days=2, rows_per_day=500, seed=3)
    return raw


def run_quickstart(capsys, *args):
    rc = quickstart.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_quickstart_same_raw(planted_raw, tmp_path, capsys):
    assert run_quickstart(capsys, "same-raw", planted_raw, 2, 500, 3) == (0, "", "")
    for days, rows, seed in [(3, 500, 3), (2, 400, 3), (2, 500, 0)]:
        assert run_quickstart(capsys, "same-raw", planted_raw, days, rows, seed)[0] == 1
    assert run_quickstart(capsys, "same-raw", tmp_path, 2, 500, 3)[0] == 1  # no planted_model.json
    partial = tmp_path / "partial"  # a day file missing
    shutil.copytree(planted_raw, partial)
    os.remove(partial / "day_1")
    assert run_quickstart(capsys, "same-raw", partial, 2, 500, 3)[0] == 1
    kaggle = tmp_path / "kaggle"  # the same settings in the kaggle layout (train.txt) do not count
    synthetic.generate(str(kaggle), days=2, rows_per_day=500, seed=3, kaggle=True)
    assert run_quickstart(capsys, "same-raw", kaggle, 2, 500, 3)[0] == 1


def test_quickstart_dataset(tmp_path, capsys):
    rows = {"train": 200000, "test": 50000, "val": 50000}
    sizes = [1460, 583, 50000] + [7] * (schema.NUM_SPARSE - 3)
    schema.write_dataset_info(str(tmp_path), {"rows": rows, "table_size_array": sizes})
    rc, out, _ = run_quickstart(capsys, "dataset", tmp_path)
    assert rc == 0
    assert out == f"dataset: train 200000, test 50000, val 50000 rows; table sizes {sizes}\n"
    rc, out, err = run_quickstart(capsys, "dataset", tmp_path / "missing")
    assert rc == 1 and out == ""
    assert error_lines(err) == [err.strip()] and "dataset_info.json does not exist" in err


def test_quickstart_planted_auc(planted_raw, tmp_path, capsys):
    test_day = synthetic.read_planted_model(planted_raw)["per_day"][-1]
    rc, out, _ = run_quickstart(capsys, "planted-auc", planted_raw)
    assert rc == 0 and float(out) == test_day["planted_auc"] and 0.6 < float(out) < 0.95
    assert run_quickstart(capsys, "planted-auc", tmp_path) == (0, "", "")  # RAW_DIR data: no planted model


def test_quickstart_summary(planted_raw, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    s = metrics.summarize(write_metrics(run / "metrics.jsonl"))
    (run / "summary.json").write_text(json.dumps(s))
    test_day = synthetic.read_planted_model(planted_raw)["per_day"][-1]
    rc, out, _ = run_quickstart(capsys, "summary", run, planted_raw)
    assert rc == 0
    assert out.splitlines() == [
        "final AUC:    0.7500 at step 1000 (best 0.7600 at step 750), 52 s of training",
        f"planted AUC:  {test_day['planted_auc']:.4f} (the synthetic data's true click model on its test day "
        f"day_1: the best any model can score)"]
    rc, out, _ = run_quickstart(capsys, "summary", run, tmp_path / "no_raw")
    assert rc == 0 and out.splitlines() == ["final AUC:    0.7500 at step 1000 (best 0.7600 at step 750), "
                                            "52 s of training"]
    rc, out, err = run_quickstart(capsys, "summary", tmp_path, planted_raw)
    assert rc == 1 and out == "" and error_lines(err) == [err.strip()] and "summary.json does not exist" in err


def test_quickstart_cli(planted_raw):
    proc = run_tool("-m", "dlrm.quickstart", "planted-auc", planted_raw)
    assert 0.6 < float(proc.stdout) < 0.95
    proc = run_tool("-m", "dlrm.quickstart", "same-raw", planted_raw, 2, 500, 4, check=False)
    assert proc.returncode == 1 and proc.stdout == proc.stderr == ""
    proc = run_tool("-m", "dlrm.quickstart", "no-such-step", check=False)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr
    help_text = run_tool("-m", "dlrm.quickstart", "--help").stdout
    assert all(c in help_text for c in ("versions", "same-raw", "dataset", "planted-auc", "summary"))
