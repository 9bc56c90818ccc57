"""AsyncZarrBackend as Earth2Studio 0.19 users drive it: lifecycle, coroutines, root, coords, zarr_kwargs.

The behaviours are those of Earth2Studio's own AsyncZarrBackend tests (its
``test/io/test_async_zarr.py``), checked here in our own words against the
store as zarr-python and xarray read it.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from collections import OrderedDict

import numpy as np
import pytest
import xarray as xr
import zarr

from e2fastio import AsyncZarrBackend

LEAD = (np.arange(6) * np.timedelta64(6, "h")).astype("timedelta64[ns]")
TIME = np.array(["2024-01-01T00", "2024-01-02T00"], dtype="datetime64[ns]")
BLOSC = zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")


def _coords(nlat: int = 5, nlon: int = 8) -> OrderedDict[str, np.ndarray]:
    return OrderedDict(time=TIME, lead_time=LEAD, lat=np.linspace(90, -90, nlat),
                       lon=np.linspace(0, 360, nlon, endpoint=False))


def _at(c: OrderedDict, t: int, k: int) -> OrderedDict:
    return OrderedDict(c, time=c["time"][t : t + 1], lead_time=c["lead_time"][k : k + 1])


def _field(t: int, k: int, shape=(1, 1, 5, 8)) -> np.ndarray:
    return np.full(shape, 10.0 * t + k, "float32") + np.arange(int(np.prod(shape[2:])), dtype="float32").reshape(
        shape[2:])


@pytest.mark.parametrize("blocking", [True, False])
def test_close_drains_and_the_backend_stays_usable(tmp_path, blocking, native_threads):
    gc.collect()
    before = native_threads()
    io = AsyncZarrBackend(str(tmp_path / "a.zarr"), parallel_coords={"time": TIME, "lead_time": LEAD},
                          blocking=blocking, zarr_codecs=BLOSC)
    c = _coords()
    for k in range(3):
        io.write(_field(0, k), _at(c, 0, k), "t2m")
    io.close()
    assert native_threads(settle_to=before) == before  # nothing of ours runs while idle
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "a.zarr" / "t2m"))[0, :3], _field(0, 0)[0, 0] +
                                  np.arange(3).reshape(3, 1, 1) * 1.0)
    for k in range(3, 6):  # threads start again
        io.write(_field(1, k), _at(c, 1, k), "t2m")
    io.close()
    io.close()  # any number of times
    assert native_threads(settle_to=before) == before
    ds = xr.open_zarr(tmp_path / "a.zarr", consolidated=False)
    for t, k in [(0, 0), (0, 2), (1, 3), (1, 5)]:
        np.testing.assert_array_equal(ds["t2m"].values[t, k], _field(t, k)[0, 0])
    fill = zarr.open_array(str(tmp_path / "a.zarr" / "t2m")).metadata.fill_value
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "a.zarr" / "t2m"))[1, 0], fill)  # never written


def test_root_is_an_async_group_and_mapping_reads_are_synchronous(tmp_path):
    io = AsyncZarrBackend(str(tmp_path / "r.zarr"), parallel_coords={"time": TIME, "lead_time": LEAD},
                          blocking=False)
    c = _coords()
    io.write(_field(0, 1), _at(c, 0, 1), "u10")
    assert isinstance(io.root, zarr.AsyncGroup)
    assert io.store is io.root.store
    np.testing.assert_array_equal(io["u10"][0, 1], _field(0, 1)[0, 0])  # flushes first
    assert "u10" in io and "nope" not in io
    assert set(io) == {"u10", "time", "lead_time", "lat", "lon"} and len(io) == 5
    arr = asyncio.run(io.root.getitem("u10"))
    assert arr.shape == (2, 6, 5, 8)
    io.close()


def test_coroutines_prepare_write_flush(tmp_path):
    io = AsyncZarrBackend(str(tmp_path / "c.zarr"), parallel_coords={"time": TIME, "lead_time": LEAD},
                          blocking=False, zarr_codecs=BLOSC)
    c = _coords()

    async def run() -> None:
        x, coords = await io.prepare_inputs([_field(0, 0), _field(0, 0) * 2], _at(c, 0, 0), ["a", "b"])
        assert list(x) == ["a", "b"] and list(coords) == list(c)
        assert "a" in io and "b" in io  # prepare_inputs creates the arrays
        with pytest.raises(ValueError, match="same length"):
            await io.prepare_inputs([_field(0, 0)], _at(c, 0, 0), ["a", "b"])
        # Many writes at once from one event loop, as Earth2Studio's async examples do.
        await asyncio.gather(*(io.async_write(_field(t, k), _at(c, t, k), "a") for t in range(2) for k in range(6)))
        await io.async_flush()

    asyncio.run(run())
    got = zarr.open_array(str(tmp_path / "c.zarr" / "a"))[...]
    for t in range(2):
        for k in range(6):
            np.testing.assert_array_equal(got[t, k], _field(t, k)[0, 0])
    io.close()


def test_coords_are_read_back_from_the_store(tmp_path):
    path = str(tmp_path / "k.zarr")
    io = AsyncZarrBackend(path, parallel_coords={"time": TIME, "lead_time": LEAD})
    c = _coords()
    io.add_array(c, "t2m")
    io.add_array(OrderedDict(time=TIME, lead_time=LEAD, level=np.array([500, 850])), "z")  # other dims
    got = io.coords
    assert list(got) == ["time", "lead_time", "lat", "lon", "level"]
    assert got["time"].dtype == np.dtype("datetime64[ns]") and got["lead_time"].dtype == np.dtype("timedelta64[ns]")
    np.testing.assert_array_equal(got["time"], TIME)
    # Another process's view: a new backend on the same store sees the same coordinates.
    other = AsyncZarrBackend(path, parallel_coords={"time": TIME, "lead_time": LEAD})
    assert list(other.coords) == list(got)
    # A store of coordinates only (made by another tool) still reports them.
    g = zarr.open_group(str(tmp_path / "only.zarr"), mode="w")
    for name, values in (("time", TIME), ("level", np.array([500, 850]))):
        g.create_array(name, data=values, dimension_names=[name])
    only = AsyncZarrBackend(str(tmp_path / "only.zarr"), parallel_coords={"time": TIME})
    assert list(only.coords) == ["level", "time"]
    np.testing.assert_array_equal(only.coords["level"], [500, 850])


@pytest.mark.parametrize(
    "zarr_kwargs, match",
    [
        ({"mode": "r"}, "mode"),
        ({"zarr_format": 2}, "zarr_format"),
        ({"path": "sub"}, "path"),
        ({"storage_options": {"anon": True}}, "storage_options"),
        ({"mode": "a", "bogus": 1}, "bogus"),
    ],
)
def test_zarr_kwargs_are_honoured_or_refused_by_name(tmp_path, zarr_kwargs, match):
    with pytest.raises(ValueError, match=match):
        AsyncZarrBackend(str(tmp_path / "z.zarr"), parallel_coords={"time": TIME}, zarr_kwargs=zarr_kwargs)


def test_zarr_kwargs_modes(tmp_path):
    path = tmp_path / "m.zarr"
    AsyncZarrBackend(str(tmp_path / "new.zarr"), parallel_coords={"time": TIME}, zarr_kwargs={"mode": "w-"})
    with pytest.raises(FileNotFoundError, match="r\\+"):
        AsyncZarrBackend(str(path), parallel_coords={"time": TIME}, zarr_kwargs={"mode": "r+"})
    io = AsyncZarrBackend(str(path), parallel_coords={"time": TIME, "lead_time": LEAD},
                          zarr_kwargs={"mode": "a", "zarr_format": 3, "use_consolidated": True})  # ignored
    io.write(_field(0, 0), _at(_coords(), 0, 0), "v")
    io.close()
    with pytest.raises(FileExistsError):
        AsyncZarrBackend(str(path), parallel_coords={"time": TIME}, zarr_kwargs={"mode": "w-"})
    AsyncZarrBackend(str(path), parallel_coords={"time": TIME}, zarr_kwargs={"mode": "r+"})  # exists now
    fresh = AsyncZarrBackend(str(path), parallel_coords={"time": TIME, "lead_time": LEAD}, zarr_kwargs={"mode": "w"})
    assert "v" not in fresh


def test_pool_size_bounds_writes_in_flight(tmp_path):
    """A non-blocking write waits while pool_size earlier writes are still being stored."""
    io = AsyncZarrBackend(str(tmp_path / "p.zarr"), parallel_coords={"lead_time": np.arange(40)},
                          blocking=False, pool_size=2, zarr_codecs=BLOSC, threads=1)
    c = OrderedDict(lead_time=np.arange(40), lat=np.arange(256), lon=np.arange(512))
    seen = []
    rng = np.random.default_rng(0)
    for k in range(40):
        io.write(rng.random((1, 256, 512), dtype=np.float32), OrderedDict(c, lead_time=c["lead_time"][k : k + 1]), "v")
        seen.append(len(io._inflight))
    assert max(seen) <= 2
    io.close()
    assert zarr.open_array(str(tmp_path / "p.zarr" / "v")).nchunks_initialized == 40


def test_writes_from_two_threads(tmp_path):
    io = AsyncZarrBackend(str(tmp_path / "w.zarr"), parallel_coords={"time": TIME, "lead_time": LEAD},
                          blocking=False)
    c = _coords()
    io.add_array(c, "v")
    errors: list[BaseException] = []

    def run(t: int) -> None:
        try:
            for k in range(6):
                io.write(_field(t, k), _at(c, t, k), "v")
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=(t,)) for t in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    io.close()
    assert not errors
    got = zarr.open_array(str(tmp_path / "w.zarr" / "v"))[...]
    for t in range(2):
        for k in range(6):
            np.testing.assert_array_equal(got[t, k], _field(t, k)[0, 0])


def test_coordinate_scrubbing_chunking_and_coordinate_only_stores(tmp_path):
    """Earth2Studio's conveniences: datetime objects, chunked_coords set late, add_array with no names."""
    import datetime

    io = AsyncZarrBackend(str(tmp_path / "s.zarr"), parallel_coords={}, blocking=True)
    assert io.fs is None  # no fsspec filesystem on the default path
    io.chunked_coords = {"lat": 2}  # set after construction: new arrays follow it
    c = OrderedDict(time=np.array([datetime.datetime(2024, 1, 1)], dtype=object), lat=np.linspace(-90, 90, 4))
    io.write(np.ones((1, 4), "float32"), c, "fields")
    io.close()
    assert zarr.open_array(str(tmp_path / "s.zarr" / "time")).dtype == np.dtype("datetime64[ns]")
    assert zarr.open_array(str(tmp_path / "s.zarr" / "fields")).chunks == (1, 2)
    with pytest.raises(ValueError, match="0 shape"):
        io.write(np.ones((1, 4), "float32"), OrderedDict(time=np.array(np.datetime64("2024-01-01")), lat=c["lat"]),
                 "fields")

    lead = np.array([np.timedelta64(0, "h"), np.timedelta64(6, "h")])
    only = AsyncZarrBackend(str(tmp_path / "o.zarr"), parallel_coords=OrderedDict(lead_time=lead))
    only.add_array(OrderedDict(lead_time=lead, lat=np.linspace(-90, 90, 4)), [])
    only.close()
    assert set(only.coords) == {"lead_time", "lat"}
    assert sorted(zarr.open_group(str(tmp_path / "o.zarr")).array_keys()) == ["lat", "lead_time"]
