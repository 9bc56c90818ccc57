"""ZarrBackend: Earth2Studio's surface, real readers, partial writes, bad input."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict

import numpy as np
import pytest
import xarray as xr
import zarr
import zarr.storage

import e2fastio
from e2fastio import ZarrBackend
from e2fastio.errors import (
    ArrayNameError,
    BackendClosedError,
    CoordinateError,
    DataShapeError,
    UnknownDimensionError,
    UnsupportedDTypeError,
)

try:
    import torch
except ImportError:  # tests marked `torch` skip (conftest)
    torch = None

BLOSC = zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")


def _split(x, coords, dim="variable"):
    """Earth2Studio's split_coords: list of views along `dim` (non-contiguous), numpy or torch."""
    c = OrderedDict(coords)
    i = list(c).index(dim)
    values = c.pop(dim)
    parts = x.split(1, dim=i) if torch is not None and isinstance(x, torch.Tensor) else np.split(x, x.shape[i], axis=i)
    return [xi.squeeze(i) for xi in parts], c, values


def _plain_zarr_run(path, coords, steps, codec, chunks):
    """The same workflow the way Earth2Studio's ZarrBackend drives zarr-python."""
    root = zarr.group(zarr.storage.LocalStore(str(path)), overwrite=True)
    for dim, v in coords.items():
        root.create_array(dim, shape=v.shape, chunks=v.shape, dtype=v.dtype, dimension_names=[dim],
                          compressors=codec, fill_value=None)[...] = v
    shape = tuple(len(v) for v in coords.values())
    ch = tuple(chunks.get(d, len(v)) for d, v in coords.items())
    for name in ("t2m", "tcwv"):
        root.create_array(name, shape=shape, chunks=ch, dtype="float32", dimension_names=list(coords),
                          compressors=codec, fill_value=None)
    for xs, sc in steps:
        for xi, name in zip(xs, ("t2m", "tcwv"), strict=True):
            idx = [np.where(np.isin(coords[d], v))[0] for d, v in sc.items()]
            root[name].set_orthogonal_selection(tuple(idx), np.asarray(xi))


def _steps(coords, seed=0, kind="numpy"):
    full = np.random.default_rng(seed).standard_normal((len(coords["ensemble"]), 1, 2, 9, 16), dtype=np.float32)
    if kind == "torch":  # tensors, as models hand them over
        full = torch.from_numpy(full)
    out = []
    for k in range(len(coords["lead_time"])):
        x = full + k  # (ensemble, time, variable, lat, lon)
        x = x[:, :, None]  # lead_time axis
        sc = OrderedDict(coords)
        sc["lead_time"] = coords["lead_time"][k:k + 1]
        sc = OrderedDict(list(sc.items())[:3] + [("variable", np.array(["t2m", "tcwv"]))] + list(sc.items())[3:])
        xs, c, _ = _split(x, sc)
        out.append((xs, c))
    return out


ARRAY_KINDS = ["numpy", pytest.param("torch", marks=pytest.mark.torch)]


@pytest.mark.parametrize("codec", [None, BLOSC], ids=["raw", "blosc"])
@pytest.mark.parametrize("kind", ARRAY_KINDS)
def test_xarray_matches_plain_zarr(tmp_path, seed_coords, codec, kind):
    chunks = {"time": 1, "lead_time": 1}
    steps = _steps(seed_coords, kind=kind)
    io = ZarrBackend(str(tmp_path / "ours.zarr"), chunks=chunks, backend_kwargs={"overwrite": True},
                     zarr_codecs=codec)
    io.add_array(seed_coords, ["t2m", "tcwv"])
    for xs, c in steps:
        assert not (xs[0].is_contiguous() if kind == "torch" else xs[0].flags.c_contiguous)
        io.write(xs, c, ["t2m", "tcwv"])
    io.close()
    _plain_zarr_run(tmp_path / "ref.zarr", seed_coords, steps, codec, chunks)
    ours = xr.open_zarr(tmp_path / "ours.zarr", consolidated=False)
    ref = xr.open_zarr(tmp_path / "ref.zarr", consolidated=False)
    xr.testing.assert_identical(ours.load(), ref.load())
    assert ours["time"].dtype == np.dtype("datetime64[ns]")
    assert ours["lead_time"].dtype == np.dtype("timedelta64[ns]")
    # Same chunk files, same bytes.
    for name in ("t2m", "tcwv"):
        a, b = zarr.open_array(str(tmp_path / "ours.zarr" / name)), zarr.open_array(str(tmp_path / "ref.zarr" / name))
        assert a.metadata.to_dict() == b.metadata.to_dict()
    for dirpath, _, files in os.walk(tmp_path / "ref.zarr" / "t2m" / "c"):
        for f in files:
            rel = os.path.relpath(os.path.join(dirpath, f), tmp_path / "ref.zarr")
            assert (tmp_path / "ours.zarr" / rel).read_bytes() == (tmp_path / "ref.zarr" / rel).read_bytes()


