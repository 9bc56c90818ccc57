#!/usr/bin/env bash
# The GPU checks (CUDA and fake-CUDA tests, the GPU benchmark against
# Earth2Studio 0.19, the Zarr benchmark's thread sweep against Earth2Studio and
# tensorstore), prepared to run as one command on a lent GPU machine, which has
# torch, pybind11, scikit-build-core, cmake, pytest, pandas and xarray but no
# zarr, numcodecs, blosc or Earth2Studio, and no network.
#
#   bash scripts/gpu_check.sh prepare   # here, with the network: cp312 wheels into .whl/ (git-ignored)
#   bash scripts/gpu_check.sh run       # there (carry .whl): build, test, benchmark; results under $OUT
#
# GPU_SET=device (at prepare) carries nvCOMP instead of the peers (a machine's carry holds 64 MiB, and
# nvCOMP's wheel alone is 43 MB): run then builds, runs the CUDA and fake-CUDA tests and benchmarks
# compression on the GPU against compression on the host (bench_async --device-compression-ab: bytes
# from the device, host CPU seconds, stored bytes, time until durable). Rehearse it here with
# GPU_SET=device PYVER=3.11 DEVICE=cpu BENCH_ARGS=--quick (the CUDA tests then skip).
#
# PYVER (default 3.12) picks the wheels' Python; DEVICE (default cuda) the
# benchmark's device, so the whole sequence can be rehearsed on a CPU machine
# (PYVER=3.11 DEVICE=cpu; the cuda tests then skip). THREADS (default 2,4,8,16)
# is the Zarr benchmark's sweep; ZARR_ARGS and BENCH_ARGS add arguments (e.g.
# --quick for a rehearsal). Each step has its own time limit (ZARR_TIMEOUT,
# default 240 s; ASYNC_TIMEOUT, default 200 s), so a slow step cannot take the
# later ones' results with it. On the H200 (session 5) the build took ~90 s,
# the tests ~10 s, the async benchmark ~130 s, and the sweep needed ~200 s
# (Earth2Studio's ZarrBackend takes ~14 s a round at every thread count): the
# whole run fits a 15-minute device budget with one machine start.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PYVER=${PYVER:-3.12}
WHEELS=(zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0 blosc==1.11.4)
if [[ "${GPU_SET:-peers}" == device ]]; then
  WHEELS+=(nvidia-libnvcomp-cu12==6.0.0.12)  # nvCOMP 6 for CUDA 12 drivers and newer
else
  # the peers: Earth2Studio 0.19 (and what its io module imports beyond that image) and tensorstore
  WHEELS+=(earth2studio==0.19.0 loguru==0.7.3 cftime==1.6.6.1 lz4==4.4.5 netCDF4==1.7.2 tensorstore==0.1.86)
fi

case "${1:-}" in
  prepare)
    mkdir -p .git/info
    grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
    rm -rf .whl
    "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
    # zlib's header and static library (the build needs them; the GPU image may lack them).
    (cd .whl && apt-get download zlib1g-dev >/dev/null 2>&1) || echo "note: could not download zlib1g-dev"
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
    export E2FASTIO_BLOSC_ROOT=$BLOSC_ROOT  # also for the fake-CUDA runtime's CMake build in the tests
    ZLIB_DEFS=()
    if [[ ! -f /usr/include/zlib.h || -n "${FORCE_ZLIB_DEB:-}" ]] && ls .whl/zlib1g-dev_*.deb >/dev/null 2>&1; then
      rm -rf /tmp/e2fastio-zlib && dpkg -x .whl/zlib1g-dev_*.deb /tmp/e2fastio-zlib  # unpacked aside, never into /
      ZLIB_DEFS=(-C cmake.define.ZLIB_INCLUDE_DIR=/tmp/e2fastio-zlib/usr/include
                 -C cmake.define.ZLIB_LIBRARY=/tmp/e2fastio-zlib/usr/lib/x86_64-linux-gnu/libz.a)
    fi
    "$PY" -m pip install --quiet --no-index --no-deps --no-build-isolation --target "$SITE" --upgrade \
      -C cmake.define.E2FASTIO_BLOSC_ROOT="$BLOSC_ROOT" "${ZLIB_DEFS[@]}" . 2>&1 | tee "$OUT/build.log"
    (cd /tmp && "$PY" -c "import e2fastio, json; print(json.dumps({**e2fastio.info(), 'file': e2fastio.__file__}, indent=1))") | tee "$OUT/info.json"
    set +e
    timeout 120 "$PY" -m pytest -m cuda tests/test_cuda.py tests/test_kv_backend.py tests/test_xarray_backend.py \
      -p no:cacheprovider -v 2>&1 | tee "$OUT/pytest_cuda.log"
    rc_tests=${PIPESTATUS[0]}
    timeout 120 "$PY" -m pytest tests/test_fake_cuda.py -p no:cacheprovider -v 2>&1 | tee -a "$OUT/pytest_cuda.log"
    rc_tests=$(( rc_tests || PIPESTATUS[0] ))
    if ls .whl/nvidia_libnvcomp_*.whl >/dev/null 2>&1; then  # GPU_SET=device: compression on the GPU vs on the host
      timeout 60 "$PY" -m pytest tests/test_device_encode.py -p no:cacheprovider -v 2>&1 | tee -a "$OUT/pytest_cuda.log"
      rc_tests=$(( rc_tests || PIPESTATUS[0] ))
      timeout "${ASYNC_TIMEOUT:-300}" "$PY" benchmarks/bench_async.py --device "${DEVICE:-cuda}" --repeats 2 \
        --device-compression-ab --skip "AsyncZarr,Earth2Studio,stand-in" ${BENCH_ARGS:-} \
        --json "$OUT/bench_device_compression.json" 2>&1 | tee "$OUT/bench_device_compression.log"
      rc_bench=${PIPESTATUS[0]}
      echo "tests rc=$rc_tests, device-compression benchmark rc=$rc_bench"
      exit $(( rc_tests || rc_bench ))
    fi
    # The encoder pool at 2..16 threads against Earth2Studio 0.19 and tensorstore (seed size, 4 distinct steps cycled).
    timeout "${ZARR_TIMEOUT:-240}" "$PY" benchmarks/bench_zarr.py --modes compressed --repeats 2 --distinct-steps 4 \
      --threads "${THREADS:-2,4,8,16}" --skip "zarr-python slices" ${ZARR_ARGS:-} --json "$OUT/bench_zarr_threads.json" \
      2>&1 | tee "$OUT/bench_zarr_threads.log"
    rc_zarr=${PIPESTATUS[0]}
    timeout "${ASYNC_TIMEOUT:-200}" "$PY" benchmarks/bench_async.py --device "${DEVICE:-cuda}" --repeats 2 ${BENCH_ARGS:-} \
      --json "$OUT/bench_async_gpu.json" 2>&1 | tee "$OUT/bench_async_gpu.log"
    rc_bench=${PIPESTATUS[0]}
    echo "tests rc=$rc_tests, zarr sweep rc=$rc_zarr, async benchmark rc=$rc_bench"
    exit $(( rc_tests || rc_zarr || rc_bench ))
    ;;
  *)
    echo "usage: bash scripts/gpu_check.sh prepare|run" >&2
    exit 2
    ;;
esac
