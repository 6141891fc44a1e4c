#!/usr/bin/env bash
# Train and evaluate DLRM on several nodes: run this on every node, with the same arguments and
# the same NNODES/MASTER_ADDR/MASTER_PORT, and each node's own NODE_RANK (0 on the master).
#
# usage: NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 scripts/train_multinode.sh DATA_DIR PERSISTENT_PATH [extra args...]
#
#   DATA_DIR          parquet dataset from tools/criteo1t_parquet.py, at this path on every node
#                     (shared storage or a copy per node)
#   PERSISTENT_PATH   OneEmbedding's persistent store, on each node's local disk (created if missing)
#   extra args        passed on to dlrm_train_eval.py (the model and schedule: its defaults are the
#                     original's Criteo 1TB settings; --train_batch_size is global, over all GPUs)
#
# Environment:
#   NNODES            number of nodes (required)
#   NODE_RANK         this node's rank, 0..NNODES-1 (required)
#   MASTER_ADDR       address of node 0, reachable from every node (required)
#   MASTER_PORT       rendezvous port on node 0 (default 29500; the same on every node)
#   GPUS_PER_NODE     processes (GPUs) per node (default 8; that many must be visible)
#   AMP=1             add --amp
#   MODEL_SAVE_DIR    add --model_save_dir (written by rank 0, i.e. on node 0)
#   PY                python to use (default: the venv of scripts/setup_env.sh)
#   DRY_RUN=1         print the command instead of running it
#
# Fails in one line when a required variable or DATA_DIR is missing, or fewer than GPUS_PER_NODE
# GPUs are visible (nvidia-smi -L).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
take_paths 2 "$@"
need_env NNODES NODE_RANK MASTER_ADDR
gpus="${GPUS_PER_NODE:-8}" port="${MASTER_PORT:-29500}"
need_int NNODES "$NNODES" 1
need_int NODE_RANK "$NODE_RANK"
need_int GPUS_PER_NODE "$gpus" 1
need_int MASTER_PORT "$port" 1
(( NODE_RANK < NNODES )) || die "NODE_RANK $NODE_RANK must be < NNODES $NNODES" 2
check_gpu_run "${PATHS[@]}" "$gpus"
note "node $NODE_RANK of $NNODES, $gpus GPUs per node ($((NNODES * gpus)) ranks), master $MASTER_ADDR:$port"
launch_dlrm "${PATHS[@]}" "$gpus" "$NNODES" "$NODE_RANK" "$MASTER_ADDR" "$port" "${ARGS[@]}"
