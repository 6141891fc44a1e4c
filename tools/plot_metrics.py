#!/usr/bin/env python3
"""Plot and summarise the JSON-lines metrics file that dlrm_train_eval.py writes.

    python tools/plot_metrics.py METRICS.jsonl [--output PNG] [--title T] [--reference_auc AUC]

Writes metrics.png (loss, learning rate, eval AUC) and summary.json; the code lives in dlrm/plotting.py.
"""
import sys

from dlrm.plotting import main

if __name__ == "__main__":
    sys.exit(main())
