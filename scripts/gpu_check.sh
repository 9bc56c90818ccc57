#!/usr/bin/env bash
# The GPU checks (CUDA tests, GPU benchmark), prepared to run as one command on
# a lent GPU machine, which has torch, pybind11, scikit-build-core, cmake and
# pytest but no zarr, numcodecs or blosc, and no network.
#
#   bash scripts/gpu_check.sh prepare   # here, with the network: cp312 wheels into .whl/ (git-ignored)
#   bash scripts/gpu_check.sh run       # there (carry .whl): build, test, benchmark; results under $OUT
#
# PYVER (default 3.12) picks the wheels' Python; DEVICE (default cuda) the
# benchmark's device, so the whole sequence can be rehearsed on a CPU machine
# (PYVER=3.11 DEVICE=cpu; the cuda tests then skip).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PYVER=${PYVER:-3.12}
WHEELS=(zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 blosc==1.11.4)

case "${1:-}" in
  prepare)
    mkdir -p .git/info
    grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    rm -rf .whl
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
    ls -l .whl
    ;;
  run)
    OUT=${OUT:-$PWD/gpu-out}
    SITE=${SITE:-/tmp/e2fastio-site}
    mkdir -p "$OUT"
    export PYTHONUNBUFFERED=1
    nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
    "$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    # c-blosc 1.x headers and static library: the blosc wheel's data files.
    rm -rf /tmp/e2fastio-blosc && "$PY" -m zipfile -e .whl/blosc-*.whl /tmp/e2fastio-blosc
    BLOSC_ROOT=$(ls -d /tmp/e2fastio-blosc/blosc-*.data/data)
    "$PY" -m pip install --quiet --no-index --no-deps --no-build-isolation --target "$SITE" --upgrade \
      -C cmake.define.E2FASTIO_BLOSC_ROOT="$BLOSC_ROOT" . 2>&1 | tee "$OUT/build.log"
    (cd /tmp && "$PY" -c "import e2fastio, json; print(json.dumps({**e2fastio.info(), 'file': e2fastio.__file__}, indent=1))") | tee "$OUT/info.json"
    set +e
    "$PY" -m pytest -m cuda tests/test_cuda.py -p no:cacheprovider -v 2>&1 | tee "$OUT/pytest_cuda.log"
    rc_tests=${PIPESTATUS[0]}
    "$PY" benchmarks/bench_async.py --device "${DEVICE:-cuda}" ${BENCH_ARGS:-} --json "$OUT/bench_async_gpu.json" \
      2>&1 | tee "$OUT/bench_async_gpu.log"
    rc_bench=${PIPESTATUS[0]}
    echo "cuda tests rc=$rc_tests, benchmark rc=$rc_bench"
    exit $(( rc_tests || rc_bench ))
    ;;
  *)
    echo "usage: bash scripts/gpu_check.sh prepare|run" >&2
    exit 2
    ;;
esac
