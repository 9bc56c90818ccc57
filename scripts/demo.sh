#!/usr/bin/env bash
# The main job: installs e2fastio on a fresh machine and runs the Earth2Studio IO
# example's ensemble workflow, every IO case of the example with Earth2Studio
# 0.19's own backend and with e2fastio's drop-in side by side (table, JSON,
# figure under outputs/e2fastio-demo/). By default at --quick size (0.5 degree
# grid, about a minute or two on 2 cores); pass --full for the example's own
# shape (8 members, 20 steps, 721 x 1440) or --grid DEG. Other arguments go to
# `e2fastio demo` (see `python -m e2fastio demo --help`).
# E2FASTIO_NO_COMPARE=1 skips installing Earth2Studio: the demo then compares
# against pure-Python stand-ins, labelled as such.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install --quiet "torch==2.13.0"
extras="bench"
if [[ -z "${E2FASTIO_NO_COMPARE:-}" ]]; then
  extras="bench,compare"
fi
"$PY" -m pip install --quiet ".[$extras]"
case " $* " in
  *" --full "* | *" --grid "* | *" --grid="* | *" --quick "*) exec "$PY" -m e2fastio demo "$@" ;;
  *) exec "$PY" -m e2fastio demo --quick "$@" ;;
esac