def test_earth2studio_surface_memory_store():
    coords = OrderedDict(time=np.array([np.datetime64("1971-06-01T06:00:00"), np.datetime64("2021-11-23T12:00:00")]),
                         variable=np.array(["t2m", "tcwv"]), lat=np.linspace(-90, 90, 18),
                         lon=np.linspace(0, 360, 36, endpoint=False))
    z = ZarrBackend(chunks=OrderedDict(time=1, variable=1, lat=18, lon=18))
    assert isinstance(z.store, zarr.storage.MemoryStore)
    assert isinstance(z.root, zarr.Group)
    z.add_array(coords, "fields")
    for dim in coords:
        assert dim in z and dim in z.coords and z[dim].shape == coords[dim].shape
    assert "fields" in z and len(z) == 5
    assert set(z) == {"fields", "time", "variable", "lat", "lon"}
    shape = tuple(len(v) for v in coords.values())
    rng = np.random.default_rng(0)
    z.add_array(coords, "dummy_1", data=rng.standard_normal(shape, dtype=np.float32))
    z.add_array(coords, ["dummy_1"], data=[rng.standard_normal(shape, dtype=np.float32)], overwrite=True)
    x = rng.standard_normal(shape, dtype=np.float32)
    z.write(x, coords, "fields_1")  # created on first write
    np.testing.assert_array_equal(z["fields_1"][...], x)
    partial = OrderedDict(time=coords["time"][:1], variable=coords["variable"][:1], lat=coords["lat"],
                          lon=coords["lon"][:18])
    p = rng.standard_normal((1, 1, 18, 18), dtype=np.float32)
    z.write(p, partial, "fields")
    np.testing.assert_array_equal(z["fields"][0, 0, :, :18], p[0, 0])
    assert z.chunks["lat"] == 18
    # The in-memory store is readable by zarr-python and xarray.
    ds = xr.open_zarr(z.store, consolidated=False)
    np.testing.assert_array_equal(ds["fields_1"].values, x)
    assert z.stats()["chunks_written"] > 0


@pytest.mark.torch
def test_read_returns_what_was_written_as_a_tensor():
    coords = OrderedDict(time=np.array([np.datetime64("1971-06-01T06:00:00"), np.datetime64("2021-11-23T12:00:00")]),
                         variable=np.array(["t2m", "tcwv"]), lat=np.linspace(-90, 90, 18),
                         lon=np.linspace(0, 360, 36, endpoint=False))
    z = ZarrBackend(chunks=OrderedDict(time=1, variable=1, lat=18, lon=18))
    z.add_array(coords, "fields")
    partial = OrderedDict(time=coords["time"][:1], variable=coords["variable"][:1], lat=coords["lat"],
                          lon=coords["lon"][:18])
    p = torch.randn(1, 1, 18, 18)
    z.write(p, partial, "fields")
    np.testing.assert_array_equal(z["fields"][0, 0, :, :18], p.numpy()[0, 0])
    xx, c = z.read(partial, "fields")
    assert torch.equal(xx, p) and c is partial


