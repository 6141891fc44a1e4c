#!/usr/bin/env bash
# Try multi-node training on one machine: two Linux network namespaces joined by a veth pair act as
# two nodes. (OneFlow groups ranks into nodes by host address, so two `--nnodes 2` launches on
# 127.0.0.1 both become node 0 and hang; in the namespaces each node has its own address.)
# Needs root (`ip netns`). Meant for CPU training, one process per node: on a GPU machine both
# "nodes" would see the same GPUs.
#
# usage: scripts/try_multinode_netns.sh run DATA_DIR WORK_DIR [extra dlrm_train_eval.py args...]
#            up; train on 2 nodes, node K in WORK_DIR/nodeK with its own checkpoints in
#            WORK_DIR/nodeK/checkpoints (a relative --model_save_dir: node-local); down.
#            Only node 0 (rank 0) writes: WORK_DIR/node0/checkpoints/ holds the checkpoints and
#            metrics.jsonl; rerun with --resume to continue from them.
#        scripts/try_multinode_netns.sh up          create the namespaces NAME0, NAME1 (lo up, veth pair)
#        scripts/try_multinode_netns.sh down        remove them (ending processes still inside them)
#        scripts/try_multinode_netns.sh exec K CMD...   run CMD as node K (0 or 1), in its namespace
#
# Environment:
#   NETNS_NAME     prefix of the names [dlrmnode]: namespaces NAME0, NAME1, veth ends NAMEv0, NAMEv1
#                  (at most 12 characters)
#   NETNS_SUBNET   the first three octets of the /24 between them [10.231.0]: node 0 (the master) is
#                  SUBNET.1, node 1 is SUBNET.2 (these addresses exist only inside the namespaces)
#   MASTER_PORT    rendezvous port on node 0 [29500]
#   PY             python to use (default: the venv of scripts/setup_env.sh)
#   DRY_RUN=1      print the commands instead of running them
#
# Example (a few seconds per 100 steps on a laptop):
#   sudo scripts/try_multinode_netns.sh run /data/parquet /tmp/mn --train_batches 300 --save_interval 100
#   sudo scripts/try_multinode_netns.sh run /data/parquet /tmp/mn --train_batches 600 --resume
# Exit codes: 2 usage, 3 network namespaces not permitted here (not root, no `ip`, a container
# without CAP_SYS_ADMIN), else training's own.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
wants_help "$@" && usage

NAME="${NETNS_NAME:-dlrmnode}" SUBNET="${NETNS_SUBNET:-10.231.0}" PORT="${MASTER_PORT:-29500}"
[[ "$NAME" =~ ^[A-Za-z][A-Za-z0-9_-]{0,11}$ ]] || die "NETNS_NAME '$NAME' must be 1-12 letters, digits, - or _" 2
[[ "$SUBNET" =~ ^[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$ ]] || die "NETNS_SUBNET '$SUBNET' must be three octets, e.g. 10.231.0" 2
need_int MASTER_PORT "$PORT" 1

ns() { echo "$NAME$1"; }            # the namespace of node $1
addr() { echo "$SUBNET.$(($1 + 1))"; }  # the address of node $1

ip_cmd() {  # ip ARGS, or only printed with DRY_RUN=1
  if [[ "${DRY_RUN:-0}" == "1" ]]; then echo "ip $*"; else ip "$@"; fi
}

netns_down() {
  local k pids
  for k in 0 1; do
    ip netns list 2>/dev/null | grep -qw "^$(ns "$k")" || continue
    pids="$(ip netns pids "$(ns "$k")" 2>/dev/null || true)"
    [[ -n "$pids" ]] && kill -KILL $pids 2>/dev/null || true  # processes started in it (ours)
    ip netns del "$(ns "$k")" || true  # its veth end goes with it, and so the peer
  done
}

netns_up() {
  if [[ "${DRY_RUN:-0}" != "1" ]]; then
    command -v ip >/dev/null 2>&1 || die "network namespaces not available: no 'ip' command (iproute2)" 3
    (( EUID == 0 )) || die "network namespaces need root (ip netns add); run with sudo" 3
    ip netns list 2>/dev/null | grep -qw "^$(ns 0)" && die "namespace $(ns 0) exists already (run '$SCRIPT_NAME down', or set NETNS_NAME)" 2
  fi
  local out k
  if ! out="$( { ip_cmd netns add "$(ns 0)" && ip_cmd netns add "$(ns 1)" \
        && ip_cmd link add "${NAME}v0" netns "$(ns 0)" type veth peer name "${NAME}v1" netns "$(ns 1)" \
        && for k in 0 1; do
             ip_cmd -n "$(ns "$k")" addr add "$(addr "$k")/24" dev "${NAME}v$k" \
             && ip_cmd -n "$(ns "$k")" link set "${NAME}v$k" up \
             && ip_cmd -n "$(ns "$k")" link set lo up || exit 1
           done; } 2>&1)"; then
    netns_down
    die "network namespaces not permitted here: $(grep -v '^ip ' <<<"$out" | head -n1)" 3
  fi
  [[ -n "$out" ]] && echo "$out"  # the commands, with DRY_RUN=1
  note "node 0: namespace $(ns 0), address $(addr 0) (master); node 1: namespace $(ns 1), address $(addr 1)"
}

