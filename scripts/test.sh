#!/usr/bin/env bash
# The test command: installs what a fresh machine needs, builds e2fastio from
# source (c-blosc comes from the 'blosc' wheel as a build requirement), and runs
# the C++ and Python test suites. Extra arguments go to the Python 3.11 pytest.
#
# By default it fits about 10 minutes on 2 cores: the Python 3.12 side (below)
# is set up and tested in the background while the Python 3.11 side installs,
# lints and tests. `--full` (first argument) or E2FASTIO_FULL=1 adds the long
# checks: the C++ core under ASan+UBSan (by default it is built plain), and the
# release wheel built, repaired and run from a fresh venv (pytest's `slow` mark).
# Repeat runs have scripts of their own: scripts/repeat_cpp_tests.sh, scripts/tsan.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [[ "${1:-}" == "--full" ]]; then
  shift
  export E2FASTIO_FULL=1
fi
START=$SECONDS
say() { echo "== test.sh: $* at $((SECONDS - START)) s"; }
# pytest-xdist workers per suite: every core, at most 4 (each worker imports the whole stack).
# Many tests wait on subprocesses, servers or other threads: two workers fill those gaps.
WORKERS=$(nproc 2>/dev/null || echo 2)
(( WORKERS > 4 )) && WORKERS=4
(( WORKERS < 2 )) && WORKERS=2
# pytest-benchmark, where an environment has it, refuses to run beside xdist; nothing here uses it.
PYTEST_ARGS=(-n "$WORKERS" -p no:benchmark)
mkdir -p build

