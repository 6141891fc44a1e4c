#!/usr/bin/env python3
"""Criteo click logs (raw text) -> DLRM parquet, with PySpark.

Reads the Criteo 1TB click logs (``day_0 .. day_23``) or the Kaggle display-advertising
``train.txt`` and writes ``output_dir/train/``, ``output_dir/test/``, ``output_dir/val/``
(parquet, columns ``label, I1..I13, C1..C26``) plus ``output_dir/dataset_info.json``.

Runs as ``python tools/criteo1t_parquet.py ...`` (starts a local Spark, ``--spark_master``)
or under ``spark-submit tools/criteo1t_parquet.py ...`` (keeps spark-submit's master).
The code is the ``dlrm.preprocess`` package (plan, spark, passes, cli).
"""
import sys

from dlrm.preprocess.cli import main

if __name__ == "__main__":
    sys.exit(main())
