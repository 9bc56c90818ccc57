"""XarrayBackend: Earth2Studio's in-memory backend around an xarray.Dataset."""

from __future__ import annotations

import logging
from collections import OrderedDict

import numpy as np
import pytest
import xarray as xr
from _memory_grids import DEVICES, TIMES
from _memory_grids import grid as _grid
from _memory_grids import shape as _shape

from e2fastio import XarrayBackend
from e2fastio.errors import CoordinateError, DataShapeError, UnknownDimensionError, UnsupportedDTypeError

try:
    import torch
except ImportError:  # tests marked `torch` skip (conftest)
    torch = None


@pytest.mark.parametrize("times", TIMES)
def test_dataset_coords_and_mapping(times):
    c = _grid(times)
    io = XarrayBackend(c, attrs={"title": "forecast"})
    assert isinstance(io.root, xr.Dataset) and io.root.attrs == {"title": "forecast"}
    assert len(io) == 4 and list(io) == []  # coordinates only, no data variables yet
    io.add_array(c, "fields", attrs={"units": "m s-1"})
    assert list(io.coords) == list(c)
    for d, v in c.items():
        np.testing.assert_array_equal(io.coords[d], v)
        np.testing.assert_array_equal(io[d].values, v)
    assert "fields" in io and "lat" in io and "nothing" not in io
    da = io["fields"]
    assert isinstance(da, xr.DataArray) and da.shape == _shape(c) and da.dims == tuple(c)
    assert da.dtype == np.float64 and np.isnan(da.values).all()  # xarray's fill
    assert da.attrs == {"units": "m s-1"}
    assert len(io) == 5
    assert list(io) == ["fields"]


@pytest.mark.torch  # tensors on a device, read back as tensors
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("times", TIMES)
def test_writes_land_at_their_labels_and_read_back(device, times):
    c = _grid(times)
    io = XarrayBackend(c)
    io.add_array(c, "fields")
    full = torch.randn(_shape(c), device=device)  # copied to the host by write
    io.write(full, c, "fields")
    np.testing.assert_array_equal(io["fields"].values, full.cpu().numpy())

    part = OrderedDict(time=times[-1:], variable=c["variable"][1:], lat=c["lat"][2:5], lon=c["lon"][6:])
    x = torch.randn(_shape(part), device=device)
    io.write(x, part, "fields")
    np.testing.assert_array_equal(io["fields"].values[-1:, 1:, 2:5, 6:], x.cpu().numpy())
    np.testing.assert_array_equal(io["fields"].sel(lon=c["lon"][6:], lat=c["lat"][2:5]).values[-1:, 1:],
                                  x.cpu().numpy())
    back, got = io.read(part, "fields", device=device)
    assert got is part and back.device == torch.device(device) and back.dtype == torch.float32
    assert torch.equal(back, x)

    scattered = OrderedDict(part, lon=c["lon"][[9, 1, 4]])
    y = torch.randn(_shape(scattered), device=device)
    io.write(y, scattered, "fields")
    np.testing.assert_array_equal(io["fields"].values[-1:, 1:, 2:5, 9], y[..., 0].cpu().numpy())
    np.testing.assert_array_equal(io["fields"].values[-1:, 1:, 2:5, 1], y[..., 1].cpu().numpy())
    back, _ = io.read(scattered, "fields")
    assert back.device == torch.device("cpu") and torch.equal(back, y.cpu())


@pytest.mark.torch  # tensors on a device
@pytest.mark.parametrize("device", DEVICES)
def test_add_array_keeps_a_host_copy_of_its_data(device):
    c = _grid(TIMES[1])
    io = XarrayBackend(c)
    data = torch.randn(_shape(c), device=device)
    io.add_array(c, "init", data=data)
    assert io["init"].dtype == np.float32
    np.testing.assert_array_equal(io["init"].values, data.cpu().numpy())
    io.write(torch.zeros(_shape(c)), c, "init")
    assert data.abs().sum() > 0  # the caller's tensor is not the dataset's


