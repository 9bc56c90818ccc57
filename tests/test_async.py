"""Non-blocking writes: AsyncZarrBackend and ZarrBackend(blocking=False) on the staging ring."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
from collections import OrderedDict
from datetime import timedelta

import numpy as np
import pytest
import xarray as xr
import zarr

from e2fastio import AsyncZarrBackend, ZarrBackend
from e2fastio.errors import BackgroundWriteError, CoordinateError, DataShapeError

BLOSC = zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")
LEAD = np.array([timedelta(hours=6 * i) for i in range(5)], dtype="timedelta64[ns]")
TIME = np.array(["2022-12-20"], dtype="datetime64[ns]")


def _coords(nens=3, nlat=9, nlon=16):
    return OrderedDict(ensemble=np.arange(nens), time=TIME, lead_time=LEAD,
                       lat=np.linspace(90, -90, nlat), lon=np.linspace(0, 360, nlon, endpoint=False))


def _step_coords(c, k):
    return OrderedDict(c, lead_time=c["lead_time"][k : k + 1])


@pytest.mark.parametrize("blocking", [True, False])
def test_async_backend_surface_and_readback(tmp_path, blocking):
    c = _coords()
    io = AsyncZarrBackend(str(tmp_path / "a.zarr"), parallel_coords={"time": TIME, "lead_time": LEAD},
                          blocking=blocking, zarr_codecs=BLOSC)
    io.add_array(c, ["t2m"])
    io.add_array(c, ["t2m"])  # idempotent
    ref = np.random.default_rng(0).normal(size=(3, 1, 5, 2, 9, 16)).astype("float32")
    for k in range(5):
        x = ref[:, :, k : k + 1]
        io.write([x[:, :, :, 0], x[:, :, :, 1]], _step_coords(c, k), ["t2m", "tcwv"])  # tcwv created lazily
    assert "t2m" in io and "tcwv" in io and len(io) == 7
    assert set(io) == {"t2m", "tcwv", "ensemble", "time", "lead_time", "lat", "lon"}
    np.testing.assert_array_equal(io["tcwv"][...], ref[:, :, :, 1])  # __getitem__ flushes first
    io.close()
    io.close()
    ds = xr.open_zarr(tmp_path / "a.zarr", consolidated=False)
    np.testing.assert_array_equal(ds["t2m"].values, ref[:, :, :, 0])
    assert ds["tcwv"].encoding["chunks"] == (3, 1, 1, 9, 16)  # chunk 1 along parallel coords
    # A coordinate clash is refused, naming the coordinate.
    io2 = AsyncZarrBackend(str(tmp_path / "a.zarr"), parallel_coords={"time": TIME, "lead_time": LEAD})
    with pytest.raises(CoordinateError, match="lat"):
        io2.add_array(OrderedDict(c, lat=np.linspace(0, 1, 9)), "other")
    with pytest.raises(CoordinateError, match="Non-index coordinate lon"):
        io2.write(np.zeros((3, 1, 1, 9, 8), "float32"), OrderedDict(_step_coords(c, 0), lon=c["lon"][:8]), "t2m")
    io2.close()


def test_mutating_the_array_right_after_write_changes_nothing(tmp_path):
    c = _coords(nens=4, nlat=91, nlon=180)
    io = ZarrBackend(str(tmp_path / "m.zarr"), chunks={"time": 1, "lead_time": 1}, zarr_codecs=BLOSC,
                     blocking=False)
    io.add_array(c, "t2m")
    buf = np.empty((4, 1, 1, 91, 180), "float32")
    for k in range(5):
        buf.fill(float(k))
        io.write(buf, _step_coords(c, k), "t2m")
        buf.fill(-999.0)  # the model reuses its output buffer at once
    io.close()
    got = zarr.open_array(str(tmp_path / "m.zarr" / "t2m"))[...]
    for k in range(5):
        assert (got[:, :, k] == k).all()


def test_backpressure_with_a_tiny_ring_and_bounded_memory(tmp_path):
    c = _coords(nens=2, nlat=181, nlon=360)  # one write = 2 x 260 KiB
    step_bytes = 2 * 181 * 360 * 4
    io = ZarrBackend(str(tmp_path / "b.zarr"), chunks={"time": 1, "lead_time": 1, "ensemble": 1},
                     zarr_codecs=BLOSC, blocking=False, threads=1, max_buffer_bytes=6 * step_bytes)
    io.add_array(c, "v")
    rng = np.random.default_rng(1)
    ref = rng.normal(size=(2, 1, 5, 181, 360)).astype("float32")
    for rep in range(4):
        for k in range(5):
            io.write(ref[:, :, k : k + 1] + rep, _step_coords(c, k), "v")
    io.flush()
    s = io.stats()
    assert s["ring"]["waits"] > 0 and s["ring"]["wait_seconds"] > 0
    assert s["ring"]["peak_used_bytes"] <= s["ring"]["capacity"]
    assert s["buffers"]["peak_bytes"] <= s["buffers"]["capacity"]
    assert s["ring"]["capacity"] + s["buffers"]["capacity"] <= 6 * step_bytes + 4096
    io.close()
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "b.zarr" / "v"))[...], ref + 3)


def test_write_larger_than_the_ring_is_refused(tmp_path):
    c = _coords(nens=2, nlat=181, nlon=360)
    io = ZarrBackend(str(tmp_path / "r.zarr"), chunks={"time": 1, "lead_time": 1, "ensemble": 1},
                     blocking=False, max_buffer_bytes=1 << 20)
    io.add_array(c, "v")
    with pytest.raises(ValueError, match="max_buffer_bytes"):
        io.write(np.zeros((2, 1, 5, 181, 360), "float32"), c, "v")
    io.close()


def test_same_chunk_written_by_queued_writes_lands_in_order(tmp_path):
    coords = OrderedDict(a=np.arange(8), b=np.arange(64))
    io = ZarrBackend(str(tmp_path / "o.zarr"), chunks={"a": 8}, zarr_codecs=BLOSC, blocking=False, threads=2)
    io.add_array(coords, "v", fill_value=-1.0)
    for i in range(40):  # partial writes of one chunk: read-modify-write must serialise
        row = i % 8
        io.write(np.full((1, 64), i, "float32"), OrderedDict(a=[row], b=coords["b"]), "v")
    io.close()
    got = zarr.open_array(str(tmp_path / "o.zarr" / "v"))[...]
    np.testing.assert_array_equal(got[:, 0], np.arange(32, 40))


def test_background_error_surfaces_at_next_call_and_others_land(tmp_path):
    c = _coords()
    path = tmp_path / "e.zarr"
    io = ZarrBackend(str(path), chunks={"time": 1, "lead_time": 1}, blocking=False)
    io.add_array(c, ["good", "bad"])
    (path / "bad" / "c").write_bytes(b"a file where the chunk directory goes")
    x = np.ones((3, 1, 1, 9, 16), "float32")
    try:  # usually returns (the failure is in the background); on a busy machine it may already be known
        io.write([x, x], _step_coords(c, 0), ["good", "bad"])
    except BackgroundWriteError as first:
        err_value = first
    else:
        with pytest.raises(BackgroundWriteError, match="bad/c/0") as err:
            io.flush()
        err_value = err.value
    assert "bad/c/0" in str(err_value) and isinstance(err_value.__cause__, OSError)
    io.flush()  # reported once
    raised = 0
    try:  # raised by this very write when its chunk already failed...
        io.write([x * 2, x * 2], _step_coords(c, 1), ["good", "bad"])
    except BackgroundWriteError:
        raised += 1
    try:  # ...or at the next write if the failure is known by then...
        io.write([x * 3], _step_coords(c, 2), ["good"])
    except BackgroundWriteError:
        raised += 1
    try:  # ...else at close
        io.close()
    except BackgroundWriteError:
        raised += 1
    assert raised == 1
    got = zarr.open_array(str(path / "good"))[...]
    assert (got[:, :, 0] == 1).all() and (got[:, :, 1] == 2).all() and (got[:, :, 2] == 3).all()
    assert io.closed


def test_unclosed_backend_drains_at_exit_with_a_warning(tmp_path):
    script = textwrap.dedent(f"""
        import numpy as np, zarr
        from collections import OrderedDict
        from e2fastio import ZarrBackend
        # One encoder and zstd over 40 MB of noise: chunks are still pending when the script ends.
        io = ZarrBackend({str(tmp_path / 'x.zarr')!r}, chunks={{"a": 1}}, blocking=False, threads=1,
                         zarr_codecs=zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="noshuffle"))
        c = OrderedDict(a=np.arange(50), b=np.arange(200000))
        io.add_array(c, "v")
        noise = np.random.default_rng(0).random(200000, dtype="float32")
        for i in range(50):
            io.write((noise + i)[None], OrderedDict(a=[i], b=c["b"]), "v")
        # no close(): Earth2Studio's workflows never call it
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "a non-blocking ZarrBackend" in r.stderr and "was not closed" in r.stderr and "RuntimeWarning" in r.stderr
    got = zarr.open_array(str(tmp_path / "x.zarr" / "v"))[...]
    np.testing.assert_array_equal(np.round(got[:, 0] - got[0, 0]), np.arange(50))


