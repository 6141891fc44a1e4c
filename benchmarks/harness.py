"""Shared pieces of the benchmarks (imported as `harness` by the benchmarks/bench_*.py scripts).

- child phases: a benchmark runs itself again in a fresh process for each measurement
  (`run_child`); the child prints its result as one tagged JSON line (`emit`);
- CPU accounting: `CpuWindow` (wall time, this process's CPU time, what the rest of the machine
  used meanwhile), `tree_cpu_s` (a process tree's CPU time), `load_note` (" [ours 1.90 cores,
  others 0.30]": on a shared machine, how much a figure is to be trusted), `busy_note`, `cpu_model`;
- watched runs: `run_watched` (a command in its own session, its progress records polled with the CPU
  use of its process tree and of the machine at each, its peak RSS), `interval_rate` (samples/s over
  logged intervals, the first one skipped), `PeakSampler` (peak RSS of every process under a pid
  together, and peak bytes of directories, sampled by a thread), `dir_bytes`;
- the repository's tools as subprocesses: `tool_command`, `synthesize` (raw synthetic Criteo data),
  `preprocess` (raw data -> parquet with tools/criteo1t_parquet.py on local Spark, through
  dlrm.launch.run_preprocess, timed and logged).
"""
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time

import psutil

from dlrm.launch import run_preprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(REPO, "tools")
RESULT_TAG = "BENCH_RESULT "


# ----------------------------------------------------------------------------- child phases
def emit(record):
    """A child phase's result: one tagged JSON line on stdout."""
    print(RESULT_TAG + json.dumps(record), flush=True)


def results_in(stdout):
    """The records that emit() printed into a child's stdout, in order."""
    return [json.loads(line[len(RESULT_TAG):]) for line in stdout.splitlines()
            if line.startswith(RESULT_TAG)]


def run_child(script, argv, env=None, timeout=1800, echo=False):
    """Run `script` (a benchmark's own __file__) as a child phase with argv; return its last result.

    echo: print the child's other stdout lines (its progress). A failed child (non-zero exit or no
    result) raises RuntimeError with the tail of its output."""
    cmd = [sys.executable, os.path.abspath(script), *map(str, argv)]
    proc = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          timeout=timeout)
    results = results_in(proc.stdout)
    if echo:
        for line in proc.stdout.splitlines():
            if not line.startswith(RESULT_TAG):
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


def busy_note(labelled, what):
    """Print a note naming the labels whose records saw other processes keep > 0.25 cores busy."""
    noisy = [str(label) for label, rec in labelled if (rec.get("others_cores") or 0) > 0.25]
    if noisy:
        print(f"note: other processes kept cores busy during {', '.join(noisy)}: {what} noisy")


def load_note(rec):
    """' [ours 1.90 cores, others 0.30]' for a record with cores / others_cores."""
    if rec.get("cores") is None:
        return ""
    others = rec.get("others_cores")
    return f"  [ours {rec['cores']:.2f} cores, others {'?' if others is None else f'{others:.2f}'}]"


# ----------------------------------------------------------------------------- watched runs
def run_watched(cmd, log_path, read_records, cwd=REPO, env=None, timeout=1800, on_record=None):
    """Run cmd (own session, output to log_path) until it exits; poll read_records() (the progress
    records written so far, or None) every 0.1 s and pair each new record with a CpuSample of the
    process tree taken when it was seen (None once the run had ended); on_record(record) is called for
    each. Returns (points, exit code, peak RSS bytes of the tree's largest process, whole-run record:
    wall_s, cores (the tree's CPU, reaped descendants included) and others_cores)).
    Timeout: the tree is killed and RuntimeError raised."""
    points = []
    t0, busy0 = time.time(), machine_busy_s()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            while True:
                # wait4: the rusage's ru_maxrss is the largest peak RSS among the process and its reaped descendants
                pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
                running = pid == 0
                for rec in (read_records() or [])[len(points):]:
                    points.append((rec, CpuSample(proc.pid) if running else None))
                    if on_record:
                        on_record(rec)
                if not running:
                    proc.returncode = os.waitstatus_to_exitcode(status)
                    break
                if time.time() - t0 > timeout:
                    raise RuntimeError(f"still running after {timeout} s; see {log_path}")
                time.sleep(0.1)
        except BaseException:
            os.killpg(proc.pid, 9)
            proc.wait()
            raise
    wall = time.time() - t0
    cpu = usage.ru_utime + usage.ru_stime
    run = {"wall_s": wall, "cores": cpu / wall, "others_cores": max((machine_busy_s() - busy0 - cpu) / wall, 0.0)}
    return points, proc.returncode, usage.ru_maxrss * 1024, run


