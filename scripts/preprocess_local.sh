#!/usr/bin/env bash
# Preprocess raw Criteo click logs into DLRM parquet on this machine, with a local Spark.
#
# usage: scripts/preprocess_local.sh INPUT_DIR OUTPUT_DIR [extra criteo1t_parquet.py args...]
#
#   INPUT_DIR    day_0 .. day_23 (Criteo 1TB, also day_N.gz) or train.txt (Kaggle)
#   OUTPUT_DIR   where train/, test/, val/ and dataset_info.json go; must not exist or be empty
#                unless you pass --overwrite (the new dataset replaces it once complete)
#   extra args   passed on to tools/criteo1t_parquet.py, e.g. --train_files 64 --eval_files 16
#                --num_test_examples 50000 --mod_idx 0 --overwrite (see: python tools/criteo1t_parquet.py -h)
#
# Environment:
#   DRIVER_MEMORY_GB  Spark driver memory (default: 3/4 of this machine's RAM); in local mode the
#                     driver runs everything
#   SPARK_TMP_DIR     Spark scratch space (spark.local.dir), e.g. a large SSD; Criteo 1TB needs
#                     about 2 TB of it (default: Spark's, under /tmp)
#   SPARK_THREADS     worker threads (default: all cores: local[*])
#   PY                python to use (default: the venv of scripts/setup_env.sh)
#   DRY_RUN=1         print the command instead of running it
#
# Needs Java 17+. Fails in one line when INPUT_DIR is missing or OUTPUT_DIR is in the way.
# Example: SPARK_TMP_DIR=/ssd/spark_tmp scripts/preprocess_local.sh /data/criteo1t /data/criteo1t_parquet
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
take_paths 2 "$@"
input="${PATHS[0]}" output="${PATHS[1]}"
set -- "${ARGS[@]}"
need_dir INPUT_DIR "$input"
check_output_dir "$output" "$@"
mem="${DRIVER_MEMORY_GB:-$(( $(physical_memory_gb) * 3 / 4 ))}"
(( mem >= 1 )) || mem=1
need_int DRIVER_MEMORY_GB "$mem" 1
require_java
py="$(dlrm_python)"
extra=()
[[ -n "${SPARK_TMP_DIR:-}" ]] && { make_dir SPARK_TMP_DIR "$SPARK_TMP_DIR"; extra+=(--spark_tmp_dir "$SPARK_TMP_DIR"); }
run_cmd "$py" "$REPO/tools/criteo1t_parquet.py" --input_dir "$input" --output_dir "$output" \
  --spark_master "local[${SPARK_THREADS:-*}]" --spark_driver_memory_gb "$mem" --export_dataset_info \
  "${extra[@]}" "$@"
