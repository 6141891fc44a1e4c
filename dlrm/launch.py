"""Command lines that start dlrm_train_eval.py: one process per device via oneflow.distributed.launch.

Used by tests, benchmarks and tools that start training from Python; the shell launchers use
scripts/common.sh's launch_dlrm, which builds the same command.
"""
import os
import socket
import sys

TRAIN_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dlrm_train_eval.py")


def free_port():
    """An unused local TCP port, so concurrent jobs on one machine do not clash."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def train_command(train_args, nproc=1, nnodes=1, node_rank=0, master_addr="127.0.0.1", master_port=None,
                  python=sys.executable):
    """argv for dlrm_train_eval.py with train_args: a plain process for one rank on one node, else the
    OneFlow launcher (which sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT for each process)."""
    if nproc == 1 and nnodes == 1:
        return [python, TRAIN_SCRIPT, *map(str, train_args)]
    return [python, "-m", "oneflow.distributed.launch", "--nproc_per_node", str(nproc), "--nnodes", str(nnodes),
            "--node_rank", str(node_rank), "--master_addr", master_addr,
            "--master_port", str(master_port or free_port()), TRAIN_SCRIPT, *map(str, train_args)]