def test_partial_out_of_order_repeated_writes_keep_the_rest(tmp_path, rng):
    coords = OrderedDict(a=np.arange(10), b=np.arange(13) * 0.5)
    io = ZarrBackend(str(tmp_path / "p.zarr"), chunks={"a": 4, "b": 5}, zarr_codecs=BLOSC)
    full = rng.normal(size=(10, 13)).astype("float32")
    io.add_array(coords, "v", data=full)
    ref = full.copy()
    for _ in range(5):
        ia = rng.choice(10, size=rng.integers(1, 10), replace=False)
        ib = rng.choice(13, size=rng.integers(1, 13), replace=False)
        vals = rng.normal(size=(len(ia), len(ib))).astype("float32")
        io.write(vals, OrderedDict(a=coords["a"][ia], b=coords["b"][ib]), "v")
        ref[np.ix_(ia, ib)] = vals
        np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "p.zarr" / "v"))[...], ref)
    # Unwritten parts of a fresh array keep the fill value.
    io.add_array(coords, "w", fill_value=np.nan)
    io.write(np.ones((1, 1), "float32"), OrderedDict(a=[9], b=[6.0]), "w")
    w = zarr.open_array(str(tmp_path / "p.zarr" / "w"))[...]
    assert w[9, 12] == 1 and np.isnan(w).sum() == 129
    io.close()


@pytest.mark.parametrize("blocking", [True, False], ids=["blocking", "non-blocking"])
@pytest.mark.parametrize("layout", ["member-views", "every-other-row", "transposed", "reversed"])
def test_chunks_that_are_blocks_of_the_data_are_stored_exactly(tmp_path, rng, layout, blocking):
    """Chunks lying as one C-contiguous block of the caller's data are encoded from it
    in place; other layouts are gathered. Either way the store holds the data exactly
    and the caller's array is untouched."""
    coords = OrderedDict(m=np.arange(4), a=np.arange(6), b=np.arange(8))
    big = rng.normal(size=(4, 2, 12, 8)).astype("float32")
    x = {"member-views": big[:, 1, :6],             # (4, 6, 8): each member's (6, 8) is a block
         "every-other-row": big[:, 0, ::2],         # rows are blocks, chunks of (1, 1, 8) only
         "transposed": np.ascontiguousarray(big[:, 0, :8, :6]).transpose(0, 2, 1),  # no block
         "reversed": big[::-1, 1, 6:]}[layout]      # blocks at descending addresses
    chunks = {"m": 1, "a": 1} if layout == "every-other-row" else {"m": 1}
    before = big.copy()
    io = ZarrBackend(str(tmp_path / "s.zarr"), chunks=chunks, zarr_codecs=BLOSC, blocking=blocking)
    io.add_array(coords, "v")
    io.write(x, coords, "v")
    io.close()
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "s.zarr" / "v"))[...], x)
    np.testing.assert_array_equal(big, before)


def test_reopen_rebuilds_coords_and_chunks_and_appends(tmp_path, seed_coords):
    path = str(tmp_path / "r.zarr")
    with ZarrBackend(path, chunks={"time": 1, "lead_time": 2}, zarr_codecs=BLOSC) as io:
        io.add_array(seed_coords, "t2m")
        io.write(np.ones((3, 1, 1, 9, 16), "float32"), OrderedDict(seed_coords, lead_time=seed_coords["lead_time"][:1]),
                 "t2m")
    io2 = ZarrBackend(path)
    assert list(io2.coords) == list(seed_coords)
    for k in seed_coords:
        np.testing.assert_array_equal(io2.coords[k], seed_coords[k])
    assert io2.chunks["lead_time"] == 2 and io2.chunks["lat"] == 9
    io2.write(np.full((3, 1, 1, 9, 16), 2.0, "float32"),
              OrderedDict(seed_coords, lead_time=seed_coords["lead_time"][1:2]), "t2m")
    io2.close()
    v = xr.open_zarr(path, consolidated=False)["t2m"].values
    assert (v[:, :, 0] == 1).all() and (v[:, :, 1] == 2).all() and (v[:, :, 2:] == 0).all()


def test_overwrite_array_and_store(tmp_path, seed_coords):
    path = str(tmp_path / "o.zarr")
    io = ZarrBackend(path, chunks={"time": 1, "lead_time": 1})
    shape = tuple(len(v) for v in seed_coords.values())
    io.add_array(seed_coords, "t2m", data=np.ones(shape, "float32"))
    io.add_array(seed_coords, "t2m", data=np.full(shape, 3.0, "float32"), overwrite=True)
    np.testing.assert_array_equal(zarr.open_array(path + "/t2m")[...], 3.0)
    io.close()
    io = ZarrBackend(path, backend_kwargs={"overwrite": True})
    assert len(io) == 0 and not io.coords


