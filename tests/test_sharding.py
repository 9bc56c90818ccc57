"""Zarr v3 sharding on the native pipeline: AsyncZarrBackend(shard_coords=...) and ZarrBackend.add_array(shards=...).

Everything written is read back by zarr-python, xarray and tensorstore; the
shard index checksum is compared with zarr-python's and numcodecs' crc32c.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from pathlib import Path

import numcodecs
import numpy as np
import pytest
import xarray as xr
import zarr
import zarr.storage

from e2fastio import AsyncZarrBackend, ZarrBackend, _core

BLOSC = zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")


def _coords(members: int = 3, steps: int = 5) -> OrderedDict[str, np.ndarray]:
    return OrderedDict(
        ensemble=np.arange(members),
        lead_time=(np.arange(steps) * np.timedelta64(6, "h")).astype("timedelta64[ns]"),
        lat=np.linspace(90, -90, 19),
        lon=np.linspace(0, 360, 36, endpoint=False),
    )


def _truth(c: OrderedDict[str, np.ndarray], seed: int) -> np.ndarray:
    shape = tuple(len(v) for v in c.values())
    return np.random.default_rng(seed).normal(280, 10, shape).astype(np.float32)


def _step(c: OrderedDict[str, np.ndarray], k: int) -> OrderedDict[str, np.ndarray]:
    s = OrderedDict(c)
    s["lead_time"] = c["lead_time"][k : k + 1]
    return s


def _write_steps(io, c, truth: dict[str, np.ndarray], steps=None, wrap=lambda a: a) -> None:
    """The forecast loop: one write per lead time with every variable (each array passed through `wrap`)."""
    names = list(truth)
    for k in steps if steps is not None else range(len(c["lead_time"])):
        io.write([wrap(truth[n][:, k : k + 1].copy()) for n in names], _step(c, k), names)


def _tensorstore_read(path: Path, name: str) -> np.ndarray:
    import tensorstore as ts

    spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(path / name)}}
    return np.asarray(ts.open(spec, open=True, read=True).result().read().result())


def _read_every_way(path: Path, name: str) -> list[np.ndarray]:
    """`name` as zarr-python, xarray and tensorstore read it."""
    return [
        zarr.open_array(str(path / name), mode="r")[...],
        xr.open_zarr(str(path), consolidated=False)[name].values,
        _tensorstore_read(path, name),
    ]


def _objects(path: Path, name: str) -> list[str]:
    root = path / name / "c"
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


# ------------------------------------------------------------------ crc32c


@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 100, 4096, 100_003])
def test_crc32c_matches_zarr_and_numcodecs_on_both_paths(n):
    data = np.random.default_rng(n).integers(0, 256, n, dtype=np.uint8).tobytes()
    want = int.from_bytes(numcodecs.CRC32C().encode(data)[-4:], "little")
    # zarr-python's Crc32cCodec appends the same 4 little-endian bytes.
    codec = zarr.codecs.Crc32cCodec()
    from zarr.core.array_spec import ArrayConfig, ArraySpec
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync

    spec = ArraySpec(shape=(n,), dtype=zarr.core.dtype.UInt8(), fill_value=0, config=ArrayConfig.from_dict({}),
                     prototype=default_buffer_prototype())
    buf = default_buffer_prototype().buffer.from_bytes(data)
    encoded = sync(codec._encode_single(buf, spec))
    assert int.from_bytes(encoded.to_bytes()[-4:], "little") == want
    assert _core.crc32c(data) == want
    assert _core._crc32c_portable(data) == want
    hw = _core._crc32c_hardware(data)
    assert hw is None or hw == want
    if os.uname().machine == "x86_64":
        assert _core.crc32c_implementation() == "sse4.2" and hw is not None


# ------------------------------------------------------------------ AsyncZarrBackend shard_coords


@pytest.mark.parametrize("blocking", [True, False])
@pytest.mark.parametrize(("shard_coords", "objects"), [
    ({"lead_time": 5}, 3),                    # one shard per member: divides the coordinate
    ({"lead_time": 2}, 3 * 3),                # 5 steps in shards of 2: the last shard is cut by the array
    ({"lead_time": 3, "ensemble": 2}, 2 * 2),  # neither divides
])
def test_async_shards_round_trip_through_every_reader(tmp_path, blocking, shard_coords, objects):
    c = _coords()
    truth = {"t2m": _truth(c, 1), "u10m": _truth(c, 2)}
    io = AsyncZarrBackend(str(tmp_path / "s.zarr"), parallel_coords=OrderedDict(ensemble=c["ensemble"],
                          lead_time=c["lead_time"]), blocking=blocking, zarr_codecs=BLOSC,
                          shard_coords=shard_coords)
    _write_steps(io, c, truth)
    io.close()
    st = io.stats()
    assert st["write_paths"]["t2m"].startswith("native, sharded")
    assert st["shards"]["shards_merged"] == 0 and st["shards"]["held_bytes"] == 0
    for name, want in truth.items():
        z = zarr.open_array(str(tmp_path / "s.zarr" / name), mode="r")
        assert z.chunks == (1, 1, 19, 36) and z.shards is not None
        assert len(_objects(tmp_path / "s.zarr", name)) == objects
        for got in _read_every_way(tmp_path / "s.zarr", name):
            np.testing.assert_array_equal(got, want)


def test_incomplete_shards_are_written_at_close_and_read_as_unwritten_chunks(tmp_path):
    c = _coords(members=2, steps=4)
    truth = {"t2m": _truth(c, 3)}
    pc = OrderedDict(ensemble=c["ensemble"], lead_time=c["lead_time"])
    io = AsyncZarrBackend(str(tmp_path / "s.zarr"), parallel_coords=pc, blocking=False, zarr_codecs=BLOSC,
                          shard_coords={"lead_time": 4})
    _write_steps(io, c, truth, steps=[0, 2])
    assert _objects(tmp_path / "s.zarr", "t2m") == []  # nothing complete yet: all held
    io.close()
    assert _objects(tmp_path / "s.zarr", "t2m") == ["0/0/0/0", "1/0/0/0"]
    # A plain array with the same steps written shows what unwritten chunks read back as.
    plain = zarr.create_array(zarr.storage.MemoryStore(), shape=truth["t2m"].shape, chunks=(1, 1, 19, 36),
                              dtype="float32", compressors=BLOSC)
    plain[:, [0, 2]] = truth["t2m"][:, [0, 2]]
    for got in _read_every_way(tmp_path / "s.zarr", "t2m"):
        np.testing.assert_array_equal(got, plain[...])


def test_restart_into_incomplete_shards_merges_with_one_warning(tmp_path, caplog):
    c = _coords(members=2, steps=4)
    truth = {"t2m": _truth(c, 4)}
    pc = OrderedDict(ensemble=c["ensemble"], lead_time=c["lead_time"])
    kw = dict(parallel_coords=pc, zarr_codecs=BLOSC, shard_coords={"lead_time": 4})
    first = AsyncZarrBackend(str(tmp_path / "s.zarr"), blocking=False, **kw)
    _write_steps(first, c, truth, steps=[0, 1])
    first.close()
    with caplog.at_level(logging.WARNING, logger="e2fastio"):
        second = AsyncZarrBackend(str(tmp_path / "s.zarr"), blocking=True, **kw)
        _write_steps(second, c, truth, steps=[2, 3])
        second.close()
    merges = [r for r in caplog.records if "already present in the store" in r.getMessage()]
    assert len(merges) == 1 and "'t2m'" in merges[0].getMessage()
    assert second.stats()["shards"]["shards_merged"] == 2
    for got in _read_every_way(tmp_path / "s.zarr", "t2m"):
        np.testing.assert_array_equal(got, truth["t2m"])


def test_flush_mid_shard_then_more_writes_merge(tmp_path, caplog):
    c = _coords(members=1, steps=4)
    truth = {"t2m": _truth(c, 5)}
    pc = OrderedDict(ensemble=c["ensemble"], lead_time=c["lead_time"])
    io = AsyncZarrBackend(str(tmp_path / "s.zarr"), parallel_coords=pc, blocking=False, zarr_codecs=BLOSC,
                          shard_coords={"lead_time": 4})
    _write_steps(io, c, truth, steps=[0])
    io.flush()
    with caplog.at_level(logging.WARNING, logger="e2fastio"):
        _write_steps(io, c, truth, steps=[1, 2, 3])
        io.close()
    assert any("read-modify-write of the entire shard" in r.getMessage() for r in caplog.records)
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "s.zarr" / "t2m"))[...], truth["t2m"])


def test_shard_coords_are_validated_as_earth2studio_does(tmp_path, caplog):
    c = _coords()
    pc = OrderedDict(lead_time=c["lead_time"])
    with pytest.raises(ValueError, match="Shard size for coordinate 'lead_time' must be positive but got 0"):
        AsyncZarrBackend(str(tmp_path / "a.zarr"), parallel_coords=pc, shard_coords={"lead_time": 0})
    io = AsyncZarrBackend(str(tmp_path / "b.zarr"), parallel_coords=pc, chunked_coords={"lat": 1},
                          shard_coords={"lat": 10})
    with pytest.raises(ValueError, match="is smaller than its length 19. Non-parallel coordinates"):
        io.add_array(c, "t2m")
    io = AsyncZarrBackend(str(tmp_path / "c.zarr"), parallel_coords=pc, chunked_coords={"lead_time": 2},
                          shard_coords={"lead_time": 3})
    with pytest.raises(ValueError, match="must be a multiple of its chunk size 2"):
        io.add_array(c, "t2m")
    io = AsyncZarrBackend(str(tmp_path / "d.zarr"), parallel_coords=pc, shard_coords={"lead_time": 8, "level": 2})
    with caplog.at_level(logging.WARNING, logger="e2fastio"):
        io.add_array(c, "t2m")
    text = caplog.text
    assert "shard_coords keys ['level'] do not appear in array 't2m'" in text
    assert "Shard size 8 for coordinate 'lead_time' of array 't2m' exceeds its length 5" in text
    assert zarr.open_array(str(tmp_path / "d.zarr" / "t2m")).shards == (3, 8, 19, 36)
    io.close()
    # A shard shape equal to the chunk shape is no sharding at all.
    io = AsyncZarrBackend(str(tmp_path / "e.zarr"), parallel_coords=pc, shard_coords={"lead_time": 1})
    io.add_array(c, "t2m")
    assert zarr.open_array(str(tmp_path / "e.zarr" / "t2m")).shards is None
    with pytest.raises(ValueError, match="max_inflight_shards must be at least 1 but got 0"):
        AsyncZarrBackend(str(tmp_path / "f.zarr"), parallel_coords=pc, max_inflight_shards=0)


@pytest.mark.parametrize("max_inflight", [1, 4])
def test_a_tiny_memory_bound_spills_early_and_never_deadlocks(tmp_path, max_inflight):
    c = _coords(members=64, steps=8)  # 64 shards under assembly at once, about 100 KB more per step
    truth = {"t2m": _truth(c, 6)}
    pc = OrderedDict(ensemble=c["ensemble"], lead_time=c["lead_time"])
    io = AsyncZarrBackend(str(tmp_path / "s.zarr"), parallel_coords=pc, blocking=False, zarr_codecs=BLOSC,
                          shard_coords={"lead_time": 4}, max_inflight_shards=max_inflight,
                          max_buffer_bytes=1 << 20, threads=2)
    _write_steps(io, c, truth)
    io.close()
    st = io.stats()["shards"]
    assert st["capacity"] == 256 << 10  # a quarter of max_buffer_bytes
    assert st["shards_spilled"] > 0 and st["shards_merged"] > 0  # shards left early, then completed by merges
    # Held chunks stay near the bound: at most the shard objects being assembled for writing come on top.
    assert st["peak_held_bytes"] <= st["capacity"] + max_inflight * 64 << 10
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "s.zarr" / "t2m"))[...], truth["t2m"])
    assert len(_objects(tmp_path / "s.zarr", "t2m")) == 64 * 2


def test_same_output_as_earth2studio(tmp_path):
    e2s_io = pytest.importorskip("earth2studio.io",
                                 reason="earth2studio is not installed (pip install e2fastio[compare])")
    import torch  # Earth2Studio needs it, and takes tensors

    E2SAsyncZarrBackend = e2s_io.AsyncZarrBackend
    c = _coords(members=3, steps=5)
    truth = {"t2m": _truth(c, 7), "u10m": _truth(c, 8)}
    pc = OrderedDict(ensemble=c["ensemble"], lead_time=c["lead_time"])
    for cls, where in ((E2SAsyncZarrBackend, "e2s.zarr"), (AsyncZarrBackend, "ours.zarr")):
        io = cls(str(tmp_path / where), parallel_coords=pc, blocking=False, zarr_codecs=BLOSC,
                 shard_coords={"lead_time": 2})
        # step 3 never written: its shards are flushed at close
        _write_steps(io, c, truth, steps=[0, 1, 2, 4], wrap=torch.from_numpy)
        io.close()
    for name in truth:
        theirs = zarr.open_array(str(tmp_path / "e2s.zarr" / name), mode="r")
        ours = zarr.open_array(str(tmp_path / "ours.zarr" / name), mode="r")
        assert (ours.shape, ours.chunks, ours.shards, ours.dtype) == (theirs.shape, theirs.chunks, theirs.shards,
                                                                      theirs.dtype)
        assert ours.metadata.codecs == theirs.metadata.codecs
        np.testing.assert_array_equal(ours[...], theirs[...])
        assert _objects(tmp_path / "ours.zarr", name) == _objects(tmp_path / "e2s.zarr", name)


# ------------------------------------------------------------------ ZarrBackend shards=


def test_zarr_backend_shards_are_stored_when_each_write_returns(tmp_path):
    c = _coords(members=2, steps=5)
    truth = _truth(c, 9)
    io = ZarrBackend(str(tmp_path / "z.zarr"), chunks={"ensemble": 1, "lead_time": 1}, zarr_codecs=BLOSC)
    io.add_array(c, "t2m", shards=(1, 4, 19, 36))
    assert io.stats()["write_paths"]["t2m"].startswith("native, sharded")
    for k in range(5):
        io.write(truth[:, k : k + 1].copy(), _step(c, k), "t2m")
        z = zarr.open_array(str(tmp_path / "z.zarr" / "t2m"), mode="r")
        np.testing.assert_array_equal(z[:, : k + 1], truth[:, : k + 1])
    assert io.stats()["shards"]["shards_merged"] > 0  # later writes into a stored shard merge with it
    io.close()
    for got in _read_every_way(tmp_path / "z.zarr", "t2m"):
        np.testing.assert_array_equal(got, truth)


def test_index_at_the_start_and_other_inner_codecs(tmp_path):
    c = _coords(members=2, steps=4)
    truth = _truth(c, 10)
    io = ZarrBackend(str(tmp_path / "z.zarr"), chunks={"ensemble": 1, "lead_time": 1})
    io.add_array(c, ["start", "gzip"])  # the coordinates; the arrays are replaced below
    for name, shards, compressors in (("start", {"shape": (1, 2, 19, 36), "index_location": "start"}, BLOSC),
                                      ("gzip", (1, 2, 19, 36), zarr.codecs.GzipCodec())):
        zarr.create_array(str(tmp_path / "z.zarr"), name=name, shape=truth.shape, chunks=(1, 1, 19, 36),
                          shards=shards, dtype="float32", compressors=compressors, overwrite=True,
                          dimension_names=list(c))
    codec = zarr.open_array(str(tmp_path / "z.zarr" / "start")).metadata.codecs[0]
    assert str(getattr(codec.index_location, "value", codec.index_location)) == "start"
    io = ZarrBackend(str(tmp_path / "z.zarr"))
    for k in range(4):
        io.write([truth[:, k : k + 1].copy()] * 2, _step(c, k), ["start", "gzip"])
    paths = io.stats()["write_paths"]
    assert paths["start"].startswith("native, sharded") and paths["gzip"].startswith("zarr-python (")
    io.close()
    for name in ("start", "gzip"):
        for got in _read_every_way(tmp_path / "z.zarr", name):
            np.testing.assert_array_equal(got, truth)


# ------------------------------------------------------------------ object store


def test_async_shards_to_s3_one_object_per_shard(s3_bucket):
    import s3_support as S

    endpoint, bucket = s3_bucket
    c = _coords(members=3, steps=5)
    truth = {"t2m": _truth(c, 11)}
    pc = OrderedDict(ensemble=c["ensemble"], lead_time=c["lead_time"])
    io = AsyncZarrBackend(None, parallel_coords=pc, blocking=False, zarr_codecs=BLOSC, shard_coords={"lead_time": 2},
                          store=f"s3://{bucket}/s.zarr", store_kwargs=S.store_kwargs(endpoint))
    _write_steps(io, c, truth)
    io.close()
    keys = [k for k in S.list_keys(endpoint, bucket, "s.zarr/t2m/c/")]
    assert len(keys) == 3 * 3
    assert io.stats()["uploads"]["objects_failed"] == 0
    obs = zarr.storage.ObjectStore(S.obstore_store(endpoint, bucket, "s.zarr"), read_only=True)
    np.testing.assert_array_equal(zarr.open_array(obs, path="t2m", mode="r")[...], truth["t2m"])
    ds = xr.open_zarr(obs, consolidated=False)
    np.testing.assert_array_equal(ds["t2m"].values, truth["t2m"])


def test_a_forked_child_leaves_the_parents_shards_alone(tmp_path):
    # Shards under assembly belong to the process that gathered them: a forked
    # child neither writes them out at close nor adds to them (clear error),
    # and the parent's store is complete once the parent closes.
    c = _coords(members=2, steps=4)
    truth = _truth(c, 3)
    pc = OrderedDict(ensemble=c["ensemble"], lead_time=c["lead_time"])
    io = AsyncZarrBackend(str(tmp_path / "a.zarr"), parallel_coords=pc, shard_coords={"lead_time": 4},
                          zarr_codecs=BLOSC, blocking=True)
    _write_steps(io, c, {"t2m": truth}, steps=range(2))  # two of four steps: the shards are incomplete
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child
        code = 1
        try:
            try:
                _write_steps(io, c, {"t2m": truth}, steps=[2])
            except RuntimeError as err:
                code = 0 if "forked child" in str(err) else 3
            io.close()  # the parent's incomplete shards are not written from here
            os.write(w, b"ok")
        except BaseException:  # noqa: BLE001 - report through the exit code
            code = 4
        os._exit(code)
    os.close(w)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0 and os.read(r, 2) == b"ok"
    os.close(r)
    assert _objects(tmp_path / "a.zarr", "t2m") == []  # nothing written by the child
    _write_steps(io, c, {"t2m": truth}, steps=range(2, 4))
    io.close()
    for got in _read_every_way(tmp_path / "a.zarr", "t2m"):
        np.testing.assert_array_equal(got, truth)
