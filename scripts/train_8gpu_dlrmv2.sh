#!/usr/bin/env bash
# Train and evaluate DLRM-DCNv2 on Criteo 1TB on one node with 8 GPUs with MLPerf's DLRMv2 settings
# (the MLCommons reference, recommendation_v2/torchrec_dlrm): bottom MLP 512,256,128, top MLP
# 1024,1024,512,256, embedding 128, 3 DCNv2 cross layers of rank 512, Adagrad at lr 0.005 (flat),
# global batch 65536, one epoch (64014 steps over the 4,195,197,692 rows of days 0-22), evaluation
# on the val split 20 times per epoch (every 3200 steps) and at the end.
# MLPerf trains on multi-hot data (synthetic extra ids per feature); this is the one-hot data of
# tools/criteo1t_parquet.py, so its AUC is not comparable with MLPerf's target (docs/training.md, "MLPerf DLRMv2 settings on 8 GPUs").
#
# usage: scripts/train_8gpu_dlrmv2.sh DATA_DIR PERSISTENT_PATH [extra dlrm_train_eval.py args...]
#
#   DATA_DIR          Criteo 1TB parquet from tools/criteo1t_parquet.py (--mod_idx 40000000, its
#                     default, caps every table at MLPerf's 40M rows)
#   PERSISTENT_PATH   OneEmbedding's persistent store (created if missing; a fast local SSD)
#   extra args        passed on last, so they override the settings here, e.g.
#                     --store_type device_mem --target_auc 0.80
#
# Environment:
#   AMP=1             add --amp (mixed precision; static loss scale 1024)
#   MODEL_SAVE_DIR    add --model_save_dir (checkpoints and metrics.jsonl go there)
#   MASTER_PORT       rendezvous port (default: a free one)
#   CUDA_VISIBLE_DEVICES  which 8 GPUs (default: all; at least 8 must be visible)
#   PY                python to use (default: the venv of scripts/setup_env.sh)
#   DRY_RUN=1         print the command instead of running it
#
# Fails in one line when DATA_DIR is missing or fewer than 8 GPUs are visible (nvidia-smi -L).
# Example: AMP=1 MODEL_SAVE_DIR=/ckpt/dlrmv2 scripts/train_8gpu_dlrmv2.sh /data/criteo1t_parquet /ssd/persistent
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
take_paths 2 "$@"
launch_one_node 8 \
  --embedding_vec_size 128 --bottom_mlp 512,256,128 --top_mlp 1024,1024,512,256 \
  --interaction_type dcn --dcn_num_layers 3 --dcn_low_rank_dim 512 \
  --optimizer adagrad --learning_rate 0.005 --warmup_batches 0 --decay_start 64014 --decay_batches 1 \
  --train_batch_size 65536 --train_batches 64014 \
  --eval_split val --eval_batch_size 65536 --eval_batches 1000000 --eval_interval 3200 \
  --loss_print_interval 1000
