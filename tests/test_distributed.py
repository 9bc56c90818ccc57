"""Many ranks, one store: real torch.distributed (gloo) process groups on this machine."""

from __future__ import annotations

import json
import multiprocessing as mp
import time
from pathlib import Path
from typing import Any

import _dist_workers as W
import numpy as np
import pytest
import xarray as xr
import zarr

from e2fastio import ZarrBackend
from e2fastio._distributed import ChunkOwnershipError, check_whole_chunks


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
    W.write_members(path, np.arange(W.MEMBERS), blocking=True, process_group=False, **kw)


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
        assert io._coord is None
    with pytest.raises(ValueError, match="process_group"):
        ZarrBackend(str(tmp_path / "t.zarr"), process_group=object())


def test_netcdf_ranks_write_one_file_each_or_get_a_clear_error(tmp_path):
    records = spawn(2, "netcdf", tmp_path, {"directory": str(tmp_path)})
    for r in records:
        assert not r["shared"]["ok"] and "{rank}" in r["shared"]["message"], r
        assert r["per_rank"]["ok"], r
    assert not (tmp_path / "one.nc").exists()
    parts = sorted(tmp_path.glob("part_*_of_2.nc"))
    assert [p.name for p in parts] == ["part_00_of_2.nc", "part_01_of_2.nc"]
    ds = xr.open_mfdataset(parts, combine="nested", concat_dim="ensemble", engine="netcdf4")
    want = np.stack([W.field(np.arange(W.MEMBERS), k, 0)[:, 0, 0] for k in range(W.STEPS)], axis=1)
    np.testing.assert_array_equal(ds["t2m"].values[:, 0], want)


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
