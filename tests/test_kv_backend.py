"""KVBackend: Earth2Studio's in-memory dict-of-tensors backend, on any device."""

from __future__ import annotations

import logging
from collections import OrderedDict

import numpy as np
import pytest
import xarray as xr
from _memory_grids import DEVICES, TIMES
from _memory_grids import grid as _grid
from _memory_grids import shape as _shape

from e2fastio import KVBackend
from e2fastio.errors import CoordinateError, DataShapeError, UnknownDimensionError, UnsupportedDTypeError

try:
    import torch
except ImportError:  # KVBackend keeps torch tensors: its tests are marked `torch` and skip (conftest)
    torch = None


@pytest.mark.torch
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("times", TIMES)
def test_arrays_coords_and_mapping(device, times):
    c = _grid(times)
    io = KVBackend(device=device)
    assert isinstance(io.root, dict) and io.device == device
    io.add_array(c, "fields")
    assert list(io.coords) == list(c)
    for d, v in c.items():
        np.testing.assert_array_equal(io.coords[d], v)
        np.testing.assert_array_equal(io[d], v)  # coordinates read through the mapping too
    assert "fields" in io and "lat" in io and "nothing" not in io
    t = io["fields"]
    assert isinstance(t, torch.Tensor) and t.shape == _shape(c)
    assert t.dtype == torch.float32 and t.device == torch.device(device) and not t.any()
    assert len(io) == 5
    assert list(io) == ["fields", "time", "variable", "lat", "lon"]
    assert io.dims["fields"] == list(c)
    with pytest.raises(KeyError):
        io["nothing"]


@pytest.mark.torch
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("times", TIMES)
def test_writes_land_at_their_labels_and_read_back(device, times):
    c = _grid(times)
    io = KVBackend(device=device)
    io.add_array(c, "fields")
    full = torch.randn(_shape(c), device=device)
    io.write(full, c, "fields")
    assert torch.equal(io["fields"], full)

    # A block that is not at the start of any axis: the first time is kept.
    part = OrderedDict(time=times[-1:], variable=c["variable"][1:], lat=c["lat"][2:5], lon=c["lon"][6:])
    x = torch.randn(_shape(part), device=device)
    io.write(x, part, "fields")
    assert torch.equal(io["fields"][-1:, 1:, 2:5, 6:], x)
    if len(times) > 1:
        assert torch.equal(io["fields"][0], full[0])
    back, got = io.read(part, "fields", device=device)
    assert got is part and torch.equal(back, x)

    # Scattered longitudes, given out of the stored order: placed by label.
    scattered = OrderedDict(part, lon=c["lon"][[9, 1, 4]])
    y = torch.randn(_shape(scattered), device=device)
    io.write(y, scattered, "fields")
    assert torch.equal(io["fields"][-1:, 1:, 2:5, 9], y[..., 0])
    assert torch.equal(io["fields"][-1:, 1:, 2:5, 1], y[..., 1])
    back, _ = io.read(scattered, "fields")
    assert back.device == torch.device("cpu") and torch.equal(back, y.cpu())


@pytest.mark.torch
@pytest.mark.parametrize("device", DEVICES)
def test_add_array_keeps_a_copy_of_its_data_on_the_device(device):
    c = _grid(TIMES[1])
    io = KVBackend(device=device)
    data = torch.randn(_shape(c), dtype=torch.float64)  # on the host: moved to the device
    io.add_array(c, "init", data=data)
    stored = io["init"]
    assert stored.device == torch.device(device) and stored.dtype == torch.float64
    assert torch.equal(stored.cpu(), data)
    io.write(torch.zeros(_shape(c)), c, "init")
    assert data.abs().sum() > 0  # the caller's tensor is not the store's


