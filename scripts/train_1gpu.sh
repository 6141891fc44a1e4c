#!/usr/bin/env bash
# Train and evaluate DLRM on one GPU.
#
# usage: scripts/train_1gpu.sh DATA_DIR PERSISTENT_PATH [extra dlrm_train_eval.py args...]
#
#   DATA_DIR          parquet dataset from tools/criteo1t_parquet.py (train/, test/, val/,
#                     dataset_info.json for the table sizes)
#   PERSISTENT_PATH   OneEmbedding's persistent store (created if missing; a fast local disk)
#   extra args        passed on to dlrm_train_eval.py and override the ones here, e.g.
#                     --train_batches 1000 --model_save_dir /ckpt/run1 --amp
#
# Environment:
#   AMP=1             add --amp (mixed precision)
#   MODEL_SAVE_DIR    add --model_save_dir (checkpoints and metrics.jsonl go there)
#   CUDA_VISIBLE_DEVICES  which GPU to use (default: the first one)
#   MASTER_PORT       rendezvous port (default: a free one)
#   PY                python to use (default: the venv of scripts/setup_env.sh)
#   DRY_RUN=1         print the command instead of running it
#
# Fails in one line when DATA_DIR is missing or no GPU is visible (nvidia-smi -L).
# Example: scripts/train_1gpu.sh /data/criteo_parquet /ssd/dlrm_persistent --train_batches 2000
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
take_paths 2 "$@"
launch_one_node 1
