"""NetCDF4Backend as a drop-in for Earth2Studio 0.19's: backend_kwargs, root, sync, dtypes, names.

Every file is read back with netCDF4-python (and xarray where Earth2Studio's
users would), never only through e2fastio itself.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest
import xarray as xr

netCDF4 = pytest.importorskip("netCDF4")

from e2fastio import NetCDF4Backend  # noqa: E402
from e2fastio.errors import (  # noqa: E402
    ArrayNameError,
    BackendClosedError,
    ReadOnlyError,
    UnknownDimensionError,
    UnsupportedDTypeError,
)

try:
    import torch
except ImportError:  # tests marked `torch` skip (conftest)
    torch = None


def _coords(times=2, leads=2, variables=("t2m", "tcwv"), nlat=6, nlon=8):
    return OrderedDict(
        time=np.array(["1971-06-01T06:00", "2021-11-23T12:00"][:times], dtype="datetime64[ns]"),
        lead_time=(np.arange(leads) * np.timedelta64(6, "h")).astype("timedelta64[h]"),
        variable=np.array(variables),
        lat=np.linspace(-90, 90, nlat),
        lon=np.linspace(0, 360, nlon, endpoint=False),
    )


def _shape(c):
    return tuple(len(v) for v in c.values())


def _field(shape, seed=0):
    return np.random.default_rng(seed).normal(280, 10, shape).astype("float32")


def _reader_env():
    return dict(os.environ, HDF5_USE_FILE_LOCKING="FALSE")


# ---------------------------------------------------------------------------------------------- backend_kwargs
def test_default_kwargs_create_a_missing_file_then_append(tmp_path):
    """Earth2Studio's default {"mode": "r+"} creates a missing file, as netCDF4-python does."""
    path = tmp_path / "new.nc"
    c = _coords()
    x = _field(_shape(c))
    io = NetCDF4Backend(path)
    io.add_array(c, "fields", data=x)
    io.close()
    io = NetCDF4Backend(path)  # reopened with the same defaults: appends
    assert list(io.coords) == list(c)
    np.testing.assert_array_equal(io.coords["time"], c["time"])
    io.add_array(c, "more", data=x * 2)
    io.close()
    with netCDF4.Dataset(path) as ds:
        assert set(ds.variables) == {*c, "fields", "more"}
        np.testing.assert_array_equal(ds["fields"][:].data, x)
        np.testing.assert_array_equal(ds["more"][:].data, x * 2)
    with xr.open_dataset(path) as ds:
        np.testing.assert_array_equal(ds["time"].values, c["time"])
        np.testing.assert_array_equal(ds["lead_time"].values, c["lead_time"])


@pytest.mark.parametrize("mode", ["a", "r+", "as", "r+s"])
def test_append_modes_create_missing_files(tmp_path, mode):
    path = tmp_path / f"{mode}.nc"
    with NetCDF4Backend(path, {"mode": mode}) as io:
        io.add_array(OrderedDict(lat=np.arange(3.0)), "x", data=np.ones(3, "float32"))
    with netCDF4.Dataset(path) as ds:
        np.testing.assert_array_equal(ds["x"][:].data, np.ones(3, "float32"))


def test_w_overwrites_x_and_noclobber_refuse(tmp_path):
    path = tmp_path / "f.nc"
    c = OrderedDict(lat=np.arange(3.0))
    with NetCDF4Backend(path, {"mode": "w"}) as io:
        io.add_array(c, "old", data=np.ones(3, "float32"))
    with NetCDF4Backend(path, {"mode": "w"}) as io:
        io.add_array(c, "new", data=np.zeros(3, "float32"))
    with netCDF4.Dataset(path) as ds:
        assert set(ds.variables) == {"lat", "new"}
    for kwargs in ({"mode": "x"}, {"mode": "w", "clobber": False}):
        with pytest.raises(FileExistsError, match="never overwrites"):
            NetCDF4Backend(path, kwargs)
    with netCDF4.Dataset(path) as ds:  # untouched
        assert set(ds.variables) == {"lat", "new"}
    with NetCDF4Backend(tmp_path / "fresh.nc", {"mode": "x"}) as io:
        io.add_array(c, "x", data=np.ones(3, "float32"))
    with netCDF4.Dataset(tmp_path / "fresh.nc") as ds:
        np.testing.assert_array_equal(ds["x"][:].data, np.ones(3, "float32"))


