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

Reading and summarising the file: dlrm.metrics (read_metrics, summarize); here ``plot(records, png, summary=None)``.
"""
import argparse
import os
import sys

from dlrm.jsonfile import write_json
from dlrm.metrics import MetricsError, curves, finite, read_metrics, summarize, summary_text

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
    train, evals = c["train"], [e for e in c["eval"] if finite(e.get("auc"))]
    fig, (ax_loss, ax_lr, ax_auc) = plt.subplots(3, 1, figsize=(9, 10), sharex=True,
                                                 gridspec_kw={"height_ratios": [1.3, 0.8, 1.3]})

    def fill(ax, what):
        ax.text(0.5, 0.5, f"no {what} records", ha="center", va="center", transform=ax.transAxes, color="gray")

    steps = [r["step"] for r in train]
    if train:
        ax_loss.plot(steps, [r.get("loss", float("nan")) for r in train], color="tab:blue", alpha=0.45,
                     lw=1, marker="." if len(train) < 60 else None, label="loss (at the logged step)")
        if any(finite(r.get("mean_loss")) for r in train):
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
        records = read_metrics(args.metrics)
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

