"""scripts/gpu_check.sh (its DRY_RUN command lines, its errors, and a slow rehearsal of the whole
script on CPU) and its pass/fail table, dlrm/gpu_report.py."""
import json
import os

import pytest

from conftest import REPO, assert_one_line_error, run, write_metrics, write_tiny_dataset
from dlrm import gpu_report

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
    # every run has a timeout, in a session of its own, except the one killed on purpose (its own
    # process group, a read timeout)
    assert [c.startswith(f"{REPO}/scripts/in_session.sh timeout -s KILL 900 ") for c in train] == \
        [True] * 5 + [False, True] + [True] * (gpus - 1)
    assert ["--nproc_per_node 2 " in c for c in train] == [False] * 7 + [True] * (gpus - 1)
    assert all("--nproc_per_node 1 " in c for c in train[:7])


RANKS = """import os, signal, sys, time
rank = int(os.environ["RANK"])
if rank == 0:  # a rank waiting in a collective for one that died (NCCL's wait does not end on SIGTERM)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
open(os.path.join(sys.argv[1], f"rank{rank}.pid"), "w").write(str(os.getpid()))
if rank == 1:
    sys.exit(3)
time.sleep(120)
"""


def alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_timed_check_leaves_no_rank_behind(tmp_path):
    """gpu_check.sh's timed runs (scripts/in_session.sh timeout ...): OneFlow's real launcher with one
    rank that fails and one that stays (ignoring the launcher's SIGTERM, as a rank blocked in NCCL):
    the run ends with the failure and the staying rank is gone. Under `timeout` alone the launcher's
    os.killpg(its pid) (oneflow/distributed/launch.py) finds no such group and the rank stays."""
    import subprocess
    import sys
    import time

    from dlrm.launch import free_port

    (tmp_path / "ranks.py").write_text(RANKS)
    cmd = ["timeout", "-s", "KILL", "60", sys.executable, "-m", "oneflow.distributed.launch", "--nproc_per_node", "2",
           "--master_port", str(free_port()), str(tmp_path / "ranks.py"), str(tmp_path)]
    t0 = time.time()
    proc = subprocess.run([f"{REPO}/scripts/in_session.sh", *cmd], capture_output=True, text=True, timeout=90)
    pid = int((tmp_path / "rank0.pid").read_text())
    try:
        assert proc.returncode != 0 and time.time() - t0 < 30, proc.stderr[-2000:]
        for _ in range(50):
            if not alive(pid):
                break
            time.sleep(0.1)
        assert not alive(pid), "rank 0 outlived its run"
    finally:
        if alive(pid):
            os.kill(pid, 9)


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
