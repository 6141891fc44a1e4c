#!/usr/bin/env bash
# Quickstart: the whole pipeline on a small synthetic Criteo dataset, in a few minutes on a laptop
# (2 CPU cores) -- or on your GPUs when nvidia-smi lists any:
#   1. set up the Python environment (scripts/setup_env.sh)
#   2. generate synthetic raw Criteo days with a planted click model (tools/make_synthetic_criteo.py)
#   3. preprocess them into parquet with a local Spark (tools/criteo1t_parquet.py)
#   4. train and evaluate DLRM (launch_dlrm of scripts/common.sh: oneflow.distributed.launch ... dlrm_train_eval.py)
#   5. plot the metrics (tools/plot_metrics.py)
#   6. score the test split's rows, given as raw text, with the final checkpoints (dlrm_predict.py: the mean of
#      the MODELS models' probabilities)
# (the small Python steps in between -- reuse checks, summaries -- are `python -m dlrm.quickstart`)
#
# usage: scripts/quickstart.sh [extra dlrm_train_eval.py args...]
#        WORK_DIR=/tmp/qs TRAIN_BATCHES=2000 scripts/quickstart.sh
#        RAW_DIR=/data/criteo_kaggle scripts/quickstart.sh     # your own raw data (train.txt or day_N)
#
# Environment (defaults in brackets):
#   WORK_DIR          everything goes here [./runs/quickstart]: raw/ (synthetic days), parquet/
#                     (the dataset), train/<time>/ (one directory per training run: checkpoints,
#                     metrics.jsonl, metrics.png, summary.json, train.log), train/latest -> newest
#   RAW_DIR           use these raw files instead of generating synthetic ones
#   DAYS, ROWS_PER_DAY, SEED   synthetic data shape [3, 300000, 0]: days 0..DAYS-2 train, the
#                     last day is split into test and val
#   NUM_TEST_EXAMPLES rows of the last day that go to test [half of it]
#   TRAIN_FILES, EVAL_FILES    parquet files per split [16, 4]
#   DRIVER_MEMORY_GB  Spark driver memory [4]
#   MIN_FREQUENCY     vocabulary ids: values seen fewer times in train share one id per column [2]
#   SHUFFLE_PARTITIONS  Spark shuffle partitions [4; Spark's 200 only add overhead at this size]
#   OVERWRITE=1       regenerate raw/ and rebuild parquet/ even if they exist. Without it an existing
#                     dataset is reused when it was built from the same raw files and settings
#                     (recorded in WORK_DIR/parquet.stamp), and anything else in the way stops the
#                     script with a message -- nothing is replaced silently.
#   NPROC             training processes [number of GPUs nvidia-smi -L lists, else 2 on CPU]
#   EPOCHS [1], TRAIN_BATCHES [EPOCHS passes over train], EVAL_INTERVAL [a quarter of the run],
#   EVAL_BATCHES [the whole test split], LOSS_PRINT_INTERVAL [50],
#   TRAIN_BATCH_SIZE [256], EVAL_BATCH_SIZE [1000] (global; rounded up to a multiple of NPROC),
#   OPTIMIZER [adagrad], LEARNING_RATE [0.02], WARMUP_BATCHES [0], DECAY_START [TRAIN_BATCHES: flat],
#   DECAY_BATCHES [1], INTERACTION_TYPE [dot; dcn: 2 cross layers of rank 64; the same as the argument
#                     --interaction_type dcn]
#   MODELS            models trained, with --seed 1..MODELS [3]: the first in the run directory (evaluated
#                     every EVAL_INTERVAL, plotted), the others in its model_N/ (evaluated at the end); the
#                     predictions are the mean of their probabilities
#   PY                python to use [the venv of scripts/setup_env.sh]
# The recipe, chosen on real click rows (docs/training.md, "A recipe for small real data"): vocabulary ids
# with values seen once folded (MIN_FREQUENCY 2), one epoch (CTR models overfit from the second
# epoch on), Adagrad at 0.02 (per-row step sizes for sparse ids; on CPU only the rows a batch
# touches are updated) in batches of 256, evaluation on the whole test split, three models (seeds)
# whose probabilities are averaged (on small data one model's AUC varies by a few thousandths
# from seed to seed; the mean of three scored ~0.003 higher). The model is small
# (embedding 32, bottom MLP 64,32, top MLP 64,32, dot interaction); on GPUs OneEmbedding gets --persistent_path RUN_DIR/persistent
# --store_type device_mem. Extra arguments go to dlrm_train_eval.py last, so they override anything here.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
wants_help "$@" && usage

