#!/usr/bin/env bash
# The C++ tests of the core (pool, staging ring, host cache, sinks, engine, fork) under
# ThreadSanitizer. CI runs them under ASan/UBSan (tests/test_cpp_core.py); this is the
# race check, run by hand or by a nightly job: a few minutes on 2 cores.
#
#   bash scripts/tsan.sh            # build into build/cpptests-tsan and run
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BUILD=build/cpptests-tsan
GEN=()
command -v ninja >/dev/null 2>&1 && GEN=(-G Ninja)
cmake -S . -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Debug -DE2FASTIO_BUILD_PYTHON=OFF -DE2FASTIO_BUILD_TESTS=ON \
  -DE2FASTIO_SANITIZE=thread -DPython_EXECUTABLE="$(command -v "$PY")" >/dev/null
cmake --build "$BUILD" -j "$(nproc)" --target e2fastio_cpp_tests
# halt_on_error: the first race fails the run; second_deadlock_stack: both stacks of a lock-order report.
TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:die_after_fork=0:${TSAN_OPTIONS:-}" "$BUILD/e2fastio_cpp_tests" | tee "$BUILD/last.log"
grep -q "0 failed checks" "$BUILD/last.log"
echo "ThreadSanitizer: no race reported"