def test_multidimensional_coordinates(tmp_path):
    lat2d, lon2d = np.meshgrid(np.linspace(-10, 10, 6), np.linspace(0, 20, 8), indexing="ij")
    coords = OrderedDict(time=np.arange(2), lat=lat2d, lon=lon2d)
    io = ZarrBackend(str(tmp_path / "m.zarr"), chunks={"time": 1})
    x = np.random.default_rng(0).standard_normal((2, 6, 8), dtype=np.float32)
    io.add_array(coords, "v")
    io.write(x, coords, "v")
    assert set(io.coords) == {"time", "ilat", "ilon"}
    ds = xr.open_zarr(tmp_path / "m.zarr", consolidated=False)
    np.testing.assert_array_equal(ds["v"].values, x)
    np.testing.assert_array_equal(ds["lat"].values, lat2d)
    assert ds["lat"].dims == ("ilat", "ilon")
    # Writing with the multidimensional coordinate only partly given is refused.
    with pytest.raises(CoordinateError, match="in full"):
        io.write(x[:, :3], OrderedDict(time=np.arange(2), lat=lat2d[:3], lon=lon2d[:3]), "v")


def test_numpy_inputs_dtypes_and_casting(tmp_path):
    coords = OrderedDict(a=np.arange(4), b=np.arange(5))
    io = ZarrBackend(str(tmp_path / "d.zarr"))
    for dt in ("float16", "float64", "int32", "int64", "uint8", "bool"):
        data = (np.arange(20).reshape(4, 5) % 7).astype(dt)
        io.add_array(coords, f"v_{dt}", data=data)
        np.testing.assert_array_equal(io[f"v_{dt}"][...], data)
        assert io[f"v_{dt}"].dtype == np.dtype(dt)
    # float64 data into a float32 array is cast (same kind), as zarr-python does.
    io.add_array(coords, "f32")
    io.write(np.full((4, 5), 1.5), coords, "f32")
    np.testing.assert_array_equal(io["f32"][...], 1.5)
    # Fortran-ordered and negative-stride views.
    f = np.asfortranarray(np.arange(20, dtype="float32").reshape(4, 5))
    io.write(f[::-1], OrderedDict(a=coords["a"][::-1], b=coords["b"]), "f32")
    np.testing.assert_array_equal(io["f32"][...], f)


def test_bad_input_clear_errors_store_unchanged(tmp_path, seed_coords):
    path = tmp_path / "bad.zarr"
    io = ZarrBackend(str(path), chunks={"time": 1, "lead_time": 1}, zarr_codecs=BLOSC)
    io.add_array(seed_coords, ["t2m", "tcwv"])
    good = np.ones((3, 1, 1, 9, 16), "float32")
    step = OrderedDict(seed_coords, lead_time=seed_coords["lead_time"][:1])
    io.write([good, good], step, ["t2m", "tcwv"])

    def snapshot():
        return {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}

    before = snapshot()
    with pytest.raises(UnknownDimensionError, match="pressure"):
        io.write(good, OrderedDict(step, pressure=np.arange(1)), "t2m")
    with pytest.raises(AssertionError):  # Earth2Studio raises AssertionError here
        io.write(good, OrderedDict(foo=np.arange(3)), "t2m")
    with pytest.raises(CoordinateError, match="lead_time"):
        io.write(good, OrderedDict(step, lead_time=np.array([999], dtype="timedelta64[h]")), "t2m")
    with pytest.raises(DataShapeError, match="shape"):
        io.write(np.ones((3, 1, 1, 9, 15), "float32"), step, "t2m")
    with pytest.raises(ValueError, match="must be the same"):
        io.write([good, good], step, ["t2m"])
    with pytest.raises(UnsupportedDTypeError, match="complex64"):  # complex data into a real array
        io.write(np.ones((3, 1, 1, 9, 16), "complex64"), step, "t2m")
    with pytest.raises(UnsupportedDTypeError, match="x must be"):
        io.write("not data", step, "t2m")
    for bad in ("../x", "", "a/../b", "a//b", "a/", "/abs", "..", ".hidden", "a/.hidden", "__x", "zarr.json",
                "a\\b", 3):
        with pytest.raises(ArrayNameError, match="array_name"):
            io.write(good, step, bad)
        with pytest.raises(ArrayNameError):
            io.add_array(seed_coords, bad)
    # A failing item anywhere in a list writes nothing (checked before any data moves).
    with pytest.raises(DataShapeError):
        io.write([good * 5, np.ones((3, 1, 1, 9, 15), "float32")], step, ["t2m", "tcwv"])
    with pytest.raises(CoordinateError, match="order"):
        io.write(good.transpose(1, 0, 2, 3, 4),
                 OrderedDict([("time", step["time"]), ("ensemble", step["ensemble"])] +
                             [(k, step[k]) for k in ("lead_time", "lat", "lon")]), "t2m")
    with pytest.raises(CoordinateError, match="repeats"):
        io.write(np.ones((2, 1, 1, 9, 16), "float32"), OrderedDict(step, ensemble=np.array([0, 0])), "t2m")
    assert snapshot() == before
    assert not (path / "x").exists() and not (tmp_path / "x").exists()
    io.close()
    io.close()  # idempotent
    with pytest.raises(BackendClosedError, match="closed"):
        io.write(good, step, "t2m")
    with pytest.raises(BackendClosedError):
        io.add_array(seed_coords, "new")
    assert snapshot() == before


