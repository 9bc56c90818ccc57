"""The IO policy: writer threads store local chunks, non-blocking threads yield to the caller.

Chunks of a local store are encoded on the encoder threads ("e2fastio-pool")
and stored by the writer threads ("e2fastio-write"); a non-blocking backend
runs both below the caller's scheduling priority. These tests check what a
user relies on: the bytes land exactly (O_DIRECT or not), a chunk that cannot
be stored is reported naming its key, memory stays under max_buffer_bytes,
the priorities are as documented, and no thread outlives close().
"""

from __future__ import annotations

import gc
import os
from collections import OrderedDict

import numpy as np
import pytest
import zarr

from e2fastio import ZarrBackend
from e2fastio._write.engine import BACKGROUND_DEFER_SECONDS, BACKGROUND_NICE, BACKGROUND_SCHED_IDLE
from e2fastio.errors import BackgroundWriteError

BLOSC = zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")


def _coords(members: int, steps: int, nlat: int, nlon: int) -> OrderedDict[str, np.ndarray]:
    return OrderedDict(
        ensemble=np.arange(members),
        time=np.array(["2022-12-20T00"], dtype="datetime64[ns]"),
        lead_time=(np.arange(steps) * np.timedelta64(6, "h")).astype("timedelta64[ns]"),
        lat=np.linspace(90, -90, nlat),
        lon=np.linspace(0, 360, nlon, endpoint=False),
    )


def _step(c: OrderedDict[str, np.ndarray], k: int) -> OrderedDict[str, np.ndarray]:
    out = OrderedDict(c)
    out["lead_time"] = c["lead_time"][k : k + 1]
    return out


def _threads_named(name: str) -> list[int]:
    """Ids of this process's threads called `name` (/proc/self/task/<tid>/comm)."""
    out = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                if f.read().strip() == name:
                    out.append(int(tid))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return out


def _thread_policies(name: str) -> list[int]:
    """Scheduling policies of this process's threads called `name`."""
    out = []
    for tid in _threads_named(name):
        try:
            out.append(os.sched_getscheduler(tid))
        except (ProcessLookupError, OSError):
            continue
    return out


def _thread_nices(name: str) -> list[int]:
    """Nice values of this process's threads called `name` (field 19 of /proc/<tid>/stat)."""
    out = []
    for tid in _threads_named(name):
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        out.append(int(fields[16]))  # after "pid (comm)": state is field 3, nice field 19
    return out


@pytest.mark.parametrize("blocking", [True, False])
@pytest.mark.parametrize("direct_io", [None, False, True])
def test_member_chunks_land_exactly_with_and_without_direct_io(tmp_path, blocking, direct_io):
    # 2 MiB chunks (one member each): large enough for O_DIRECT under the automatic policy.
    c = _coords(members=3, steps=3, nlat=512, nlon=1024)
    rng = np.random.default_rng(7)
    data = (rng.normal(size=(3, 1, 3, 512, 1024)) * 10).astype("float32")  # noisy: every mantissa bit
    path = tmp_path / "s.zarr"
    with ZarrBackend(str(path), chunks={"ensemble": 1, "time": 1, "lead_time": 1}, zarr_codecs=BLOSC,
                     blocking=blocking, direct_io=direct_io, max_buffer_bytes=64 << 20) as io:
        io.add_array(c, "v")
        for k in range(3):
            io.write(data[:, :, k : k + 1], _step(c, k), "v")
        if not blocking:
            io.flush()
        stats = io.pipeline.engine.stats()
        assert stats["writer_threads"] >= 2  # local chunks are stored by the writer stage
        assert stats["buffers"]["peak_bytes"] <= stats["buffers"]["capacity"]
    np.testing.assert_array_equal(zarr.open_array(str(path / "v"))[...], data)
    leftovers = [p.name for p in path.rglob(".e2fastio-tmp-*")]
    assert leftovers == []


