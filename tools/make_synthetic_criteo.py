#!/usr/bin/env python3
"""Write synthetic raw data in the exact Criteo text format, with a planted click model.

    python tools/make_synthetic_criteo.py --output_dir /tmp/criteo_synth [--days 3]
        [--rows_per_day 100000] [--seed 0] [--cardinalities c1,...,c26] [--kaggle] [--overwrite]
    python tools/make_synthetic_criteo.py --output_dir /tmp/kaggle_synth --layout kaggle
        (--rows N | --fraction F) [--workers W] [--seed 0] [--overwrite]

The generator lives in dlrm/synthetic.py (formats, layouts, planted model, determinism; the Kaggle
shape in dlrm/kaggle_shape.py); run with -h for the flags.
"""
import sys

from dlrm.synthetic import main

if __name__ == "__main__":
    sys.exit(main())