T0=$SECONDS
STAGE=0
banner() {
  STAGE=$((STAGE + 1))
  local t=$((SECONDS - T0))
  printf '\n==== [%d/6] %s  (t=%dm%02ds) ====\n' "$STAGE" "$1" $((t / 60)) $((t % 60))
}
elapsed() { local t=$((SECONDS - T0)); printf '%dm%02ds' $((t / 60)) $((t % 60)); }

WORK_DIR="$(abspath "${WORK_DIR:-./runs/quickstart}")"
DAYS="${DAYS:-3}" ROWS_PER_DAY="${ROWS_PER_DAY:-300000}" SEED="${SEED:-0}"
TRAIN_FILES="${TRAIN_FILES:-16}" EVAL_FILES="${EVAL_FILES:-4}" DRIVER_MEMORY_GB="${DRIVER_MEMORY_GB:-4}"
SHUFFLE_PARTITIONS="${SHUFFLE_PARTITIONS:-4}" MIN_FREQUENCY="${MIN_FREQUENCY:-2}"
EPOCHS="${EPOCHS:-1}" LOSS_PRINT_INTERVAL="${LOSS_PRINT_INTERVAL:-50}"
OPTIMIZER="${OPTIMIZER:-adagrad}" LEARNING_RATE="${LEARNING_RATE:-0.02}" WARMUP_BATCHES="${WARMUP_BATCHES:-0}"
# --interaction_type among the arguments and INTERACTION_TYPE are one setting: either gets the recipe's
# cross layers with dcn (extra --dcn_* flags still override them)
INTERACTION_TYPE="$(one_setting INTERACTION_TYPE "${INTERACTION_TYPE:-}" --interaction_type "$@")" || exit 2
INTERACTION_TYPE="${INTERACTION_TYPE:-dot}" MODELS="${MODELS:-3}"
[[ "$INTERACTION_TYPE" == dot || "$INTERACTION_TYPE" == dcn ]] \
  || die "INTERACTION_TYPE must be dot or dcn, not '$INTERACTION_TYPE'" 2
for v in DAYS ROWS_PER_DAY SEED TRAIN_FILES EVAL_FILES DRIVER_MEMORY_GB SHUFFLE_PARTITIONS MIN_FREQUENCY \
         LOSS_PRINT_INTERVAL WARMUP_BATCHES; do
  need_int "$v" "${!v}"
