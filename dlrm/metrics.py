"""Rank 0's log lines and the JSON-lines metrics file, plus the memory figures they report.

Log lines keep the original's format (`Rank[0], Step N, Loss ..., Latency ... ms, Throughput ...`);
each line may carry a record that goes to the metrics file as one JSON object
(`kind`: train, eval, target_reached). Readers (plots, benchmarks, tests) use read_metrics.
"""
import datetime
import json
import os
import subprocess

import psutil


def read_metrics(path):
    """The records of a metrics.jsonl file, in order."""
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def host_memory_mib():
    return psutil.Process().memory_info().rss / 2 ** 20


def gpu_memory_mib(device):
    """Memory used on this rank's GPU (nvidia-smi, MiB), or None on CPU or without nvidia-smi.

    The launcher's LOCAL_RANK indexes the visible devices; CUDA_VISIBLE_DEVICES maps that to
    the physical id nvidia-smi knows.
    """
    if device != "cuda":
        return None
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    visible = [d for d in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    gpu = visible[local_rank] if local_rank < len(visible) else str(local_rank)
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits",
                              f"--id={gpu}"], capture_output=True, text=True, timeout=10)
        return float(out.stdout.strip().splitlines()[0])
    except Exception:
        return None


class Metrics:
    """Rank 0 prints the log lines and appends the records; other ranks do nothing."""

    def __init__(self, path, rank):
        self.rank = rank
        self.file = None
        if path and rank == 0:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self.file = open(path, "a")

    def log(self, line, **record):
        if self.rank != 0:
            return
        print(f"Rank[0], {line}, {datetime.datetime.now():%Y-%m-%d %H:%M:%S}", flush=True)
        if self.file and record:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
