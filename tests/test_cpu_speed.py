"""CPU settings: the startup hook's BLAS choice (scripts/oneflow_preload.py) and the scheduling
policies of OneFlow's threads (dlrm.threads)."""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from dlrm.threads import find_spinner

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "scripts"))
import oneflow_preload  # noqa: E402

HAS_MKL = oneflow_preload.find_mkl() is not None and {"avx2", "fma"} <= oneflow_preload.cpu_flags()


def test_mkl_threads_follow_the_launcher_else_half_the_cores():
    assert oneflow_preload.mkl_threads({"OMP_NUM_THREADS": "1"}, ncpu=16) == 1  # each of several launched ranks
    assert oneflow_preload.mkl_threads({"OMP_NUM_THREADS": "3"}, ncpu=16) == 3
    assert oneflow_preload.mkl_threads({}, ncpu=2) == 1
    assert oneflow_preload.mkl_threads({}, ncpu=16) == 8
    assert oneflow_preload.mkl_threads({"OMP_NUM_THREADS": ""}, ncpu=1) == 1


def test_set_default_keeps_the_users_value_and_recomputes_a_parents_hook_value(monkeypatch):
    monkeypatch.setenv("MKL_NUM_THREADS", "3")  # the user's
    monkeypatch.delenv("DLRM_HOOK_SET", raising=False)
    oneflow_preload.set_default("MKL_NUM_THREADS", "1")
    assert os.environ["MKL_NUM_THREADS"] == "3" and os.environ.get("DLRM_HOOK_SET", "") == ""
    monkeypatch.setenv("DLRM_HOOK_SET", "KMP_BLOCKTIME,MKL_NUM_THREADS")  # the launcher's hook set it
    oneflow_preload.set_default("MKL_NUM_THREADS", "1")  # a rank with OMP_NUM_THREADS=1
    assert os.environ["MKL_NUM_THREADS"] == "1"
    assert os.environ["DLRM_HOOK_SET"] == "KMP_BLOCKTIME,MKL_NUM_THREADS"
    monkeypatch.delenv("KMP_BLOCKTIME", raising=False)
    monkeypatch.setenv("DLRM_HOOK_SET", "")
    oneflow_preload.set_default("KMP_BLOCKTIME", "0")
    assert os.environ["KMP_BLOCKTIME"] == "0" and os.environ["DLRM_HOOK_SET"] == "KMP_BLOCKTIME"


def test_mkl_is_found_where_pip_puts_it_and_openblas_can_be_kept(tmp_path, monkeypatch):
    assert oneflow_preload.find_mkl(str(tmp_path)) is None
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "libmkl_rt.so.3").write_bytes(b"")
    assert oneflow_preload.find_mkl(str(tmp_path)) == str(tmp_path / "lib" / "libmkl_rt.so.3")
    monkeypatch.setenv("DLRM_BLAS", "openblas")
    monkeypatch.setenv("DLRM_BLAS_LIBRARY", "/stale/from/a/parent")
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    assert oneflow_preload.choose_blas({"avx2", "fma"}) is None
    assert "DLRM_BLAS_LIBRARY" not in os.environ and "MKL_NUM_THREADS" not in os.environ
    monkeypatch.setenv("DLRM_BLAS", "auto")
    assert oneflow_preload.choose_blas({"sse2"}) is None  # no AVX2/FMA: OneFlow's OpenBLAS


def test_find_spinner_picks_the_thread_that_never_blocked():
    before = {1: (0, 5), 2: (0, 10), 3: (0, 7), 4: (0, 0), 6: (0, 0)}
    after = {1: (900_000_000, 6),   # the caller: blocked on the sync
             2: (800_000_000, 40),  # kernel thread: blocks between kernels
             3: (300_000_000, 8),   # blocked once: the VM scheduler
             4: (500, 0),           # never blocked, but idle
             5: (10**9, 0),         # started meanwhile: not compared
             6: (200_000_000, 0)}   # never blocked, less CPU than the scheduler
    assert find_spinner(before, after, exclude=(1,)) == 3
    assert find_spinner(before, {1: (10**9, 6)}, exclude=(1,)) is None


