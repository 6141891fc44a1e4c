#!/usr/bin/env bash
# GPU check: run this first on a machine with NVIDIA GPUs. Short training runs of a tiny model
# (STEPS steps each) exercise what the CPU test suite cannot, and print a pass/fail table with the
# throughput and final AUC of each:
#   device_mem, cached_host_mem, cached_ssd   OneEmbedding with each store type
#   amp_static, amp_dynamic                    --amp with --loss_scale_policy static / dynamic
#   kill_resume    device_mem killed (SIGKILL) after its checkpoint at STEPS/2, then --resume
#                  (its losses are compared with device_mem's, which ran the same settings)
#   2gpu           --nproc_per_node 2 (only when two GPUs are visible; else SKIP)
# Each check runs in WORK_DIR/NAME (train.log, ckpt/ with checkpoints and metrics.jsonl,
# persistent/); the table is also written to WORK_DIR/report.json. Exit 0 when no check failed.
# Each timed run has a process session of its own (scripts/in_session.sh): whatever is left of it
# when it ends (e.g. a rank waiting in NCCL for one that died) is killed, freeing its GPU and store.
#
# usage: scripts/gpu_check.sh [extra dlrm_train_eval.py args for every run...]
#        DATA_DIR=/data/criteo1t_parquet STEPS=1000 scripts/gpu_check.sh
#
# Environment (defaults in brackets):
#   DATA_DIR       a parquet dataset from tools/criteo1t_parquet.py [a tiny synthetic one, built once
#                  in WORK_DIR/data: 3 days x 20000 rows through local Spark (needs Java)]
#   WORK_DIR       [./runs/gpu_check]
#   STEPS          training steps per run [200]; BATCH_SIZE global train batch size [2048]
#   CHECK_TIMEOUT  seconds a run may take before it is killed and fails [900]
#   PY             python to use [the venv of scripts/setup_env.sh]
#   DRY_RUN=1      print every command line (the dataset's, then one per check; two for
#                  kill_resume) instead of running anything, and exit 0
#
# Fails in one line when no GPU is visible (nvidia-smi -L).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
wants_help "$@" && usage

WORK_DIR="$(abspath "${WORK_DIR:-./runs/gpu_check}")"
STEPS="${STEPS:-200}" BATCH_SIZE="${BATCH_SIZE:-2048}" CHECK_TIMEOUT="${CHECK_TIMEOUT:-900}"
need_int STEPS "$STEPS" 2
need_int BATCH_SIZE "$BATCH_SIZE" 2
need_int CHECK_TIMEOUT "$CHECK_TIMEOUT" 1
require_gpus 1 quiet  # all of them are fine (the 2gpu check uses two)
dry() { [[ "${DRY_RUN:-0}" == "1" ]]; }
PY="$(dlrm_python)"
dry || make_dir WORK_DIR "$WORK_DIR"

# ---------------------------------------------------------------------------------- dataset
if [[ -n "${DATA_DIR:-}" ]]; then
  need_dir DATA_DIR "$DATA_DIR"
  data="$(abspath "$DATA_DIR")"
else
  data="$WORK_DIR/data"
  gen=("$PY" "$REPO/tools/make_synthetic_criteo.py" --output_dir "$WORK_DIR/raw" --days 3 --rows_per_day 20000
       --seed 0 --overwrite)
  pre=("$PY" "$REPO/tools/criteo1t_parquet.py" --input_dir "$WORK_DIR/raw" --output_dir "$data"
       --spark_master "local[$(nproc 2>/dev/null || echo 2)]" --spark_driver_memory_gb 2 --train_files 8
       --eval_files 2 --num_test_examples 10000 --shuffle_partitions 4 --export_dataset_info --overwrite)
  if dry; then
    printf '%q ' "${gen[@]}"; echo
    printf '%q ' "${pre[@]}"; echo
  elif [[ -f "$data/dataset_info.json" ]]; then
    note "reusing the dataset in $data (remove it to rebuild)"
  else
    require_java
    note "building a tiny synthetic dataset in $data"
    "${gen[@]}" >"$WORK_DIR/data.log" 2>&1 && "${pre[@]}" >>"$WORK_DIR/data.log" 2>&1 \
      || die "building the dataset failed; see $WORK_DIR/data.log"
  fi
fi

