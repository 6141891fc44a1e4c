# Shared helpers for the launch scripts in scripts/ -- source it, do not run it:
#     source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
#
# Conventions: errors are one line "error: ..." on stderr and exit 2 (usage: missing argument,
# missing path, wrong GPU count) or 1; progress goes to stderr; DRY_RUN=1 makes run_cmd print the
# final command (shell-quoted) instead of running it.
#
# Environment read here:
#   PY                     python to run with (default: the venv from scripts/setup_env.sh)
#   DRY_RUN=1              print the command instead of running it
#   CUDA_VISIBLE_DEVICES   limits the GPUs counted by probe_gpus

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SCRIPT_NAME="$(basename "${BASH_SOURCE[1]:-$0}")"

die() {  # die MESSAGE [EXIT_CODE]
  echo "error: $SCRIPT_NAME: $1" >&2
  exit "${2:-1}"
}

note() { echo "[$SCRIPT_NAME] $*" >&2; }

# Print the usage comment at the top of the calling script (or of script $1) -- the lines after
# the shebang that start with '#', up to the first line that does not -- and exit 0.
usage() {
  local script="${1:-${BASH_SOURCE[1]}}"
  sed -n '2,/^[^#]/{/^#/!q;s/^# \{0,1\}//;p}' "$script"
  exit 0
}

# wants_help "$@": true when the first argument is -h or --help.
wants_help() { [[ "${1:-}" == "-h" || "${1:-}" == "--help" ]]; }