@pytest.mark.torch  # read returns tensors
def test_read_dtype_and_a_new_tensor():
    c = _grid(TIMES[1])
    io = XarrayBackend(c)
    io.add_array(c, "f32", data=torch.ones(_shape(c)))
    out, _ = io.read(c, "f32")  # same dtype, contiguous: would share the dataset's memory
    out += 1
    assert (io["f32"].values == 1).all()
    io.add_array(c, "nan")
    assert io.read(c, "nan")[0].dtype == torch.float32  # Earth2Studio's default
    assert io.read(c, "nan", dtype=None)[0].dtype == torch.float64
    assert io.read(c, "nan", dtype=torch.float16)[0].dtype == torch.float16
    assert io.read(c, "nan", dtype="bfloat16")[0].dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        io.read(c, "nan", dtype="no_such_dtype")


def test_variables_as_separate_arrays():
    c = _grid(TIMES[1], variables=("t2m", "msl", "tcwv"))
    per_var = OrderedDict((d, v) for d, v in c.items() if d != "variable")
    io = XarrayBackend(per_var)
    io.add_array(per_var, c["variable"])
    for name in c["variable"]:
        assert io[name].shape == _shape(per_var)
    x = np.random.default_rng(0).standard_normal(_shape(c), dtype=np.float32)
    io.write([x[:, i] for i in range(3)], per_var, np.array(c["variable"]))
    for i, name in enumerate(c["variable"]):
        np.testing.assert_array_equal(io[name].values, x[:, i])
    assert list(io) == ["t2m", "msl", "tcwv"]


def test_write_to_a_missing_array_creates_it_over_the_stored_coordinates():
    lat, lon = np.arange(4), np.arange(10)
    io = XarrayBackend()
    io.add_array(OrderedDict(lat=lat, lon=lon), ["init"])
    io.write(np.zeros((4, 2), "float32"), {"lat": lat, "lon": lon[:2]}, "init")
    io.write(np.ones((4, 5), "float32"), {"lat": lat, "lon": lon[5:]}, "tail")
    assert io["init"].shape == io["tail"].shape == (4, 10)
    assert (io["init"].isel(lon=slice(0, 2)) == 0).all() and io["init"].isel(lon=slice(2, None)).isnull().all()
    assert (io["tail"].isel(lon=slice(5, None)) == 1).all() and io["tail"].isel(lon=slice(0, 5)).isnull().all()


def test_add_array_with_data_over_some_stored_values():
    lat, lon = np.arange(4.0), np.arange(10.0)
    io = XarrayBackend(OrderedDict(lat=lat, lon=lon))
    io.add_array(OrderedDict(lat=lat[1:3], lon=lon), "band", data=np.full((2, 10), 7, "int32"))
    band = io["band"]
    assert band.shape == (4, 10) and band.dtype == np.float64  # NaN around the data, as xarray aligns
    assert (band[1:3] == 7).all() and band[[0, 3]].isnull().all()
    with pytest.raises(CoordinateError, match="lat"):
        io.add_array(OrderedDict(lat=np.array([99.0]), lon=lon), "outside", data=np.ones((1, 10), "float32"))
    with pytest.raises(DataShapeError):
        io.add_array(OrderedDict(lat=lat, lon=lon), "wrong", data=np.ones((4, 9), "float32"))
    assert "outside" not in io and "wrong" not in io