# ---------------------------------------------------------------------------------- checks
# The settings every run shares (one tiny model); extra arguments come last and override them.
half=$((STEPS / 2))
COMMON=(--bottom_mlp 64,32,16 --embedding_vec_size 16 --top_mlp 64,32 --train_batch_size "$BATCH_SIZE"
        --eval_batch_size 2000 --eval_batches 5 --eval_interval 0 --learning_rate 1.0
        --warmup_batches "$((STEPS / 4))" --decay_start "$half" --decay_batches "$((STEPS - half))"
        --train_batches "$STEPS" --loss_print_interval "$(( STEPS >= 40 ? STEPS / 20 : 1 ))"
        --cache_memory_budget_mb 256)
EXTRA=("$@")
CHECKS=()

# launch NAME NPROC PREFIX ARGS...: one run of check NAME (launch_dlrm in a subshell), its output
# appended to WORK_DIR/NAME/train.log (or to $LOG_TO; stdout with DRY_RUN); PREFIX goes before the python.
launch() {
  local name="$1" nproc="$2" prefix="$3" dir="$WORK_DIR/$1"; shift 3
  if dry; then exec 3>&1; else exec 3>>"${LOG_TO:-$dir/train.log}"; fi
  ( LAUNCH_PREFIX="$prefix" AMP=0 MODEL_SAVE_DIR="$dir/ckpt" \
      launch_dlrm "$data" "$dir/persistent" "$nproc" 1 0 127.0.0.1 "" "${COMMON[@]}" "$@" "${EXTRA[@]}" ) >&3 2>&1
}

start_check() {  # start_check NAME: a fresh WORK_DIR/NAME
  CHECKS+=("$1")
  dry && return 0
  rm -rf -- "${WORK_DIR:?}/$1"
  mkdir -p "$WORK_DIR/$1"
  note "check $1 ..."
}

# A timed run: in a process session of its own (scripts/in_session.sh), whatever is left of it
# killed when it ends (a rank the launcher could not stop, e.g. waiting in NCCL for one that died,
# would hold its GPU and its store's LOCK), with a timeout (which kills its whole process group).
TIMED="$REPO/scripts/in_session.sh timeout -s KILL $CHECK_TIMEOUT"

# check NAME NPROC ARGS...: one timed run.
check() {
  local name="$1" nproc="$2" rc=0; shift 2
  start_check "$name"
  launch "$name" "$nproc" "$TIMED" "$@" || rc=$?
  dry || echo "$rc" >"$WORK_DIR/$name/exit_code"
}

# check_kill_resume: device_mem's run with a checkpoint at STEPS/2, killed (SIGKILL to its process
# group) once that checkpoint is saved, then the same command with --resume.
check_kill_resume() {
  local name=kill_resume dir="$WORK_DIR/kill_resume" pid line rc=0
  local args=(--store_type device_mem --save_interval "$half")
  start_check "$name"
  if dry; then
    launch "$name" 1 "" "${args[@]}"
  else
    # Its output comes through a FIFO, read line by line, so that it is killed (SIGKILL to its own
    # process group) right when the checkpoint is logged, before it trains much further.
    mkfifo "$dir/log.fifo"
    set -m
    LOG_TO="$dir/log.fifo" launch "$name" 1 "" "${args[@]}" &
    pid=$!
    set +m
    local deadline=$((SECONDS + CHECK_TIMEOUT))  # its timeout: a read that waits too long ends it
    while (( SECONDS < deadline )) && IFS= read -r -t "$((deadline - SECONDS))" line; do
      printf '%s\n' "$line" >>"$dir/train.log"
      [[ "$line" =~ Saved\ checkpoint\ .*/step_$half, ]] && break
    done <"$dir/log.fifo"
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    rm -f "$dir/log.fifo"
    echo "---- killed after the step $half checkpoint; resuming ----" >>"$dir/train.log"
  fi
  launch "$name" 1 "$TIMED" "${args[@]}" --resume || rc=$?
  dry || echo "$rc" >"$dir/exit_code"
}

check device_mem 1 --store_type device_mem
check cached_host_mem 1 --store_type cached_host_mem
check cached_ssd 1 --store_type cached_ssd
check amp_static 1 --store_type device_mem --amp --loss_scale_policy static
check amp_dynamic 1 --store_type device_mem --amp --loss_scale_policy dynamic
check_kill_resume
if (( GPU_COUNT >= 2 )); then
  check 2gpu 2 --store_type device_mem
else
  start_check 2gpu
  dry || echo "1 GPU visible ($GPU_PROBE_NOTE)" >"$WORK_DIR/2gpu/skipped"
fi

dry && exit 0
echo
"$PY" -m dlrm.gpu_report "$WORK_DIR" "$STEPS" "${CHECKS[@]}"