done
need_int MODELS "$MODELS" 1
[[ "$EPOCHS" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "EPOCHS must be a positive number, not '$EPOCHS'" 2
OVERWRITE="${OVERWRITE:-0}"
if [[ -n "${RAW_DIR:-}" ]]; then
  need_dir RAW_DIR "$RAW_DIR"
  RAW_DIR="$(abspath "$RAW_DIR")"
fi
mkdir -p "$WORK_DIR" || die "cannot create WORK_DIR $WORK_DIR" 2
echo "quickstart: work directory $WORK_DIR"

# ------------------------------------------------------------------------------------------
banner "Python environment (scripts/setup_env.sh)"
PY="$(dlrm_python)"
quickstart() { "$PY" -m dlrm.quickstart "$@"; }  # the Python steps (dlrm/quickstart.py)
quickstart versions 2>/dev/null \
  || die "the Python environment $PY does not import oneflow and pyspark"
require_java
echo "java: $(java -version 2>&1 | head -n1)"

# ------------------------------------------------------------------------------------------
if [[ -n "${RAW_DIR:-}" ]]; then
  banner "raw data: using RAW_DIR=$RAW_DIR (generation skipped)"
  raw="$RAW_DIR"
  ls -la "$raw" | sed -n '2,12p'
else
  raw="$WORK_DIR/raw"
  banner "raw data: $DAYS synthetic days x $ROWS_PER_DAY rows -> $raw"
  if [[ "$OVERWRITE" != 1 ]] && quickstart same-raw "$raw" "$DAYS" "$ROWS_PER_DAY" "$SEED"; then
    echo "reusing the synthetic data in $raw (same DAYS/ROWS_PER_DAY/SEED; OVERWRITE=1 regenerates it)"
  else
    gen=(--output_dir "$raw" --days "$DAYS" --rows_per_day "$ROWS_PER_DAY" --seed "$SEED")
    if [[ -d "$raw" && -n "$(ls -A "$raw")" ]]; then
      [[ "$OVERWRITE" == 1 ]] || die "$raw holds other raw data (not DAYS=$DAYS ROWS_PER_DAY=$ROWS_PER_DAY SEED=$SEED); set OVERWRITE=1 to regenerate it, or use another WORK_DIR" 2
      gen+=(--overwrite)
    fi
    "$PY" "$REPO/tools/make_synthetic_criteo.py" "${gen[@]}"
  fi
fi

# ------------------------------------------------------------------------------------------
parquet="$WORK_DIR/parquet"
banner "preprocess with local Spark -> $parquet"
last_day="$(ls "$raw" | grep -E '^day_[0-9]+(\.gz)?$' | sort -t_ -k2 -n | tail -n1 || true)"
if [[ -z "${NUM_TEST_EXAMPLES:-}" ]]; then
  if [[ -z "$last_day" ]]; then
    NUM_TEST_EXAMPLES=0  # kaggle layout (train.txt): the tool's own 6/7 : 1/14 : 1/14 split
  elif [[ -z "${RAW_DIR:-}" ]]; then
    NUM_TEST_EXAMPLES=$((ROWS_PER_DAY / 2))
  else
    echo "counting the lines of $last_day to put half of them in test (set NUM_TEST_EXAMPLES to skip)"
    if [[ "$last_day" == *.gz ]]; then n=$(gzip -dc "$raw/$last_day" | wc -l); else n=$(wc -l <"$raw/$last_day"); fi
    NUM_TEST_EXAMPLES=$((n / 2))
  fi
fi
need_int NUM_TEST_EXAMPLES "$NUM_TEST_EXAMPLES"
# The dataset's identity: the raw files (name, size, mtime) and every setting that changes the output.
stamp="$( { echo "num_test=$NUM_TEST_EXAMPLES train_files=$TRAIN_FILES eval_files=$EVAL_FILES min_frequency=$MIN_FREQUENCY"
            (cd "$raw" && ls | { grep -E '^(day_[0-9]+(\.gz)?|train\.txt(\.gz)?)$' || true; } | sort | xargs -r stat -L -c '%n %s %Y'); } \
          | sha256sum | cut -c1-16)"
pre=(--input_dir "$raw" --output_dir "$parquet" --spark_master "local[$(nproc 2>/dev/null || echo 2)]"
     --spark_driver_memory_gb "$DRIVER_MEMORY_GB" --train_files "$TRAIN_FILES" --eval_files "$EVAL_FILES"
     --num_test_examples "$NUM_TEST_EXAMPLES" --shuffle_partitions "$SHUFFLE_PARTITIONS" --export_dataset_info)
(( MIN_FREQUENCY > 0 )) && pre+=(--min_frequency "$MIN_FREQUENCY")
if [[ -f "$parquet/dataset_info.json" && -f "$WORK_DIR/parquet.stamp" && "$(cat "$WORK_DIR/parquet.stamp")" == "$stamp" \
      && "$OVERWRITE" != 1 ]]; then
  echo "reusing the dataset in $parquet (built from the same raw files and settings; OVERWRITE=1 rebuilds it)"