@pytest.mark.torch
def test_read_returns_a_new_tensor():
    c = _grid(TIMES[1])
    io = KVBackend()
    io.add_array(c, "fields", data=torch.ones(_shape(c)))
    out, _ = io.read(c, "fields")  # contiguous: would be a view of the store
    out += 1
    assert torch.equal(io["fields"], torch.ones(_shape(c)))


@pytest.mark.torch
def test_variables_as_separate_arrays():
    c = _grid(TIMES[1], variables=("t2m", "msl", "tcwv"))
    per_var = OrderedDict((d, v) for d, v in c.items() if d != "variable")
    io = KVBackend()
    io.add_array(per_var, c["variable"])  # names as a numpy array, as Earth2Studio hands them over
    for name in c["variable"]:
        assert io[name].shape == _shape(per_var) and io.dims[name] == list(per_var)
    x = torch.randn(_shape(c))
    # What earth2studio.utils.coords.split_coords produces: one tensor per variable.
    io.write([x[:, i] for i in range(3)], per_var, np.array(c["variable"]))
    for i, name in enumerate(c["variable"]):
        assert torch.equal(io[name], x[:, i])
    ds = io.to_xarray()
    assert set(ds.data_vars) == {"t2m", "msl", "tcwv"}
    np.testing.assert_array_equal(ds["msl"].values, x[:, 1].numpy())


@pytest.mark.torch
def test_to_xarray():
    c = _grid(TIMES[1])
    io = KVBackend()
    io.add_array(c, "unused")
    x = torch.randn(_shape(c))
    io.write(x, c, "fields")
    ds = io.to_xarray(attrs={"source": "test"})
    assert isinstance(ds, xr.Dataset) and ds.attrs == {"source": "test"}
    assert ds["fields"].dims == tuple(c)
    np.testing.assert_array_equal(ds["fields"].values, x.numpy())
    for d, v in c.items():
        np.testing.assert_array_equal(ds[d].values, v)
    assert ds["time"].dtype.kind == "M"


@pytest.mark.torch
def test_write_to_a_missing_array_creates_it_over_the_stored_coordinates():
    lat, lon = np.arange(4.0), np.arange(10.0)
    io = KVBackend()
    io.add_array(OrderedDict(lat=lat, lon=lon), ["init"])
    io.write(torch.full((4, 2), 3.0), {"lat": lat, "lon": lon[:2]}, "init")
    io.write(torch.ones((4, 5)), {"lat": lat, "lon": lon[:5]}, "head")
    io.write(torch.ones((4, 5)), {"lat": lat, "lon": lon[5:]}, "tail")
    assert io["init"].shape == io["head"].shape == io["tail"].shape == (4, 10)
    assert (io["init"][:, :2] == 3).all() and not io["init"][:, 2:].any()
    assert (io["head"][:, :5] == 1).all() and not io["head"][:, 5:].any()
    assert (io["tail"][:, 5:] == 1).all() and not io["tail"][:, :5].any()
    assert io["tail"].dtype == torch.float32
    assert io.to_xarray()["tail"].shape == (4, 10)


@pytest.mark.torch
def test_add_array_with_data_over_some_stored_values():
    lat, lon = np.arange(4.0), np.arange(10.0)
    io = KVBackend()
    io.add_array(OrderedDict(lat=lat, lon=lon), "grid")
    io.add_array(OrderedDict(lat=lat[1:3], lon=lon), "band", data=torch.full((2, 10), 7, dtype=torch.int32))
    band = io["band"]
    assert band.shape == (4, 10) and band.dtype == torch.int32
    assert (band[1:3] == 7).all() and not band[[0, 3]].any()
    with pytest.raises(CoordinateError, match="lat"):
        io.add_array(OrderedDict(lat=np.array([99.0]), lon=lon), "outside", data=torch.ones(1, 10))
    with pytest.raises(DataShapeError):
        io.add_array(OrderedDict(lat=lat, lon=lon), "wrong", data=torch.ones(4, 9))
    assert "outside" not in io and "wrong" not in io


