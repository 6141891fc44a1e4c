"""Criteo click logs (raw text) -> DLRM parquet, with PySpark (the library behind
tools/criteo1t_parquet.py).

- ``plan``: everything decided before Spark starts (arguments, input files, split bounds,
  the output directory's temporary sibling and its atomic rename); no Spark import.
- ``spark``: the Spark session and the native column expressions (no Python UDF).
- ``passes``: the named Spark passes, run in order by ``passes.run``.
- ``rows``: raw lines -> model input rows with the same expressions, for dlrm_predict.py.
- ``cli``: the command line (``main(argv)`` returns the exit code).
"""