@pytest.mark.torch
def test_tensors_of_dtypes_the_array_cannot_take_are_refused_store_unchanged(tmp_path, seed_coords):
    path = tmp_path / "bad.zarr"
    io = ZarrBackend(str(path), chunks={"time": 1, "lead_time": 1}, zarr_codecs=BLOSC)
    io.add_array(seed_coords, "t2m")
    good = torch.ones(3, 1, 1, 9, 16)
    step = OrderedDict(seed_coords, lead_time=seed_coords["lead_time"][:1])
    io.write(good, step, "t2m")
    before = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    with pytest.raises(UnsupportedDTypeError, match="complex64"):  # complex data into a real array
        io.write(torch.ones(3, 1, 1, 9, 16, dtype=torch.complex64), step, "t2m")
    with pytest.raises(UnsupportedDTypeError, match="bfloat16"):
        io.write(good.bfloat16(), step, "t2m")
    assert {p: p.read_bytes() for p in path.rglob("*") if p.is_file()} == before
    io.close()


def test_integer_data_into_float_array_is_cast_but_float_into_int_is_refused(tmp_path):
    coords = OrderedDict(a=np.arange(3))
    io = ZarrBackend(str(tmp_path / "c.zarr"))
    io.add_array(coords, "i", data=np.zeros(3, "int32"))
    with pytest.raises(UnsupportedDTypeError, match="int32"):
        io.write(np.ones(3, "float32"), coords, "i")
    io.add_array(coords, "f")
    io.write(np.arange(3, dtype="int16"), coords, "f")
    np.testing.assert_array_equal(io["f"][...], [0, 1, 2])