@pytest.mark.torch  # tensors on a device, torch-only dtypes
@pytest.mark.parametrize("device", DEVICES)
def test_errors(device, caplog):
    c = _grid(TIMES[1])
    io = XarrayBackend(c)
    x = torch.randn(_shape(c), device=device)
    with pytest.raises(ValueError, match="must be the same"):
        io.add_array(c, "fields", data=[x, x])
    io.add_array(c, ["kept"], data=[x])
    with caplog.at_level(logging.WARNING, logger="e2fastio.backends.xarray"):
        io.add_array(c, ["kept"], data=[x + 1])
    assert "already in xarray Dataset" in caplog.text
    np.testing.assert_array_equal(io["kept"].values, x.cpu().numpy())

    with_ensemble = OrderedDict(ensemble=np.arange(1), **c)
    bigger = x[None]
    with pytest.raises(AssertionError, match="ensemble"):  # Earth2Studio raises AssertionError too
        io.write(bigger, with_ensemble, "kept")
    with pytest.raises(UnknownDimensionError):
        io.read(with_ensemble, "kept")
    with pytest.raises(ValueError, match="must be the same"):
        io.write([bigger, bigger], with_ensemble, "kept")
    with pytest.raises(CoordinateError, match="not in the store"):
        io.write(x[:, :, :1], OrderedDict(c, lat=np.array([1.5])), "kept")
    with pytest.raises(DataShapeError):
        io.write(x[:, :, :2], c, "kept")
    with pytest.raises(CoordinateError, match="dimensions"):
        io.write(x.transpose(2, 3), OrderedDict(time=c["time"], variable=c["variable"], lon=c["lon"], lat=c["lat"]),
                 "kept")
    with pytest.raises(KeyError, match="missing"):
        io.read(c, "missing")
    with pytest.raises(UnsupportedDTypeError):
        io.write(x.to(torch.complex64), c, "kept")  # would drop the imaginary part
    with pytest.raises(TypeError):
        io.write(x.to(torch.bfloat16), c, "kept")  # numpy has no bfloat16
    with pytest.raises(DataShapeError):
        io.write([x + 5, x[:1]], c, ["kept", "other"])
    np.testing.assert_array_equal(io["kept"].values, x.cpu().numpy())
    assert "other" not in io


@pytest.mark.torch  # a lazily conjugated tensor, read back as a tensor
def test_complex_data_and_time_coordinates():
    c = OrderedDict(
        time=np.array(["2020-01-01", "2020-01-02"], dtype="datetime64[D]"),
        lead_time=np.array([0, 6, 12], dtype="timedelta64[h]"),
    )
    io = XarrayBackend(c)
    assert io.root["time"].dtype.kind == "M" and io.root["lead_time"].dtype.kind == "m"
    z = torch.randn(2, 3, dtype=torch.complex64)
    io.add_array(c, "spectrum", data=z)
    assert io["spectrum"].dtype == np.complex64
    at = OrderedDict(time=np.array(["2020-01-02T00:00"], dtype="datetime64[ns]"),
                     lead_time=np.array([6 * 3600], dtype="timedelta64[s]"))
    w = torch.tensor([[1 + 2j]], dtype=torch.complex64)
    io.write(w.conj(), at, "spectrum")
    assert io["spectrum"].values[1, 1] == 1 - 2j
    back, _ = io.read(c, "spectrum", dtype=torch.complex64)
    assert back[1, 1] == 1 - 2j and torch.equal(back[0], z[0])
    with pytest.raises(CoordinateError, match="time"):
        io.write(w, OrderedDict(at, time=np.array(["2020-01-02T06"], dtype="datetime64[ns]")), "spectrum")
    io.write(torch.ones(1, 1), at, "real")  # a new float64 array; ints and bools would do as well
    assert io["real"].values[1, 1] == 1 and io["real"].isnull().sum() == 5


def test_names_are_any_string():
    c = OrderedDict(k=np.arange(3))
    io = XarrayBackend(c)
    io.write(np.ones(3, "float32"), c, "z500/anomaly")
    np.testing.assert_array_equal(io["z500/anomaly"].values, np.ones(3))