@pytest.mark.torch  # io.read returns a torch tensor
def test_read_only_mode(tmp_path):
    path = tmp_path / "ro.nc"
    c = _coords()
    x = _field(_shape(c))
    with NetCDF4Backend(path, {"mode": "w"}) as io:
        io.add_array(c, "fields", data=x)
    before = path.read_bytes()
    with pytest.raises(FileNotFoundError, match="read only"):
        NetCDF4Backend(tmp_path / "missing.nc", {"mode": "r"})
    assert not (tmp_path / "missing.nc").exists()
    io = NetCDF4Backend(path, {"mode": "r"})
    np.testing.assert_array_equal(io.coords["lead_time"], c["lead_time"])
    got, _ = io.read(c, "fields")
    np.testing.assert_array_equal(got.numpy(), x)
    with pytest.raises(ReadOnlyError, match="mode 'a'"):
        io.write(x, c, "fields")
    with pytest.raises(RuntimeError):  # netCDF4 raises RuntimeError here too
        io.add_array(c, "other")
    with pytest.raises(ReadOnlyError):
        io.root["fields"][0, 0, 0, 0, 0] = 1.0
    with pytest.raises(ReadOnlyError):
        io.root.title = "no"
    io.flush()
    io.root.sync()
    io.close()
    assert path.read_bytes() == before


def test_earth2studio_memory_store_kwargs(tmp_path, monkeypatch):
    """{"mode": "w", "diskless": True, "persist": False}: Earth2Studio's own tests' in-memory store."""
    monkeypatch.chdir(tmp_path)
    c = _coords()
    x = _field(_shape(c))
    io = NetCDF4Backend("inmemory.nc", backend_kwargs={"mode": "w", "diskless": True, "persist": False})
    io.add_array(c, "fields", data=x)
    np.testing.assert_array_equal(io["fields"][:].data, x)
    io.root.sync()
    io.close()
    assert not (tmp_path / "inmemory.nc").exists()


def test_diskless_persist_writes_the_file_at_close(tmp_path):
    path = tmp_path / "persist.nc"
    c = _coords()
    x = _field(_shape(c))
    io = NetCDF4Backend(path, {"mode": "w", "diskless": True, "persist": True})
    io.add_array(c, "fields", data=x)
    io.write(x[:, :1] + 1, OrderedDict(c, lead_time=c["lead_time"][:1]), "fields")
    io.close()
    want = x.copy()
    want[:, :1] += 1
    with netCDF4.Dataset(path) as ds:
        np.testing.assert_array_equal(ds["fields"][:].data, want)


def test_diskless_append_without_persist_leaves_the_file_alone(tmp_path):
    path = tmp_path / "keep.nc"
    c = OrderedDict(lat=np.arange(3.0))
    with NetCDF4Backend(path, {"mode": "w"}) as io:
        io.add_array(c, "x", data=np.ones(3, "float32"))
    before = path.read_bytes()
    with NetCDF4Backend(path, {"mode": "a", "diskless": True}) as io:
        np.testing.assert_array_equal(io["x"][:].data, np.ones(3, "float32"))  # loaded into memory
        io.write(np.zeros(3, "float32"), c, "x")
        io.add_array(c, "y", data=np.ones(3, "float32"))
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"mode": "w", "format": "NETCDF3_CLASSIC"}, ValueError, "format"),
        ({"mode": "w", "format": "NETCDF4_CLASSIC"}, ValueError, "format"),
        ({"mode": "w", "memory": 1024}, ValueError, "memory"),
        ({"mode": "w", "parallel": True}, ValueError, "parallel"),
        ({"mode": "w", "comm": object()}, ValueError, "comm"),
        ({"mode": "w", "encoding": "no-such-codec"}, ValueError, "encoding"),
        ({"mode": "w", "chunk_cache": 1}, TypeError, "chunk_cache"),
        ({"mode": "q"}, ValueError, "mode"),
        ({"mode": "xs"}, ValueError, "mode"),
    ],
)
def test_unsupported_kwargs_are_refused_by_name(tmp_path, kwargs, error, match):
    path = tmp_path / "refused.nc"
    with pytest.raises(error, match=match):
        NetCDF4Backend(path, kwargs)
    assert not path.exists()


