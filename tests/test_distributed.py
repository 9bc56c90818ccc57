"""Many ranks: real torch.distributed (gloo) process groups on this machine.

Coordinated writes into one store (opted in with ``process_group="world"`` or a
group), and the default: one store per rank with no coordination at all.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

import _dist_workers as W
import netCDF4
import numpy as np
import pytest
import xarray as xr
import zarr

from e2fastio import AsyncZarrBackend, NetCDF4Backend, ZarrBackend
from e2fastio._write.ranks import ChunkOwnershipError, check_whole_chunks


def spawn(world: int, scenario: str, tmp: Path, args: dict[str, Any], timeout: float = 120) -> list[dict[str, Any]]:
    """Run `scenario` on `world` spawned ranks; return every rank's record (fails on a hang)."""
    out = tmp / f"out-{scenario}-{world}-{time.monotonic_ns()}"
    out.mkdir()
    init = tmp / f"init-{time.monotonic_ns()}"
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=W.main, args=(r, world, str(init), scenario, str(out), args)) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.1, deadline - time.monotonic()))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert not hung, f"ranks {hung} hung for {timeout} s in {scenario}"
    records = []
    for r in range(world):
        f = out / f"rank{r}.json"
        records.append(json.loads(f.read_text()) if f.exists() else {"exitcode": procs[r].exitcode})
    return records


def single_process(path: str, **kw: Any) -> None:
    W.write_members(path, np.arange(W.MEMBERS), blocking=True, **kw)


def chunk_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("world, blocking", [(2, False), (4, True)])
def test_ranks_write_one_local_store_identical_to_one_process(tmp_path, world, blocking):
    shared, ref = tmp_path / "shared.zarr", tmp_path / "ref.zarr"
    records = spawn(world, "ensemble", tmp_path, {"location": str(shared), "blocking": blocking,
                                                    "consolidate": True})
    assert all(r.get("ok") for r in records), records
    single_process(str(ref), consolidate_metadata=True)
    a, b = chunk_bytes(shared), chunk_bytes(ref)
    assert sorted(a) == sorted(b)
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]]  # bit for bit, metadata included
    xr.testing.assert_identical(xr.open_zarr(shared, consolidated=True), xr.open_zarr(ref, consolidated=True))


def test_errors_reach_every_rank_and_nothing_is_lost(tmp_path):
    records = spawn(2, "errors", tmp_path, {"location": str(tmp_path / "e.zarr")})
    for rank, r in enumerate(records):
        assert r.get("ok"), r
        # Mismatched coordinates: every rank raises, naming rank 1 and the coordinate.
        m = r["mismatch"]
        assert not m["ok"] and m["type"] == "CoordinateError"
        assert "rank 1" in m["message"] and "'lat'" in m["message"]
        # Two ranks in one chunk of 8 members: refused before any data moved, with the fix.
        p = r["partial"]
        assert not p["ok"] and p["type"] == "ChunkOwnershipError"
        assert "chunks={'ensemble': 4}" in p["message"]
        assert r["stored_after_refusal"] == 0
        # A rank failing inside `with`: the other rank's close names it.
        f = r["failure"]
        assert not f["ok"]
        if rank == 0:
            assert f["type"] == "DistributedError" and "rank 1" in f["message"] and "blew up" in f["message"]
        else:
            assert "blew up" in f["message"]


def test_a_crashed_rank_gives_the_others_a_clear_error_not_a_hang(tmp_path):
    records = spawn(2, "crash", tmp_path, {"location": str(tmp_path / "c.zarr"), "timeout": 5}, timeout=90)
    assert records[1] == {"exitcode": 3}
    r0 = records[0]
    assert not r0["ok"] and r0["type"] == "DistributedError", r0
    assert "1" in r0["message"] and r0["seconds"] < 30
    # What rank 0 wrote before is intact.
    got = zarr.open_group(str(tmp_path / "c.zarr"), mode="r")["t2m"][:]
    members = np.array_split(np.arange(W.MEMBERS), 2)[0]
    np.testing.assert_array_equal(got[members, :, 0], W.field(members, 0, 0)[:, :, 0])


