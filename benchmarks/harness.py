"""Shared pieces of the benchmarks (imported as `harness` by the benchmarks/bench_*.py scripts).

- child phases: a benchmark runs itself again in a fresh process for each measurement
  (`run_child`); the child prints its result as one tagged JSON line (`emit`);
- CPU accounting: `CpuWindow` (wall time, this process's CPU time, what the rest of the machine
  used meanwhile), `tree_cpu_s` (a process tree's CPU time), `load_note` (" [ours 1.90 cores,
  others 0.30]": on a shared machine, how much a figure is to be trusted), `cpu_model`;
- the repository's tools as subprocesses: `tool_command`, `synthesize` (raw synthetic Criteo data).
"""
import json
import os
import platform
import resource
import subprocess
import sys
import time

import psutil

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(REPO, "tools")
RESULT_TAG = "BENCH_RESULT "


# ----------------------------------------------------------------------------- child phases
def emit(record):
    """A child phase's result: one tagged JSON line on stdout."""
    print(RESULT_TAG + json.dumps(record), flush=True)


def run_child(script, argv, env=None, timeout=1800, echo=False):
    """Run `script` (a benchmark's own __file__) as a child phase with argv; return its last result.

    echo: print the child's other stdout lines (its progress). A failed child (non-zero exit or no
    result) raises RuntimeError with the tail of its output."""
    cmd = [sys.executable, os.path.abspath(script), *map(str, argv)]
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          timeout=timeout)
    results = []
    for line in proc.stdout.splitlines():
        if line.startswith(RESULT_TAG):
            results.append(json.loads(line[len(RESULT_TAG):]))
        elif echo:
            print(line, flush=True)
    if proc.returncode != 0 or not results:
        tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
        raise RuntimeError(f"child {' '.join(map(str, argv[:2]))} failed (exit {proc.returncode}):\n{tail}")
    return results[-1]


# ----------------------------------------------------------------------------- CPU accounting
def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_busy_s():
    """CPU-seconds the whole machine has been busy (steal included)."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def self_cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def tree_cpu_s(pid):
    """CPU-seconds of a process, its live descendants and the children they have reaped."""
    total = 0.0
    try:
        root = psutil.Process(pid)
        procs = [root] + root.children(recursive=True)
    except psutil.Error:
        return total
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


class CpuWindow:
    """Wall time, this process's CPU time and the machine's busy CPU time over a window."""

    def __enter__(self):
        self.t, self.cpu, self.busy = time.perf_counter(), self_cpu_s(), machine_busy_s()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.t
        self.cpu = self_cpu_s() - self.cpu
        self.others = max(machine_busy_s() - self.busy - self.cpu, 0.0)

    def record(self):
        return {"wall_s": self.wall, "cpu_s": self.cpu, "cores": self.cpu / self.wall,
                "others_cores": self.others / self.wall}


class CpuSample:
    """A point in time for the CPU use of a process tree against the rest of the machine:
    `cores_between(a, b)` gives the record fields CpuWindow gives for a window."""

    def __init__(self, pid):
        self.t, self.tree, self.busy = time.perf_counter(), tree_cpu_s(pid), machine_busy_s()

    @staticmethod
    def cores_between(a, b):
        span = b.t - a.t
        if span <= 0:
            return {}
        cores = (b.tree - a.tree) / span
        return {"cores": cores, "others_cores": max((b.busy - a.busy) / span - cores, 0.0)}


def load_note(rec):
    """' [ours 1.90 cores, others 0.30]' for a record with cores / others_cores."""
    if rec.get("cores") is None:
        return ""
    others = rec.get("others_cores")
    return f"  [ours {rec['cores']:.2f} cores, others {'?' if others is None else f'{others:.2f}'}]"


# ----------------------------------------------------------------------------- the repository's tools
def tool_command(name, *args):
    """argv running tools/<name> with this interpreter."""
    return [sys.executable, os.path.join(TOOLS, name), *map(str, args)]


def synthesize(output_dir, days, rows_per_day, seed, kaggle=False):
    """Raw synthetic Criteo data (tools/make_synthetic_criteo.py): day_0.. or, kaggle, one train.txt.
    Returns the seconds it took."""
    t = time.time()
    cmd = tool_command("make_synthetic_criteo.py", "--output_dir", output_dir, "--days", days,
                       "--rows_per_day", rows_per_day, "--seed", seed, "--overwrite")
    subprocess.run(cmd + (["--kaggle"] if kaggle else []), check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return time.time() - t
