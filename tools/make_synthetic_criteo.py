#!/usr/bin/env python3
"""Write synthetic raw data in the exact Criteo text format, with a planted click model.

    python tools/make_synthetic_criteo.py --output_dir /tmp/criteo_synth [--days 3]
        [--rows_per_day 100000] [--seed 0] [--cardinalities c1,...,c26] [--kaggle] [--overwrite]

The generator lives in dlrm/synthetic.py (formats, planted model, determinism); run with -h for the flags.
"""
import sys

from dlrm.synthetic import main

if __name__ == "__main__":
    sys.exit(main())
