"""IceChunkBackend: chunks encoded by the native core, stored through an Icechunk session, committed as snapshots.

Everything is read back through Icechunk's own sessions with zarr-python and
xarray. Needs icechunk (Python >= 3.12) and no torch: scripts/test.sh runs this
module in its Python 3.12 environment.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest
import zarr

icechunk = pytest.importorskip(
    "icechunk", reason="icechunk is not installed (it needs Python >= 3.12; scripts/test.sh runs this in .venv312)"
)
xr = pytest.importorskip("xarray")

from e2fastio import BackgroundWriteError, IceChunkBackend  # noqa: E402

BLOSC = zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")
LOGGER = "e2fastio.backends.icechunk"


def _coords(steps: int = 3) -> OrderedDict[str, np.ndarray]:
    return OrderedDict(
        ensemble=np.arange(2),
        time=np.array(["2024-01-01T00"], dtype="datetime64[ns]"),
        lead_time=(np.arange(steps) * np.timedelta64(6, "h")).astype("timedelta64[ns]"),
        lat=np.linspace(90, -90, 9),
        lon=np.linspace(0, 360, 16, endpoint=False),
    )


def _data(c: OrderedDict[str, np.ndarray], seed: int) -> np.ndarray:
    shape = tuple(len(v) for v in c.values())
    return np.random.default_rng(seed).normal(280, 10, shape).astype(np.float32)


def _write_steps(io: IceChunkBackend, c: OrderedDict[str, np.ndarray], truth: dict[str, np.ndarray]) -> None:
    """The forecast loop: one write per lead time, every variable at once."""
    names = list(truth)
    for k in range(len(c["lead_time"])):
        step = OrderedDict(c)
        step["lead_time"] = c["lead_time"][k : k + 1]
        io.write([truth[n][:, :, k : k + 1].copy() for n in names], step, names)


def _committed(repo, branch: str = "main") -> zarr.Group:
    """The branch tip as a new reader sees it."""
    return zarr.open_group(repo.readonly_session(branch).store, mode="r")


def _committed_names(repo, branch: str = "main") -> set[str]:
    """Members of the branch tip's root group (none before the first commit of one)."""
    try:
        return set(_committed(repo, branch))
    except zarr.errors.GroupNotFoundError:
        return set()


@pytest.mark.parametrize("blocking", [False, True], ids=["nonblocking", "blocking"])
@pytest.mark.parametrize("codecs", [None, BLOSC], ids=["raw", "blosc"])
def test_round_trip_through_zarr_and_xarray(blocking, codecs):
    c = _coords()
    truth = {"t2m": _data(c, 1), "u10m": _data(c, 2)}
    io = IceChunkBackend(chunks={"ensemble": 1, "lead_time": 1, "lat": 5}, zarr_codecs=codecs, blocking=blocking)
    io.add_array(c, list(truth))
    _write_steps(io, c, truth)
    snapshot = io.commit("forecast")
    # 2 arrays x 2 members x 3 steps x 2 lat chunks, each encoded by the core (no zarr-python fallback).
    assert io.stats()["chunks_written"] == 24
    io.close()

    root = _committed(io.repo)
    for name, want in truth.items():
        np.testing.assert_array_equal(root[name][...], want)
        assert root[name].chunks == (1, 1, 1, 5, 16)
        assert ("blosc" in str(root[name].compressors).lower()) == (codecs is not None)
    ds = xr.open_zarr(io.repo.readonly_session(snapshot_id=snapshot).store, consolidated=False).load()
    for name, want in truth.items():
        np.testing.assert_array_equal(ds[name].values, want)
        assert ds[name].dims == tuple(c)
    for dim, values in c.items():
        np.testing.assert_array_equal(ds[dim].values, values)


