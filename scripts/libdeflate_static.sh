#!/usr/bin/env bash
# A static, position-independent libdeflate for release wheels: NetCDF deflate is about twice
# zlib's speed with it (CMakeLists.txt, E2FASTIO_LIBDEFLATE). Debian 12's release (1.14: what a
# source build on the development machines links), from Debian's source tarball, checksum pinned.
#
#   scripts/libdeflate_static.sh PREFIX      -> PREFIX/include/libdeflate.h, PREFIX/lib/libdeflate.a
#
# CC and AR pick the compiler (default cc, ar): scripts/wheel_cross.sh passes zig's for each
# target, cibuildwheel's before-all (pyproject.toml) runs it with the image's GCC. Needs curl.
set -euo pipefail
PREFIX=$(realpath -m "${1:?usage: scripts/libdeflate_static.sh PREFIX}")
URL=http://deb.debian.org/debian/pool/main/libd/libdeflate/libdeflate_1.14.orig.tar.gz
SHA256=89e7df898c37c3427b0f39aadcf733731321a278771d20fc553f92da8d4808ac
CC=${CC:-cc}
AR=${AR:-ar}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
curl -sSfL -o "$work/src.tar.gz" "$URL"
echo "$SHA256  $work/src.tar.gz" | sha256sum -c --quiet
mkdir "$work/src" "$work/obj"
tar xzf "$work/src.tar.gz" -C "$work/src" --strip-components=1
# The library's own sources plus both CPU-feature probes (each compiles to nothing off its
# architecture), hidden: our module's version script exports PyInit__core only anyway.
for f in "$work"/src/lib/*.c "$work"/src/lib/{x86,arm}/cpu_features.c; do
  $CC -O2 -fPIC -fvisibility=hidden -w -I "$work/src" -c "$f" \
    -o "$work/obj/$(basename "$(dirname "$f")")-$(basename "$f" .c).o"
done
mkdir -p "$PREFIX/include" "$PREFIX/lib"
rm -f "$PREFIX/lib/libdeflate.a"
$AR rcs "$PREFIX/lib/libdeflate.a" "$work"/obj/*.o
cp "$work/src/libdeflate.h" "$PREFIX/include/"
echo "libdeflate 1.14 (static): $PREFIX/lib/libdeflate.a"