def test_closed_at_exit_consolidates_metadata_and_is_quiet_when_nothing_is_pending(tmp_path):
    """Backends never closed (Earth2Studio's workflows) are closed at exit: consolidated metadata
    is written then (zarr-python's thread pools have stopped by that time), and a backend with
    nothing pending says nothing."""
    script = textwrap.dedent(f"""
        import time
        import numpy as np
        from collections import OrderedDict
        from e2fastio import AsyncZarrBackend, ZarrBackend
        c = OrderedDict(a=np.arange(3), b=np.arange(4.0))
        blocking = ZarrBackend({str(tmp_path / 'b.zarr')!r}, consolidate_metadata=True)
        blocking.add_array(c, "v")
        blocking.write(np.ones((3, 4), "float32"), c, "v")
        quiet = AsyncZarrBackend({str(tmp_path / 'n.zarr')!r}, parallel_coords=OrderedDict(a=c["a"]),
                                 blocking=False, consolidate_metadata=True)
        quiet.write(np.full((3, 4), 2, "float32"), c, "v")
        quiet.flush()  # stored: nothing is pending at exit
    """)
    r = subprocess.run([sys.executable, "-W", "always", "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "failed" not in r.stderr and "was not closed" not in r.stderr, r.stderr
    for name, value in (("b.zarr", 1), ("n.zarr", 2)):
        root = zarr.open_consolidated(str(tmp_path / name))
        assert sorted(root.array_keys()) == ["a", "b", "v"]
        assert (root["v"][...] == value).all()


def test_no_thread_left_after_close_nonblocking(tmp_path, native_threads):
    gc.collect()
    before = native_threads()
    io = AsyncZarrBackend(str(tmp_path / "t.zarr"), parallel_coords={"lead_time": LEAD}, blocking=False)
    c = _coords()
    io.write(np.zeros((3, 1, 1, 9, 16), "float32"), _step_coords(c, 0), "v")
    assert native_threads(reach=before + 1) > before
    io.close()
    assert native_threads(settle_to=before) == before


def test_blocking_false_matches_blocking(tmp_path):
    c = _coords(nlat=31, nlon=64)
    data = np.random.default_rng(5).normal(size=(3, 1, 5, 31, 64)).astype("float32")
    for blocking in (True, False):
        with ZarrBackend(str(tmp_path / f"{blocking}.zarr"), chunks={"time": 1, "lead_time": 1},
                         zarr_codecs=BLOSC, blocking=blocking) as io:
            io.add_array(c, "v")
            for k in range(5):
                io.write(data[:, :, k : k + 1], _step_coords(c, k), "v")
    a = xr.open_zarr(tmp_path / "True.zarr", consolidated=False).load()
    b = xr.open_zarr(tmp_path / "False.zarr", consolidated=False).load()
    xr.testing.assert_identical(a, b)


def test_memory_store_nonblocking():
    c = _coords()
    io = AsyncZarrBackend(None, parallel_coords={"lead_time": LEAD}, store="memory://", blocking=False)
    x = np.arange(3 * 9 * 16, dtype=np.float32).reshape(3, 1, 1, 9, 16)
    io.write(x, _step_coords(c, 2), "v")
    np.testing.assert_array_equal(io["v"][:, :, 2], x[:, :, 0])
    io.close()


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"shard_coords": {"time": -1}}, "Shard size for coordinate .time. must be positive"),
        ({"store": "s3://bucket/x.zarr", "store_kwargs": {"no_such_option": 1}}, "store="),
        ({"store": "s3://bucket/x.zarr", "store_kwargs": {"secret_access_key": "hunter2-s3cr3t", "bad": 1}},
         "could not open"),
        ({"store_kwargs": {"endpoint": "x"}}, "store_kwargs"),
        ({"pool_size": 0}, "pool_size"),
        ({"async_timeout": 0}, "async_timeout"),
        ({"zarr_kwargs": {"mode": "r"}}, "mode"),
        ({"parallel_coords": {"time": np.array([1, 1])}}, "duplicate"),
        ({"process_group": "bogus"}, "process_group='bogus' is not a known group name"),
    ],
)
def test_async_backend_bad_or_unsupported_options_raise(tmp_path, kwargs, match):
    args = {"file_name": str(tmp_path / "u.zarr"), "parallel_coords": {"time": TIME}} | kwargs
    with pytest.raises(ValueError, match=match) as info:
        AsyncZarrBackend(**args)
    assert "hunter2-s3cr3t" not in str(info.value)
    assert not (tmp_path / "u.zarr").exists()  # refused before the location was opened
    with pytest.raises(ValueError, match="output location"):
        AsyncZarrBackend(None, parallel_coords={"time": TIME})


