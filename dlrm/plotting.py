"""Plot and summarise the JSON-lines metrics file that dlrm_train_eval.py writes.

Command line (tools/plot_metrics.py runs ``main``):

    python tools/plot_metrics.py METRICS.jsonl [--output PNG] [--title T] [--reference_auc AUC]

Writes a PNG with three panels (training loss and mean loss over steps, learning rate over steps,
eval AUC at each evaluation with the best one marked), default ``metrics.png`` next to the
metrics file, and ``summary.json`` next to the PNG; prints a short text summary.

Records (one JSON object a line) are read by ``kind``: ``train`` {step, loss, mean_loss, lr,
latency_ms, throughput, elapsed_s, ...}, ``eval`` {step, auc, eval_time_s, eval_samples, split,
...} and ``target_reached``; anything else is ignored. The training script appends to the file,
so a resumed run (or a second run into the same directory) continues it: a train step that does
not increase starts a new *segment*. For the curves, a later record for the same step replaces an
earlier one; times add up over segments.

Importable: ``load_metrics(path)``, ``summarize(records)``, ``plot(records, png, summary=None)``.
"""
import argparse
import json
import math
import os
import sys

from dlrm.jsonfile import write_json

__all__ = ["MetricsError", "load_metrics", "summarize", "plot", "main"]


class MetricsError(Exception):
    """A problem with the metrics file, reported as one line."""


# ----------------------------------------------------------------------------- reading
def load_metrics(path):
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


def _finite(x):
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
            if r["kind"] == kind and _finite(r.get("step")):
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
    train, evals = c["train"], [e for e in c["eval"] if _finite(e.get("auc"))]
    segs = segments(records)

    thr, total = [], 0.0
    for seg in segs:
        t = [r for r in seg if r["kind"] == "train"]
        thr += [r["throughput"] for r in t[1:] if _finite(r.get("throughput"))]
        last = max((i for i, r in enumerate(seg) if r["kind"] == "train"), default=-1)
        if last >= 0 and _finite(seg[last].get("elapsed_s")):
            total += seg[last]["elapsed_s"]
        total += sum(r["eval_time_s"] for r in seg[last + 1:]
                     if r["kind"] == "eval" and _finite(r.get("eval_time_s")))
    if not thr:
        thr = [r["throughput"] for r in train[:1] if _finite(r.get("throughput"))]

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