@pytest.mark.torch  # read returns tensors
@pytest.mark.parametrize("times", TIMES)
def test_multidimensional_coordinates(times):
    lat, lon = np.linspace(-60, 60, 5), np.linspace(0, 350, 8)
    lon2, lat2 = np.meshgrid(lon, lat)
    c = OrderedDict(time=times, variable=np.array(["t2m"]), lat=lat2, lon=lon2)
    io = XarrayBackend(c)
    assert list(io.coords) == ["time", "variable", "ilat", "ilon"]
    assert io["lat"].dims == ("ilat", "ilon")
    np.testing.assert_array_equal(io["lat"].values, lat2)
    io.add_array(c, "fields")
    assert len(io) == 7 and set(io) == {"fields", "lat", "lon"}
    for name in ("fields", "time", "variable", "lat", "lon", "ilat", "ilon"):
        assert name in io
    assert io["fields"].shape == (len(times), 1, 5, 8)

    x = torch.randn(len(times), 1, 5, 8)
    io.write(x, c, "fields")
    assert torch.equal(io.read(c, "fields")[0], x)
    index_coords = OrderedDict(time=times, variable=c["variable"], ilat=np.arange(5), ilon=np.arange(8))
    io.write(x + 1, index_coords, "other")
    assert torch.equal(io.read(index_coords, "other")[0], x + 1)
    with pytest.raises(CoordinateError, match="in full"):
        io.write(x[:, :, :2], OrderedDict(c, lat=lat2[:2], lon=lon2[:2]), "fields")

    # Multidimensional coordinates first met in add_array.
    io2 = XarrayBackend()
    io2.add_array(c, "fields")
    assert io2["lon"].dims == ("ilat", "ilon") and io2["fields"].shape == (len(times), 1, 5, 8)


def test_the_dataset_writes_as_netcdf(tmp_path):
    pytest.importorskip("netCDF4")
    c = _grid(TIMES[1])
    io = XarrayBackend(c)
    x = np.random.default_rng(0).standard_normal(_shape(c), dtype=np.float32)
    io.write(x, c, "fields")
    io.root.to_netcdf(tmp_path / "f.nc")
    with xr.open_dataset(tmp_path / "f.nc") as ds:
        np.testing.assert_array_equal(ds["fields"].values, x.astype(np.float64))
        np.testing.assert_array_equal(ds["time"].values, c["time"])


# ----------------------------------------------------------------------------- side by side
def _e2s():
    pytest.importorskip("earth2studio", reason="earth2studio is not installed (pip install e2fastio[compare])")
    from earth2studio.io import XarrayBackend as Reference

    return Reference


def _same_steps(io, c):
    """A forecast-like sequence both implementations handle alike: add, full and partial writes."""
    rng = torch.Generator().manual_seed(7)
    per_var = OrderedDict((d, v) for d, v in c.items() if d != "variable")
    io.add_array(c, "fields", attrs={"units": "K"})
    io.add_array(per_var, list(c["variable"]))
    io.add_array(c, "init", data=torch.randn(_shape(c), generator=rng))
    for k in range(len(c["time"])):
        step = OrderedDict(c, time=c["time"][k : k + 1])
        x = torch.randn(_shape(step), generator=rng)
        io.write(x, step, "fields")
        io.write([x[:, i] for i in range(len(c["variable"]))],
                 OrderedDict((d, v) for d, v in step.items() if d != "variable"), list(c["variable"]))
    corner = OrderedDict(c, lat=c["lat"][2:5], lon=c["lon"][:4])
    io.write(torch.randn(_shape(corner), generator=rng), corner, "init")
    io.write(torch.randn(_shape(corner), generator=rng), corner, "new")


@pytest.mark.parametrize("times", TIMES)
def test_side_by_side_with_earth2studio(times):
    Reference = _e2s()
    c = _grid(times, variables=("t2m", "tcwv"))
    ours, theirs = XarrayBackend(c, attrs={"a": 1}), Reference(c, attrs={"a": 1})
    _same_steps(ours, c)
    _same_steps(theirs, c)
    assert list(ours) == list(theirs) and len(ours) == len(theirs)
    xr.testing.assert_identical(ours.root, theirs.root)
    part = OrderedDict(c, lon=c["lon"][2:7])
    for dtype in (torch.float32, torch.float64):
        assert torch.equal(ours.read(part, "fields", dtype=dtype)[0], theirs.read(part, "fields", dtype=dtype)[0])
