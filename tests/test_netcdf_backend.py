"""NetCDF4Backend: valid NetCDF-4 read exactly by netCDF4-python, xarray (both engines) and ncdump."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest
import xarray as xr

netCDF4 = pytest.importorskip("netCDF4")

from e2fastio import BackgroundWriteError, NetCDF4Backend, _core  # noqa: E402
from e2fastio.errors import (  # noqa: E402
    ArrayNameError,
    BackendClosedError,
    CoordinateError,
    DataShapeError,
    UnknownDimensionError,
)

try:
    import torch
except ImportError:  # tests marked `torch` skip (conftest)
    torch = None


def _coords(nlat=19, nlon=36):
    return OrderedDict(
        ensemble=np.arange(3),
        time=np.array(["2022-12-20T00"], dtype="datetime64[ns]"),
        lead_time=(np.arange(4) * np.timedelta64(6, "h")).astype("timedelta64[ns]"),
        lat=np.linspace(90, -90, nlat),
        lon=np.linspace(0, 360, nlon, endpoint=False),
    )


def _run(io, c, data, wrap=lambda a: a):
    io.add_array(c, ["t2m", "tcwv"])
    for k in range(len(c["lead_time"])):
        x = wrap(data[:, :, k : k + 1])
        io.write([x[:, :, :, 0], x[:, :, :, 1]], OrderedDict(c, lead_time=c["lead_time"][k : k + 1]),
                 np.array(["t2m", "tcwv"]))


def _data(c, seed=0):
    rng = np.random.default_rng(seed)
    shape = (3, 1, 4, 2, len(c["lat"]), len(c["lon"]))
    return (np.round(rng.normal(270, 10, shape) * 256) / 256).astype("float32")


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_roundtrip_readers_and_filters(tmp_path, compression):
    c, path = _coords(), tmp_path / "f.nc"
    data = _data(c)
    with NetCDF4Backend(path, backend_kwargs={"mode": "w"}, compression=compression, complevel=4) as io:
        _run(io, c, data)
        if compression:
            assert io.stats()["chunks_written"] == 2 * 3 * 4  # native path: one chunk per field
        else:
            assert io["t2m"].chunking() == "contiguous"  # contiguous, written in place
    with netCDF4.Dataset(path) as ds:
        np.testing.assert_array_equal(ds["t2m"][:].data, data[:, :, :, 0])
        np.testing.assert_array_equal(ds["tcwv"][:].data, data[:, :, :, 1])
        f = ds["t2m"].filters()
        assert bool(f["zlib"]) == (compression == "zlib") and bool(f["shuffle"]) == (compression == "zlib")
        assert ds["time"].units == "hours since 0001-01-01 00:00:00.0"
        assert ds["lead_time"].units == "hours" and ds["lead_time"].dtype == np.int64
    for engine in ("netcdf4", "h5netcdf"):
        with xr.open_dataset(path, engine=engine) as ds:
            np.testing.assert_array_equal(ds["t2m"].values, data[:, :, :, 0])
            np.testing.assert_array_equal(ds["time"].values, c["time"])
    if shutil.which("ncdump"):
        out = subprocess.run(["ncdump", "-hs", str(path)], capture_output=True, text=True, check=True).stdout
        assert "float t2m(ensemble, time, lead_time, lat, lon)" in out
        assert ("t2m:_DeflateLevel = 4" in out) == (compression == "zlib"), out
        assert ('t2m:_Shuffle = "true"' in out) == (compression == "zlib"), out


def test_same_dataset_as_earth2studio_netcdf4_backend(tmp_path):
    e2s_io = pytest.importorskip("earth2studio.io", reason="earth2studio is not installed (e2fastio[compare])")
    c = _coords()
    c["lead_time"] = c["lead_time"].astype("timedelta64[h]")  # Earth2Studio's writer has no unit for ns
    data = _data(c, 3)
    with NetCDF4Backend(tmp_path / "ours.nc", backend_kwargs={"mode": "w"}) as io:
        _run(io, c, data, wrap=torch.from_numpy)  # Earth2Studio (which needs torch) takes tensors
    ref = e2s_io.NetCDF4Backend(str(tmp_path / "ref.nc"), backend_kwargs={"mode": "w"})
    _run(ref, c, data, wrap=torch.from_numpy)
    ref.close()
    for engine in ("netcdf4", "h5netcdf"):
        a = xr.open_dataset(tmp_path / "ours.nc", engine=engine).load()
        b = xr.open_dataset(tmp_path / "ref.nc", engine=engine).load()
        assert set(a.variables) == set(b.variables) and a.sizes == b.sizes
        for v in a.variables:
            np.testing.assert_array_equal(a[v].values, b[v].values)
            assert a[v].dtype == b[v].dtype, v
            for attr in ("units", "calendar"):
                assert a[v].encoding.get(attr) == b[v].encoding.get(attr), (v, attr)


def test_zlib_is_smaller_and_same_values_as_netcdf4_python(tmp_path):
    c = _coords(91, 180)
    data = _data(c, 4)
    with NetCDF4Backend(tmp_path / "z.nc", backend_kwargs={"mode": "w"}, compression="zlib", complevel=1) as io:
        _run(io, c, data)
    ds = netCDF4.Dataset(tmp_path / "r.nc", "w")
    for d, v in c.items():
        ds.createDimension(d, len(v))
    for i, name in enumerate(["t2m", "tcwv"]):
        var = ds.createVariable(name, "f4", tuple(c), zlib=True, complevel=1, shuffle=True,
                                chunksizes=(1, 1, 1, 91, 180))
        var[:] = data[:, :, :, i]
    ds.close()
    ours, ref = (tmp_path / "z.nc").stat().st_size, (tmp_path / "r.nc").stat().st_size
    assert ours < ref * 1.01, (ours, ref)  # zlib: the same size; libdeflate: ~12% smaller here
    with netCDF4.Dataset(tmp_path / "z.nc") as a:
        np.testing.assert_array_equal(a["tcwv"][:].data, data[:, :, :, 1])


@pytest.mark.torch  # io.read returns a torch tensor
def test_append_partial_reopen_and_flush_visible_to_another_process(tmp_path):
    c, path = _coords(), tmp_path / "a.nc"
    data = _data(c, 1)
    io = NetCDF4Backend(path, backend_kwargs={"mode": "w"}, compression="zlib")
    io.add_array(c, "t2m")
    x = torch.from_numpy(data[:, :, :2, 0])
    io.write(x, OrderedDict(c, lead_time=c["lead_time"][:2]), "t2m")
    io.flush()
    script = (f"import netCDF4, numpy as np; d = netCDF4.Dataset({str(path)!r});"
              "print(float(np.asarray(d['t2m'][:, :, :2]).sum()))")
    # While a writer holds a file, HDF5 readers must not take a file lock (a standard HDF5 switch).
    env = dict(os.environ, HDF5_USE_FILE_LOCKING="FALSE")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert abs(float(out) - float(data[:, :, :2, 0].astype("float64").sum())) < 1e-3 * abs(float(out))
    io.close()
    io = NetCDF4Backend(path, backend_kwargs={"mode": "r+"}, compression="zlib")
    assert list(io.coords) == list(c)
    np.testing.assert_array_equal(io.coords["lead_time"], c["lead_time"])
    np.testing.assert_array_equal(io.coords["time"], c["time"])
    # A partial field (half the longitudes) goes through HDF5's own merge; the rest is kept.
    io.write(torch.full((3, 1, 1, 19, 18), 5.0),
             OrderedDict(c, lead_time=c["lead_time"][2:3], lon=c["lon"][:18]), "t2m")
    io.write(torch.from_numpy(data[:, :, 3:4, 0]), OrderedDict(c, lead_time=c["lead_time"][3:4]), "t2m")
    got, _ = io.read(OrderedDict(c, lead_time=c["lead_time"][2:]), "t2m")
    io.close()
    assert (got[:, :, 0, :, :18] == 5).all()
    np.testing.assert_array_equal(got[:, :, 1].numpy(), data[:, :, 3, 0])
    with netCDF4.Dataset(path) as ds:
        np.testing.assert_array_equal(ds["t2m"][:, :, :2].data, data[:, :, :2, 0])


def test_diskless_leaves_no_file(tmp_path):
    path = tmp_path / "mem.nc"
    io = NetCDF4Backend(path, backend_kwargs={"mode": "w", "diskless": True}, compression="zlib")
    c = _coords()
    _run(io, c, _data(c))
    np.testing.assert_array_equal(io["t2m"][0, 0, 0], _data(c)[0, 0, 0, 0])
    io.close()
    assert not path.exists()


def test_bad_input_clear_errors_file_unchanged(tmp_path):
    c, path = _coords(), tmp_path / "b.nc"
    io = NetCDF4Backend(path, backend_kwargs={"mode": "w"})
    io.add_array(c, "t2m")
    step = OrderedDict(c, lead_time=c["lead_time"][:1])
    ones = np.ones((3, 1, 1, 19, 36), "float32")
    io.write(ones, step, "t2m")
    def snapshot():
        return {k: np.array(io[k][...]).tobytes() for k in io}

    before = snapshot()
    with pytest.raises(UnknownDimensionError, match="pressure"):
        io.write(ones, OrderedDict(step, pressure=np.arange(1)), "t2m")
    with pytest.raises(CoordinateError, match="lead_time"):
        io.write(ones, OrderedDict(step, lead_time=np.array([99], "timedelta64[h]")), "t2m")
    with pytest.raises(DataShapeError):
        io.write(np.ones((3, 1, 1, 19, 35), "float32"), step, "t2m")
    with pytest.raises(ArrayNameError):
        io.write(ones, step, "../x")
    with pytest.raises(ValueError, match="must be the same"):
        io.write([ones] * 2, step, ["t2m"])
    assert snapshot() == before and "x" not in io
    io.close()
    kept = path.read_bytes()
    with pytest.raises(BackendClosedError):
        io.write(ones, step, "t2m")
    with pytest.raises(FileNotFoundError, match="read only"):
        NetCDF4Backend(tmp_path / "missing.nc", {"mode": "r"})
    with pytest.raises(ValueError, match="compression"):
        NetCDF4Backend(tmp_path / "x.nc", backend_kwargs={"mode": "w"}, compression="zstd")
    with pytest.raises(ValueError, match="complevel"):
        NetCDF4Backend(tmp_path / "x.nc", backend_kwargs={"mode": "w"}, compression="zlib", complevel=0)
    # Engine options are checked before the file is opened: mode 'w' must not truncate a file on a bad argument.
    for kw, what in [({"threads": 0}, "threads"), ({"max_buffer_bytes": 0}, "max_buffer_bytes"),
                     ({"max_buffer_bytes": 1}, r"max_buffer_bytes=1 is too small for NetCDF4Backend")]:
        with pytest.raises(ValueError, match=what):
            NetCDF4Backend(path, backend_kwargs={"mode": "w"}, **kw)
        assert path.read_bytes() == kept


def test_chunked_uncompressed_with_partial_chunks_merges_through_hdf5(tmp_path):
    c = _coords()
    data = _data(c, 9)
    with NetCDF4Backend(tmp_path / "c.nc", backend_kwargs={"mode": "w"}, chunks={"lead_time": 2, "lat": 19}) as io:
        _run(io, c, data)
        assert io["t2m"].chunking() == [1, 1, 2, 19, 36]
    with netCDF4.Dataset(tmp_path / "c.nc") as ds:
        np.testing.assert_array_equal(ds["t2m"][:].data, data[:, :, :, 0])


@pytest.mark.torch  # io.read returns a torch tensor
def test_uncompressed_data_is_written_in_place_and_reads_never_go_stale(tmp_path):
    """Contiguous variables are written by the core at their file offset; HDF5 keeps no stale copy."""
    from collections import OrderedDict

    import netCDF4

    c = OrderedDict(ensemble=np.arange(3), lead_time=np.array([0, 6], dtype="timedelta64[h]"),
                    lat=np.linspace(-90, 90, 91), lon=np.arange(0, 360, 2.0))
    rng = np.random.default_rng(0)
    path = tmp_path / "inplace.nc"
    io = NetCDF4Backend(path, {"mode": "w"})
    io.add_array(c, "t2m")
    assert io._nc.variables["t2m"]._h5ds.id.get_offset() is not None  # allocated at creation
    small = OrderedDict(ensemble=c["ensemble"][:1], lead_time=c["lead_time"][:1], lat=c["lat"][:2], lon=c["lon"][:3])
    for _ in range(3):  # small reads between in-place writes of the same region
        x = rng.normal(280, 10, (3, 2, 91, 180)).astype("float32")
        io.write(x, c, "t2m")
        got, _ = io.read(small, "t2m")
        np.testing.assert_array_equal(got.numpy(), x[:1, :1, :2, :3])
    step = OrderedDict(c)
    step["lead_time"] = c["lead_time"][1:]
    y = rng.normal(0, 1, (3, 1, 91, 180)).astype("float32")[..., ::1]
    io.write(torch.from_numpy(y), step, "t2m")  # one lead time: one run per member
    x[:, 1:] = y
    region = io.pipeline.region("t2m")
    assert region is not None and region[1].direct_io_active
    io.close()
    with netCDF4.Dataset(path) as nc:
        np.testing.assert_array_equal(np.asarray(nc["t2m"][:]), x)
    # Append: the same file, reopened, written in place again.
    with NetCDF4Backend(path, {"mode": "r+"}) as io:
        io.write(x * 2, c, "t2m")
    with netCDF4.Dataset(path) as nc:
        np.testing.assert_array_equal(np.asarray(nc["t2m"][:]), x * 2)


@pytest.mark.torch  # io.read returns a torch tensor
@pytest.mark.parametrize("compression", [None, "zlib"])
def test_nonblocking_writes_stage_and_land_exactly(tmp_path, compression):
    from collections import OrderedDict

    c = OrderedDict(ensemble=np.arange(2), lead_time=np.arange(4) * np.timedelta64(6, "h"),
                    lat=np.linspace(-90, 90, 46), lon=np.arange(0, 360, 4.0))
    path = tmp_path / f"nb-{compression}.nc"
    want = np.empty((2, 4, 46, 90), np.float32)
    buf = torch.empty(2, 1, 46, 90)
    with NetCDF4Backend(path, {"mode": "w"}, compression=compression, blocking=False) as io:
        io.add_array(c, ["t2m"])
        for k in range(4):
            step = OrderedDict(c)
            step["lead_time"] = c["lead_time"][k : k + 1]
            buf.normal_(280, 10)
            want[:, k] = buf[:, 0].numpy()
            io.write(buf, step, "t2m")
            buf.fill_(-1)  # the caller reuses its tensor at once
        got, _ = io.read(c, "t2m")  # reads include every write so far
        np.testing.assert_array_equal(got.numpy(), want)
    with netCDF4.Dataset(path) as nc:
        np.testing.assert_array_equal(np.asarray(nc["t2m"][:]), want)
        assert nc["t2m"].filters()["zlib"] is (compression == "zlib")


def test_nonblocking_background_error_surfaces_at_the_next_call(tmp_path):
    from collections import OrderedDict

    c = OrderedDict(lead_time=np.arange(2) * np.timedelta64(6, "h"), lat=np.arange(8.0), lon=np.arange(16.0))
    io = NetCDF4Backend(tmp_path / "err.nc", {"mode": "w"}, blocking=False)
    io.add_array(c, "t2m")
    spec, sink = io.pipeline.region("t2m")
    wrong = _core.FileRegionSink(str(tmp_path / "err.nc"), 1 << 40, "other", spec.shape, spec.chunks, 4)
    io.pipeline._regions["t2m"] = (spec, wrong)  # keys of another array: fails
    io.write(np.ones((2, 8, 16), np.float32), c, "t2m")
    with pytest.raises(BackgroundWriteError, match="not under"):
        io.flush()
    io.flush()  # reported once
    io.close()


def _small_coords() -> OrderedDict[str, np.ndarray]:
    return OrderedDict(time=np.array(["2022-01-01"], dtype="datetime64[ns]"), lat=np.arange(4.0),
                       lon=np.arange(8.0))


def test_reopening_with_mode_w_closes_the_earlier_backend_on_that_file(tmp_path, caplog):
    # A notebook cell re-run: the previous backend on the file is still open
    # (the variable about to be reassigned holds it). HDF5 cannot truncate a
    # file open in this process; the earlier backend is closed first, its
    # pending writes stored, and the new file holds only what the new one wrote.
    path = tmp_path / "x.nc"
    c = _small_coords()
    first = NetCDF4Backend(path, backend_kwargs={"mode": "w"}, blocking=False)
    first.add_array(c, "t2m")
    first.write(np.ones((1, 4, 8), np.float32), c, "t2m")
    with caplog.at_level("WARNING", logger="e2fastio.backends.netcdf"):
        second = NetCDF4Backend(path, backend_kwargs={"mode": "w"})
    assert first.closed
    assert "still open by an earlier NetCDF4Backend" in caplog.text and "io.close()" in caplog.text
    second.add_array(c, "u10")
    second.write(np.full((1, 4, 8), 2.0, np.float32), c, "u10")
    second.close()
    import netCDF4

    with netCDF4.Dataset(path) as ds:
        assert "t2m" not in ds.variables
        np.testing.assert_array_equal(ds["u10"][:], np.full((1, 4, 8), 2.0, np.float32))
    # Appending to a file another backend holds open is HDF5's business (it shares the file): no closing.
    third = NetCDF4Backend(path, backend_kwargs={"mode": "a"})
    fourth = NetCDF4Backend(path, backend_kwargs={"mode": "r+"})
    assert not third.closed and not fourth.closed
    fourth.close()
    third.close()


def test_an_earlier_backend_that_cannot_close_keeps_its_file(tmp_path):
    path = tmp_path / "x.nc"
    c = _small_coords()
    first = NetCDF4Backend(path, backend_kwargs={"mode": "w"})
    first.add_array(c, "t2m")
    first.write(np.ones((1, 4, 8), np.float32), c, "t2m")
    first.flush()
    real_close = first.close

    def failing_close() -> None:
        raise OSError("disk full while storing the last chunks")

    first.close = failing_close  # its own error, as a background write failing at close would give
    with pytest.raises(RuntimeError, match=r"still open by an earlier NetCDF4Backend.*disk full.*not truncated"):
        NetCDF4Backend(path, backend_kwargs={"mode": "w"})
    first.close = real_close
    assert not first.closed
    first.close()
    import netCDF4

    with netCDF4.Dataset(path) as ds:  # what the earlier backend wrote is still there
        np.testing.assert_array_equal(ds["t2m"][:], np.ones((1, 4, 8), np.float32))


def test_an_unreferenced_earlier_backend_gives_its_file_name_back_quietly(tmp_path, caplog, monkeypatch):
    # netCDF4's Dataset closes when its last reference goes; a backend sits in reference cycles
    # (its root refers back to it), so it is collected first: no warning, nothing refused.
    # Earth2Studio's own tests open "inmemory.nc" (diskless) once per test case in one process.
    monkeypatch.chdir(tmp_path)
    c = _small_coords()
    for kwargs in ({"mode": "w", "diskless": True, "persist": False}, {"mode": "w"}):
        for _ in range(3):
            io = NetCDF4Backend("same.nc", backend_kwargs=kwargs)
            io.add_array(c, "t2m", data=np.ones((1, 4, 8), np.float32))
            del io
            with caplog.at_level("WARNING", logger="e2fastio.backends.netcdf"):
                io = NetCDF4Backend("same.nc", backend_kwargs=kwargs)
            assert "still open" not in caplog.text
            assert "t2m" not in io
            io.close()


def test_an_in_memory_file_in_use_is_never_closed_for_another_of_its_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = _small_coords()
    first = NetCDF4Backend("mem.nc", backend_kwargs={"mode": "w", "diskless": True, "persist": False})
    first.add_array(c, "t2m", data=np.ones((1, 4, 8), np.float32))
    for kwargs in ({"mode": "w", "diskless": True}, {"mode": "w"}):
        with pytest.raises(PermissionError, match=r"file_name 'mem.nc' is open in another NetCDF4Backend.*close "
                                                  r"that backend first"):
            NetCDF4Backend("mem.nc", backend_kwargs=kwargs)
    assert not first.closed
    np.testing.assert_array_equal(np.asarray(first["t2m"][:]), np.ones((1, 4, 8), np.float32))  # its data intact
    first.close()
    NetCDF4Backend("mem.nc", backend_kwargs={"mode": "w", "diskless": True}).close()