@pytest.mark.torch
@pytest.mark.parametrize("device", DEVICES)
def test_errors(device, caplog):
    c = _grid(TIMES[1])
    io = KVBackend(device=device)
    x = torch.randn(_shape(c), device=device)
    with pytest.raises(ValueError, match="must be the same"):
        io.add_array(c, "fields", data=[x, x])
    io.add_array(c, ["kept"], data=[x])
    with caplog.at_level(logging.WARNING, logger="e2fastio.backends.kv"):
        io.add_array(c, ["kept"], data=[x + 1])
    assert "already in KV Store" in caplog.text
    assert torch.equal(io["kept"], x)

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
    with pytest.raises(TypeError, match="torch.Tensor or numpy.ndarray"):
        io.write("values", c, "kept")
    # Nothing of a rejected call is stored, not even its valid first array.
    with pytest.raises(DataShapeError):
        io.write([x + 5, x[:1]], c, ["kept", "other"])
    assert torch.equal(io["kept"], x) and "other" not in io


@pytest.mark.torch
def test_dtypes_cast_within_their_kind_and_complex_data():
    c = OrderedDict(lead_time=np.array([0, 6, 12], dtype="timedelta64[h]"), k=np.arange(5))
    io = KVBackend()
    io.add_array(c, "f32")
    io.write(torch.full((3, 5), 0.1, dtype=torch.float64), c, "f32")
    assert io["f32"].dtype == torch.float32 and torch.allclose(io["f32"], torch.full((3, 5), 0.1))
    io.write(np.arange(15).reshape(3, 5), c, "f32")  # numpy and ints are fine too
    assert io["f32"][2, 4] == 14

    z = torch.randn(3, 5, dtype=torch.complex64)
    io.add_array(c, "spectrum", data=z)
    w = torch.randn(1, 5, dtype=torch.complex64)
    io.write(w.conj(), OrderedDict(c, lead_time=c["lead_time"][1:2]), "spectrum")
    assert torch.equal(io["spectrum"][1], w.conj().resolve_conj()[0])
    back, _ = io.read(c, "spectrum")
    assert back.dtype == torch.complex64 and torch.equal(back[0], z[0])
    np.testing.assert_array_equal(io.to_xarray()["spectrum"].values, back.numpy())


@pytest.mark.torch
def test_time_coordinates_in_other_units():
    c = OrderedDict(
        time=np.array(["2020-01-01", "2020-01-02"], dtype="datetime64[D]"),
        lead_time=np.array([0, 6, 12], dtype="timedelta64[h]"),
    )
    io = KVBackend()
    io.add_array(c, "v")
    at = OrderedDict(time=np.array(["2020-01-02T00:00"], dtype="datetime64[ns]"),
                     lead_time=np.array([6 * 3600], dtype="timedelta64[s]"))
    io.write(torch.full((1, 1), 2.0), at, "v")
    assert io["v"][1, 1] == 2 and io["v"].sum() == 2
    # 06:00 on a day is not a stored day, even though it rounds down to one.
    with pytest.raises(CoordinateError, match="time"):
        io.write(torch.ones(1, 1), OrderedDict(at, time=np.array(["2020-01-02T06"], dtype="datetime64[ns]")), "v")


@pytest.mark.torch
def test_names_are_any_string():
    io = KVBackend()
    c = OrderedDict(k=np.arange(3))
    io.add_array(c, "first")
    io.write(torch.ones(3), c, "z500/anomaly")  # a dict key, never a path
    assert torch.equal(io["z500/anomaly"], torch.ones(3))
    with pytest.raises(ValueError, match="array_name"):
        io.write(torch.ones(3), c, "")


