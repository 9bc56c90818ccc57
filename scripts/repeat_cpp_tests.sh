#!/usr/bin/env bash
# Run the C++ core tests many times in a row, on an idle machine or with every
# core kept busy by other processes, and count the runs that fail (and which
# checks failed). This is how timing assumptions in the tests are hunted: a
# test that passes once proves little on a machine it was not written on.
#
#   scripts/repeat_cpp_tests.sh [-n RUNS] [--load] [--sanitize LIST] [-- NAME_FILTER]
#
#   -n RUNS          how many runs (default 30)
#   --load           keep every core busy (stress-ng when installed, else one
#                    busy shell loop per core) for the whole series
#   --sanitize LIST  the build to test: "" (default: a plain build, as the
#                    test command by default), "address,undefined" (as its
#                    --full run), or "thread"
#   NAME_FILTER      run only the tests whose name contains it
#
# Builds into build/cpptests-<sanitizers> (the test command's build), prints
# one line per run and a summary line:  runs=30 failed=0 load=idle cpu="..."
# Exits 1 when any run failed. Failed runs' output is kept in
# build/cpptests-repeat/run-<i>.log.
set -euo pipefail
cd "$(dirname "$0")/.."

runs=30
load=0
sanitize=""
filter=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    -n) runs=$2; shift 2 ;;
    --load) load=1; shift ;;
    --sanitize) sanitize=$2; shift 2 ;;
    --) shift; filter=${1:-}; shift || true ;;
    *) echo "unknown argument: $1 (see the comment at the top of $0)" >&2; exit 2 ;;
  esac
done

PY=${PYTHON:-python3}
build="build/cpptests-$(echo "${sanitize:-plain}" | tr ',' '-')"
gen=()
command -v ninja >/dev/null 2>&1 && gen=(-G Ninja)
cmake -S . -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Debug -DE2FASTIO_BUILD_PYTHON=OFF \
  -DE2FASTIO_BUILD_TESTS=ON "-DE2FASTIO_SANITIZE=$sanitize" "-DPython_EXECUTABLE=$(command -v "$PY")" >/dev/null
cmake --build "$build" -j "$(nproc)" >/dev/null

logs=build/cpptests-repeat
mkdir -p "$logs"
rm -f "$logs"/run-*.log

loaders=()
stop_load() {
  for p in "${loaders[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop_load EXIT
if [[ $load == 1 ]]; then
  if command -v stress-ng >/dev/null 2>&1; then
    stress-ng --cpu "$(nproc)" --quiet &
    loaders+=($!)
  else
    for _ in $(seq "$(nproc)"); do
      bash -c 'while :; do :; done' &
      loaders+=($!)
    done
  fi
fi

export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=0}
failed=0
for i in $(seq "$runs"); do
  log="$logs/run-$i.log"
  start=$(date +%s%N)
  if timeout 600 "$build/e2fastio_cpp_tests" $filter >"$log" 2>&1 && grep -q " 0 failed checks" "$log" \
      && ! grep -qE "runtime error|Sanitizer" "$log"; then
    rm -f "$log"
    printf 'run %d ok (%d ms)\n' "$i" $((($(date +%s%N) - start) / 1000000))
  else
    failed=$((failed + 1))
    printf 'run %d FAILED (%s):\n' "$i" "$log"
    grep -E "CHECK failed|FAIL |Sanitizer|runtime error|unexpected exception" "$log" | head -10 | sed 's/^/    /'
  fi
done
cpu=$(lscpu | sed -n 's/^Model name: *//p' | head -1)
echo "runs=$runs failed=$failed load=$([[ $load == 1 ]] && echo busy || echo idle) sanitize=${sanitize:-none} cpu=\"$cpu\" cores=$(nproc)"
[[ $failed == 0 ]]