LAUNCH_PROBE = """
import sys
import oneflow as flow
from dlrm.graphs import Graph

class Steps(Graph):
    def __init__(self, module):
        super().__init__()
        self.module, self.device = module, "cpu"

    def build(self, x):
        return self.module(x).sum()

graph, x = Steps(flow.nn.Linear(64, 64)), flow.randn(32, 64)
graph(x).numpy()
print(*Graph.launcher, flush=True)
for line in sys.stdin:  # one more step per line
    graph(x).numpy()
    print("step", flush=True)
"""


def wait_for(stream, pattern, lines):
    """Read stream until a line matches pattern; returns the match (lines gets every line read)."""
    for line in stream:
        lines.append(line)
        m = re.search(pattern, line)
        if m:
            return m
    raise AssertionError("".join(lines[-30:]))


CAN_DROP_PRIVILEGE = os.geteuid() == 0 and shutil.which("setpriv") is not None


@pytest.mark.slow
@pytest.mark.parametrize("privileged", [True, False])
def test_the_thread_found_is_the_one_that_launches_graph_jobs_and_leads_the_rest(privileged):
    """With the privilege for SCHED_FIFO (CAP_SYS_NICE: root here) the launcher gets it and the
    others go to SCHED_BATCH; without it (root without CAP_SYS_NICE) the launcher is at
    SCHED_OTHER and the others at SCHED_IDLE. gdb, where it may attach, shows that the thread
    found with dlrm.threads' probe graph is the one that puts the steps of another graph in
    OneFlow's launch queue."""
    cmd = [sys.executable, "-c", LAUNCH_PROBE]
    if not privileged:
        if not CAN_DROP_PRIVILEGE:
            pytest.skip("needs root and setpriv to run a process without CAP_SYS_NICE")
        cmd = ["setpriv", "--bounding-set=-sys_nice", *cmd]
    probe = subprocess.Popen(cmd, cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, GLOG_minloglevel="3"))
    try:
        tid, others = wait_for(probe.stdout, r"^(\d+) (SCHED_\w+)$", []).groups()
        tid = int(tid)
        if others != ("SCHED_BATCH" if privileged else "SCHED_IDLE"):
            pytest.skip(f"this environment {'refuses' if privileged else 'allows'} SCHED_FIFO (others at {others})")
        tasks = [int(t) for t in os.listdir(f"/proc/{probe.pid}/task")]
        assert tid in tasks and len(tasks) > 10
        assert os.sched_getscheduler(tid) == (os.SCHED_FIFO if privileged else os.SCHED_OTHER)
        policy = getattr(os, others)
        assert {t: os.sched_getscheduler(t) for t in tasks if t != tid} == {t: policy for t in tasks if t != tid}
        if not privileged:
            return
        if shutil.which("gdb") is None:
            pytest.skip("no gdb to see which thread runs LazyJobStreamPolicy::EnqueueNNGraph (policies checked)")
        # The thread that puts a step's graph in OneFlow's launch queue is the one found.
        gdb = subprocess.Popen(["gdb", "-batch", "-p", str(probe.pid), "-ex",
                                "break oneflow::vm::LazyJobStreamPolicy::EnqueueNNGraph", "-ex", "continue"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        try:
            wait_for(gdb.stdout, r"^Breakpoint 1 at", lines)
        except AssertionError:
            if "ptrace" in "".join(lines):
                pytest.skip("gdb may not attach here (ptrace refused; policies checked)")
            raise
        probe.stdin.write("\n")  # read once gdb lets the process go on; the breakpoint is in place
        probe.stdin.flush()
        hit = wait_for(gdb.stdout, r"Switching to Thread .*\(LWP (\d+)\)", lines)
        assert int(hit.group(1)) == tid, "".join(lines[-30:])
        gdb.wait(timeout=60)
        assert wait_for(probe.stdout, r"^step$", [])  # the process goes on after gdb detaches
    finally:
        probe.kill()
        probe.wait()


def blas_run(blas, tmp_path):
    """A subprocess that loads the BLAS the hook picks under DLRM_BLAS=blas, then runs the model's
    GEMM shapes and three DLRM training steps; returns its results."""
    code = f"""
import json, os, sys
sys.path.insert(0, {os.path.join(REPO, 'scripts')!r})
import oneflow_preload
oneflow_preload.choose_blas(oneflow_preload.cpu_flags())
import numpy as np, oneflow as flow
from dlrm.config import ModelConfig, OptimizerConfig, ScheduleConfig
from dlrm.distributed import cpu_placement, to_global
from dlrm.graphs import build_train_graph
from dlrm.model import DLRM
rng = np.random.default_rng(0)
a, b = rng.standard_normal((512, 1024), dtype=np.float32), rng.standard_normal((1024, 256), dtype=np.float32)
mm = flow.matmul(flow.tensor(a), flow.tensor(b)).numpy()
cfg = ModelConfig(table_sizes=(50,) * 26, embedding_vec_size=16, bottom_mlp=(64, 16), top_mlp=(64, 32), fused_mlp=False,
                  dense_input_padding=True, interaction_padding=True, interaction_itself=False)
sched = ScheduleConfig(learning_rate=0.1, warmup_batches=0, decay_start=0, decay_batches=100, train_batches=100)
cpu = cpu_placement(); flow.manual_seed(1); np.random.seed(1)
m = DLRM(cfg, None, "cpu"); m.to_global(cpu, flow.sbp.broadcast)
g = build_train_graph(m, OptimizerConfig("sgd", True), sched, "cpu", global_batch=256)
losses = []
for step in range(3):
    label = rng.integers(0, 2, (256, 1)).astype(np.float32)
    dense = rng.random((256, 13), dtype=np.float32) * 100
    sparse = rng.integers(0, 1300, (256, 26))
    losses.append(float(g(*[to_global(x, cpu) for x in (label, dense, sparse)]).numpy()))
np.save(sys.argv[1], mm)
with open(sys.argv[2], "w") as f:  # not stdout: MKL_VERBOSE's C-buffered lines can split a line there
    json.dump(dict(losses=losses, blas=os.environ.get("DLRM_BLAS_LIBRARY")), f)
"""
    out = tmp_path / f"{blas}.npy"
    env = dict(os.environ, DLRM_BLAS=blas, MKL_VERBOSE="1", GLOG_minloglevel="3")
    result = tmp_path / f"{blas}.json"
    proc = subprocess.run([sys.executable, "-c", code, str(out), str(result)], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(result.read_text()), np.load(out), proc.stdout


@pytest.mark.slow
@pytest.mark.skipif(not HAS_MKL, reason="no PyPI mkl in this environment (scripts/setup_env.sh installs it) "
                                        "or a CPU without AVX2/FMA")
def test_mkl_serves_oneflows_matmuls_with_the_same_results(tmp_path):
    mkl, mkl_mm, mkl_log = blas_run("mkl", tmp_path)
    ob, ob_mm, ob_log = blas_run("openblas", tmp_path)
    assert mkl["blas"] and "libmkl_rt" in mkl["blas"] and ob["blas"] is None
    # MKL_VERBOSE makes MKL log each call: OneFlow's GEMMs really went to it, and only under mkl
    assert "SGEMM(N,N,256,512,1024" in mkl_log or "SGEMM(" in mkl_log
    assert "SGEMM(" not in ob_log
    np.testing.assert_allclose(mkl_mm, ob_mm, rtol=1e-4, atol=1e-4)  # float32 sums in another order
    assert np.abs(mkl_mm - ob_mm).max() <= 1e-5 * np.abs(ob_mm).max()
    np.testing.assert_allclose(mkl["losses"], ob["losses"], rtol=1e-5)


def test_the_test_process_puts_only_the_launcher_ahead():
    """conftest: this process's graph runs get the launcher at SCHED_FIFO (OneFlow's launch race), while
    the thread that starts subprocesses keeps its policy for them to inherit."""
    import oneflow as flow

    from dlrm.graphs import Graph

    class One(Graph):
        device = "cpu"

        def build(self, x):
            return x * 2

    # a graph run: the process's first one, if no test ran one before, puts the launcher ahead
    One()(flow.ones(2, placement=flow.env.all_device_placement("cpu"), sbp=flow.sbp.broadcast))
    tid, others = Graph.launcher
    if tid is None:
        pytest.skip("no SCHED_FIFO in this environment: the test process's threads are left as they are")
    assert others is None and os.sched_getscheduler(tid) == os.SCHED_FIFO
    assert os.sched_getscheduler(0) == os.SCHED_OTHER