def test_a_chunk_the_writers_cannot_store_is_reported_with_its_key(tmp_path):
    c = _coords(members=2, steps=2, nlat=16, nlon=32)
    data = np.ones((2, 1, 1, 16, 32), dtype="float32")
    path = tmp_path / "s.zarr"
    io = ZarrBackend(str(path), chunks={"time": 1, "lead_time": 1}, zarr_codecs=BLOSC, blocking=False)
    io.add_array(c, "v")
    (path / "v" / "c").write_bytes(b"")  # a file where the chunk directory must go
    io.write(data, _step(c, 0), "v")
    with pytest.raises(BackgroundWriteError, match=r"v/c/0/0/0/0/0"):
        io.flush()
    (path / "v" / "c").unlink()
    io.write(data, _step(c, 1), "v")  # reported once; the backend goes on
    io.close()
    np.testing.assert_array_equal(zarr.open_array(str(path / "v"))[:, :, 1:2], data)

    blocking = ZarrBackend(str(tmp_path / "b.zarr"), chunks={"time": 1, "lead_time": 1}, zarr_codecs=BLOSC)
    blocking.add_array(c, "v")
    (tmp_path / "b.zarr" / "v" / "c").write_bytes(b"")
    with pytest.raises(OSError, match=r"v/c/0/0/0/0/0"):
        blocking.write(data, _step(c, 0), "v")  # a blocking write reports it itself
    blocking.close()


def test_nonblocking_threads_run_below_the_caller_and_blocking_ones_at_its_priority(tmp_path, native_threads):
    gc.collect()
    caller = os.getpriority(os.PRIO_PROCESS, 0)
    c = _coords(members=2, steps=2, nlat=16, nlon=32)
    data = np.ones((2, 1, 1, 16, 32), dtype="float32")
    for blocking, expect in ((False, min(19, caller + BACKGROUND_NICE)), (True, caller)):
        before_pool = native_threads()
        before_write = native_threads("e2fastio-write")
        io = ZarrBackend(str(tmp_path / f"{blocking}.zarr"), chunks={"time": 1, "lead_time": 1},
                         zarr_codecs=BLOSC, blocking=blocking, threads=2)
        io.add_array(c, "v")
        io.write(data, _step(c, 0), "v")
        io.flush()
        assert native_threads(reach=before_pool + 2) >= before_pool + 2
        assert native_threads("e2fastio-write", reach=before_write + 2) >= before_write + 2
        stats = io.pipeline.engine.stats()
        assert stats["nice"] == (BACKGROUND_NICE if not blocking else 0)
        # This backend's threads are the only ones of their names with this priority.
        assert _thread_nices("e2fastio-pool").count(expect) >= 2
        assert _thread_nices("e2fastio-write").count(expect) >= 2
        # SCHED_IDLE only when opted in (E2FASTIO_BACKGROUND_SCHED=idle), for non-blocking ones
        # (2 encoders, 2 writers); otherwise the caller's policy.
        idle = not blocking and BACKGROUND_SCHED_IDLE
        policy = os.SCHED_IDLE if idle else os.sched_getscheduler(0)
        assert stats["sched_idle_threads"] == (4 if idle else 0)
        # Deferral while the caller computes: non-blocking backends only (a blocking caller waits anyway).
        assert stats["defer_busy_seconds"] == pytest.approx(BACKGROUND_DEFER_SECONDS if not blocking else 0.0)
        assert _thread_policies("e2fastio-pool").count(policy) >= 2
        assert _thread_policies("e2fastio-write").count(policy) >= 2
        assert os.sched_getscheduler(0) != os.SCHED_IDLE  # the caller's own policy is untouched
        assert os.getpriority(os.PRIO_PROCESS, 0) == caller  # the caller's own priority is untouched
        io.close()
        assert native_threads(settle_to=before_pool) == before_pool
        assert native_threads("e2fastio-write", settle_to=before_write) == before_write