else
  if [[ -d "$parquet" && -n "$(ls -A "$parquet")" ]]; then
    [[ "$OVERWRITE" == 1 ]] || die "$parquet holds a dataset built from other raw data or settings (or an unfinished one); set OVERWRITE=1 to rebuild it, or use another WORK_DIR" 2
    echo "OVERWRITE=1: rebuilding $parquet (the old one is replaced once the new one is complete)"
    pre+=(--overwrite)
  fi
  rm -f "$WORK_DIR/parquet.stamp"
  "$PY" "$REPO/tools/criteo1t_parquet.py" "${pre[@]}" 2>&1 | tee "$WORK_DIR/preprocess.log" \
    | sed -u -E '/^(WARNING: Using incubator|Setting default log level|To adjust logging level|Using Spark.s default log4j)/d'
  echo "$stamp" >"$WORK_DIR/parquet.stamp"
fi
quickstart dataset "$parquet"

# ------------------------------------------------------------------------------------------
probe_gpus
if [[ -n "${NPROC:-}" ]]; then
  need_int NPROC "$NPROC" 1
  nproc_train="$NPROC"
elif (( GPU_COUNT > 0 )); then
  nproc_train="$GPU_COUNT"
else
  nproc_train=2
fi
round_up() { echo $(( ($1 + $2 - 1) / $2 * $2 )); }
TRAIN_BATCH_SIZE="${TRAIN_BATCH_SIZE:-$(round_up 256 "$nproc_train")}"
EVAL_BATCH_SIZE="${EVAL_BATCH_SIZE:-$(round_up 1000 "$nproc_train")}"
TRAIN_BATCHES="${TRAIN_BATCHES:-$(quickstart batches "$parquet" train "$TRAIN_BATCH_SIZE" "$EPOCHS")}"
EVAL_BATCHES="${EVAL_BATCHES:-$(quickstart batches "$parquet" test "$EVAL_BATCH_SIZE" 1)}"
need_int TRAIN_BATCHES "$TRAIN_BATCHES" 1
EVAL_INTERVAL="${EVAL_INTERVAL:-$(( (TRAIN_BATCHES + 3) / 4 ))}"
DECAY_START="${DECAY_START:-$TRAIN_BATCHES}" DECAY_BATCHES="${DECAY_BATCHES:-1}"
for v in EVAL_BATCHES EVAL_INTERVAL DECAY_START; do need_int "$v" "${!v}"; done
need_int DECAY_BATCHES "$DECAY_BATCHES" 1
run_dir="$WORK_DIR/train/$(date +%Y%m%d-%H%M%S)"
mkdir -p "$run_dir"
ln -sfn "$(basename "$run_dir")" "$WORK_DIR/train/latest"
where="CPU ($GPU_PROBE_NOTE)"
train=(--model_save_dir "$run_dir" --metrics_file "$run_dir/metrics.jsonl"
       --bottom_mlp 64,32 --embedding_vec_size 32 --top_mlp 64,32 --interaction_type "$INTERACTION_TYPE"
       --train_batch_size "$TRAIN_BATCH_SIZE" --eval_batch_size "$EVAL_BATCH_SIZE"
       --optimizer "$OPTIMIZER" --learning_rate "$LEARNING_RATE" --warmup_batches "$WARMUP_BATCHES"
       --decay_start "$DECAY_START" --decay_batches "$DECAY_BATCHES" --train_batches "$TRAIN_BATCHES"
       --eval_interval "$EVAL_INTERVAL" --eval_batches "$EVAL_BATCHES" --loss_print_interval "$LOSS_PRINT_INTERVAL")
[[ "$INTERACTION_TYPE" == dcn ]] && train+=(--dcn_num_layers 2 --dcn_low_rank_dim 64)
persistent=""  # CPU: no --persistent_path
if (( GPU_COUNT > 0 )); then
  where="$GPU_COUNT GPU(s)"
  # OneEmbedding: the tables are tiny here, so keep them in GPU memory (no 8 GB host cache per GPU)
  persistent="$run_dir/persistent"
  train+=(--store_type device_mem)
