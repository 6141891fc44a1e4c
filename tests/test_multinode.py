"""Two real nodes on this machine: dlrm_train_eval.py trains on 2 nodes, checkpoints, is killed and
resumes to the same losses as an uninterrupted 2-node run.

OneFlow groups ranks into nodes by host address, so two `--nnodes 2` launches on 127.0.0.1 would both
be node 0 (and hang). Here each node runs in its own network namespace, joined to the other by a veth
pair (scripts/try_multinode_netns.sh up/exec/down: the same setup users try multi-node with), so the
two launches are two nodes with two addresses. Each node runs in its own working directory with a
relative --model_save_dir: the checkpoint directories are node-local (node 1 never sees node 0's),
as on real machines without shared storage. Needs root (`ip netns`); skipped with the reason where
network namespaces are not permitted. The namespaces are removed whatever happens.
"""
import os
import signal
import subprocess
import threading

import numpy as np
import oneflow as flow
import pytest

from conftest import REPO, read_metrics
from dlrm.launch import train_command

pytestmark = pytest.mark.slow  # real 2-node training subprocesses

SCRIPT = os.path.join(REPO, "scripts", "try_multinode_netns.sh")
SMALL_MODEL = ["--bottom_mlp", "64,32,16", "--embedding_vec_size", "16", "--top_mlp", "64,32"]
# Resume point (step 40) inside the LR warmup, so a schedule that restarted would show.
TRAIN = [*SMALL_MODEL, "--train_batch_size", "256", "--eval_batch_size", "500", "--learning_rate", "1.0",
         "--warmup_batches", "50", "--decay_start", "120", "--decay_batches", "80", "--train_batches", "200",
         "--eval_interval", "0", "--eval_batches", "2", "--loss_print_interval", "1", "--save_interval", "40",
         "--model_save_dir", "checkpoints"]  # relative: each node's own working directory
RUN_TIMEOUT = 300  # seconds per 2-node run; a node waiting longer is reported as a hang
# A rendezvous settings left in os.environ (e.g. by an in-process oneflow import) must not leak in.
LAUNCH_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK", "NNODES")


