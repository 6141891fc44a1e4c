#!/usr/bin/env bash
# The test command (README and .ci/run): set up the environment if needed, run the whole suite.
# Extra arguments go to pytest, e.g.  bash scripts/run_tests.sh -k preprocess -x
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="$(bash "$here/scripts/setup_env.sh")"
cd "$here"
exec "$PY" -m pytest tests "$@"
