"""Command lines that start the repository's runs from Python: training (dlrm_train_eval.py, one
process per device via oneflow.distributed.launch) and preprocessing (tools/criteo1t_parquet.py).

Used by tests, benchmarks and tools; the shell launchers use scripts/common.sh's launch_dlrm, which
builds the same training command.
"""
import os
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_SCRIPT = os.path.join(REPO, "dlrm_train_eval.py")
PREPROCESS_TOOL = os.path.join(REPO, "tools", "criteo1t_parquet.py")


def free_port():
    """An unused local TCP port, so concurrent jobs on one machine do not clash."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_command(train_args, nproc=1, nnodes=1, node_rank=0, master_addr="127.0.0.1", master_port=None,
                  python=sys.executable, script=TRAIN_SCRIPT):
    """argv for dlrm_train_eval.py with train_args: a plain process for one rank on one node, else the
    OneFlow launcher (which sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT for each process).
    script: another script launched the same way (dlrm_predict.py)."""
    if nproc == 1 and nnodes == 1:
        return [python, script, *map(str, train_args)]
    return [python, "-m", "oneflow.distributed.launch", "--nproc_per_node", str(nproc), "--nnodes", str(nnodes),
            "--node_rank", str(node_rank), "--master_addr", master_addr,
            "--master_port", str(master_port or free_port()), script, *map(str, train_args)]


def wait_for_rank0(env=os.environ, timeout=600.0):
    """In a launched rank other than 0: wait until rank 0 accepts connections at MASTER_ADDR:
    MASTER_PORT. Call it before `import oneflow`. OneFlow 0.9.0 sets up its environment on import:
    rank 0 serves the bootstrap there, the other ranks connect to it, and one that finds it not yet
    listening sleeps 10 s before its next try (control/rpc_client.cpp, LoadServer). Ranks start
    together and import OneFlow in about the same time: 3 of 12 two-process starts here lost
    10 s, 0 of 12 with the wait, which cost the others nothing measurable (3.49-3.58 s a start,
    3.49-3.53 s without). OneFlow uses these variables only when all four are set
    (framework/env_util.py); after `timeout` s its own retries take over."""
    if (env.get("RANK", "0") in ("0", "-1") or not env.get("MASTER_ADDR") or not env.get("MASTER_PORT")
            or int(env.get("WORLD_SIZE") or 1) <= 1):
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((env["MASTER_ADDR"], int(env["MASTER_PORT"])), timeout=1.0):
                return
        except OSError:
            time.sleep(0.05)


def preprocess_command(tool_args, python=sys.executable):
    """argv for tools/criteo1t_parquet.py (raw Criteo text -> parquet on Spark) with tool_args."""
    return [python, PREPROCESS_TOOL, *map(str, tool_args)]


def run_preprocess(tool_args, **run_kwargs):
    """Run tools/criteo1t_parquet.py with tool_args from the repository root until it exits;
    run_kwargs go to subprocess.run (output capture, timeout, env). Returns the CompletedProcess."""
    return subprocess.run(preprocess_command(tool_args), cwd=REPO, **run_kwargs)