def test_commit_returns_snapshot_and_keeps_writing():
    c = _coords()
    first, second = _data(c, 3), _data(c, 4)
    io = IceChunkBackend()
    io.add_array(c, "t2m")
    _write_steps(io, c, {"t2m": first})
    snap1 = io.commit("first")
    assert isinstance(snap1, str) and snap1 == io.repo.lookup_branch("main")
    np.testing.assert_array_equal(_committed(io.repo)["t2m"][...], first)

    # The backend continues on a new session of the branch.
    _write_steps(io, c, {"t2m": second})
    io.flush()
    assert io.session.has_uncommitted_changes
    snap2 = io.commit("second", metadata={"run": 2})
    assert snap2 != snap1 and io.repo.lookup_branch("main") == snap2
    np.testing.assert_array_equal(_committed(io.repo)["t2m"][...], second)
    # The first snapshot still holds the first forecast.
    old = zarr.open_group(io.repo.readonly_session(snapshot_id=snap1).store, mode="r")
    np.testing.assert_array_equal(old["t2m"][...], first)
    log = list(io.repo.ancestry(branch="main"))
    assert [s.message for s in log[:2]] == ["second", "first"] and log[0].metadata == {"run": 2}
    np.testing.assert_array_equal(io["t2m"][...], second)  # what this backend holds
    io.close()


def test_flush_stores_into_the_session_but_does_not_commit():
    c = _coords()
    truth = {"t2m": _data(c, 5)}
    io = IceChunkBackend()  # blocking=False by default, as in Earth2Studio
    assert io.blocking is False
    io.add_array(c, "t2m")
    tip = io.repo.lookup_branch("main")
    _write_steps(io, c, truth)
    io.flush()
    assert io.stats()["pending_chunks"] == 0
    # In the session: readers of the session store see every write ...
    np.testing.assert_array_equal(zarr.open_group(io.session.store, mode="r")["t2m"][...], truth["t2m"])
    assert "t2m" in str(io.session.status())
    # ... but the branch has not moved.
    assert io.repo.lookup_branch("main") == tip
    assert "t2m" not in _committed_names(io.repo)
    io.commit("now")
    np.testing.assert_array_equal(_committed(io.repo)["t2m"][...], truth["t2m"])
    io.close()


def test_commit_waits_for_pending_writes():
    """Non-blocking writes still queued when commit is called are in the snapshot."""
    c = _coords(steps=6)
    truth = {"t2m": _data(c, 6)}
    io = IceChunkBackend(chunks={"lead_time": 1, "lat": 1})  # many small chunks: some still pending at commit
    io.add_array(c, "t2m")
    _write_steps(io, c, truth)
    io.commit("all of it")
    np.testing.assert_array_equal(_committed(io.repo)["t2m"][...], truth["t2m"])
    io.close()


def test_failed_chunk_stops_the_commit():
    c = _coords()
    io = IceChunkBackend()
    io.add_array(c, "t2m")
    _write_steps(io, c, {"t2m": _data(c, 7)})
    snap = io.commit("first")
    again = _data(c, 8)
    step = OrderedDict(c)
    step["lead_time"] = c["lead_time"][:1]
    io.write(again[:, :, :1], step, "t2m")
    io.flush()
    # Another hand removes the array from the session: the next chunks cannot be stored.
    del zarr.open_group(io.session.store)["t2m"]
    step["lead_time"] = c["lead_time"][1:]
    # The failure surfaces at the next call: the write itself if chunks already failed, else commit.
    with pytest.raises(BackgroundWriteError, match="node not found"):
        io.write(again[:, :, 1:], step, "t2m")
        io.commit("second")
    assert io.repo.lookup_branch("main") == snap  # nothing committed
    try:
        io.close()
    except BackgroundWriteError:
        pass  # chunks that failed after the first report (when the write reported it) are reported here