def test_bad_constructor_options(tmp_path):
    with pytest.raises(ValueError, match="threads"):
        ZarrBackend(str(tmp_path / "t.zarr"), threads=0)
    with pytest.raises(ValueError, match="max_buffer_bytes"):
        ZarrBackend(str(tmp_path / "t.zarr"), max_buffer_bytes=-1)
    with pytest.raises(ValueError, match=r"chunks\['time'\]"):
        ZarrBackend(str(tmp_path / "t.zarr"), chunks={"time": 0})
    # Too small to split (staging ring and encode buffers): refused at construction, naming the argument.
    with pytest.raises(ValueError, match="max_buffer_bytes=1 is too small for a non-blocking ZarrBackend"):
        ZarrBackend(str(tmp_path / "t.zarr"), max_buffer_bytes=1, blocking=False)
    with pytest.raises(ValueError, match="max_buffer_bytes=3 is too small for AsyncZarrBackend with shard_coords"):
        e2fastio.AsyncZarrBackend(str(tmp_path / "s.zarr"), parallel_coords=OrderedDict(a=np.arange(4)),
                                  shard_coords={"a": 2}, max_buffer_bytes=3)
    with pytest.raises(ValueError, match="max_buffer_bytes=1 is too small for a non-blocking AsyncZarrBackend"):
        e2fastio.AsyncZarrBackend(str(tmp_path / "n.zarr"), parallel_coords=OrderedDict(a=np.arange(4)),
                                  blocking=False, max_buffer_bytes=1)
    assert not any((tmp_path / n).exists() for n in ("t.zarr", "s.zarr", "n.zarr"))
    # Arguments checked before the store is opened: a mistake leaves no directory behind.
    for kw, error, match in [({"backend_kwargs": {"bogus": 1}}, TypeError, "backend_kwargs: .*bogus"),
                             ({"backend_kwargs": ["overwrite"]}, TypeError, "backend_kwargs must be a dict"),
                             ({"process_group": "bogus"}, ValueError, "process_group"),
                             ({"process_group": 3}, TypeError, "process_group"),
                             ({"fsync": "yes"}, TypeError, "fsync must be True or False"),
                             ({"direct_io": "yes"}, ValueError, "direct_io")]:
        with pytest.raises(error, match=match):
            ZarrBackend(str(tmp_path / "k.zarr"), **kw)
        assert not (tmp_path / "k.zarr").exists(), kw
    # A chunk larger than the staging bound is refused with the knob to turn.
    io = ZarrBackend(str(tmp_path / "t.zarr"), max_buffer_bytes=1 << 16)
    coords = OrderedDict(a=np.arange(100), b=np.arange(200))
    io.add_array(coords, "v")
    with pytest.raises(ValueError, match="max_buffer_bytes"):
        io.write(np.ones((100, 200), "float32"), coords, "v")


def test_os_error_names_chunk_and_other_arrays_still_land(tmp_path):
    path = tmp_path / "e.zarr"
    coords = OrderedDict(a=np.arange(4), b=np.arange(3))
    io = ZarrBackend(str(path), chunks={"a": 2})
    io.add_array(coords, ["good", "bad"])
    # Sabotage: a plain file where the chunk directory of "bad" must go.
    (path / "bad" / "c").write_bytes(b"not a directory")
    with pytest.raises(OSError, match=r"writing chunk .bad/c/[01]/0") as err:
        io.write([np.ones((4, 3), "float32")] * 2, coords, ["good", "bad"])
    assert err.value.errno is not None
    np.testing.assert_array_equal(zarr.open_array(str(path / "good"))[...], 1)
    # The backend stays usable.
    (path / "bad" / "c").unlink()
    io.write(np.full((4, 3), 2, "float32"), coords, "bad")
    np.testing.assert_array_equal(zarr.open_array(str(path / "bad"))[...], 2)


def test_unsupported_codecs_fall_back_to_zarr_python(tmp_path):
    coords = OrderedDict(a=np.arange(6), b=np.arange(4))
    io = ZarrBackend(str(tmp_path / "g.zarr"), chunks={"a": 2}, zarr_codecs=zarr.codecs.GzipCodec(level=1))
    data = np.arange(24, dtype="float32").reshape(6, 4)
    io.add_array(coords, "v")
    io.write(data, coords, "v")
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "g.zarr" / "v"))[...], data)


def test_no_thread_left_after_close(tmp_path, seed_coords, native_threads):
    import gc

    gc.collect()  # backends other tests left unclosed stop their threads when collected
    before = threading.active_count()
    ours = native_threads()
    io = ZarrBackend(str(tmp_path / "t.zarr"), threads=3)
    io.add_array(seed_coords, "v", data=np.zeros((3, 1, 4, 9, 16), "float32"))
    assert native_threads(reach=ours + 3) >= ours + 3
    io.close()
    assert native_threads(settle_to=ours) == ours
    assert threading.active_count() == before


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_writes_with_fresh_threads(tmp_path):
    coords = OrderedDict(a=np.arange(4), b=np.arange(3))
    io = ZarrBackend(str(tmp_path / "f.zarr"), chunks={"a": 1})
    io.add_array(coords, ["parent", "child"], data=[np.zeros((4, 3), "float32")] * 2)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            io.write(np.full((4, 3), 7, "float32"), coords, "child")
            io.close()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    io.write(np.full((4, 3), 5, "float32"), coords, "parent")
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "f.zarr" / "child"))[...], 7)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "f.zarr" / "parent"))[...], 5)


