"""The core's one zlib, and libdeflate where the build found a static one (CMakeLists.txt:
E2FASTIO_LIBDEFLATE): its deflate streams are standard (Python's own zlib reads them and the
core reads Python's), and ``info()["deflate_library"]`` names what is really linked."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest

import e2fastio
from e2fastio import _core

LEVELS = [0, 1, 9]


def _field() -> np.ndarray:
    """A t2m-like float32 field: smooth, quantised to 2**-8 K, with noise."""
    rng = np.random.default_rng(7)
    y, x = np.meshgrid(np.linspace(0, 3, 91), np.linspace(0, 6, 180), indexing="ij")
    f = 250 + 40 * np.sin(y) * np.cos(x) + rng.normal(0, 0.5, y.shape)
    return (np.round(f * 256) / 256).astype("float32")


def _spec(level: int, shuffle: bool) -> _core.CodecSpec:
    s = _core.CodecSpec()
    s.itemsize = 4
    s.deflate = True
    s.deflate_level = level
    s.hdf5_shuffle = shuffle
    return s


def _hdf5_shuffled(a: np.ndarray) -> bytes:
    """HDF5's shuffle filter: byte k of every element into plane k."""
    return np.ascontiguousarray(a.view(np.uint8).reshape(-1, a.itemsize).T).tobytes()


def _linked_version() -> str:
    m = re.match(r"zlib (\d+\.\d+(?:\.\d+)*) \(", e2fastio.info()["deflate_library"])
    assert m, e2fastio.info()["deflate_library"]
    return m.group(1)


def _libdeflate() -> bool:
    """Whether the core deflates with libdeflate (zlib still inflates)."""
    return "deflate by libdeflate" in e2fastio.info()["deflate_library"]


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("level", LEVELS)
def test_our_deflate_inflates_with_python_zlib(level, shuffle):
    data = _field()
    enc = _core.encode_chunk(_spec(level, shuffle), data)
    payload = _hdf5_shuffled(data) if shuffle else data.tobytes()
    assert zlib.decompress(enc) == payload
    # RFC 1950 header: deflate with a 32 KiB window, FLEVEL as zlib sets it for this level.
    assert enc[0] == 0x78 and (enc[0] * 256 + enc[1]) % 31 == 0
    assert enc[1] >> 6 == (0 if level < 2 else 1 if level < 6 else 2 if level == 6 else 3)
    if level == 0:
        assert len(enc) > len(payload)  # stored blocks
    else:
        assert len(enc) < 0.8 * len(payload)
    if _libdeflate():
        # Other deflate blocks than zlib's: mostly smaller at the same level, at most ~12% larger
        # (small int16 chunks; tests/test_netcdf_chunks.py), stored blocks at 0.
        assert len(enc) <= len(zlib.compress(payload, level)) * 1.15 + 64
    elif zlib.ZLIB_RUNTIME_VERSION == _linked_version():
        # The same zlib version at the same level writes the same stream.
        assert enc == zlib.compress(payload, level)


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("level", LEVELS)
def test_our_inflate_reads_python_zlib_streams(level, shuffle):
    data = _field()
    payload = _hdf5_shuffled(data) if shuffle else data.tobytes()
    # One call, and a stream written in pieces with a sync flush midway.
    co = zlib.compressobj(level, zlib.DEFLATED, 15, 9)
    half = len(payload) // 2
    pieced = co.compress(payload[:half]) + co.flush(zlib.Z_SYNC_FLUSH) + co.compress(payload[half:]) + co.flush()
    for stream in (zlib.compress(payload, level), pieced):
        back = np.frombuffer(_core.decode_chunk(_spec(level, shuffle), stream, data.nbytes), "float32")
        np.testing.assert_array_equal(back.reshape(data.shape), data)

def test_inflate_refuses_a_damaged_or_short_stream():
    data = _field()
    stream = bytearray(zlib.compress(data.tobytes(), 1))
    with pytest.raises(RuntimeError, match="does not inflate"):
        _core.decode_chunk(_spec(1, False), bytes(stream[: len(stream) // 2]), data.nbytes)
    stream[len(stream) // 2] ^= 0xFF
    with pytest.raises(RuntimeError, match="does not inflate"):
        _core.decode_chunk(_spec(1, False), bytes(stream), data.nbytes)
    with pytest.raises(RuntimeError, match="does not inflate"):
        _core.decode_chunk(_spec(1, False), zlib.compress(data.tobytes()[:-4], 1), data.nbytes)


def test_info_names_the_one_zlib_in_the_extension():
    lib = e2fastio.info()["deflate_library"]
    version = _linked_version()
    # zlib's deflate.c and inftrees.c carry their version in a banner: exactly one zlib, the one named.
    blob = Path(_core.__file__).read_bytes()
    banners = set(re.findall(rb" (deflate|inflate) (\d+\.\d+(?:\.\d+)*) Copyright", blob))
    assert banners == {(b"deflate", version.encode()), (b"inflate", version.encode())}, (lib, banners)
    assert ("static" in lib) != ("c-blosc" in lib), lib
    if "static" in lib:
        assert "compiled against" not in lib, lib  # the header and the library are the same zlib
    if shutil.which("nm"):
        dyn = subprocess.run(["nm", "-D", "--defined-only", _core.__file__], capture_output=True, text=True).stdout
        exported = {line.split()[-1] for line in dyn.splitlines() if line.strip()}
        assert not exported & {"compress2", "uncompress", "deflate", "inflate", "zlibVersion", "crc32"}, exported
        assert not {s for s in exported if s.startswith("libdeflate_")}, exported


def test_a_build_with_libdeflate_says_so():
    """scripts/test.sh installs libdeflate-dev before it builds (E2FASTIO_EXPECT_LIBDEFLATE=1): that
    build must deflate with it, not fall back to zlib unnoticed (a NetCDF write twice as slow)."""
    lib = e2fastio.info()["deflate_library"]
    if not os.environ.get("E2FASTIO_EXPECT_LIBDEFLATE"):
        pytest.skip(f"E2FASTIO_EXPECT_LIBDEFLATE is not set; this build: {lib}")
    assert re.search(r"; deflate by libdeflate \d+\.\d+", lib), lib