def test_a_caller_that_computes_between_writes_gets_every_chunk_stored_exactly(tmp_path):
    # The encoders leave queued chunks while the writing thread computes (up to
    # BACKGROUND_DEFER_SECONDS per busy stretch): nothing may be lost or wait
    # for the caller to go idle. Here it computes between every write and then
    # waits, busy, for the chunks to be stored (an event: the engine's count),
    # before close() checks the bytes through zarr-python.
    c = _coords(members=2, steps=6, nlat=32, nlon=64)
    io = ZarrBackend(str(tmp_path / "busy.zarr"), chunks={"time": 1, "lead_time": 1}, zarr_codecs=BLOSC,
                     blocking=False, threads=2)
    io.add_array(c, "v")
    rng = np.random.default_rng(3)
    steps = [rng.standard_normal((2, 1, 1, 32, 64)).astype("float32") for _ in range(6)]
    acc = 0
    for k, x in enumerate(steps):
        io.write(x, _step(c, k), "v")
        for i in range(20_000):  # the model's CPU work, on this thread
            acc = (acc * 31 + i) & 0xFFFFFFFF
    engine = io.pipeline.engine.get()
    while engine.finished_chunks < 6:  # busy until stored: deferral ends by its bound
        acc = (acc * 31 + 1) & 0xFFFFFFFF
    assert engine.pending_chunks == 0
    io.close()
    back = zarr.open_array(str(tmp_path / "busy.zarr" / "v"), mode="r")[:]
    np.testing.assert_array_equal(back, np.concatenate(steps, axis=2))


def test_a_bad_deferral_setting_names_the_variable(tmp_path):
    import subprocess
    import sys

    for bad in ("soon", "-1"):
        r = subprocess.run([sys.executable, "-c", "import e2fastio"], capture_output=True, text=True,
                           env={**os.environ, "E2FASTIO_BACKGROUND_DEFER": bad})
        assert r.returncode != 0
        assert "E2FASTIO_BACKGROUND_DEFER" in r.stderr and repr(bad) in r.stderr
    show = "from e2fastio._write.engine import BACKGROUND_DEFER_SECONDS as s; print(s)"
    r = subprocess.run([sys.executable, "-c", show], capture_output=True, text=True,
                       env={**os.environ, "E2FASTIO_BACKGROUND_DEFER": "0"})
    assert r.returncode == 0 and r.stdout.strip() == "0.0"


def test_a_writer_that_falls_behind_holds_the_caller_back_within_max_buffer_bytes(tmp_path):
    # 64 steps of 2 MiB through a 24 MiB bound: the ring and the encode buffers
    # (encoded chunks waiting for a writer included) never exceed it.
    c = _coords(members=1, steps=64, nlat=512, nlon=1024)
    x = np.random.default_rng(1).normal(size=(1, 1, 1, 512, 1024)).astype("float32")
    bound = 24 << 20
    with ZarrBackend(str(tmp_path / "s.zarr"), chunks={"time": 1, "lead_time": 1}, zarr_codecs=BLOSC,
                     blocking=False, max_buffer_bytes=bound, fsync=True) as io:
        io.add_array(c, "v")
        for k in range(64):
            io.write(x + k, _step(c, k), "v")
        io.flush()
        s = io.pipeline.engine.stats()
        assert s["buffers"]["peak_bytes"] <= s["buffers"]["capacity"]
        assert s["ring"]["peak_used_bytes"] <= s["ring"]["capacity"]
        assert s["buffers"]["capacity"] + s["ring"]["capacity"] <= bound
        assert s["buffers"]["leased_bytes"] == 0 and s["pending_chunks"] == 0
    got = zarr.open_array(str(tmp_path / "s.zarr" / "v"))
    for k in (0, 31, 63):
        np.testing.assert_array_equal(got[:, :, k : k + 1], x + k)
