#!/usr/bin/env bash
# in_session.sh COMMAND...: run COMMAND in a process session of its own (setsid) and, when it ends,
# kill whatever is left of that session; exit with COMMAND's status.
#
# Why (gpu_check.sh): OneFlow's launcher, when one rank dies, stops the others with
# os.killpg(its own pid) (oneflow/distributed/launch.py), which reaches them only when the launcher
# leads its process group; under `timeout` it does not (timeout leads the group), so a rank left
# waiting in an NCCL collective would keep its GPU and its store's LOCK after the launcher exits.
# Here every process of COMMAND is in one group led by COMMAND's first process, killed (SIGKILL)
# once COMMAND returns, or when this script is interrupted.
set -uo pipefail
(( $# )) || { echo "usage: in_session.sh COMMAND..." >&2; exit 2; }
# A background child of a non-interactive shell does not lead a process group, so setsid execs
# COMMAND in place: $! is the session's (and its process group's) id.
setsid "$@" &
pid=$!
trap 'kill -KILL -- "-$pid" 2>/dev/null; exit 130' INT TERM HUP
wait "$pid"
rc=$?
kill -KILL -- "-$pid" 2>/dev/null || true
exit "$rc"
