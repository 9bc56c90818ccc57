"""Encoded NetCDF chunks on their way to HDF5: the collector between the encoder
threads and the caller's thread is bounded, never deadlocks, and hands its bytes
to HDF5 without a copy on the Python side."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import tracemalloc

import numpy as np
import pytest

h5py = pytest.importorskip("h5py")
netCDF4 = pytest.importorskip("netCDF4")

from e2fastio import _core  # noqa: E402

# One process per scenario: a deadlock must fail the test (killed after the
# timeout), not hang the test session with the GIL released in native code.
_WORKLOAD = textwrap.dedent(
    """
    import json, sys, time
    from collections import OrderedDict
    import numpy as np
    import e2fastio

    path, blocking, steps, budget = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4])
    flush_timeout, end = float(sys.argv[5]), sys.argv[6]
    c = OrderedDict(ensemble=np.arange(8), lead_time=np.arange(steps) * np.timedelta64(6, "h"),
                    lat=np.linspace(-90, 90, 32), lon=np.arange(0, 360, 5.625))
    rng = np.random.default_rng(7)
    data = rng.normal(280, 10, (2, 8, steps, 32, 64)).astype("float32")  # noise: barely compressible
    io = e2fastio.NetCDF4Backend(path, {"mode": "w"}, compression="zlib", blocking=blocking, threads=2,
                                 max_buffer_bytes=budget)
    io.flush_timeout = flush_timeout
    io.add_array(c, ["t2m", "tcwv"])
    outcome = "ok"
    t0 = time.perf_counter()
    try:
        for k in range(steps):
            step = OrderedDict(c, lead_time=c["lead_time"][k : k + 1])
            io.write([data[0][:, k : k + 1], data[1][:, k : k + 1]], step, ["t2m", "tcwv"])
            if not blocking:
                time.sleep(0.002)  # the model's step: encoders fill the collector meanwhile
    except TimeoutError as err:
        outcome = f"timeout: {err}"
    closed = "ok"
    if end == "collect":  # never closed: the finalizer must let the waiting encoders go
        import gc, warnings
        collector = io.pipeline.collector
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            del io
            gc.collect()
        closed = "; ".join(str(w.message) for w in caught) or "ok"
        print(json.dumps({"outcome": outcome, "closed": closed, "collector": collector.stats()}))
        sys.exit(0)
    try:
        io.close()
    except Exception as err:
        closed = f"{type(err).__name__}: {err}"
    print(json.dumps({"outcome": outcome, "closed": closed, "seconds": time.perf_counter() - t0,
                      "collector": io.stats()["collector"]}))
    """
)


def _run_workload(path, blocking: bool, steps: int, budget: int, flush_timeout: float = 600.0,
                  end: str = "close") -> dict:
    r = subprocess.run([sys.executable, "-c", _WORKLOAD, str(path), "1" if blocking else "0", str(steps),
                        str(budget), str(flush_timeout), end], capture_output=True, text=True, timeout=180)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _expected(steps: int) -> np.ndarray:
    rng = np.random.default_rng(7)
    return rng.normal(280, 10, (2, 8, steps, 32, 64)).astype("float32")


@pytest.mark.parametrize("blocking", [True, False], ids=["blocking", "nonblocking"])
def test_a_tiny_budget_bounds_the_collector_and_never_deadlocks(tmp_path, blocking):
    """384 KiB for everything: a 48 KiB collector, each write's 16 chunks encode to ~130 KiB, and
    the 240 KiB ring takes one write at a time. Non-blocking, the next write finds the previous
    one's encoders waiting for room in the collector and the ring still holding its data: it must
    take chunks to HDF5 before staging (never wait for ring space that only those encoders can
    free). Every chunk lands exactly; the collector never held more than its bound."""
    steps, path = 40, tmp_path / "tiny.nc"
    out = _run_workload(path, blocking, steps, budget=384 << 10)
    assert out["outcome"] == "ok" and out["closed"] == "ok", out
    col = out["collector"]
    print(f"\n{'blocking' if blocking else 'non-blocking'}: {steps * 16} chunks in {out['seconds']:.2f} s, "
          f"collector {col}")
    assert col["capacity"] == (384 << 10) // 8
    assert 0 < col["peak_held_bytes"] <= col["capacity"]
    assert col["chunks_collected"] == col["chunks_popped"] == steps * 16
    assert col["held_bytes"] == 0 and col["held_chunks"] == 0
    if not blocking:  # between calls the encoders filled the collector and waited for the caller
        assert col["writer_waits"] > 0
    want = _expected(steps)
    with netCDF4.Dataset(path) as nc:
        for v, name in enumerate(("t2m", "tcwv")):
            assert nc[name].filters()["zlib"] and nc[name].chunking() == [1, 1, 32, 64]
            np.testing.assert_array_equal(np.asarray(nc[name][:]), want[v])


def test_close_after_a_timed_out_write_lets_waiting_encoders_go(tmp_path):
    """A blocking write that gives up (flush_timeout 0) leaves encoders waiting for room in the
    collector; close() must not wait for them forever: the collector is closed first, their chunks
    fail, the pool stops, the process exits.

    A write can also finish inside its first hand-over, when the caller pops chunks as fast as the
    encoders make them (seen once in about ten full runs): then the scenario did not arise, and the
    workload runs again (each run must still close cleanly)."""
    outs = []
    for attempt in range(4):
        out = _run_workload(tmp_path / f"t{attempt}.nc", True, 4, budget=384 << 10, flush_timeout=0.0)
        assert out["closed"] == "ok", out
        outs.append(out)
        if out["outcome"] != "ok":
            break
    assert out["outcome"].startswith("timeout:") and "still pending" in out["outcome"], outs


def _run_until_timed_out(path, **kw):
    """The collected-backend workload, again while the scenario did not arise: its write finished
    before timing out (see above), or timed out with every chunk already stored. The last chunk can
    reach the collector and be taken to HDF5 by the write's final pop a moment before the engine
    counts it finished: the write then reports "1 chunk(s) still pending" with all 16 of each step
    stored, and the finalizer rightly finds nothing to drop or fail (2 in 60 runs under load)."""
    for attempt in range(4):
        out = _run_workload(path.with_name(f"{path.stem}{attempt}.nc"), True, 4, **kw)
        col = out["collector"]  # 16 chunks per write
        all_stored = col["chunks_popped"] == col["chunks_collected"] > 0 and col["chunks_popped"] % 16 == 0
        if out["outcome"] != "ok" and not all_stored:
            break
    return out


def test_a_backend_collected_after_a_timed_out_write_lets_waiting_encoders_go(tmp_path):
    """The same, never closed: the finalizer closes the collector before it waits for the pool."""
    out = _run_until_timed_out(tmp_path / "g.nc", budget=384 << 10, flush_timeout=0.0, end="collect")
    assert out["outcome"].startswith("timeout:"), out
    assert out["collector"]["held_bytes"] == 0, out
    assert "garbage-collected without close() and a background write had failed" in out["closed"], out
    # Whichever the finalizer found: encoders waiting for room failed when it closed the collector,
    # or every chunk had reached the collector and waited there for HDF5: dropped, and said so.
    assert "its writer was closed" in out["closed"] or "were dropped" in out["closed"], out


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_gets_a_collector_of_its_own(tmp_path):
    """The collector's lock may be held by a parent's encoder at fork time: the child makes a new one."""
    from e2fastio import NetCDF4Backend

    io = NetCDF4Backend(tmp_path / "p.nc", {"mode": "w"}, compression="zlib", blocking=False)
    parent = io.pipeline.collector.sink
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        ok = False
        try:
            child = io.pipeline.collector.sink
            child.write("x/c/0", b"abc")
            ok = child is not parent and child.capacity == parent.capacity and child.pop()[0] == "x/c/0"
        finally:
            os._exit(0 if ok else 3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert io.pipeline.collector.sink is parent
    io.close()


def test_popped_chunks_reach_hdf5_without_a_python_copy(tmp_path):
    """The collector's bytes go to ``write_direct_chunk`` as they are: pop() gives a read-only
    view owned by the native chunk, h5py takes it through the buffer protocol, and nothing of the
    chunk's size is allocated on the Python side (a bytes copy would be)."""
    rng = np.random.default_rng(1)
    raw = rng.normal(280, 10, (1, 512, 1024)).astype("float32")  # 2 MiB
    spec = _core.CodecSpec()
    spec.itemsize, spec.deflate, spec.deflate_level, spec.hdf5_shuffle = 4, True, 1, True
    enc = _core.encode_chunk(spec, np.ascontiguousarray(raw[0]))
    sink = _core.CollectSink(1 << 30)
    sink.write("v/c/0/0/0", enc)
    assert sink.held_bytes == len(enc)
    with h5py.File(tmp_path / "f.h5", "w") as f:
        d = f.create_dataset("v", shape=raw.shape, dtype="f4", chunks=raw.shape, compression="gzip", shuffle=True)
        tracemalloc.start()
        try:
            key, data = sink.pop()
            d.id.write_direct_chunk((0, 0, 0), data, filter_mask=0)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert key == "v/c/0/0/0" and len(data) == len(enc) and bytes(data) == bytes(enc)
        assert not data.flags.writeable and not data.flags.owndata
        assert type(data.base).__name__ == "PyCapsule"
        assert peak < len(enc) // 16, f"{peak} bytes allocated by Python for a {len(enc)}-byte chunk"
        del data
    assert sink.pop() is None and sink.held_bytes == 0
    with h5py.File(tmp_path / "f.h5", "r") as f:
        np.testing.assert_array_equal(f["v"][...], raw)


def test_collector_refuses_a_zero_bound_and_fails_writers_once_closed():
    with pytest.raises(ValueError, match="capacity"):
        _core.CollectSink(0)
    sink = _core.CollectSink(100)
    sink.write("a/c/0", b"x" * 60)
    sink.close()
    assert sink.pop() is None and sink.held_bytes == 0  # dropped: nobody will store them
    with pytest.raises(RuntimeError, match="closed"):
        sink.write("a/c/1", b"y" * 10)