def dir_bytes(path):
    """Bytes of the files under path (0 when it does not exist); files vanishing meanwhile are skipped."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


class PeakSampler:
    """A thread sampling, every `interval` s while in its `with` block, the summed RSS of every process
    under root_pid (root excluded: a benchmark passes its own pid to cover the stage it runs, Spark
    JVMs and every rank together; shared pages count once per process) and the bytes under each of
    `dirs` (scratch space a stage deletes before it ends). Peaks: .rss_bytes, .dir_bytes{path: bytes}."""

    def __init__(self, root_pid, dirs=(), interval=0.5):
        self.root = psutil.Process(root_pid)
        self.dirs, self.interval = list(dirs), interval
        self.rss_bytes = 0
        self.dir_bytes = {d: 0 for d in self.dirs}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self):
        try:
            procs = self.root.children(recursive=True)
        except psutil.Error:
            procs = []
        rss = 0
        for p in procs:
            try:
                rss += p.memory_info().rss
            except psutil.Error:
                pass
        self.rss_bytes = max(self.rss_bytes, rss)
        for d in self.dirs:
            self.dir_bytes[d] = max(self.dir_bytes[d], dir_bytes(d))

    def _loop(self):
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sample()  # directories as the stage left them


def interval_rate(points, batch_size):
    """Samples/s over the logged intervals of run_watched points whose records hold `step` (batches
    done) and `latency_ms` (mean ms per batch over the interval), the first interval (compilation,
    warm-up) skipped; plus the best and first intervals and the CPU use over the measured span."""
    records = [r for r, _ in points]
    measured = records[1:]
    if not measured:
        raise RuntimeError("fewer than 2 logged intervals; raise the steps or lower the log interval")
    seconds = sum(r["latency_ms"] / 1000 * (r["step"] - prev["step"]) for prev, r in zip(records, measured))
    samples = batch_size * (measured[-1]["step"] - records[0]["step"])
    rate = lambda r, prev: batch_size / (r["latency_ms"] / 1000)  # noqa: E731
    rec = {"samples_per_s": samples / seconds,
           "best_interval": max(rate(r, p) for p, r in zip(records, measured)),
           "intervals": [round(rate(r, p), 1) for p, r in zip(records, measured)],
           "first_interval": batch_size / (records[0]["latency_ms"] / 1000)}
    sampled = [s for _, s in points if s is not None]
    if points[0][1] is not None and len(sampled) > 1:
        rec.update(CpuSample.cores_between(points[0][1], sampled[-1]))
    return rec


# ----------------------------------------------------------------------------- the repository's tools
def tool_command(name, *args):
    """argv running tools/<name> with this interpreter."""
    return [sys.executable, os.path.join(TOOLS, name), *map(str, args)]


def add_synthetic_args(parser, name, rows_per_day, what):
    """The flags of a benchmark's cached synthetic data: --work_dir (default <tmp>/dlrm_<name>: `what`
    goes there), --days, --rows_per_day, --seed (synthesize's arguments)."""
    a = parser.add_argument
    a("--work_dir", default=os.path.join(tempfile.gettempdir(), f"dlrm_{name}"), help=what)
    a("--days", type=int, default=3, help="synthetic days (the last one is test/val)")
    a("--rows_per_day", type=int, default=rows_per_day, help="synthetic rows per day")
    a("--seed", type=int, default=0, help="synthetic data seed")


def synthesize(output_dir, days, rows_per_day, seed, kaggle=False):
    """Raw synthetic Criteo data (tools/make_synthetic_criteo.py): day_0.. or, kaggle, one train.txt.
    Returns the seconds it took."""
    t = time.time()
    cmd = tool_command("make_synthetic_criteo.py", "--output_dir", output_dir, "--days", days,
                       "--rows_per_day", rows_per_day, "--seed", seed, "--overwrite")
    subprocess.run(cmd + (["--kaggle"] if kaggle else []), check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    return time.time() - t


def preprocess(raw_dir, out_dir, log_path, num_test_examples, extra=(), train_files=8, eval_files=2):
    """tools/criteo1t_parquet.py raw_dir -> out_dir on local Spark (2 threads, 4 GB driver), output to
    log_path; extra: more flags for the tool (last). Exits with a message if it fails; returns seconds."""
    t = time.time()
    tool_args = ["--input_dir", raw_dir, "--output_dir", out_dir, "--spark_master", "local[2]",
                 "--spark_driver_memory_gb", 4, "--train_files", train_files, "--eval_files", eval_files,
                 "--num_test_examples", num_test_examples, "--shuffle_partitions", 4, *extra]
    if os.path.exists(out_dir):
        tool_args.append("--overwrite")
    with open(log_path, "w") as f:
        proc = run_preprocess(tool_args, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        sys.exit(f"error: preprocessing failed (exit {proc.returncode}); see {log_path}")
    return time.time() - t