def test_uncommitted_writes_are_lost_and_warned_about(tmp_path, caplog):
    c = _coords()
    truth = {"t2m": _data(c, 9)}
    path = str(tmp_path / "repo")
    io = IceChunkBackend(path)
    io.add_array(c, "t2m")
    _write_steps(io, c, truth)
    io.close()  # stores the pending chunks into the session; does not commit
    # This backend sees them; the repository does not.
    np.testing.assert_array_equal(io["t2m"][...], truth["t2m"])
    assert "t2m" not in _committed_names(io.repo)
    reopened = IceChunkBackend(path)
    assert "t2m" not in reopened and len(reopened) == 0
    reopened.close()

    with caplog.at_level(logging.WARNING, logger=LOGGER):
        io.__del__()
    assert any("uncommitted writes" in r.getMessage() and "'main'" in r.getMessage() for r in caplog.records)

    # commit after close keeps what close stored.
    caplog.clear()
    io.commit("late but complete")
    np.testing.assert_array_equal(_committed(io.repo)["t2m"][...], truth["t2m"])
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        io.__del__()
        IceChunkBackend().__del__()  # a fresh, unwritten repository loses nothing
    assert not caplog.records


def test_uncommitted_at_exit_warns_in_a_real_process(tmp_path):
    """Earth2Studio's workflows never close a backend: at exit pending chunks are stored, and the
    missing commit is reported (the writes are not in the repository)."""
    script = (
        "import logging, numpy as np, e2fastio\n"
        "logging.basicConfig(level=logging.WARNING)\n"
        f"io = e2fastio.IceChunkBackend({str(tmp_path / 'repo')!r})\n"
        "c = {'a': np.arange(4), 'b': np.arange(3)}\n"
        "io.add_array(c, 'v'); io.write(np.ones((4, 3), 'float32'), c, 'v')\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "at interpreter exit with uncommitted writes" in r.stderr, r.stderr
    assert "pending chunk(s) at exit" not in r.stderr  # ZarrBackend's drain message does not apply here
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(tmp_path / "repo")))
    assert "v" not in _committed_names(repo)


def test_local_storage_branch_and_reopen(tmp_path):
    c = _coords()
    truth = {"t2m": _data(c, 10)}
    path = tmp_path / "repo"
    io = IceChunkBackend(path, branch="experiment", chunks={"lead_time": 1, "lat": 3}, zarr_codecs=BLOSC)
    assert io.branch == "experiment" and "experiment" in io.repo.list_branches()
    io.add_array(c, "t2m")
    _write_steps(io, c, truth)
    io.commit("experiment run")
    io.close()

    # main is untouched; the branch holds the data.
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(str(path)))
    assert "t2m" not in _committed_names(repo, "main")
    np.testing.assert_array_equal(_committed(repo, "experiment")["t2m"][...], truth["t2m"])

    # A new backend on the branch rebuilds coordinates and chunks, and writes on.
    io2 = IceChunkBackend(str(path), branch="experiment", blocking=True)
    assert "t2m" in io2 and list(io2.coords) == list(c)
    assert io2.chunks["lat"] == 3 and io2.chunks["lead_time"] == 1
    np.testing.assert_array_equal(io2["t2m"][...], truth["t2m"])
    step = OrderedDict(c)
    step["lead_time"] = c["lead_time"][1:2]
    update = np.full((2, 1, 1, 9, 16), -1.0, np.float32)
    io2.write(update, step, "t2m")
    io2.commit("patch lead time 1")
    io2.close()
    want = truth["t2m"].copy()
    want[:, :, 1:2] = update
    np.testing.assert_array_equal(_committed(repo, "experiment")["t2m"][...], want)


def test_empty_commit_and_conflict(tmp_path):
    c = _coords(steps=1)
    io = IceChunkBackend(tmp_path / "repo")
    io.add_array(c, "t2m")
    io.write(_data(c, 11), c, "t2m")
    io.commit("init")
    with pytest.raises(icechunk.IcechunkError):
        io.commit("nothing changed")
    assert isinstance(io.commit("nothing changed", allow_empty=True), str)

    other = IceChunkBackend(tmp_path / "repo")
    io.write(_data(c, 12), c, "t2m")
    other.write(_data(c, 13), c, "t2m")
    io.commit("first writer")
    with pytest.raises(icechunk.ConflictError):
        other.commit("second writer")
    np.testing.assert_array_equal(_committed(io.repo)["t2m"][...], _data(c, 12))
    io.close()
    other.close()


