#!/usr/bin/env bash
# The main job: installs e2fastio on a fresh machine and runs the ensemble
# example workflow with its benchmark table (a size that takes about a minute
# on 2 cores). Extra arguments go to `e2fastio demo` (e.g. drop --quick by
# passing --full for the seed's 721 x 1440 grid).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install --quiet "torch==2.13.0"
"$PY" -m pip install --quiet ".[bench]"
if [[ " $* " == *" --full "* ]]; then
  args=("${@/--full/}")
  exec "$PY" -m e2fastio demo "${args[@]}"
fi
exec "$PY" -m e2fastio demo --quick "$@"