def test_accepted_kwargs_and_the_callers_dict_is_not_changed(tmp_path):
    kwargs = {"mode": "w", "format": "NETCDF4", "keepweakref": True, "encoding": "utf-8", "clobber": True,
              "parallel": False, "persist": False}
    snapshot = dict(kwargs)
    with NetCDF4Backend(tmp_path / "ok.nc", kwargs) as io:
        io.add_array(OrderedDict(lat=np.arange(2.0)), "x", data=np.ones(2, "float32"))
    assert kwargs == snapshot
    with netCDF4.Dataset(tmp_path / "ok.nc") as ds:
        assert ds.data_model == "NETCDF4"


# ---------------------------------------------------------------------------------------------- Earth2Studio's flows
@pytest.mark.torch  # io.read returns a torch tensor
@pytest.mark.parametrize("compression", [None, "zlib"])
def test_fields_flow(tmp_path, compression):
    """add_array, membership, len, iteration, full and partial writes, reads; read back with netCDF4."""
    path = tmp_path / "fields.nc"
    c = _coords()
    shape = _shape(c)
    io = NetCDF4Backend(path, {"mode": "w"}, compression=compression)
    io.add_array(c, "fields")
    for dim in c:
        assert dim in io and dim in io.coords and io[dim].shape == c[dim].shape
    assert "fields" in io and io["fields"].shape == shape
    assert len(io) == 6 and set(io) == {"fields", *c}
    init = _field(shape, 1)
    io.add_array(c, "dummy_1", data=init)
    full = _field(shape, 2)
    io.write(full, c, "fields_1")  # a new array, created by the write
    assert io["fields_1"].shape == shape and io["fields_1"].dtype == np.float32
    part_c = OrderedDict(c, time=c["time"][:1], lead_time=c["lead_time"][:1], variable=c["variable"][:1],
                         lon=c["lon"][:4])
    part = _field((1, 1, 1, 6, 4), 3)
    io.write(part, part_c, "fields")
    np.testing.assert_array_equal(np.asarray(io["fields"][0, 0, 0, :, :4]), part[0, 0, 0])
    got, got_c = io.read(part_c, "fields")
    assert torch.equal(got, torch.from_numpy(part)) and got_c is part_c
    io.close()
    with netCDF4.Dataset(path) as ds:
        np.testing.assert_array_equal(ds["dummy_1"][:].data, init)
        np.testing.assert_array_equal(ds["fields_1"][:].data, full)
        np.testing.assert_array_equal(ds["fields"][0, 0, 0, :, :4].data, part[0, 0, 0])
        assert list(ds["variable"][:]) == list(c["variable"])
    io = NetCDF4Backend(path)
    for dim in c:
        np.testing.assert_array_equal(io.coords[dim], c[dim])
    io.close()


def test_split_coords_write_one_array_per_variable(tmp_path):
    pytest.importorskip("earth2studio", reason="earth2studio is not installed (pip install e2fastio[compare])")
    from earth2studio.utils.coords import split_coords

    path = tmp_path / "split.nc"
    c = _coords()
    coords = OrderedDict((k, v) for k, v in c.items() if k != "variable")
    with NetCDF4Backend(path, {"mode": "w"}) as io:
        io.add_array(coords, c["variable"])
        part = OrderedDict(c, time=c["time"][:1], lead_time=c["lead_time"][:1], lon=c["lon"][:4])
        x = _field((1, 1, 2, 6, 4))
        io.write(*split_coords(torch.from_numpy(x), part, "variable"))  # Earth2Studio's takes tensors
    with netCDF4.Dataset(path) as ds:
        for i, name in enumerate(c["variable"]):
            assert ds[name].dimensions == tuple(coords)
            np.testing.assert_array_equal(ds[name][0, 0, :, :4].data, x[0, 0, i])


def test_calendar_matches_netcdf4_and_xarray(tmp_path):
    path = tmp_path / "cal.nc"
    c = _coords(times=1, leads=1)
    c["lead_time"] = np.array([np.timedelta64(1, "h")])
    with NetCDF4Backend(path, {"mode": "w"}) as io:
        io.add_array(c, "fields", data=_field(_shape(c)))
    with xr.open_dataset(path) as ds:
        assert ds.time.values[0] == c["time"][0]
        assert ds.lead_time.values[0] == c["lead_time"][0]
    with netCDF4.Dataset(path) as ds:
        hours = float(ds["time"][0])
        assert ds["time"].units == "hours since 0001-01-01 00:00:00.0"
        assert ds["time"].calendar == "proleptic_gregorian"
        assert ds["lead_time"].units == "hours" and ds["lead_time"].getncattr("dtype") == "timedelta64[ns]"
    assert np.datetime64("0001-01-01T00:00:00", "s") + np.timedelta64(int(hours * 3600), "s") == c["time"][0]