def test_s3_storage(s3_bucket):
    import s3_support as S

    endpoint, bucket = s3_bucket

    def storage():
        return icechunk.s3_storage(
            bucket=bucket, prefix="forecast", endpoint_url=endpoint, allow_http=True, force_path_style=True,
            region=S.REGION, access_key_id=S.ACCESS_KEY, secret_access_key=S.SECRET_KEY,
        )

    c = _coords()
    truth = {"t2m": _data(c, 14), "u10m": _data(c, 15)}
    io = IceChunkBackend(storage(), chunks={"lead_time": 1}, zarr_codecs=BLOSC, pool_size=4)
    io.add_array(c, list(truth))
    _write_steps(io, c, truth)
    snapshot = io.commit("s3 forecast")
    assert io.stats()["chunks_written"] == 2 * 3  # one chunk per array and lead time
    io.close()

    # A new client of the bucket sees the snapshot; the objects are Icechunk's layout.
    repo = icechunk.Repository.open(storage())
    assert repo.lookup_branch("main") == snapshot
    ds = xr.open_zarr(repo.readonly_session("main").store, consolidated=False).load()
    for name, want in truth.items():
        np.testing.assert_array_equal(ds[name].values, want)
    keys = S.list_keys(endpoint, bucket, "forecast/")
    assert {k.split("/")[1] for k in keys} >= {"chunks", "manifests", "snapshots"}, sorted(keys)


def test_bad_arguments():
    with pytest.raises(TypeError, match="storage"):
        IceChunkBackend(storage=42)
    with pytest.raises(ValueError, match="icechunk.s3_storage"):
        IceChunkBackend("s3://bucket/repo")
    with pytest.raises(ValueError, match="pool_size"):
        IceChunkBackend(pool_size=0)
    with pytest.raises(ValueError, match="branch"):
        IceChunkBackend(branch="")
    io = IceChunkBackend()
    with pytest.raises(TypeError, match="message"):
        io.commit(None)
    io.close()



def test_async_zarr_backend_on_a_session_store():
    """A session's store is a zarr Store: AsyncZarrBackend writes into it, and the caller commits after close."""
    from e2fastio import AsyncZarrBackend

    c = _coords()
    truth = {"t2m": _data(c, 16)}
    repo = icechunk.Repository.open_or_create(icechunk.in_memory_storage())
    session = repo.writable_session("main")
    io = AsyncZarrBackend(None, parallel_coords=OrderedDict(time=c["time"], lead_time=c["lead_time"]),
                          store=session.store, blocking=False)
    _write_steps(io, c, truth)
    io.close()  # every chunk is in the session before the commit
    assert io.stats()["chunks_written"] == 3
    session.commit("async forecast")
    np.testing.assert_array_equal(_committed(repo)["t2m"][...], truth["t2m"])


@pytest.mark.parametrize("blocking", [False, True], ids=["nonblocking", "blocking"])
def test_partial_chunks_merge_with_the_session(blocking):
    """Steps smaller than a chunk: the core merges each with the chunk as the session holds it."""
    c = _coords(steps=3)
    truth = {"t2m": _data(c, 17)}
    io = IceChunkBackend(chunks={"lead_time": 3}, zarr_codecs=BLOSC, blocking=blocking)
    io.add_array(c, "t2m")
    for k in range(3):
        step = OrderedDict(c)
        step["lead_time"] = c["lead_time"][k : k + 1]
        io.write(truth["t2m"][:, :, k : k + 1].copy(), step, "t2m")
        io.flush()  # the next step's merge reads the chunk back from the session store
    io.commit("merged")
    assert io.stats()["chunks_merged"] > 0
    np.testing.assert_array_equal(_committed(io.repo)["t2m"][...], truth["t2m"])
    io.close()
