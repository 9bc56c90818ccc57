"""ZarrBackend and AsyncZarrBackend with what Earth2Studio users also write: complex data and nested names."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import xarray as xr
import zarr

from e2fastio import AsyncZarrBackend, IOBackend, KVBackend, NetCDF4Backend, XarrayBackend, ZarrBackend
from e2fastio.errors import ArrayNameError, UnsupportedDTypeError

try:
    import torch
except ImportError:  # tests marked `torch` skip (conftest)
    torch = None

COORDS = OrderedDict(lead_time=np.arange(3), lat=np.linspace(90, -90, 7), lon=np.linspace(0, 360, 12, endpoint=False))


def _complex(dtype: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(3, 7, 12)) + 1j * rng.normal(size=(3, 7, 12))).astype(dtype)


ARRAY_KINDS = ["numpy", pytest.param("torch", marks=pytest.mark.torch)]


def _as(kind: str, a: np.ndarray):
    return torch.from_numpy(a) if kind == "torch" else a


@pytest.mark.parametrize("blocking", [True, False])
@pytest.mark.parametrize("compressed", [False, True])
@pytest.mark.parametrize("kind", ARRAY_KINDS)
def test_complex_arrays_round_trip(tmp_path, blocking, compressed, kind):
    codec = zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle") if compressed else None
    path = tmp_path / "c.zarr"
    io = ZarrBackend(str(path), chunks={"lead_time": 1}, zarr_codecs=codec, blocking=blocking)
    z64, z128 = _complex("complex64", 1), _complex("complex128", 2)
    io.add_array(COORDS, ["z64", "z128"], data=[_as(kind, np.zeros((3, 7, 12), np.complex64)),
                                                _as(kind, np.zeros((3, 7, 12), np.complex128))])
    for k in range(3):
        step = OrderedDict(COORDS, lead_time=COORDS["lead_time"][k : k + 1])
        io.write([_as(kind, z64[k : k + 1]), _as(kind, z128[k : k + 1])], step, ["z64", "z128"])
    io.add_array(COORDS, "conj", dtype=np.complex64)
    io.write(_as(kind, z64).conj(), COORDS, "conj")  # torch: a lazily conjugated tensor, stored resolved
    # As in Earth2Studio, a write creates a missing array as float32; complex data is refused, not truncated.
    with pytest.raises(UnsupportedDTypeError, match="complex64"):
        io.write(_as(kind, z64), COORDS, "lazy")
    io.close()
    assert zarr.open_array(str(path / "z64")).dtype == np.complex64
    np.testing.assert_array_equal(zarr.open_array(str(path / "z64"))[...], z64)
    np.testing.assert_array_equal(zarr.open_array(str(path / "z128"))[...], z128)
    np.testing.assert_array_equal(zarr.open_array(str(path / "conj"))[...], np.conj(z64))
    ds = xr.open_zarr(path, consolidated=False)
    np.testing.assert_array_equal(ds["z128"].values, z128)


def test_complex_through_async_backend(tmp_path):
    io = AsyncZarrBackend(str(tmp_path / "a.zarr"), parallel_coords={"lead_time": COORDS["lead_time"]},
                          blocking=False)
    z = _complex("complex64", 3)
    for k in range(3):
        io.write(z[k : k + 1], OrderedDict(COORDS, lead_time=COORDS["lead_time"][k : k + 1]), "z")
    io.close()
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "a.zarr" / "z"))[...], z)


@pytest.mark.parametrize("blocking", [True, False])
def test_nested_array_names_stay_inside_the_store(tmp_path, blocking):
    path = tmp_path / "n.zarr"
    io = ZarrBackend(str(path), zarr_codecs=zarr.codecs.BloscCodec(), blocking=blocking)
    x = np.arange(3 * 7 * 12, dtype="float32").reshape(3, 7, 12)
    io.add_array(COORDS, "surface/t2m")
    io.write([x, x], COORDS, ["surface/t2m", "pressure/500/z"])  # the second created by the write, two deep
    io.close()
    np.testing.assert_array_equal(zarr.open_array(str(path / "surface" / "t2m"))[...], x)
    np.testing.assert_array_equal(zarr.open_group(str(path))["pressure/500/z"][...], x)
    assert sorted(p.name for p in path.iterdir()) == ["lat", "lead_time", "lon", "pressure", "surface", "zarr.json"]
    # Reopened: the nested arrays are known members and written in place.
    io = ZarrBackend(str(path), blocking=blocking)
    assert "surface/t2m" in io and "pressure/500/z" in io
    io.write(x * 2, COORDS, "surface/t2m")
    io.close()
    np.testing.assert_array_equal(zarr.open_array(str(path / "surface" / "t2m"))[...], x * 2)
    for bad in ("../up", "surface/../../up", "surface//t2m", "/t2m", "surface/", "surface/.t2m"):
        with pytest.raises(ArrayNameError, match="nested"):
            ZarrBackend(str(tmp_path / "o.zarr")).add_array(COORDS, bad)
    assert not (tmp_path / "up").exists()


@pytest.mark.torch  # KVBackend needs it
def test_every_backend_is_an_iobackend(tmp_path):
    backends = [ZarrBackend(), AsyncZarrBackend(None, parallel_coords={"t": np.arange(2)}, store="memory://"),
                NetCDF4Backend(str(tmp_path / "x.nc"), backend_kwargs={"mode": "w"}), KVBackend(), XarrayBackend()]
    assert all(isinstance(b, IOBackend) for b in backends)
    assert not isinstance(object(), IOBackend)


@pytest.mark.parametrize("backend", ["zarr", "async", "netcdf", pytest.param("kv", marks=pytest.mark.torch), "xarray"])
def test_an_array_name_that_is_not_a_str_is_a_type_error_as_in_earth2studio(tmp_path, backend):
    """Earth2Studio raises TypeError for `array_name=5` in every backend: code catching it keeps working."""
    c = OrderedDict(a=np.arange(3))
    io = {"zarr": lambda: ZarrBackend(str(tmp_path / "z.zarr")),
          "async": lambda: AsyncZarrBackend(str(tmp_path / "a.zarr"), parallel_coords=OrderedDict(a=c["a"])),
          "netcdf": lambda: NetCDF4Backend(tmp_path / "n.nc", backend_kwargs={"mode": "w"}),
          "kv": KVBackend, "xarray": XarrayBackend}[backend]()
    with pytest.raises(TypeError, match="array_name must be a"):
        io.add_array(c, 5)
    with pytest.raises(TypeError, match="array_name must be a"):
        io.write(np.ones(3, "float32"), c, 5)
    with pytest.raises(ArrayNameError):  # still our error, and a ValueError, as before
        io.write(np.ones(3, "float32"), c, 5)


def test_reading_a_missing_netcdf_variable_is_an_index_error_as_in_earth2studio(tmp_path):
    c = OrderedDict(a=np.arange(3))
    io = NetCDF4Backend(tmp_path / "r.nc", backend_kwargs={"mode": "w"})
    io.add_array(c, "v")
    with pytest.raises(IndexError, match="'nope' is not a variable"):
        io.read(c, "nope")
    with pytest.raises(KeyError):  # what it raised before: both are LookupErrors
        io.read(c, "nope")
    io.close()
