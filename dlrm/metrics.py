"""Rank 0's log lines and the JSON-lines metrics file, plus the memory figures they report.

Log lines keep the original's format (`Rank[0], Step N, Loss ..., Latency ... ms, Throughput ...`);
each line may carry a record that goes to the metrics file as one JSON object
(`kind`: train, eval, target_reached). read_metrics reads the file back (plots, benchmarks,
tests, the quickstart) and summarize condenses it: a resumed run appends to the same file, so a train
step that does not increase starts a new segment, and a later record for a step replaces an earlier one.
"""
import datetime
import json
import math
import os
import subprocess
import sys

import psutil


class MetricsError(ValueError):
    """A problem with the metrics file, reported as one line."""


def read_metrics(path):
    """The metrics file's records (dicts with a ``kind``), in file order.

    Raises MetricsError for a missing or empty file, a malformed line (except a truncated last
    line, which a run still writing can leave; it is skipped), or no train/eval records at all.
    """
    if not os.path.exists(path):
        raise MetricsError(f"metrics file {path} does not exist")
    if os.path.isdir(path):
        raise MetricsError(f"{path} is a directory, not a metrics file (try {os.path.join(path, 'metrics.jsonl')})")
    with open(path) as f:
        lines = f.read().splitlines()
    numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
    if not numbered:
        raise MetricsError(f"metrics file {path} is empty (has the run logged anything yet?)")
    records = []
    for k, (lineno, line) in enumerate(numbered):
        try:
            rec = json.loads(line)
        except ValueError:
            if k == len(numbered) - 1 and records:
                print(f"warning: {path}:{lineno}: skipping a truncated last line", file=sys.stderr)
                continue
            raise MetricsError(f"{path}:{lineno}: not a JSON object: {line[:60]!r}") from None
        if isinstance(rec, dict) and "kind" in rec:
            records.append(rec)
    if not any(r["kind"] in ("train", "eval") for r in records):
        raise MetricsError(f"{path} has no train or eval records (is it a dlrm_train_eval.py metrics file?)")
    return records


def finite(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def segments(records):
    """Split the records into runs: a train step that does not increase starts a new segment."""
    segs, last_step = [[]], None
    for r in records:
        if r["kind"] == "train":
            if last_step is not None and r["step"] <= last_step:
                segs.append([])
            last_step = r["step"]
        segs[-1].append(r)
    return [s for s in segs if s]


def curves(records):
    """{kind: [record, ...] sorted by step}, a later record for the same step replacing an earlier one."""
    out = {}
    for kind in ("train", "eval"):
        by_step = {}
        for r in records:
            if r["kind"] == kind and finite(r.get("step")):
                by_step[r["step"]] = r
        out[kind] = [by_step[s] for s in sorted(by_step)]
    return out


# ----------------------------------------------------------------------------- summary
def summarize(records):
    """A dict: steps, best/final AUC and their steps, mean throughput, total time, counts.

    - mean_throughput: mean samples/s of the train records, leaving out the first record of each
      segment (it includes graph compilation); the first record is used if it is the only one.
    - total_time_s: per segment, the last train record's elapsed_s plus the time of evaluations
      logged after it (the final evaluation); summed over segments. Start-up (imports, data
      checks) before the first step is not included.
    """
    c = curves(records)
    train, evals = c["train"], [e for e in c["eval"] if finite(e.get("auc"))]
    segs = segments(records)

    thr, total = [], 0.0
    for seg in segs:
        t = [r for r in seg if r["kind"] == "train"]
        thr += [r["throughput"] for r in t[1:] if finite(r.get("throughput"))]
        last = max((i for i, r in enumerate(seg) if r["kind"] == "train"), default=-1)
        if last >= 0 and finite(seg[last].get("elapsed_s")):
            total += seg[last]["elapsed_s"]
        total += sum(r["eval_time_s"] for r in seg[last + 1:]
                     if r["kind"] == "eval" and finite(r.get("eval_time_s")))
    if not thr:
        thr = [r["throughput"] for r in train[:1] if finite(r.get("throughput"))]

    best = max(evals, key=lambda e: e["auc"]) if evals else None  # first of equal AUCs
    final = evals[-1] if evals else None
    steps = max([r["step"] for r in train] + [e["step"] for e in c["eval"]], default=0)
    target = [r for r in records if r["kind"] == "target_reached"]
    return {
        "steps": steps,
        "train_records": len(train),
        "evaluations": len(evals),
        "best_auc": best["auc"] if best else None,
        "best_auc_step": best["step"] if best else None,
        "final_auc": final["auc"] if final else None,
        "final_auc_step": final["step"] if final else None,
        "final_loss": train[-1]["loss"] if train else None,
        "final_mean_loss": train[-1].get("mean_loss") if train else None,
        "mean_throughput": sum(thr) / len(thr) if thr else None,
        "total_time_s": total,
        "eval_split": final.get("split") if final else None,
        "target_reached_step": target[-1]["step"] if target else None,
        "segments": len(segs),
    }


def summary_text(s):
    """The summary as a few lines of text."""
    def auc(key):
        return "n/a" if s[key] is None else f"{s[key]:.5f} at step {s[key + '_step']}"

    split = f" ({s['eval_split']} split)" if s["eval_split"] else ""
    thr = "n/a" if s["mean_throughput"] is None else f"{s['mean_throughput']:.1f} samples/s"
    lines = [
        f"steps: {s['steps']} ({s['train_records']} train records, {s['evaluations']} evaluations"
        + (f", {s['segments']} segments: resumed or appended runs" if s["segments"] > 1 else "") + ")",
        f"best AUC: {auc('best_auc')}{split}",
        f"final AUC: {auc('final_auc')}",
        f"mean throughput: {thr} (first record left out)",
        f"total time: {s['total_time_s']:.1f} s",
    ]
    if s["target_reached_step"] is not None:
        lines.append(f"target AUC reached at step {s['target_reached_step']}")
    return "\n".join(lines)


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
        self.path = path
        self.file = None
        if path and rank == 0:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self.file = open(path, "a")

    def continue_from(self, step):
        """A resumed run (--resume) redoes the steps after `step`: the records of those steps that the
        interrupted run logged leave the file (rewritten atomically), so each step is logged once."""
        if not self.file:
            return
        self.file.close()
        with open(self.path) as f:
            lines = f.readlines()
        kept = []
        for line in lines:
            try:
                rec = json.loads(line)
            except ValueError:  # a half-written last line of a killed run
                continue
            if not (isinstance(rec, dict) and finite(rec.get("step")) and rec["step"] > step):
                kept.append(line)
        if len(kept) != len(lines):
            tmp = self.path + ".tmp"
            with open(tmp, "w") as f:
                f.writelines(kept)
            os.replace(tmp, self.path)
        self.file = open(self.path, "a")

    def log(self, line, **record):
        if self.rank != 0:
            return
        print(f"Rank[0], {line}, {datetime.datetime.now():%Y-%m-%d %H:%M:%S}", flush=True)
        if self.file and record:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()