def test_whole_chunk_rule_and_its_suggestion():
    idx = [np.arange(2, 4), np.arange(1), np.arange(5)]
    with pytest.raises(ChunkOwnershipError, match=r"chunks=\{'ensemble': 2\}") as err:
        check_whole_chunks(1, "t2m", ["ensemble", "lead_time", "lat"], [8, 1, 5], [4, 1, 5], idx)
    assert "rank 1" in str(err.value) and "Nothing was written" in str(err.value)
    check_whole_chunks(1, "t2m", ["ensemble", "lead_time", "lat"], [8, 1, 5], [2, 1, 5], idx)  # whole chunks
    check_whole_chunks(0, "t2m", ["ensemble"], [7], [4], [np.arange(4, 7)])  # the short last chunk


def test_single_process_ignores_distributed_when_not_initialised(tmp_path):
    import torch.distributed as dist

    assert not dist.is_initialized()
    with ZarrBackend(str(tmp_path / "s.zarr")) as io:
        assert io.pipeline.coord is None
    with ZarrBackend(str(tmp_path / "f.zarr"), process_group=False) as io:  # the earlier opt-out still works
        assert io.pipeline.coord is None
    with pytest.raises(ValueError, match=r"process_group='world' needs torch.distributed to be initialised"):
        ZarrBackend(str(tmp_path / "t.zarr"), process_group="world")


@pytest.mark.parametrize("cls", ["zarr", "async", "netcdf"])
@pytest.mark.parametrize("value, error, text", [
    ("everyone", ValueError, r"process_group='everyone' is not a known group name; pass process_group='world'"),
    ("WORLD", ValueError, r"process_group='WORLD' is not a known group name"),
    (True, TypeError, r"process_group=True is ambiguous; pass process_group='world'"),
    (object(), TypeError, r"process_group must be None, 'world' or a torch.distributed.ProcessGroup, got object"),
    (0, TypeError, r"process_group must be None, 'world' or a torch.distributed.ProcessGroup, got int"),
])
def test_process_group_is_validated_and_named(tmp_path, cls, value, error, text):
    with pytest.raises(error, match=text):
        if cls == "zarr":
            ZarrBackend(str(tmp_path / "v.zarr"), process_group=value)
        elif cls == "async":
            AsyncZarrBackend(str(tmp_path / "v.zarr"), parallel_coords={}, process_group=value)
        else:
            NetCDF4Backend(str(tmp_path / "v.nc"), {"mode": "w"}, process_group=value)
    assert not (tmp_path / "v.nc").exists()


def test_netcdf_rank_template_outside_a_distributed_run(tmp_path):
    c = OrderedDict(lead_time=np.arange(2), lat=np.linspace(0, 1, 3))
    with NetCDF4Backend(str(tmp_path / "r{rank}_of_{world_size}.nc"), {"mode": "w"}) as io:
        io.add_array(c, "t2m")
        assert io.file_name == str(tmp_path / "r0_of_1.nc")
    with NetCDF4Backend(str(tmp_path / "plain.nc"), {"mode": "w"}) as io:
        assert io.file_name == str(tmp_path / "plain.nc")
    with pytest.raises(ValueError, match=r"only \{rank\} and \{world_size\} are replaced"):
        NetCDF4Backend(str(tmp_path / "r{rank}_{date}.nc"), {"mode": "w"})


def test_netcdf_ranks_write_one_file_each_or_get_a_clear_error(tmp_path):
    records = spawn(2, "netcdf", tmp_path, {"directory": str(tmp_path)})
    for r in records:
        assert not r["shared"]["ok"] and "{rank}" in r["shared"]["message"], r
        assert "process_group=None" in r["shared"]["message"], r
        assert r["per_rank"]["ok"], r
        assert r["template_default"]["ok"], r  # no opt-in: the template still gives one file per rank
    assert not (tmp_path / "one.nc").exists()
    want = np.stack([W.field(np.arange(W.MEMBERS), k, 0)[:, 0, 0] for k in range(W.STEPS)], axis=1)
    for pattern in ("part_*_of_2.nc", "tmpl_*_of_2.nc"):
        parts = sorted(tmp_path.glob(pattern))
        assert [p.name for p in parts] == [pattern.replace("*", r) for r in (("00", "01") if "part" in pattern
                                                                             else ("0", "1"))]
        opened = [xr.open_dataset(p, engine="netcdf4") for p in parts]  # open_mfdataset without dask
        try:
            ds = xr.concat(opened, dim="ensemble")
            np.testing.assert_array_equal(ds["t2m"].values[:, 0], want)
        finally:
            for d in opened:
                d.close()