# need_args COUNT "$@": fail with the usage line when fewer than COUNT positional arguments.
need_args() {
  local want="$1"; shift
  if (( $# < want )); then
    die "expected $want path argument(s), got $# (run with -h for usage)" 2
  fi
}

# take_paths N "$@": -h/--help prints the calling script's usage; else the N path arguments go to
# PATHS and the rest to ARGS (passed on last, so they override).
take_paths() {
  local n="$1"; shift
  wants_help "$@" && usage "${BASH_SOURCE[1]}"
  need_args "$n" "$@"
  PATHS=("${@:1:n}")
  ARGS=("${@:n+1}")
}

# check_gpu_run DATA_DIR PERSISTENT_PATH NGPUS: what every GPU launcher checks before launching.
check_gpu_run() {
  need_dir DATA_DIR "$1"
  require_gpus "$3"
  make_dir PERSISTENT_PATH "$2"
}

# launch_one_node NGPUS SETTINGS...: the body of a single-node GPU launcher after take_paths: PATHS
# (DATA_DIR, PERSISTENT_PATH) checked for NGPUS GPUs, then launch_dlrm with the script's SETTINGS
# and its extra arguments (ARGS) last, so they override.
launch_one_node() {
  local n="$1"; shift
  check_gpu_run "${PATHS[@]}" "$n"
  launch_dlrm "${PATHS[@]}" "$n" 1 0 127.0.0.1 "${MASTER_PORT:-}" "$@" "${ARGS[@]}"
}

# check_output_dir OUTPUT_DIR ARGS...: a preprocessing output must be new or empty, unless ARGS
# hold --overwrite.
check_output_dir() {
  local output="$1"; shift
  if [[ -d "$output" && -n "$(ls -A -- "$output" 2>/dev/null)" ]] && ! has_flag --overwrite "$@"; then
    die "OUTPUT_DIR $output exists and is not empty; pass --overwrite to replace it (or choose another directory)" 2
  fi
  [[ -e "$output" && ! -d "$output" ]] && die "OUTPUT_DIR $output exists and is not a directory" 2
  return 0
}

need_dir() {  # need_dir WHAT PATH : PATH must be an existing directory
  [[ -n "$2" ]] || die "$1 is empty (run with -h for usage)" 2
  [[ -e "$2" ]] || die "$1 $2 does not exist" 2
  [[ -d "$2" ]] || die "$1 $2 is not a directory" 2
}

need_env() {  # need_env NAME... : each variable must be set and non-empty
  local v
  for v in "$@"; do
    [[ -n "${!v:-}" ]] || die "environment variable $v is required (run with -h for usage)" 2
  done
}

need_int() {  # need_int NAME VALUE [MIN]
  [[ "$2" =~ ^[0-9]+$ ]] || die "$1 must be a non-negative integer, not '$2'" 2
  (( $2 >= ${3:-0} )) || die "$1 must be >= ${3:-0}, not $2" 2
}

# make_dir WHAT PATH: create PATH (and parents) or fail in one line.
make_dir() {
  [[ -n "$2" ]] || die "$1 is empty (run with -h for usage)" 2
  mkdir -p -- "$2" 2>/dev/null || die "$1 $2 cannot be created (parent missing or not writable)" 2
  [[ -w "$2" ]] || die "$1 $2 is not writable" 2
}

abspath() { realpath -m -- "$1" 2>/dev/null || echo "$1"; }  # also for paths that do not exist yet

# has_flag FLAG ARGS...: true when FLAG (e.g. --overwrite) is among ARGS (also --flag=value).
# flag_value FLAG ARGS...: the value of the last FLAG among ARGS (`FLAG V` or `FLAG=V`), or nothing
flag_value() {
  local flag="$1" value="" prev=""; shift
  for a in "$@"; do
    [[ "$prev" == "$flag" ]] && value="$a"
    [[ "$a" == "$flag="* ]] && value="${a#"$flag"=}"
    prev="$a"
  done
  printf '%s' "$value"
}

# one_setting NAME VARIABLE_VALUE FLAG ARGS...: a setting a script takes as an environment variable or as
# a flag among its arguments, as one value: the flag's if given (a variable that says otherwise is an
# error), else the variable's (maybe empty)
one_setting() {
  local name="$1" var="$2" flag="$3" given; shift 3
  given="$(flag_value "$flag" "$@")"
  if [[ -n "$given" && -n "$var" && "$given" != "$var" ]]; then
    die "$name=$var and $flag $given disagree: give the setting once" 2
  fi
  printf '%s' "${given:-$var}"
}

has_flag() {
  local flag="$1" a; shift
  for a in "$@"; do [[ "$a" == "$flag" || "$a" == "$flag="* ]] && return 0; done
  return 1
}

# ------------------------------------------------------------------------------------ GPUs
# probe_gpus: set NVIDIA_GPUS to the number of GPUs `nvidia-smi -L` lists (0 without a working
# nvidia-smi), GPU_COUNT to how many of them are usable here (limited by CUDA_VISIBLE_DEVICES
# when set) and GPU_PROBE_NOTE to how that was found.
probe_gpus() {
  local out
  NVIDIA_GPUS=0
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    GPU_PROBE_NOTE="nvidia-smi not found: no NVIDIA driver on this machine"
  elif ! out="$(nvidia-smi -L 2>&1)"; then
    GPU_PROBE_NOTE="nvidia-smi -L failed: $(head -n1 <<<"$out")"
  else
    NVIDIA_GPUS="$(grep -c '^GPU ' <<<"$out" || true)"  # MIG devices are indented sub-lines
    GPU_PROBE_NOTE="nvidia-smi -L lists $NVIDIA_GPUS"
  fi
  GPU_COUNT=$NVIDIA_GPUS
  if [[ -n "${CUDA_VISIBLE_DEVICES+x}" ]]; then
    local visible=0
    [[ -n "$CUDA_VISIBLE_DEVICES" ]] && visible="$(tr ',' '\n' <<<"$CUDA_VISIBLE_DEVICES" | grep -c . || true)"
    (( visible < GPU_COUNT )) && GPU_COUNT=$visible
    GPU_PROBE_NOTE="$GPU_PROBE_NOTE, CUDA_VISIBLE_DEVICES='$CUDA_VISIBLE_DEVICES'"
  fi
  return 0
}

# require_gpus N [quiet]: fail unless at least N GPUs are usable; note when more are (only N are
# used), unless quiet.
require_gpus() {
  probe_gpus
  if (( GPU_COUNT < $1 )); then
    die "asked for $1 GPU(s) but found $GPU_COUNT ($GPU_PROBE_NOTE)" 2
  fi
  if (( GPU_COUNT > $1 )) && [[ "${2:-}" != quiet ]]; then
    note "note: $GPU_COUNT GPUs visible, using the first $1 (set CUDA_VISIBLE_DEVICES to choose)"
  fi
  return 0
}

# ------------------------------------------------------------------------------------ python
# dlrm_python: the interpreter to use: $PY when set, else the venv of scripts/setup_env.sh
# (created on first use).
dlrm_python() {
  if [[ -n "${PY:-}" ]]; then
    [[ -x "$PY" ]] || command -v "$PY" >/dev/null 2>&1 || die "PY=$PY is not an executable python" 2
    echo "$PY"; return
  fi
  bash "$REPO/scripts/setup_env.sh" || die "could not set up the Python environment (scripts/setup_env.sh failed)"
}

# require_java: a Java that Spark runs on, for what the script starts: the machine's when it is 17+,
# else the environment's JDK (dlrm/java.py), exported as JAVA_HOME and first on PATH.
require_java() {
  local home
  home="$("$(dlrm_python)" -m dlrm.java)" || exit 2
  if [[ -n "$home" ]]; then
    export JAVA_HOME="$home" PATH="$home/bin:$PATH"
  fi
}

# free_port: an unused local TCP port (for single-node launches, so concurrent jobs do not clash).
free_port() {
  "${1:-python3}" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' \
    2>/dev/null || echo 29500
}

# physical_memory_gb: this machine's RAM in whole GB (GiB).
physical_memory_gb() { awk '/^MemTotal:/ {printf "%d\n", $2 / 1048576}' /proc/meminfo 2>/dev/null || echo 8; }

# run_cmd CMD...: print the command, then exec it (or only print it with DRY_RUN=1).
# launch_dlrm DATA_DIR PERSISTENT_PATH NPROC NNODES NODE_RANK MASTER_ADDR MASTER_PORT [ARGS...]:
# one dlrm_train_eval.py process per GPU via oneflow.distributed.launch; AMP=1 and
# MODEL_SAVE_DIR add --amp / --model_save_dir; ARGS go last (so they override). An empty
# PERSISTENT_PATH leaves --persistent_path out; an empty MASTER_PORT picks a free one;
# LAUNCH_PREFIX (words, e.g. "ip netns exec ns0") goes before the python. It execs (run_cmd): run
# it in a subshell or a pipeline to go on afterwards.
launch_dlrm() {
  local data_dir="$1" persistent="$2" nproc="$3" nnodes="$4" node_rank="$5" addr="$6" port="$7"
  shift 7
  local py extra=()
  py="$(dlrm_python)"
  [[ -n "$persistent" ]] && extra+=(--persistent_path "$persistent")
  [[ "${AMP:-0}" == "1" ]] && extra+=(--amp)
  [[ -n "${MODEL_SAVE_DIR:-}" ]] && extra+=(--model_save_dir "$MODEL_SAVE_DIR")
  [[ -n "$port" ]] || port="$(free_port "$py")"
  # shellcheck disable=SC2086  # LAUNCH_PREFIX is words
  run_cmd ${LAUNCH_PREFIX:-} "$py" -m oneflow.distributed.launch --nproc_per_node "$nproc" --nnodes "$nnodes" \
    --node_rank "$node_rank" --master_addr "$addr" --master_port "$port" \
    "$REPO/dlrm_train_eval.py" --data_dir "$data_dir" "${extra[@]}" "$@"
}

run_cmd() {
  local q; q="$(printf '%q ' "$@")"
  if [[ "${DRY_RUN:-0}" == "1" ]]; then
    echo "${q% }"
    exit 0
  fi
  note "running: ${q% }"
  exec "$@"
}