# Debian packages, best effort where apt is not ours, before either side builds: ncdump
# (netcdf-bin) checks our NetCDF files; a static libdeflate (libdeflate-dev) is what NetCDF
# deflate compresses with when the build finds it (CMakeLists.txt), about 2x zlib's speed.
NEED=()
command -v ncdump >/dev/null 2>&1 || NEED+=(netcdf-bin)
[[ -e /usr/include/libdeflate.h ]] || NEED+=(libdeflate-dev)
if [[ ${#NEED[@]} -gt 0 ]] && command -v apt-get >/dev/null 2>&1; then
  (apt-get install -y -qq "${NEED[@]}" >/dev/null 2>&1 || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq "${NEED[@]}" >/dev/null 2>&1)) || echo "note: could not install ${NEED[*]}; ncdump checks skip, NetCDF deflate uses zlib"
fi
# tests/test_zlib.py then checks that the build really deflates with it.
if [[ -e /usr/include/libdeflate.h ]]; then export E2FASTIO_EXPECT_LIBDEFLATE=1; fi

# The Python 3.12 environment, .venv312 (kept between runs), without torch: the
# backend suites run there again against the newest zarr-python, numcodecs and
# numpy that pip gives Python 3.12 (torch-only tests skip, naming why), and the
# IceChunkBackend tests run only there (icechunk 2 needs Python >= 3.12).
# tests/conftest.py's TORCH_FREE_MODULES says which modules it collects. The build
# requirements live in that environment so that a rebuild reuses build/cp312-*
# (seconds, not minutes). Skip with E2FASTIO_NO_ICECHUNK=1; PYTHON312 names the
# interpreter. Its output goes to build/test-py312.log, shown at the end.
py312_side() {
  local V=.venv312/bin/python
  if ! "$V" -c "" >/dev/null 2>&1; then
    rm -rf .venv312
    "$PY312" -m venv .venv312
  fi
  # The pip a venv starts with can be old (3.12.1's: 23.2), and its resolver backtracks for
  # many minutes over the s3fs/aiobotocore/botocore/boto3 pins below; a current one takes seconds.
  "$V" -m pip install --quiet --upgrade pip
  # What this environment needs, taken from pyproject.toml: the build requirements, the test
  # extra but its lint and type-check pins (run on the 3.11 side), and tensorstore from the bench
  # extra (the sharding tests read back with it). Never torch: pip would pull a multi-GB CUDA build.
  local deps
  mapfile -t deps < <("$V" - <<'PYEOF'
import re
import tomllib

cfg = tomllib.load(open("pyproject.toml", "rb"))
extras = cfg["project"]["optional-dependencies"]


def name(req):
    return re.split(r"[\[<>=!~; ]", req)[0].lower()


test = [r for r in extras["test"] if name(r) not in {"ruff", "mypy"}]
bench = [r for r in extras["bench"] if name(r) == "tensorstore"]
deps = cfg["build-system"]["requires"] + test + bench
assert "torch" not in {name(r) for r in deps}
print("\n".join(deps))
PYEOF
)
  "$V" -m pip install --quiet "${deps[@]}"
  echo "== py312: dependencies installed at $((SECONDS - START)) s"
  "$V" -m pip install --quiet --no-build-isolation ".[icechunk]"
  echo "== py312: built and installed at $((SECONDS - START)) s"
  "$V" -m pytest -q -p no:cacheprovider "${PYTEST_ARGS[@]}"
}

P312=""
if [[ -z "${E2FASTIO_NO_ICECHUNK:-}" ]]; then
  PY312=""
  for c in "${PYTHON312:-}" python3.12 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.12*/bin/python; do
    if [[ -n "$c" ]] && "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' >/dev/null 2>&1; then
      PY312=$c
      break
    fi
  done
  if [[ -z "$PY312" ]]; then
    echo "note: no Python 3.12 found (set PYTHON312=...); the Python 3.12 tests (IceChunkBackend, newest zarr) are skipped"
  else
    say "Python 3.12 side started in the background (log: build/test-py312.log)"
    (set -euo pipefail; py312_side) > build/test-py312.log 2>&1 &
    P312=$!
  fi
fi
finish_py312() {
  [[ -n "$P312" ]] || return 0
  local rc=0
  wait "$P312" || rc=$?
  P312=""
  if [[ $rc -eq 0 ]]; then
    say "Python 3.12 side passed"
    grep -E "^== py312|passed|failed|^SKIPPED" build/test-py312.log || true
  else
    say "Python 3.12 side FAILED (exit $rc); its log, build/test-py312.log:"
    tail -n 150 build/test-py312.log
  fi
  return $rc
}
# Whatever stops this side early, the background side is waited for, never left running.
trap 'if [[ -n "$P312" ]]; then kill "$P312" 2>/dev/null || true; wait "$P312" 2>/dev/null || true; fi' EXIT

# torch first, pinned to the CPU build: an unpinned request can pull a
# multi-GB CUDA build. Users with GPUs bring their own torch.
"$PY" -m pip install --quiet "torch==2.13.0"
# Earth2Studio (the 'compare' extra) so the interop tests run; skip with E2FASTIO_NO_COMPARE=1.
# One pip call: each `pip install .` builds the extension again.
EXTRAS=test,bench,gpu  # gpu: nvCOMP's wheel, whose library the loader test opens (no GPU needed)
[[ -n "${E2FASTIO_NO_COMPARE:-}" ]] || EXTRAS=$EXTRAS,compare
"$PY" -m pip install --quiet ".[$EXTRAS]"

say "Python 3.11 side installed"

# Lint (pyproject's [tool.ruff]; under a second), type-check python/e2fastio against the
# compiled module's stubs (pyproject's [tool.mypy]; about a minute cold, seconds with its
# cache), then the tests.
"$PY" -m ruff check --quiet .
"$PY" -m mypy
say "lint and type check passed"

# Run from the tests' folder view of the installed package, not python/.
rc=0
"$PY" -m pytest "${PYTEST_ARGS[@]}" "$@" || rc=$?
say "Python 3.11 tests done (exit $rc)"
rc312=0
finish_py312 || rc312=$?
say "done"
[[ $rc -eq 0 ]] || exit $rc
exit $rc312
