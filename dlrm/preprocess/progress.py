"""Progress lines of the running pass, from a driver thread that polls Spark's status.

Every ``interval`` seconds while a pass has running stages, one line through ``plan.log``:

    [preprocess] check_rows (pass 2/7): 37/120 tasks, 1.2 GB/s, 8.1M rows/s, ETA 0:03:10,
    run ETA 0:12:40 (stage 3)

Tasks (done/total) and the ETA come from ``SparkContext.statusTracker()`` (the stages of the
jobs in the pass's job group that are running); the bytes and rows read per second (input
files plus shuffle reads, since each stage started) from the driver's status REST API
(``<ui>/api/v1/applications/<app>/stages/<id>``), left out when the UI is off. The ETA assumes
the stage's remaining tasks take as long as its finished ones did. The run ETA adds the passes
still to come, at the seconds per unit of weight (passes.pass_plan: input bytes scanned times a
cost factor) of the passes finished so far (of the running pass alone, while none has
finished; passes reused by --resume do not count). Works the same in local and cluster mode
(the driver holds both sources).
"""
import contextlib
import json
import threading
import time
import urllib.request
from datetime import datetime, timezone

from dlrm.preprocess.plan import log


def human(n, unit=""):
    """1234567 -> '1.2M'; with unit 'B': '1.2 MB'."""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return "%.1f%s%s%s" % (n / scale, " " if unit else "", prefix, unit)
    return "%d%s%s" % (n, " " if unit else "", unit)


def eta_text(seconds):
    if seconds is None:
        return "?"
    s = int(round(seconds))
    return "%d:%02d:%02d" % (s // 3600, s // 60 % 60, s % 60)


def stages_eta(stages, now):
    """Seconds until the slowest running stage ends, None until each has finished a task."""
    etas = [(now - s["started"]) * (s["tasks"] - s["done"]) / s["done"] for s in stages
            if s["done"]]
    return max(etas) if stages and len(etas) == len(stages) else None


def progress_line(name, stages, now, position=None, run_eta=None):
    """The line for pass ``name`` from its running stages: dicts with tasks, done, started
    (epoch s) and, when known, bytes and rows read; position "k/n" and the whole run's ETA
    (seconds or None) when given."""
    done = sum(s["done"] for s in stages)
    total = sum(s["tasks"] for s in stages)
    parts = ["%d/%d tasks" % (done, total)]
    if all("bytes" in s for s in stages):
        elapsed = max(1e-3, max(now - s["started"] for s in stages))
        parts.append("%s/s" % human(sum(s["bytes"] for s in stages) / elapsed, "B"))
        parts.append("%s rows/s" % human(sum(s["rows"] for s in stages) / elapsed))
    parts.append("ETA %s" % eta_text(stages_eta(stages, now)))
    if position:
        name = "%s (pass %s)" % (name, position)
        parts.append("run ETA %s" % eta_text(run_eta))
    ids = ",".join(str(s["id"]) for s in stages)
    return "%s: %s (stage%s %s)" % (name, ", ".join(parts), "s" if len(stages) > 1 else "", ids)


class RunClock:
    """Pass k of n and the whole run's ETA, from plan [(name, weight)] and the measured
    durations of the passes that ran."""

    def __init__(self, plan):
        self.names = [n for n, _ in plan]
        self.weight = dict(plan)
        self.took = {}  # name -> seconds, for the passes that ran to the end here
        self.reused = set()
        self.current, self.started = None, None

    def position(self, name):
        return "%d/%d" % (self.names.index(name) + 1, len(self.names))

    def start(self, name, now):
        self.current, self.started = name, now

    def finish(self, name, now):
        self.took[name] = now - self.started
        self.current = None

    def summary(self):
        """'check_rows 12.5 s, write_train 29.2 s, ...': the passes that ran here, in run order,
        then the ones reused by --resume."""
        parts = ["%s %.1f s" % (n, self.took[n]) for n in self.names if n in self.took]
        parts += ["%s reused" % n for n in self.names if n in self.reused]
        return ", ".join(parts)

    def eta(self, pass_eta, now):
        """Seconds left in the run: the running pass's ETA plus the passes after it."""
        if self.current is None:
            return None
        later = self.names[self.names.index(self.current) + 1:]
        rest = sum(self.weight[n] for n in later if n not in self.reused)
        elapsed = now - self.started
        w = sum(self.weight[n] for n in self.took)
        if w:
            rate = sum(self.took.values()) / w
        elif pass_eta is not None and self.weight[self.current]:
            rate = (elapsed + pass_eta) / self.weight[self.current]
        else:
            return None
        here = pass_eta if pass_eta is not None else max(
            0.0, rate * self.weight[self.current] - elapsed)
        return here + rest * rate


class Progress:
    """The polling thread; ``with progress.named(name):`` around each pass's Spark jobs."""

    def __init__(self, spark, interval, plan):
        self.sc = spark.sparkContext
        self.clock = RunClock(plan)
        self.interval = interval
        self.name = None
        self.rest = None
        if self.sc.uiWebUrl:
            self.rest = "%s/api/v1/applications/%s/stages/" % (self.sc.uiWebUrl,
                                                                 self.sc.applicationId)
        self._seen = {}  # stage id -> when this thread first saw it running (without the UI)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="preprocess-progress",
                                        daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(timeout=10)

    @contextlib.contextmanager
    def named(self, name):
        """Run the enclosed Spark jobs in job group ``name``; report them under that name."""
        self.sc.setJobGroup(name, name)
        self.clock.start(name, time.time())
        self.name = name
        try:
            yield
        finally:
            self.name = None
        self.clock.finish(name, time.time())

    def reused(self, name):
        """Pass ``name`` is reused by --resume: no time of its own, none left to spend."""
        self.clock.reused.add(name)

    def position(self, name):
        return "pass %s %s" % (self.clock.position(name), name)

    def _loop(self):
        while not self._stop.wait(self.interval):
            name = self.name
            if name is None:
                continue
            try:
                stages = self.running_stages(name)
            except Exception:  # the context is stopping; a report is never worth a failure
                continue
            if stages and self.name == name:
                now = time.time()
                log(progress_line(name, stages, now, self.clock.position(name),
                                  self.clock.eta(stages_eta(stages, now), now)))

    def running_stages(self, name):
        tracker = self.sc.statusTracker()
        active = set(tracker.getActiveStageIds())
        ids = set()
        for job in tracker.getJobIdsForGroup(name):
            info = tracker.getJobInfo(job)
            if info is not None:
                ids.update(info.stageIds)
        stages = []
        for sid in sorted(ids & active):
            info = tracker.getStageInfo(sid)
            if info is None or info.numTasks == 0:
                continue
            stage = {"id": sid, "tasks": info.numTasks, "done": info.numCompletedTasks,
                     "started": self._seen.setdefault(sid, time.time())}
            stage.update(self._read_metrics(sid, info.currentAttemptId))
            stages.append(stage)
        return stages

    def _read_metrics(self, sid, attempt):
        """Bytes and rows read so far and the start time of a stage, from the REST API."""
        if not self.rest:
            return {}
        try:
            url = "%s%d/%d" % (self.rest, sid, attempt)
            with urllib.request.urlopen(url, timeout=5) as r:
                d = json.loads(r.read().decode())
            started = datetime.strptime(d["submissionTime"], "%Y-%m-%dT%H:%M:%S.%f%Z")
            return {"bytes": d["inputBytes"] + d["shuffleReadBytes"],
                    "rows": d["inputRecords"] + d["shuffleReadRecords"],
                    "started": started.replace(tzinfo=timezone.utc).timestamp()}
        except Exception:
            return {}