@pytest.mark.torch
@pytest.mark.parametrize("times", TIMES)
def test_multidimensional_coordinates(times):
    lat, lon = np.linspace(-60, 60, 5), np.linspace(0, 350, 8)
    lon2, lat2 = np.meshgrid(lon, lat)
    c = OrderedDict(time=times, variable=np.array(["t2m"]), lat=lat2, lon=lon2)
    io = KVBackend()
    io.add_array(c, "fields")
    assert list(io.coords) == ["time", "variable", "ilat", "ilon"]
    np.testing.assert_array_equal(io.coords["ilon"], np.arange(8))
    assert torch.equal(io["lat"], torch.as_tensor(lat2)) and io.dims["lat"] == ["ilat", "ilon"]
    assert len(io) == 7
    assert set(io) == {"fields", "lat", "lon", "time", "variable", "ilat", "ilon"}
    assert io["fields"].shape == (len(times), 1, 5, 8)

    x = torch.randn(len(times), 1, 5, 8)
    io.write(x, c, "fields")  # with the 2-d coordinates, in full
    back, _ = io.read(c, "fields")
    assert torch.equal(back, x)
    index_coords = OrderedDict(time=times, variable=c["variable"], ilat=np.arange(5), ilon=np.arange(8))
    io.write(x + 1, index_coords, "other")  # or with the index dimensions
    back, _ = io.read(index_coords, "other")
    assert torch.equal(back, x + 1)
    with pytest.raises(CoordinateError, match="in full"):
        io.write(x[:, :, :2], OrderedDict(c, lat=lat2[:2], lon=lon2[:2]), "fields")
    ds = io.to_xarray()
    assert ds["lat"].dims == ("ilat", "ilon") and ds["fields"].dims == ("time", "variable", "ilat", "ilon")


def test_missing_torch_is_a_clear_error(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_torch(name, *args, **kwargs):
        if name == "torch":
            raise ImportError("no torch here")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_torch)
    with pytest.raises(ImportError, match="needs torch"):
        KVBackend()


# ----------------------------------------------------------------------------- side by side
def _e2s():
    pytest.importorskip("earth2studio", reason="earth2studio is not installed (pip install e2fastio[compare])")
    from earth2studio.io import KVBackend as Reference

    return Reference


def _same_steps(io, c):
    """A forecast-like sequence both implementations handle alike: add, full and partial writes."""
    rng = torch.Generator().manual_seed(7)
    per_var = OrderedDict((d, v) for d, v in c.items() if d != "variable")
    io.add_array(c, "fields")
    io.add_array(per_var, list(c["variable"]))
    io.add_array(c, "init", data=torch.randn(_shape(c), generator=rng))
    for k in range(len(c["time"])):
        step = OrderedDict(c, time=c["time"][k : k + 1])
        x = torch.randn(_shape(step), generator=rng)
        io.write(x, step, "fields")
        io.write([x[:, i] for i in range(len(c["variable"]))],
                 OrderedDict((d, v) for d, v in step.items() if d != "variable"), list(c["variable"]))
    corner = OrderedDict(c, lat=c["lat"][:3], lon=c["lon"][:4])
    io.write(torch.randn(_shape(corner), generator=rng), corner, "init")
    io.write(torch.randn(_shape(c), generator=rng), c, "new")


def test_side_by_side_with_earth2studio():
    Reference = _e2s()
    c = _grid(TIMES[1], variables=("t2m", "tcwv"))
    ours, theirs = KVBackend(), Reference()
    _same_steps(ours, c)
    _same_steps(theirs, c)
    assert list(ours) == list(theirs) and len(ours) == len(theirs)
    assert ours.dims == theirs.dims
    for name in theirs.root:
        assert ours[name].dtype == theirs[name].dtype
        assert torch.equal(ours[name], theirs[name]), name
    for d in theirs.coords:
        np.testing.assert_array_equal(ours[d], theirs[d])
    part = OrderedDict(c, lon=c["lon"][2:7])
    assert torch.equal(ours.read(part, "fields")[0], theirs.read(part, "fields")[0])
    xr.testing.assert_identical(ours.to_xarray(), theirs.to_xarray())
