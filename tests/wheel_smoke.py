"""A quick check of an installed e2fastio wheel, with nothing but its own dependencies.

Run by cibuildwheel after each build (pyproject.toml's [tool.cibuildwheel]
test-command) and by tests/test_packaging.py in a fresh virtualenv: no
torch, no pytest, no compiler. Writes small compressed Zarr stores through the
native pipeline (blocking and non-blocking, on disk and in memory), reads them
back with zarr-python, does the same for NetCDF when h5netcdf is installed, and
checks what `e2fastio info` reports. Exits non-zero on the first failure.

    python tests/wheel_smoke.py
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import tempfile
from collections import OrderedDict

import numpy as np
import zarr
import zarr.codecs

import e2fastio


def check(ok: bool, what: str) -> None:
    if not ok:
        raise SystemExit(f"wheel smoke test FAILED: {what}")


def zarr_round_trips(workdir: str) -> None:
    coords = OrderedDict(time=np.arange(2), lat=np.linspace(-90, 90, 19), lon=np.arange(0, 360, 10.0))
    x = np.random.default_rng(0).standard_normal((2, 19, 36)).astype(np.float32)
    # zstd, zlib and lz4 all come from the c-blosc linked into the module.
    for cname in ("zstd", "zlib", "lz4"):
        for blocking in (True, False):
            path = os.path.join(workdir, f"{cname}-{blocking}.zarr")
            codec = zarr.codecs.BloscCodec(cname=cname, clevel=3, shuffle="shuffle")
            with e2fastio.ZarrBackend(path, chunks={"time": 1}, zarr_codecs=codec, blocking=blocking) as io:
                io.add_array(coords, "t2m")
                io.write(x, coords, "t2m")
            arr = zarr.open_array(os.path.join(path, "t2m"), mode="r")
            check(type(arr.compressors[0]).__name__ == "BloscCodec", f"{cname}: stored without Blosc")
            check(np.array_equal(arr[...], x), f"{cname}, blocking={blocking}: data read back differs")
    io = e2fastio.ZarrBackend(None, zarr_codecs=zarr.codecs.BloscCodec(cname="zstd"))  # in memory
    io.add_array(coords, "t2m")
    io.write(x, coords, "t2m")
    check(np.array_equal(io["t2m"][...], x), "in-memory store: data read back differs")
    io.close()


def netcdf_round_trip(workdir: str) -> bool:
    try:
        import h5netcdf
        import h5py  # noqa: F401 - NetCDF4Backend needs both
    except ImportError:
        return False
    coords = OrderedDict(lat=np.linspace(-90, 90, 19), lon=np.arange(0, 360, 10.0))
    x = np.random.default_rng(1).standard_normal((19, 36)).astype(np.float32)
    path = os.path.join(workdir, "out.nc")
    with e2fastio.NetCDF4Backend(path, backend_kwargs={"mode": "w"}, compression="zlib") as io:
        io.add_array(coords, "t2m")
        io.write(x, coords, "t2m")
    with h5netcdf.File(path, "r") as f:
        check(np.array_equal(f.variables["t2m"][...], x), "NetCDF: data read back differs")
    return True


def info_reports_this_build() -> None:
    r = subprocess.run([sys.executable, "-m", "e2fastio", "info"], capture_output=True, text=True, check=True)
    info = json.loads(r.stdout)
    version = importlib.metadata.version("e2fastio")
    check(info["version"] == info["core_version"] == version, f"versions differ: {info} vs {version}")
    check(str(info["blosc_version"]).startswith("1."), f"c-blosc 1.x expected, got {info['blosc_version']}")
    if os.environ.get("E2FASTIO_EXPECT_LIBDEFLATE"):  # scripts/wheel_cross.sh: its wheels link libdeflate
        check("deflate by libdeflate" in info["deflate_library"], f"libdeflate expected: {info['deflate_library']}")


def main() -> None:
    check("site-packages" in e2fastio.__file__, f"e2fastio imported from {e2fastio.__file__}, not the wheel")
    with tempfile.TemporaryDirectory() as workdir:
        zarr_round_trips(workdir)
        netcdf = netcdf_round_trip(workdir)
    info_reports_this_build()
    print(f"e2fastio {e2fastio.__version__}: wheel smoke test passed (zarr zstd/zlib/lz4, blocking and not, "
          f"in memory{', NetCDF zlib' if netcdf else ''}; info: {e2fastio.info()['deflate_library']})")


if __name__ == "__main__":
    main()
