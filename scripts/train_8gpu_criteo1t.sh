#!/usr/bin/env bash
# Train and evaluate DLRM on Criteo 1TB on one node with 8 GPUs: the original README's command
# and defaults (batch 55296, lr 24, 75000 steps, eval every 10000 steps on 1612 batches,
# embedding 128, bottom MLP 512,256,128, top MLP 1024,1024,512,256).
#
# usage: scripts/train_8gpu_criteo1t.sh DATA_DIR PERSISTENT_PATH [extra dlrm_train_eval.py args...]
#
#   DATA_DIR          Criteo 1TB parquet from tools/criteo1t_parquet.py (its dataset_info.json
#                     gives the table sizes; without it the original's Criteo 1TB sizes are used)
#   PERSISTENT_PATH   OneEmbedding's persistent store (created if missing; a fast local SSD)
#   extra args        passed on last, so they override the defaults here, e.g.
#                     --store_type cached_ssd --train_batches 20000
#
# Environment:
#   AMP=1             add --amp (mixed precision; the original's static loss scale 1024)
#   MODEL_SAVE_DIR    add --model_save_dir (checkpoints and metrics.jsonl go there)
#   MASTER_PORT       rendezvous port (default: a free one)
#   CUDA_VISIBLE_DEVICES  which 8 GPUs (default: all; at least 8 must be visible)
#   PY                python to use (default: the venv of scripts/setup_env.sh)
#   DRY_RUN=1         print the command instead of running it
#
# Fails in one line when DATA_DIR is missing or fewer than 8 GPUs are visible (nvidia-smi -L).
# Example: AMP=1 MODEL_SAVE_DIR=/ckpt/criteo1t scripts/train_8gpu_criteo1t.sh /data/criteo1t_parquet /ssd/persistent
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
take_paths 2 "$@"
launch_one_node 8 \
  --embedding_vec_size 128 --bottom_mlp 512,256,128 --top_mlp 1024,1024,512,256 \
  --train_batch_size 55296 --train_batches 75000 --learning_rate 24 \
  --warmup_batches 2750 --decay_start 49315 --decay_batches 27772 \
  --eval_batch_size 55296 --eval_batches 1612 --eval_interval 10000 --loss_print_interval 1000
