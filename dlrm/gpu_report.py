"""The pass/fail table of scripts/gpu_check.sh:  python -m dlrm.gpu_report WORK_DIR STEPS CHECK...

Each check NAME ran in WORK_DIR/NAME: train.log, exit_code (of its launch; of the resumed launch
for the kill-and-resume check), ckpt/metrics.jsonl; or a file `skipped` holding the reason. The
table goes to stdout and WORK_DIR/report.json; the exit code is 1 when any check failed.
"""
import argparse
import math
import os
import re
import sys

from dlrm.jsonfile import write_json
from dlrm.metrics import MetricsError, curves, read_metrics, summarize

RESUME_CHECK, RESUME_REFERENCE = "kill_resume", "device_mem"  # the resumed run repeats the reference's settings
RESUMED = re.compile(r"resuming after step (\d+)")


def _read(path):
    with open(path) as f:
        return f.read()


def check_result(work_dir, name, steps):
    """One row of the GPU check table: {check, result (PASS, FAIL, SKIP), steps, throughput, auc, note}."""
    d = os.path.join(work_dir, name)
    row = {"check": name, "result": "FAIL", "steps": None, "throughput": None, "auc": None, "note": ""}
    if os.path.isfile(os.path.join(d, "skipped")):
        return dict(row, result="SKIP", note=_read(os.path.join(d, "skipped")).strip())
    if not os.path.isfile(os.path.join(d, "exit_code")):
        return dict(row, note="did not run")
    code = int(_read(os.path.join(d, "exit_code")).strip() or -1)
    try:
        records = read_metrics(os.path.join(d, "ckpt", "metrics.jsonl"))
    except MetricsError as e:
        records, row["note"] = [], str(e)
    s = summarize(records) if records else {}
    row.update(steps=s.get("steps"), throughput=s.get("mean_throughput"), auc=s.get("final_auc"))
    losses = {r["step"]: r["loss"] for r in curves(records)["train"]} if records else {}
    problems = []
    if code != 0:
        problems.append(f"exit code {code}" + (" (killed: timeout?)" if code in (124, 137) else "")
                        + f", see {os.path.join(d, 'train.log')}")
    if records and s["steps"] != steps:
        problems.append(f"stopped at step {s['steps']} of {steps}")
    if records and not all(math.isfinite(v) for v in losses.values()):
        problems.append("non-finite loss")
    if records and s["final_auc"] is None:
        problems.append("no evaluation")
    if name == RESUME_CHECK:
        problems += resume_notes(work_dir, d, losses, row, steps)
    if problems:
        row["note"] = "; ".join(p for p in [row["note"], *problems] if p)
    elif records:
        row["result"] = "PASS"
    return row


def resume_notes(work_dir, d, losses, row, steps):
    """The kill-and-resume check: it must have resumed from before the end; its losses against the
    uninterrupted reference run's are reported (GPU kernels need not be bit-exact)."""
    log = _read(os.path.join(d, "train.log")) if os.path.isfile(os.path.join(d, "train.log")) else ""
    m = RESUMED.findall(log)
    if not m:
        return ["never resumed (no 'resuming after step' in train.log)"]
    after = int(m[-1])
    row["note"] = f"resumed after step {after}"
    if after >= steps:
        return ["the first run had finished before it was killed: nothing was resumed"]
    try:
        ref = {r["step"]: r["loss"] for r in curves(read_metrics(os.path.join(
            work_dir, RESUME_REFERENCE, "ckpt", "metrics.jsonl")))["train"]}
    except MetricsError:
        return []
    common = [k for k in losses if k > after and k in ref]
    if common:
        diff = max(abs(losses[k] - ref[k]) for k in common)
        row["note"] += f"; loss vs {RESUME_REFERENCE}: max |diff| {diff:.2e} over {len(common)} steps"
    return []


def report(work_dir, steps, checks):
    """Print the table of the checks in work_dir (in the order given, each expected to reach `steps`)
    and write report.json; returns 1 when any check failed, else 0."""
    rows = [check_result(work_dir, name, steps) for name in checks]

    def fmt(v, spec):
        return "-" if v is None else format(v, spec)

    table = [("check", "result", "steps", "samples/s", "AUC", "note")]
    table += [(r["check"], r["result"], fmt(r["steps"], "d"), fmt(r["throughput"], ",.0f"), fmt(r["auc"], ".4f"),
               r["note"]) for r in rows]
    widths = [max(len(t[i]) for t in table) for i in range(5)]
    for t in table:
        print("  ".join(c.ljust(w) for c, w in zip(t, widths)) + "  " + t[5])
    failed = [r["check"] for r in rows if r["result"] == "FAIL"]
    print(f"{len(rows) - len(failed)} of {len(rows)} checks passed or skipped" + (f"; failed: {', '.join(failed)}"
                                                                               if failed else ""))
    write_json(os.path.join(work_dir, "report.json"), rows, indent=1)
    return 1 if failed else 0


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m dlrm.gpu_report", description=__doc__.splitlines()[0])
    p.add_argument("work_dir", help="gpu_check.sh's WORK_DIR")
    p.add_argument("steps", type=int, help="steps every check was to reach")
    p.add_argument("checks", metavar="CHECK", nargs="+", help="check names, in table order")
    args = p.parse_args(argv)
    try:
        return report(args.work_dir, args.steps, args.checks)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