@pytest.mark.torch  # io.read returns a torch tensor
def test_multidimensional_coordinates(tmp_path):
    path = tmp_path / "curvi.nc"
    lat = np.linspace(-90, 90, 6)
    lon = np.linspace(0, 360, 8, endpoint=False)
    lon2, lat2 = np.meshgrid(lon, lat)
    c = OrderedDict(time=np.array(["2021-11-23T12:00"], dtype="datetime64[ns]"), variable=np.array(["t2m"]),
                    lat=lat2, lon=lon2)
    io = NetCDF4Backend(path, {"mode": "w"})
    io.add_array(c, "fields")
    assert len(io) == 7 and {"ilat", "ilon", "lat", "lon"} <= set(io)
    x = _field((1, 1, 6, 8))
    io.write(x, c, "fields")
    got, _ = io.read(c, "fields")
    assert torch.equal(got, torch.from_numpy(x))
    with pytest.raises(ValueError, match="in full"):
        io.write(x[..., :3, :], OrderedDict(c, lat=lat2[:3], lon=lon2[:3]), "fields")
    io.close()
    with netCDF4.Dataset(path) as ds:
        assert ds["lat"].dimensions == ("ilat", "ilon")
        np.testing.assert_array_equal(ds["lat"][:].data, lat2)
        np.testing.assert_array_equal(ds["fields"][:].data, x)


def test_earth2studio_errors(tmp_path, caplog):
    c = _coords()
    shape = _shape(c)
    io = NetCDF4Backend(tmp_path / "err.nc", {"mode": "w"})
    x = _field(shape)
    with pytest.raises(ValueError, match="must be the same"):
        io.add_array(c, "fields", data=[x, x])
    io.add_array(c, ["dummy_1"], data=[x])
    with caplog.at_level(logging.WARNING, logger="e2fastio.backends.netcdf"):
        io.add_array(c, ["dummy_1"], data=[x + 1])  # kept as it was, with a warning
    assert "already in NetCDF Store" in caplog.text
    np.testing.assert_array_equal(io["dummy_1"][:].data, x)
    bad = OrderedDict(ensemble=np.arange(1), **c)
    with pytest.raises(AssertionError):
        io.write(x[None], bad, "dummy_1")
    with pytest.raises(UnknownDimensionError):
        io.write(x[None], bad, "dummy_1")
    with pytest.raises(ValueError, match="must be the same"):
        io.write([x, x], c, "dummy_1")
    io.close()
    with pytest.raises(BackendClosedError):
        io.write(x, c, "dummy_1")


def test_write_creates_missing_arrays_read_by_xarray(tmp_path):
    path = tmp_path / "uninit.nc"
    lat, lon = np.arange(4), np.arange(10)
    io = NetCDF4Backend(path, {"mode": "w"})
    io.add_array(OrderedDict(lat=lat, lon=lon), ["init"])
    io.write(np.zeros((4, 2), "float32"), {"lat": lat, "lon": lon[:2]}, "init")
    io.write(np.ones((4, 5), "float32"), {"lat": lat, "lon": lon[:5]}, "newvar")
    io.close()
    with xr.open_dataset(path) as ds:
        assert {"init", "newvar"} <= set(ds.data_vars)
        np.testing.assert_array_equal(ds["init"].isel(lon=slice(0, 2)).values, 0.0)
        np.testing.assert_array_equal(ds["newvar"].isel(lon=slice(0, 5)).values, 1.0)
        assert ds["newvar"].dtype == np.float32


