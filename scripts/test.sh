#!/usr/bin/env bash
# The test command: installs what a fresh machine needs, builds e2fastio from
# source (c-blosc comes from the 'blosc' wheel as a build requirement), and runs
# the C++ and Python test suites. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}

# torch first, pinned to the CPU build: an unpinned request can pull a
# multi-GB CUDA build. Users with GPUs bring their own torch.
"$PY" -m pip install --quiet "torch==2.13.0"
"$PY" -m pip install --quiet ".[test,bench]"
# Earth2Studio (the 'compare' extra) so the interop tests run; skip with E2FASTIO_NO_COMPARE=1.
if [[ -z "${E2FASTIO_NO_COMPARE:-}" ]]; then
  "$PY" -m pip install --quiet ".[compare]"
fi

# ncdump (Debian's netcdf-bin) checks our NetCDF files; best effort where apt is not ours.
if ! command -v ncdump >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  (apt-get install -y -qq netcdf-bin >/dev/null 2>&1 || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq netcdf-bin >/dev/null 2>&1)) || echo "note: could not install netcdf-bin; ncdump checks will be skipped"
fi

# Lint (pyproject's [tool.ruff]; under a second), type-check python/e2fastio against the
# compiled module's stubs (pyproject's [tool.mypy]; about a minute cold, seconds with its
# cache), then the tests.
"$PY" -m ruff check --quiet .
"$PY" -m mypy
# Run from the tests' folder view of the installed package, not python/.
exec "$PY" -m pytest "$@"