def test_a_refused_write_creates_no_array(tmp_path):
    """As ZarrBackend: every input of a write is checked before its missing arrays are created."""
    c = OrderedDict(time=TIME, a=np.arange(2), b=np.arange(3))
    io = AsyncZarrBackend(str(tmp_path / "w.zarr"), parallel_coords={"time": TIME})
    with pytest.raises(DataShapeError, match="'newB' has shape"):
        io.write([np.ones((len(TIME), 2, 3), "float32"), np.ones((len(TIME), 2, 4), "float32")], c, ["newA", "newB"])
    assert "newA" not in io and "newB" not in io
    io.write([np.ones((len(TIME), 2, 3), "float32")] * 2, c, ["newA", "newB"])
    io.close()
    assert sorted(zarr.open_group(str(tmp_path / "w.zarr"), mode="r").array_keys()) == ["a", "b", "newA", "newB",
                                                                                        "time"]


def test_fs_factory_is_deprecated_and_checked(tmp_path):
    with pytest.warns(FutureWarning, match="fs_factory is deprecated"), pytest.raises(TypeError, match="fs_factory"):
        AsyncZarrBackend(str(tmp_path / "u.zarr"), parallel_coords={"time": TIME}, fs_factory=lambda: None)
    with pytest.warns(FutureWarning), pytest.raises(TypeError, match="fs_factory"):
        AsyncZarrBackend(str(tmp_path / "u.zarr"), parallel_coords={"time": TIME}, fs_factory=42)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_of_a_nonblocking_backend_starts_its_own_threads(tmp_path):
    coords = OrderedDict(a=np.arange(4), b=np.arange(300))
    io = ZarrBackend(str(tmp_path / "f.zarr"), chunks={"a": 1}, blocking=False)
    io.add_array(coords, ["parent", "child"])
    io.write(np.full((4, 300), 1, "float32"), coords, "parent")  # maybe still pending at fork
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        code = 1
        try:
            io.write(np.full((4, 300), 7, "float32"), coords, "child")
            io.close()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    io.close()
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "f.zarr" / "child"))[...], 7)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "f.zarr" / "parent"))[...], 1)