# in_node K: the command prefix that runs as node K: in its namespace, without the caller's
# rendezvous settings (a launcher's own MASTER_PORT, RANK... must not leak in).
in_node() {
  echo "env -u MASTER_ADDR -u MASTER_PORT -u RANK -u LOCAL_RANK -u WORLD_SIZE -u NODE_RANK -u NNODES" \
       "ip netns exec $(ns "$1")"
}

netns_exec() {  # netns_exec K CMD...
  local k="$1"; shift
  [[ "$k" == 0 || "$k" == 1 ]] || die "node must be 0 or 1, not '$k'" 2
  (( $# > 0 )) || die "exec needs a command" 2
  run_cmd $(in_node "$k") "$@"
}

train_2nodes() {  # train_2nodes DATA_DIR WORK_DIR ARGS...
  need_args 2 "$@"
  local data="$1" work="$2" k p0 p1 rc0=0 rc1=0; shift 2
  need_dir DATA_DIR "$data"
  data="$(abspath "$data")" work="$(abspath "$work")"
  if [[ "${DRY_RUN:-0}" != "1" ]]; then
    make_dir WORK_DIR "$work/node0"
    make_dir WORK_DIR "$work/node1"
  fi
  netns_up
  [[ "${DRY_RUN:-0}" == "1" ]] || trap netns_down EXIT
  node() {  # node K ARGS...: one node's launch, in its own working directory, in the background
    local k="$1"; shift
    ( cd "$work/node$k" 2>/dev/null || [[ "${DRY_RUN:-0}" == "1" ]] || exit 1
      if [[ "$k" == 1 && "${DRY_RUN:-0}" != "1" ]]; then exec >train.log 2>&1; fi  # node 0's log on the terminal
      LAUNCH_PREFIX="$(in_node "$k")" AMP=0 MODEL_SAVE_DIR=checkpoints \
        launch_dlrm "$data" "" 1 2 "$k" "$(addr 0)" "$PORT" "$@" ) &
  }
  node 0 "$@"; p0=$!
  [[ "${DRY_RUN:-0}" == "1" ]] && { wait "$p0" || rc0=$?; p0=""; }  # keep the printed lines in order
  node 1 "$@"; p1=$!
  # When one node fails the other would wait for it forever: end it (netns_down) and report.
  while [[ -n "$p0" ]] && kill -0 "$p0" 2>/dev/null && kill -0 "$p1" 2>/dev/null; do sleep 1; done
  if [[ -n "$p0" ]] && ! kill -0 "$p0" 2>/dev/null; then wait "$p0" || rc0=$?; p0=""; fi
  if ! kill -0 "$p1" 2>/dev/null; then wait "$p1" || rc1=$?; p1=""; fi
  (( rc0 == 0 && rc1 == 0 )) || netns_down
  if [[ -n "$p0" ]]; then wait "$p0" || rc0=$?; fi
  if [[ -n "$p1" ]]; then wait "$p1" || rc1=$?; fi
  [[ "${DRY_RUN:-0}" == "1" ]] && return 0
  (( rc0 == 0 && rc1 == 0 )) || die "training failed: node 0 exit $rc0, node 1 exit $rc1 (its log: $work/node1/train.log)" 1
  note "done; node 0's checkpoints and metrics.jsonl: $work/node0/checkpoints"
}

case "${1:-}" in
  up) netns_up ;;
  down) if [[ "${DRY_RUN:-0}" == "1" ]]; then echo "ip netns del $(ns 0)"; echo "ip netns del $(ns 1)"; else netns_down; fi ;;
  exec) shift; netns_exec "$@" ;;
  run) shift; train_2nodes "$@" ;;
  *) die "expected a command: run, up, down or exec (run with -h for usage)" 2 ;;
esac