class TwoNodes:
    """The namespaces of one test run: names and a subnet of its own (from the pid), so that concurrent
    runs do not clash; only addresses inside the namespaces are used."""

    def __init__(self):
        pid = os.getpid()
        self.env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
        self.env.update(NETNS_NAME=f"dlrmt{pid % 10**7}", NETNS_SUBNET=f"10.231.{pid % 250 + 1}")
        self.master = self.env["NETNS_SUBNET"] + ".1"

    def script(self, *args):
        return subprocess.run(["bash", SCRIPT, *args], env=self.env, capture_output=True, text=True, timeout=60)

    def namespaces(self):
        out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        return [ln.split()[0] for ln in out.splitlines() if ln.startswith(self.env["NETNS_NAME"])]

    def start(self, k, cwd, args):
        """Node k's launch (one process) in its namespace, in cwd; its output goes to cwd/train.log."""
        cmd = train_command(args, nproc=1, nnodes=2, node_rank=k, master_addr=self.master, master_port=29500)
        return subprocess.Popen(["bash", SCRIPT, "exec", str(k), *cmd], cwd=cwd, env=self.env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


@pytest.fixture
def nodes():
    n = TwoNodes()
    up = n.script("up")
    if up.returncode == 3:  # the script's code for "network namespaces not permitted here"
        pytest.skip(up.stderr.strip())
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert len(n.namespaces()) == 2
        yield n
    finally:
        down = n.script("down")
        assert down.returncode == 0, down.stderr
        assert n.namespaces() == [], "namespaces left behind"


def tee(proc, path, needle, seen):
    """Copy proc's output to path; set `seen` when a line contains every string of needle."""
    with open(path, "w") as f:
        for line in proc.stdout:
            f.write(line)
            f.flush()
            if needle and all(s in line for s in needle):
                seen.set()


def train_two_nodes(nodes, run_dir, args, kill_after=None):
    """Both nodes' launches, each in run_dir/nodeK. kill_after: strings of a node-0 log line after which
    both are killed (SIGKILL, whole process groups). Returns node 0's log; fails (with both logs)
    when a node exits non-zero or either is still running after RUN_TIMEOUT (a hang)."""
    dirs = [run_dir / f"node{k}" for k in (0, 1)]
    for d in dirs:
        d.mkdir(parents=True, exist_ok=True)
    procs, seen, threads = [], threading.Event(), []
    try:
        for k in (0, 1):
            procs.append(nodes.start(k, dirs[k], args))
            threads.append(threading.Thread(target=tee, args=(procs[k], dirs[k] / "train.log",
                                                              kill_after if k == 0 else None, seen)))
            threads[-1].start()
        if kill_after:
            assert seen.wait(RUN_TIMEOUT), f"never logged {kill_after}:\n" + logs(dirs)
            for p in procs:
                os.killpg(p.pid, signal.SIGKILL)
        for p in procs:
            try:
                p.wait(RUN_TIMEOUT)
            except subprocess.TimeoutExpired:
                pytest.fail(f"hang: a node still runs after {RUN_TIMEOUT} s\n" + logs(dirs))
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        for t in threads:
            t.join()
    want = -signal.SIGKILL if kill_after else 0
    assert [p.returncode for p in procs] == [want, want], logs(dirs)
    return (dirs[0] / "train.log").read_text()


def logs(dirs):
    return "\n".join(f"---- {d.name}:\n" + "".join((d / "train.log").read_text().splitlines(True)[-40:])
                     for d in dirs if (d / "train.log").exists())


def losses(run_dir):
    """The last logged loss of each step (a killed run logs some steps twice), from rank 0's metrics."""
    recs = read_metrics(run_dir / "node0" / "checkpoints" / "metrics.jsonl")
    return {m["step"]: m["loss"] for m in recs if m["kind"] == "train"}, [m for m in recs if m["kind"] == "eval"]


def final_checkpoint(run_dir):
    ckpt = run_dir / "node0" / "checkpoints"
    name = [p for p in os.listdir(ckpt) if p.startswith("step_200_val_auc")]
    assert len(name) == 1, os.listdir(ckpt)
    return {k: v.numpy() for k, v in flow.load(str(ckpt / name[0])).items()}


def test_two_nodes_killed_and_resumed_with_node_local_checkpoints(nodes, synthetic_parquet, tmp_path):
    # conftest's synthetic Criteo days through the real Spark tool: clicks from a planted model, so
    # the losses are those of real learning (200 steps: 51200 of the 60000 train rows).
    args = ["--data_dir", str(synthetic_parquet / "parquet"), *TRAIN]

    log = train_two_nodes(nodes, tmp_path / "straight", args)
    assert "cpu x 2 ranks" in log and "done: 200 steps" in log
    straight, straight_evals = losses(tmp_path / "straight")
    assert sorted(straight) == list(range(1, 201)) and all(np.isfinite(list(straight.values())))
    assert np.mean([straight[s] for s in range(181, 201)]) < np.mean([straight[s] for s in range(1, 21)]) - 0.05
    assert straight_evals[-1]["auc"] > 0.6, straight_evals  # chance is 0.5
    assert not (tmp_path / "straight" / "node1" / "checkpoints").exists(), "only rank 0 (node 0) writes"

    killed = tmp_path / "killed"
    train_two_nodes(nodes, killed, args, kill_after=("Saved checkpoint", "step_40"))
    saved = os.listdir(killed / "node0" / "checkpoints")
    assert "step_40" in saved and not any(p.startswith("step_200") for p in saved), saved
    assert not (killed / "node1" / "checkpoints").exists()  # node 1 has no checkpoint to find

    log = train_two_nodes(nodes, killed, [*args, "--resume"])
    assert "resuming after step 40" in log, log[-3000:]
    resumed, resumed_evals = losses(killed)
    assert sorted(resumed) == list(range(1, 201))
    assert [resumed[s] for s in range(41, 201)] == [straight[s] for s in range(41, 201)]
    assert resumed_evals[-1]["auc"] == straight_evals[-1]["auc"]
    a, b = final_checkpoint(tmp_path / "straight"), final_checkpoint(killed)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