# ---------------------------------------------------------------------------------------------- root
def test_root_variables_dimensions_and_attributes(tmp_path):
    path = tmp_path / "root.nc"
    c = _coords()
    x = _field(_shape(c))
    io = NetCDF4Backend(path, {"mode": "w"})
    io.add_array(c, "fields", data=x)
    root = io.root
    assert root.isopen() and root.filepath() == str(path) and root.data_model == "NETCDF4"
    assert set(root.variables) == {*c, "fields"} and "fields" in root.variables
    assert {n: len(d) for n, d in root.dimensions.items()} == {k: len(v) for k, v in c.items()}
    assert not root.dimensions["lat"].isunlimited() and root.dimensions["lat"].size == 6
    var = root.variables["fields"]
    assert var is root["fields"] and var.name == "fields"
    assert var.shape == _shape(c) and var.ndim == 5 and var.size == x.size and len(var) == 2
    assert var.dtype == np.float32 and var.dimensions == tuple(c)
    assert [d.name for d in var.get_dims()] == list(c)
    assert var.chunking() == "contiguous" and var.filters()["zlib"] is False
    assert root["time"].units == "hours since 0001-01-01 00:00:00.0"
    assert root["time"].getncattr("calendar") == "proleptic_gregorian"
    assert root["variable"].dtype is str and list(root["variable"][:]) == ["t2m", "tcwv"]
    values = var[:, 0, 1]
    assert isinstance(values, np.ma.MaskedArray) and not values.mask.any()
    np.testing.assert_array_equal(values.data, x[:, 0, 1])
    np.testing.assert_array_equal(np.asarray(var), x)
    with pytest.raises(IndexError, match="nope not found"):
        root["nope"]
    with pytest.raises(KeyError):
        root.variables["nope"]
    with pytest.raises(AttributeError):
        root.no_such_attribute  # noqa: B018
    # attributes, set in netCDF4's three spellings, deleted, read back by netCDF4
    root.title = "forecast"
    root.setncattr("institution", "here")
    root.setncatts({"source": "e2fastio", "tmp": 1})
    del root.tmp
    var.units = "K"
    var.setncattr("long_name", "fields")
    assert root.ncattrs() == ["title", "institution", "source"] and root.getncattr("title") == "forecast"
    assert var.ncattrs() == ["units", "long_name"] and var.units == "K"
    # a write through root lands (HDF5), next to the backend's own writes
    var[0, 0, 0, 0, :] = np.arange(8, dtype="float32")
    io.root.sync()
    io.close()
    assert not root.isopen()
    with pytest.raises(BackendClosedError):
        root["fields"][:]
    with netCDF4.Dataset(path) as ds:
        assert ds.title == "forecast" and ds.institution == "here" and ds.source == "e2fastio"
        assert "tmp" not in ds.ncattrs()
        assert ds["fields"].units == "K" and ds["fields"].long_name == "fields"
        np.testing.assert_array_equal(ds["fields"][0, 0, 0, 0].data, np.arange(8, dtype="float32"))
        np.testing.assert_array_equal(ds["fields"][1].data, x[1])


def test_root_create_variable_fill_values_and_masks_match_netcdf4(tmp_path):
    path = tmp_path / "masked.nc"
    io = NetCDF4Backend(path, {"mode": "w"})
    io.add_array(OrderedDict(x=np.arange(6)), "data", data=np.arange(6, dtype=np.float32))
    root = io.root
    root.createDimension("station", 5)
    filled = root.createVariable("filled", "f4", ("station",), fill_value=-999.0)
    filled[:2] = [1.0, 2.0]
    packed = root.createVariable("packed", "i2", ("station",), zlib=True, complevel=2, chunksizes=(5,))
    packed.scale_factor = 0.5
    packed.add_offset = 10.0
    packed.missing_value = np.int16(-1)
    packed[:] = np.ma.masked_array([10.0, 10.5, 11.0, 0.0, 12.0], mask=[0, 0, 0, 1, 0])
    label = root.createVariable("label", str, ("station",))
    label[:] = np.array(["a", "bb", "c", "d", "e"], dtype=object)
    ours = {name: root[name][:] for name in ("filled", "packed")}
    assert root["packed"].chunking() == [5] and root["packed"].filters()["zlib"]
    with pytest.raises(TypeError, match="least_significant_digit"):
        root.createVariable("lossy", "f4", ("station",), least_significant_digit=2)
    with pytest.raises(TypeError, match="unexpected"):
        root.createVariable("typo", "f4", ("station",), complvl=2)
    root.createVariable("plain", "f8", ("station",), quantize_mode="BitGroom")  # netCDF4's default, accepted
    with pytest.raises(UnsupportedDTypeError):
        root.createVariable("flag", "bool", ("station",))
    io.close()
    with netCDF4.Dataset(path) as ds:
        for name, got in ours.items():
            want = ds[name][:]
            np.testing.assert_array_equal(np.ma.getmaskarray(got), np.ma.getmaskarray(want))
            np.testing.assert_allclose(got.compressed(), want.compressed())
        assert ds["packed"].filters()["zlib"] and ds["packed"].chunking() == [5]
        assert list(ds["label"][:]) == ["a", "bb", "c", "d", "e"]
        np.testing.assert_array_equal(ds["filled"][:2].data, [1.0, 2.0])