fi
banner "train and evaluate: $MODELS model(s), $nproc_train process(es) on $where, $TRAIN_BATCHES steps each -> $run_dir"
model_dirs=()
for ((m = 1; m <= MODELS; m++)); do
  dir="$run_dir"
  seed_args=(--seed "$m")
  if (( m > 1 )); then
    dir="$run_dir/model_$m"
    seed_args+=(--model_save_dir "$dir" --metrics_file "$dir/metrics.jsonl" --eval_interval "$TRAIN_BATCHES")
    [[ -n "$persistent" ]] && persistent="$dir/persistent"
    mkdir -p "$dir"
  fi
  model_dirs+=("$dir")
  echo "model $m of $MODELS (--seed $m) -> $dir"
  # launch_dlrm execs: here it runs in the pipeline's subshell, so the script goes on afterwards.
  # AMP and MODEL_SAVE_DIR (read by launch_dlrm for the other launch scripts) are not quickstart settings.
  AMP=0 MODEL_SAVE_DIR="" launch_dlrm "$parquet" "$persistent" "$nproc_train" 1 0 127.0.0.1 "${MASTER_PORT:-}" \
      "${train[@]}" "${seed_args[@]}" "$@" 2>&1 \
    | tee "$dir/train.log" | sed -u -E '/^(libibverbs not available|[WE][0-9]{8} .*(cuda_device_descriptor|cuda_device_manager_factory))/d'
done

# ------------------------------------------------------------------------------------------
banner "plot the metrics (tools/plot_metrics.py)"
plot=(--output "$run_dir/metrics.png")
planted="$(quickstart planted-auc "$raw")"  # empty without a planted model (RAW_DIR)
if [[ -n "$planted" ]]; then
  plot+=(--reference_auc "$planted" --reference_label "planted model (test day)")
fi
if [[ -n "${RAW_DIR:-}" ]]; then data="$RAW_DIR"; else data="synthetic Criteo, $DAYS days x $ROWS_PER_DAY rows"; fi
"$PY" "$REPO/tools/plot_metrics.py" "$run_dir/metrics.jsonl" "${plot[@]}" \
  --title "quickstart: $data; $nproc_train process(es) on ${where%% (*}"

# ------------------------------------------------------------------------------------------
ckpts=()
for dir in "${model_dirs[@]}"; do
  c="$(ls -d "$dir"/step_* 2>/dev/null | sort -t_ -k2 -n | tail -n1 || true)"
  [[ -n "$c" ]] && ckpts+=("$c")
done
ckpt="${ckpts[0]:-}"
predictions=""
if [[ -n "$ckpt" ]]; then
  banner "score the test rows as raw text with ${#ckpts[@]} model(s) (dlrm_predict.py) -> $run_dir/predictions.csv"
  quickstart test-rows "$raw" "$parquet" "$WORK_DIR/test_rows.tsv"
  "$PY" -m oneflow.distributed.launch --nproc_per_node "$nproc_train" --master_port "$(free_port "$PY")" \
      "$REPO/dlrm_predict.py" --model_load_dir "${ckpts[@]}" --input "$WORK_DIR/test_rows.tsv" \
      --output "$run_dir/predictions.csv" --spark_master "local[$(nproc 2>/dev/null || echo 2)]" \
      --spark_driver_memory_gb "$DRIVER_MEMORY_GB" 2>&1 | tee "$run_dir/predict.log" \
    | sed -u -E '/^(libibverbs not available|[WE][0-9]{8} .*(cuda_device_descriptor|cuda_device_manager_factory)|WARNING: Using incubator|Setting default log level|To adjust logging level|Using Spark.s default log4j|.* WARN )/d'
  predictions="$run_dir/predictions.csv"
fi
printf '\n==== quickstart done in %s ====\n' "$(elapsed)"
echo "dataset:      $parquet"
echo "checkpoints:  ${ckpts[*]:-none written}"
echo "metrics:      $run_dir/metrics.jsonl (training log: $run_dir/train.log)"
echo "plot:         $run_dir/metrics.png (summary: $run_dir/summary.json)"
echo "predictions:  ${predictions:-none (no checkpoint)} (the test rows scored as raw text; log: $run_dir/predict.log)"
quickstart summary "$run_dir" "$raw"
if [[ -n "$predictions" ]]; then
  echo "predictions' $(grep -o 'AUC [0-9.]*' "$run_dir/predict.log" | tail -n1) on the test rows (the mean of ${#ckpts[@]} model(s))"
fi