# ----------------------------------------------------------------------------- plot
def plot(records, png, summary=None, title=None, reference_auc=None, reference_label="reference"):
    """Write the three-panel PNG to `png`; returns the path.

    reference_auc: draw a dashed horizontal line at this AUC on the AUC panel (e.g. the planted
    model's AUC of synthetic data), labelled reference_label.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = summary or summarize(records)
    c = curves(records)
    train, evals = c["train"], [e for e in c["eval"] if _finite(e.get("auc"))]
    fig, (ax_loss, ax_lr, ax_auc) = plt.subplots(3, 1, figsize=(9, 10), sharex=True,
                                                 gridspec_kw={"height_ratios": [1.3, 0.8, 1.3]})

    def fill(ax, what):
        ax.text(0.5, 0.5, f"no {what} records", ha="center", va="center", transform=ax.transAxes, color="gray")

    steps = [r["step"] for r in train]
    if train:
        ax_loss.plot(steps, [r.get("loss", float("nan")) for r in train], color="tab:blue", alpha=0.45,
                     lw=1, marker="." if len(train) < 60 else None, label="loss (at the logged step)")
        if any(_finite(r.get("mean_loss")) for r in train):
            ax_loss.plot(steps, [r.get("mean_loss", float("nan")) for r in train], color="tab:blue", lw=2,
                         label="mean_loss (over the interval)")
        ax_loss.legend(loc="upper right", fontsize=9)
        ax_lr.plot(steps, [r.get("lr", float("nan")) for r in train], color="tab:orange", lw=2,
                   marker="." if len(train) < 60 else None)
    else:
        fill(ax_loss, "train")
        fill(ax_lr, "train")
    ax_loss.set_ylabel("training loss (BCE)")
    ax_loss.set_title("training loss", loc="left", fontsize=10)
    ax_lr.set_ylabel("learning rate")
    ax_lr.set_title("learning rate", loc="left", fontsize=10)

    if evals:
        es, aucs = [e["step"] for e in evals], [e["auc"] for e in evals]
        split = f" ({s['eval_split']})" if s["eval_split"] else ""
        ax_auc.plot(es, aucs, color="tab:green", lw=1.5, marker="o", ms=5, label=f"eval AUC{split}")
        ax_auc.plot([s["best_auc_step"]], [s["best_auc"]], marker="*", ms=16, color="tab:red", ls="none",
                    label=f"best {s['best_auc']:.5f} @ step {s['best_auc_step']}")
        ax_auc.annotate(f"{s['best_auc']:.5f}", (s["best_auc_step"], s["best_auc"]), textcoords="offset points",
                        xytext=(0, -18), ha="center", fontsize=9, color="tab:red")
        lo, hi = min(aucs), max(aucs)
        if reference_auc is not None:
            ax_auc.axhline(reference_auc, color="gray", ls="--", lw=1.2,
                           label=f"{reference_label} {reference_auc:.4f}")
            lo, hi = min(lo, reference_auc), max(hi, reference_auc)
        pad = max(0.005, 0.15 * (hi - lo))
        ax_auc.set_ylim(lo - 2 * pad, hi + pad)
        ax_auc.legend(loc="lower right", fontsize=9)
    else:
        fill(ax_auc, "eval")
    ax_auc.set_ylabel("AUC")
    ax_auc.set_xlabel("step")
    ax_auc.set_title("evaluation AUC", loc="left", fontsize=10)
    for ax in (ax_loss, ax_lr, ax_auc):
        ax.grid(True, alpha=0.3)
    ax_auc.xaxis.get_major_locator().set_params(integer=True)
    ax_auc.set_xlim(left=0)

    thr = "n/a" if s["mean_throughput"] is None else f"{s['mean_throughput']:,.0f} samples/s"
    head = title or "DLRM training"
    fig.suptitle(f"{head}\n{s['steps']} steps, {s['total_time_s']:.0f} s, {thr}", fontsize=11)
    fig.tight_layout()
    out_dir = os.path.dirname(os.path.abspath(png))
    os.makedirs(out_dir, exist_ok=True)
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


# ----------------------------------------------------------------------------- command line
def main(argv=None):
    p = argparse.ArgumentParser(prog="plot_metrics.py",
                                description="Plot and summarise a dlrm_train_eval.py metrics file (JSON lines).")
    p.add_argument("metrics", help="metrics JSON-lines file (e.g. MODEL_SAVE_DIR/metrics.jsonl)")
    p.add_argument("--output", default=None,
                   help="PNG to write (default: metrics.png next to the metrics file); summary.json goes next to it")
    p.add_argument("--title", default=None, help="figure title (default: the metrics file's path)")
    p.add_argument("--reference_auc", type=float, default=None,
                   help="draw a dashed line at this AUC on the AUC panel (e.g. a synthetic dataset's planted AUC)")
    p.add_argument("--reference_label", default="reference", help="legend label of --reference_auc")
    args = p.parse_args(argv)
    png = args.output or os.path.join(os.path.dirname(os.path.abspath(args.metrics)), "metrics.png")
    try:
        records = load_metrics(args.metrics)
        s = summarize(records)
        plot(records, png, s, title=args.title or args.metrics, reference_auc=args.reference_auc,
             reference_label=args.reference_label)
        summary_path = os.path.join(os.path.dirname(os.path.abspath(png)), "summary.json")
        write_json(summary_path, dict(s, metrics_file=os.path.abspath(args.metrics), plot=os.path.abspath(png)))
    except (MetricsError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(summary_text(s))
    print(f"plot: {png}")
    print(f"summary: {summary_path}")
    return 0