def test_info_reports_core():
    i = e2fastio.info()
    assert i["blosc_version"].startswith("1.")
    assert i["default_threads"] >= 1


@pytest.mark.parametrize("direct_io", [None, True, False])
def test_large_chunks_direct_io_bytes_match_zarr_python(tmp_path, direct_io):
    """Chunks >= 1 MiB take the O_DIRECT path (when allowed); bytes equal zarr-python's."""
    coords = OrderedDict(t=np.arange(2), y=np.arange(301), x=np.arange(1003))  # odd sizes
    data = (np.arange(2 * 301 * 1003, dtype="float32").reshape(2, 301, 1003) % 977) / 8
    for codec in (None, BLOSC):
        tag = "raw" if codec is None else "blosc"
        io = ZarrBackend(str(tmp_path / f"ours-{tag}.zarr"), chunks={"t": 1}, zarr_codecs=codec,
                         direct_io=direct_io)
        io.add_array(coords, "v")
        io.write(data, coords, "v")
        io.close()
        ref = zarr.create_array(str(tmp_path / f"ref-{tag}.zarr"), shape=data.shape, chunks=(1, 301, 1003),
                                dtype="float32", compressors=codec, fill_value=None)
        ref[...] = data
        for k in range(2):
            ours = (tmp_path / f"ours-{tag}.zarr" / "v" / "c" / str(k) / "0" / "0").read_bytes()
            assert ours == (tmp_path / f"ref-{tag}.zarr" / "c" / str(k) / "0" / "0").read_bytes()
        np.testing.assert_array_equal(zarr.open_array(str(tmp_path / f"ours-{tag}.zarr" / "v"))[...], data)
    with pytest.raises(ValueError, match="direct_io"):
        ZarrBackend(str(tmp_path / "x.zarr"), direct_io="yes")


def test_array_names_as_numpy_array_like_split_coords(tmp_path):
    """Earth2Studio's split_coords returns the variable names as a numpy array."""
    coords = OrderedDict(a=np.arange(3), b=np.arange(4))
    io = ZarrBackend(str(tmp_path / "n.zarr"))
    names = np.array(["t2m", "tcwv"])
    io.add_array(coords, names)
    io.write([np.ones((3, 4), "float32"), np.zeros((3, 4), "float32")], coords, names)
    assert set(io) >= {"t2m", "tcwv"}
    np.testing.assert_array_equal(io["t2m"][...], 1)


def test_fsync_makes_metadata_and_coordinates_durable_too(tmp_path, monkeypatch):
    # Every fsync is done for real and noted by path: with fsync=True, what
    # zarr-python writes (zarr.json files, coordinate arrays) is synced as the
    # chunks are, and the directories holding their entries.
    synced: list[str] = []
    real = os.fsync

    def noting_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", noting_fsync)
    path = str(tmp_path / "s.zarr")
    coords = OrderedDict(ensemble=np.arange(2), lat=np.linspace(-90, 90, 5), lon=np.arange(8, dtype=np.float64))
    io = ZarrBackend(path, chunks={"ensemble": 1}, fsync=True, consolidate_metadata=True)
    io.add_array(coords, ["t2m", "group/u10"])
    io.write(np.ones((2, 5, 8), "float32"), coords, "t2m")
    io.close()
    s = set(synced)
    for meta in ["zarr.json", "t2m/zarr.json", "group/zarr.json", "group/u10/zarr.json", "lat/zarr.json"]:
        assert os.path.join(path, meta) in s, meta
    assert os.path.join(path, "lat", "c", "0") in s and os.path.join(path, "lat", "c") in s  # coordinate data
    assert {path, str(tmp_path), os.path.join(path, "group")} <= s  # directories holding new entries
    # (data chunks are synced by the native sink: csrc/tests, directory_sink_fsync_...)
    np.testing.assert_array_equal(zarr.open_group(path, mode="r")["t2m"][:], np.ones((2, 5, 8)))
    # Without fsync nothing is synced.
    synced.clear()
    io = ZarrBackend(str(tmp_path / "plain.zarr"), chunks={"ensemble": 1})
    io.add_array(coords, "t2m")
    io.write(np.ones((2, 5, 8), "float32"), coords, "t2m")
    io.close()
    assert synced == []
