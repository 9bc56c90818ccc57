"""NetCDF4Backend appending to variables whose filters another program chose.

The HDF5 filter pipeline is read in order from each variable's creation
property list: shuffle then deflate and deflate alone (any level, 0 included)
are encoded natively, byte for byte as HDF5 would; any other pipeline
(deflate then shuffle, shuffle alone, fletcher32, ...) is written through
HDF5, which applies it itself. Everything reads back exactly through
netCDF4-python.
"""

from __future__ import annotations

import zlib
from collections import OrderedDict

import numpy as np
import pytest

netCDF4 = pytest.importorskip("netCDF4")
h5py = pytest.importorskip("h5py")
h5netcdf = pytest.importorskip("h5netcdf")

from e2fastio import NetCDF4Backend  # noqa: E402

NT, NLAT, NLON = 4, 8, 16
CHUNK = (1, NLAT, NLON)


def _coords() -> OrderedDict[str, np.ndarray]:
    return OrderedDict(step=np.arange(NT, dtype=np.int64), lat=np.linspace(90, -90, NLAT),
                       lon=np.linspace(0, 360, NLON, endpoint=False))


def _dcpl(*filters: tuple[str, int]) -> h5py.h5p.PropDCID:
    """A dataset creation property list with `filters` in this order (h5py alone always puts shuffle first)."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_chunk(CHUNK)
    for name, level in filters:
        if name == "deflate":
            dcpl.set_deflate(level)
        else:
            dcpl.set_shuffle()
    return dcpl


def _pipeline(path, name: str) -> list[tuple[int, tuple[int, ...]]]:
    with h5py.File(path, "r") as f:
        dcpl = f[name].id.get_create_plist()
        return [(dcpl.get_filter(i)[0], tuple(dcpl.get_filter(i)[2])) for i in range(dcpl.get_nfilters())]


def _shuffle(raw: bytes, itemsize: int) -> bytes:
    """HDF5's shuffle filter: byte b of every element, then byte b + 1, ..."""
    return np.frombuffer(raw, np.uint8).reshape(-1, itemsize).T.tobytes()


# variable -> (HDF5 filter ids in pipeline order, deflate level, written natively)
EXPECTED = {
    "nc_shuffle_deflate4": ([2, 1], 4, True),   # netCDF4-python zlib=True (its default order)
    "nc_deflate1": ([1], 1, True),              # netCDF4-python zlib=True, shuffle=False
    "nc_fletcher32": ([3, 2, 1], 4, False),     # netCDF4-python fletcher32=True: HDF5 writes it
    "h5_deflate0": ([1], 0, True),              # level 0 (stored blocks): h5py's _filters said 4
    "h5_shuffle_deflate0": ([2, 1], 0, True),
    "h5_deflate4_shuffle": ([1, 2], 4, False),  # deflate, then shuffle: HDF5 writes it
    "h5_shuffle_only": ([2], None, False),      # shuffle without deflate: HDF5 writes it
}


def _make_file(path, first: dict[str, np.ndarray]) -> None:
    """Variables made by netCDF4-python and by h5netcdf (h5py), each holding step 0."""
    c = _coords()
    with netCDF4.Dataset(path, "w") as ds:
        for dim, values in c.items():
            ds.createDimension(dim, len(values))
            ds.createVariable(dim, values.dtype, (dim,))[:] = values
        for name, kw in (("nc_shuffle_deflate4", dict(zlib=True, complevel=4)),
                         ("nc_deflate1", dict(zlib=True, complevel=1, shuffle=False)),
                         ("nc_fletcher32", dict(zlib=True, complevel=4, fletcher32=True))):
            v = ds.createVariable(name, "f4", tuple(c), chunksizes=CHUNK, **kw)
            v[0] = first[name]
    with h5netcdf.File(path, "a") as f:
        for name, filters in (("h5_deflate0", [("deflate", 0)]),
                              ("h5_shuffle_deflate0", [("shuffle", 0), ("deflate", 0)]),
                              ("h5_deflate4_shuffle", [("deflate", 4), ("shuffle", 0)]),
                              ("h5_shuffle_only", [("shuffle", 0)])):
            v = f.create_variable(name, tuple(c), dtype="f4", dcpl=_dcpl(*filters))
            v[0] = first[name]
    for name, (codes, level, _) in EXPECTED.items():  # the files hold what each case says
        got = _pipeline(path, name)
        assert [code for code, _ in got] == codes, (name, got)
        if level is not None:
            assert [values for code, values in got if code == 1] == [(level,)], (name, got)


def test_appending_keeps_each_variables_filters_in_order_and_level(tmp_path):
    path = tmp_path / "filters.nc"
    rng = np.random.default_rng(5)
    truth = {name: (np.round(rng.normal(280, 10, (NT, NLAT, NLON)) * 64) / 64).astype("f4") for name in EXPECTED}
    _make_file(path, {name: data[0] for name, data in truth.items()})

    c = _coords()
    later = OrderedDict(c, step=c["step"][1:])
    with NetCDF4Backend(path, backend_kwargs={"mode": "a"}) as io:
        for name, data in truth.items():
            before = io.stats().get("chunks_written", 0)
            io.write(data[1:], later, name)
            native = io.stats().get("chunks_written", 0) - before
            assert native == (NT - 1 if EXPECTED[name][2] else 0), (name, native)

    with netCDF4.Dataset(path) as ds:
        for name, data in truth.items():
            np.testing.assert_array_equal(ds[name][:].data, data, err_msg=name)
    for name, (codes, _, _) in EXPECTED.items():
        assert [code for code, _ in _pipeline(path, name)] == codes  # the file still says what it did
    with h5py.File(path, "r") as f:
        for name, (codes, level, native) in EXPECTED.items():
            if not native:
                continue
            for step in range(1, NT):
                mask, stored = f[name].id.read_direct_chunk((step, 0, 0))
                assert mask == 0
                # A zlib stream at the variable's level: FLEVEL (bits 6-7 of byte 1) is 0 for
                # levels 0-1, 1 for 2-5; level 0 keeps the bytes as they are (stored blocks).
                assert stored[0] == 0x78 and stored[1] >> 6 == (0 if level <= 1 else 1), (name, stored[:2])
                raw = truth[name][step].tobytes()
                assert zlib.decompress(stored) == (_shuffle(raw, 4) if codes == [2, 1] else raw), name
                if level == 0:
                    assert len(stored) > len(raw), (name, len(stored))
