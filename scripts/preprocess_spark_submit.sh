#!/usr/bin/env bash
# Preprocess raw Criteo click logs into DLRM parquet on a Spark cluster, with spark-submit
# (client deploy mode: the driver runs here).
#
# usage: SPARK_MASTER=spark://host:7077 scripts/preprocess_spark_submit.sh INPUT_DIR OUTPUT_DIR [extra args...]
#
#   INPUT_DIR    day_0 .. day_23 (Criteo 1TB, also day_N.gz) or train.txt (Kaggle)
#   OUTPUT_DIR   where train/, test/, val/ and dataset_info.json go; must not exist or be empty
#                unless you pass --overwrite
#   Both must be on storage the cluster shares, mounted at the SAME path on this machine and on
#   every worker (e.g. NFS): the tool reads and writes file:// paths.
#   extra args   passed on to tools/criteo1t_parquet.py (see: python tools/criteo1t_parquet.py -h),
#                e.g. --resume: the same command plus --resume continues a killed or failed run
#
# Environment:
#   SPARK_MASTER      cluster master URL: spark://host:7077, yarn, k8s://... (required)
#   SPARK_SUBMIT      spark-submit to use (default: spark-submit on PATH, else the one inside the
#                     venv's pyspark; its Spark version must match the cluster's)
#   EXECUTOR_MEMORY   memory per executor (default 16g)
#   EXECUTOR_CORES    cores per executor (default 4)
#   NUM_EXECUTORS     executors (YARN/Kubernetes; optional)
#   TOTAL_EXECUTOR_CORES  cap on cores for the job (standalone; optional)
#   DRIVER_MEMORY_GB  driver memory (default 8; the driver only collects small aggregates)
#   SPARK_TMP_DIR     executors' scratch space (spark.local.dir; default: the cluster's)
#   SPARK_SUBMIT_ARGS more spark-submit options, word-split, e.g. "--conf spark.network.timeout=600s"
#   PY                python for the driver (default: the venv of scripts/setup_env.sh)
#   DRY_RUN=1         print the command instead of running it
#
# Fails in one line when SPARK_MASTER or INPUT_DIR is missing or OUTPUT_DIR is in the way.
# Example: SPARK_MASTER=spark://head:7077 EXECUTOR_MEMORY=64g scripts/preprocess_spark_submit.sh /nfs/criteo1t /nfs/criteo1t_parquet
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
take_paths 2 "$@"
input="${PATHS[0]}" output="${PATHS[1]}"
set -- "${ARGS[@]}"
need_env SPARK_MASTER
need_dir INPUT_DIR "$input"
check_output_dir "$output" "$@"
need_int DRIVER_MEMORY_GB "${DRIVER_MEMORY_GB:-8}" 1
need_int EXECUTOR_CORES "${EXECUTOR_CORES:-4}" 1
require_java
py="$(dlrm_python)"
submit="${SPARK_SUBMIT:-}"
if [[ -z "$submit" ]]; then
  submit="$(command -v spark-submit || true)"
  if [[ -z "$submit" ]]; then
    submit="$("$py" -c 'import os, pyspark; print(os.path.join(os.path.dirname(pyspark.__file__), "bin", "spark-submit"))' 2>/dev/null || true)"
  fi
fi
[[ -n "$submit" && -x "$submit" ]] || command -v "$submit" >/dev/null 2>&1 \
  || die "no spark-submit found (not on PATH, not in the venv's pyspark); set SPARK_SUBMIT=/path/to/spark-submit" 2
opts=(--master "$SPARK_MASTER" --deploy-mode client --name criteo1t_parquet
      --driver-memory "${DRIVER_MEMORY_GB:-8}g"
      --executor-memory "${EXECUTOR_MEMORY:-16g}" --executor-cores "${EXECUTOR_CORES:-4}")
[[ -n "${NUM_EXECUTORS:-}" ]] && opts+=(--num-executors "$NUM_EXECUTORS")
[[ -n "${TOTAL_EXECUTOR_CORES:-}" ]] && opts+=(--total-executor-cores "$TOTAL_EXECUTOR_CORES")
[[ -n "${SPARK_TMP_DIR:-}" ]] && opts+=(--conf "spark.local.dir=$SPARK_TMP_DIR")
opts+=(--conf "spark.pyspark.driver.python=$py")
read -r -a more <<<"${SPARK_SUBMIT_ARGS:-}"
export PYSPARK_DRIVER_PYTHON="$py"
run_cmd "$submit" "${opts[@]}" "${more[@]}" "$REPO/tools/criteo1t_parquet.py" \
  --input_dir "$(abspath "$input")" --output_dir "$(abspath "$output")" --export_dataset_info "$@"