def test_root_reads_files_written_by_earth2studio_like_netcdf4_does(tmp_path):
    """A netCDF4-python file (default fill values, unwritten parts) appended to: same masks as netCDF4."""
    e2s_io = pytest.importorskip("earth2studio.io",
                                 reason="earth2studio is not installed (pip install e2fastio[compare])")
    path = tmp_path / "theirs.nc"
    c = OrderedDict(lat=np.arange(4.0), lon=np.arange(6.0))
    ref = e2s_io.NetCDF4Backend(str(path), backend_kwargs={"mode": "w"})
    ref.add_array(c, "x")
    ref.write(torch.ones(4, 3), OrderedDict(lat=c["lat"], lon=c["lon"][:3]), "x")
    ref.close()
    with netCDF4.Dataset(path) as ds:
        want = ds["x"][:]
    assert want.mask.sum() == 12
    with NetCDF4Backend(path) as io:  # Earth2Studio's default kwargs: append
        got = io["x"][:]
        np.testing.assert_array_equal(got.mask, want.mask)
        np.testing.assert_array_equal(got.compressed(), want.compressed())
        io.write(np.full((4, 3), 2.0, "float32"), OrderedDict(lat=c["lat"], lon=c["lon"][3:]), "x")
    with netCDF4.Dataset(path) as ds:
        np.testing.assert_array_equal(ds["x"][:].data, np.repeat([[1.0] * 3 + [2.0] * 3], 4, axis=0))


def test_root_close_closes_the_backend(tmp_path):
    io = NetCDF4Backend(tmp_path / "c.nc", {"mode": "w"})
    io.add_array(OrderedDict(lat=np.arange(2.0)), "x", data=np.ones(2, "float32"))
    io.root.close()
    assert io.closed and not io.root.isopen()
    io.close()  # idempotent
    with netCDF4.Dataset(tmp_path / "c.nc") as ds:
        np.testing.assert_array_equal(ds["x"][:].data, [1.0, 1.0])


# ---------------------------------------------------------------------------------------------- durability
def _read_in_another_process(path, name):
    script = (f"import netCDF4, numpy as np; d = netCDF4.Dataset({str(path)!r}); "
              f"print(float(np.asarray(d[{name!r}][:]).sum()))")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_reader_env())
    assert r.returncode == 0, r.stderr
    return float(r.stdout)


@pytest.mark.parametrize("compression", [None, "zlib"])
def test_blocking_write_is_visible_to_other_processes_at_return(tmp_path, compression):
    """As Earth2Studio's write + root.sync(): no flush() needed before another process reads."""
    path = tmp_path / "vis.nc"
    c = _coords()
    io = NetCDF4Backend(path, {"mode": "w"}, compression=compression)
    io.add_array(c, "fields")
    x = _field(_shape(c))
    io.write(x, c, "fields")
    assert _read_in_another_process(path, "fields") == pytest.approx(float(x.astype("float64").sum()), rel=1e-6)
    io.close()


def test_nonblocking_root_sync_stores_and_fsyncs(tmp_path, monkeypatch):
    path = tmp_path / "nb.nc"
    c = _coords()
    io = NetCDF4Backend(path, {"mode": "w"}, compression="zlib", blocking=False)
    io.add_array(c, "fields")
    x = _field(_shape(c))
    io.write(x, c, "fields")
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    io.root.sync()
    assert len(synced) == 1
    assert _read_in_another_process(path, "fields") == pytest.approx(float(x.astype("float64").sum()), rel=1e-6)
    io.close()
    assert len(synced) == 1  # close() hands data to the OS without fsync, as netCDF4-python