def test_each_rank_writes_its_own_store_without_coordination(tmp_path):
    """Earth2Studio's distributed example: under an initialised group, one store per rank, no opt-in."""
    records = spawn(2, "per_rank_stores", tmp_path, {"directory": str(tmp_path)}, timeout=180)
    for rank, r in enumerate(records):
        assert r.get("world") == 2 and r.get("group_rank") == rank, r  # a live 2-rank default group
        for kind in W.PER_RANK_KINDS:
            assert r[kind]["ok"], (rank, kind, r[kind])
    lead = W.coords()["lead_time"]
    for rank, times in enumerate(np.array_split(W.PER_RANK_TIMES, 2)):
        assert records[rank]["times"] == [str(t) for t in times]
        want = {name: np.stack([np.concatenate([W.per_rank_field(t, k, v) for t in times])[:, 0]
                                for k in range(W.STEPS)], axis=1)
                for v, name in enumerate(W.VARS)}
        for kind in W.PER_RANK_KINDS:
            path = W.per_rank_path(str(tmp_path), kind, rank)
            if kind == "netcdf":
                with netCDF4.Dataset(path) as ds:
                    assert ds["lead_time"].units == "hours"
                    np.testing.assert_array_equal(ds["lead_time"][:].data, np.arange(W.STEPS) * 6)
                    for name in W.VARS:
                        assert ds[name].dimensions == ("time", "lead_time", "lat", "lon")
                        np.testing.assert_array_equal(ds[name][:].data, want[name])
                with xr.open_dataset(path, engine="netcdf4") as ds:  # decodes the time units
                    np.testing.assert_array_equal(ds["time"].values, times)
                continue
            root = zarr.open_group(path, mode="r")
            np.testing.assert_array_equal(root["time"][:], times)
            np.testing.assert_array_equal(root["lead_time"][:], lead)
            for name in W.VARS:
                assert root[name].metadata.dimension_names == ("time", "lead_time", "lat", "lon")
                np.testing.assert_array_equal(root[name][:], want[name])


def test_ranks_write_one_s3_store_identical_to_one_process(tmp_path, s3_bucket):
    import s3_support as S

    endpoint, bucket = s3_bucket
    skw = S.store_kwargs(endpoint)
    records = spawn(2, "ensemble", tmp_path, {"location": f"s3://{bucket}/shared.zarr", "blocking": False,
                                              "store_kwargs": skw})
    assert all(r.get("ok") for r in records), records
    single_process(f"s3://{bucket}/ref.zarr", store_kwargs=skw)
    a = S.list_keys(endpoint, bucket, "shared.zarr/")
    b = S.list_keys(endpoint, bucket, "ref.zarr/")
    assert sorted(k.split("/", 1)[1] for k in a) == sorted(k.split("/", 1)[1] for k in b)
    client = S.boto3_client(endpoint)
    for key in a:
        rest = key.split("/", 1)[1]
        got = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        want = client.get_object(Bucket=bucket, Key=f"ref.zarr/{rest}")["Body"].read()
        assert got == want, key  # bit for bit
    fs = S.s3fs_filesystem(endpoint, asynchronous=True)
    xr.testing.assert_identical(
        xr.open_zarr(zarr.storage.FsspecStore(fs, path=f"{bucket}/shared.zarr", read_only=True), consolidated=False),
        xr.open_zarr(zarr.storage.FsspecStore(fs, path=f"{bucket}/ref.zarr", read_only=True), consolidated=False),
    )


@pytest.mark.parametrize("shard_coords, shared", [({"lead_time": 3}, False), ({"ensemble": 8}, True)])
def test_ranks_own_whole_shards_or_are_told_the_shard_size_that_fixes_it(tmp_path, shard_coords, shared):
    store = tmp_path / "sharded.zarr"
    records = spawn(2, "shards", tmp_path, {"location": str(store), "shard_coords": shard_coords})
    if shared:
        for r in records:  # each rank holds 4 of the 8 members of the one shard along 'ensemble'
            assert r["type"] == "ChunkOwnershipError", r
            assert "both wrote shard" in r["message"] and "merged into the store one rank at a time" in r["message"]
            assert "shard_coords={'ensemble': 4}" in r["message"]
    else:
        assert all(r["ok"] for r in records), records
    # Either way every rank's members are in the store: shared shards were merged one rank at a time.
    root = zarr.open_group(str(store), mode="r")
    c = W.coords()
    for v, name in enumerate(W.VARS):
        want = np.concatenate([W.field(c["ensemble"], k, v) for k in range(W.STEPS)], axis=2)
        np.testing.assert_array_equal(root[name][:], want)