def test_a_backend_never_closed_is_closed_cleanly_at_exit(tmp_path):
    """Earth2Studio's workflows never call close(): the process must still exit cleanly, the file complete."""
    path = tmp_path / "unclosed.nc"
    script = (
        "import numpy as np; from collections import OrderedDict; from e2fastio import NetCDF4Backend\n"
        "c = OrderedDict(lat=np.arange(3.0), lon=np.arange(4.0))\n"
        f"io = NetCDF4Backend({str(path)!r}, {{'mode': 'w'}}, compression='zlib')\n"
        "io.add_array(c, 'x'); io.write(np.ones((3, 4), 'float32'), c, 'x'); v = io.root['x']\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       env=dict(_reader_env(), PYTHONPATH=os.pathsep.join(sys.path)))
    assert r.returncode == 0 and "Exception ignored" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    with netCDF4.Dataset(path) as ds:
        np.testing.assert_array_equal(ds["x"][:].data, np.ones((3, 4), "float32"))


def test_nonblocking_reads_through_root_include_pending_writes(tmp_path):
    c = _coords()
    x = _field(_shape(c))
    with NetCDF4Backend(tmp_path / "nbr.nc", {"mode": "w"}, blocking=False) as io:
        io.add_array(c, "fields")
        io.write(x, c, "fields")
        np.testing.assert_array_equal(io.root.variables["fields"][:].data, x)


# ---------------------------------------------------------------------------------------------- dtypes and names
@pytest.mark.parametrize("dtype", ["float32", "float64", "int8", "int16", "int32", "int64", "uint8", "uint16",
                                   "uint32", "uint64"])
@pytest.mark.parametrize("compression", [None, "zlib"])
def test_every_netcdf_dtype_round_trips(tmp_path, dtype, compression):
    path = tmp_path / f"{dtype}.nc"
    c = OrderedDict(lead_time=np.arange(3) * np.timedelta64(1, "h"), lat=np.arange(4.0), lon=np.arange(5.0))
    rng = np.random.default_rng(0)
    info = np.finfo(dtype) if dtype.startswith("float") else np.iinfo(dtype)
    lo, hi = max(info.min, -1000), min(info.max, 1000)
    data = rng.uniform(lo, hi, (3, 4, 5)).astype(dtype)
    step = rng.uniform(lo, hi, (1, 4, 5)).astype(dtype)
    with NetCDF4Backend(path, {"mode": "w"}, compression=compression) as io:
        # a tensor where torch is installed, as Earth2Studio hands over (uint16-64: numpy arrays)
        as_tensor = torch is not None and dtype not in ("uint16", "uint32", "uint64")
        io.add_array(c, "x", data=torch.from_numpy(data) if as_tensor else data)
        io.write(step, OrderedDict(c, lead_time=c["lead_time"][1:2]), "x")
        assert io["x"].dtype == np.dtype(dtype)
    data[1:2] = step
    with netCDF4.Dataset(path) as ds:
        assert ds["x"].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(ds["x"][:].data, data)


@pytest.mark.torch  # a lazily conjugated tensor, read back as a tensor
@pytest.mark.parametrize("dtype", ["complex64", "complex128"])
@pytest.mark.parametrize("compression", [None, "zlib"])
def test_complex_with_auto_complex(tmp_path, dtype, compression):
    path = tmp_path / "complex.nc"
    c = OrderedDict(lead_time=np.arange(2) * np.timedelta64(6, "h"), lat=np.arange(3.0), lon=np.arange(4.0))
    z = torch.randn(2, 3, 4, dtype=getattr(torch, dtype))
    step = torch.randn(1, 3, 4, dtype=getattr(torch, dtype)).conj()  # a lazily conjugated view, as torch hands it over
    with NetCDF4Backend(path, {"mode": "w", "auto_complex": True}, compression=compression) as io:
        io.add_array(c, "z", data=z)
        io.write(step, OrderedDict(c, lead_time=c["lead_time"][1:]), "z")
        got, _ = io.read(c, "z")
    want = z.numpy().copy()
    want[1:] = step.resolve_conj().numpy()
    np.testing.assert_array_equal(got.numpy(), want)
    with netCDF4.Dataset(path, auto_complex=True) as ds:
        np.testing.assert_array_equal(ds["z"][:], want)
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        np.testing.assert_array_equal(ds["z"].values, want)


@pytest.mark.parametrize("kind", ["numpy", pytest.param("torch", marks=pytest.mark.torch)])
def test_types_netcdf_cannot_hold_are_refused_before_anything_is_created(tmp_path, kind):
    c = OrderedDict(lat=np.arange(3.0))

    def ones(dtype):
        return torch.ones(3, dtype=getattr(torch, dtype)) if kind == "torch" else np.ones(3, dtype)

    with NetCDF4Backend(tmp_path / "bad.nc", {"mode": "w"}) as io:
        with pytest.raises(UnsupportedDTypeError, match="auto_complex"):
            io.add_array(c, "z", data=ones("complex64"))
        with pytest.raises(TypeError, match="float16"):  # netCDF4 raises TypeError too
            io.add_array(c, ["ok", "half"], data=[ones("float32"), ones("float16")])
        with pytest.raises(TypeError, match="bool"):
            io.add_array(c, "flag", data=ones("bool"))
        assert set(io) == set()  # not even the dimension
        io.add_array(c, "x")
        io.write(ones("float16"), c, "x")  # cast into an existing float32 array
        with pytest.raises(UnsupportedDTypeError):
            io.write(ones("complex64"), c, "x")
        with pytest.raises(UnsupportedDTypeError):
            io.write(ones("complex64"), c, "new")
        assert "new" not in io
    with netCDF4.Dataset(tmp_path / "bad.nc") as ds:
        np.testing.assert_array_equal(ds["x"][:].data, np.ones(3, "float32"))


def test_netcdf_names(tmp_path):
    path = tmp_path / "names.nc"
    c = OrderedDict(lat=np.arange(3.0))
    good = ["t2m", "u10m", "x y", "é", "__x", "_x", "1x", "t2m.v", "a:b"]
    with NetCDF4Backend(path, {"mode": "w"}) as io:
        io.add_array(c, good[0])
        for i, name in enumerate(good):
            io.write(np.full(3, float(i), "float32"), c, name)
        for name, match in [("a/b", "group"), ("../x", "group"), (".hid", "NetCDF name"), ("-x", "NetCDF name"),
                            ("x ", "NetCDF name"), ("a\nb", "NetCDF name"), ("", "NetCDF name")]:
            with pytest.raises(ArrayNameError, match=match):
                io.add_array(c, name)
            with pytest.raises(ValueError):
                io.write(np.ones(3, "float32"), c, name)
        with pytest.raises(ArrayNameError, match="coords key"):
            io.add_array(OrderedDict(c, **{"level/hPa": np.arange(2)}), "t2m_levels")
        assert set(io) == {"lat", *good}
    with netCDF4.Dataset(path) as ds:
        assert not ds.groups
        for i, name in enumerate(good):
            np.testing.assert_array_equal(ds[name][:].data, np.full(3, i, "float32"))


# ---------------------------------------------------------------------------------------------- Earth2Studio's workflow
def test_deterministic_workflow_with_default_kwargs_matches_earth2studio(tmp_path):
    """earth2studio.run.deterministic(io=...) with NetCDF4Backend(path) on a missing path, both backends."""
    pytest.importorskip("earth2studio")
    import earth2studio.io
    from earth2studio.data import Random
    from earth2studio.models.px import Persistence
    from earth2studio.run import deterministic

    domain = OrderedDict(lat=np.linspace(90, -90, 19), lon=np.linspace(0, 360, 36, endpoint=False))
    paths = {"ours": tmp_path / "ours.nc", "theirs": tmp_path / "theirs.nc"}
    for key, cls in (("ours", NetCDF4Backend), ("theirs", earth2studio.io.NetCDF4Backend)):
        io = cls(str(paths[key]))  # Earth2Studio's default backend_kwargs: mode "r+" on a missing file
        deterministic(["2022-12-20"], 3, Persistence(["t2m", "tcwv"], domain), Random(domain), io, verbose=False)
        io.close()
    with xr.open_dataset(paths["ours"]) as ours, xr.open_dataset(paths["theirs"]) as theirs:
        assert {k: (v.dims, v.shape, v.dtype) for k, v in ours.variables.items()} == {
            k: (v.dims, v.shape, v.dtype) for k, v in theirs.variables.items()}
        for c in ("time", "lead_time", "lat", "lon"):
            np.testing.assert_array_equal(ours[c].values, theirs[c].values)
        t2m = ours["t2m"].values
        assert np.isfinite(t2m).all() and (t2m == t2m[:, :1]).all()  # persistence: every step is the first
