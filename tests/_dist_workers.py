"""Rank programs for tests/test_distributed.py (run in spawned processes, real gloo groups).

Each rank writes ``<out>/rank<r>.json`` with what happened, so the test can
check every rank's outcome, including ranks that were expected to fail.
"""

from __future__ import annotations

import datetime
import json
import os
import time
import traceback
from collections import OrderedDict
from typing import Any

import numpy as np

MEMBERS, STEPS, NLAT, NLON = 8, 3, 24, 48
VARS = ["t2m", "tcwv"]


def coords() -> OrderedDict[str, np.ndarray]:
    return OrderedDict(
        ensemble=np.arange(MEMBERS),
        time=np.array(["2022-12-20T00"], dtype="datetime64[ns]"),
        lead_time=(np.arange(STEPS) * np.timedelta64(6, "h")).astype("timedelta64[ns]"),
        lat=np.linspace(90, -90, NLAT),
        lon=np.linspace(0, 360, NLON, endpoint=False),
    )


def field(members: np.ndarray, step: int, var: int) -> np.ndarray:
    """Deterministic data of some members at one step (what a model would produce)."""
    out = np.empty((len(members), 1, 1, NLAT, NLON), np.float32)
    for i, m in enumerate(members):
        rng = np.random.default_rng(1000 * int(m) + 10 * step + var)
        out[i, 0, 0] = np.round(rng.normal(280, 10, (NLAT, NLON)) * 256) / 256
    return out


def write_members(location: Any, members: np.ndarray, *, blocking: bool, store_kwargs: Any = None,
                  **kw: Any) -> None:
    """The ensemble workflow's IO: add_array up front, then one write per step of this rank's members."""
    import zarr

    from e2fastio import ZarrBackend

    c = coords()
    io = ZarrBackend(location, chunks={"ensemble": 1, "time": 1, "lead_time": 1},
                     backend_kwargs={"overwrite": True}, blocking=blocking, store_kwargs=store_kwargs,
                     zarr_codecs=zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"), **kw)
    with io:
        io.add_array(c, VARS)
        for k in range(STEPS):
            step = OrderedDict(c)
            step["ensemble"] = c["ensemble"][members]
            step["lead_time"] = c["lead_time"][k : k + 1]
            io.write([field(members, k, v) for v in range(len(VARS))], step, VARS)


def _record(out: str, rank: int, **info: Any) -> None:
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(info, f)


def _catch(fn: Any) -> dict[str, Any]:
    t0 = time.perf_counter()
    try:
        fn()
        return {"ok": True, "seconds": time.perf_counter() - t0}
    except Exception as err:  # noqa: BLE001 - reported to the test
        return {"ok": False, "type": type(err).__name__, "message": str(err), "seconds": time.perf_counter() - t0,
                "trace": traceback.format_exc()}


def main(rank: int, world: int, init_file: str, scenario: str, out: str, args: dict[str, Any]) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=60))
    members = np.array_split(np.arange(MEMBERS), world)[rank]
    info: dict[str, Any] = {}
    if scenario == "ensemble":
        info = _catch(lambda: write_members(args["location"], members, blocking=args["blocking"],
                                            store_kwargs=args.get("store_kwargs"), process_group="world",
                                            consolidate_metadata=args.get("consolidate", False)))
    elif scenario == "errors":
        import zarr

        from e2fastio import ZarrBackend

        c = coords()
        bad = OrderedDict(c)
        if rank == 1:
            bad["lat"] = bad["lat"] + 0.5
        io = ZarrBackend(args["location"], chunks={"ensemble": 8, "lead_time": 1}, backend_kwargs={"overwrite": True},
                         process_group="world", distributed_timeout=20)
        info["mismatch"] = _catch(lambda: io.add_array(bad, "t2m"))
        io.add_array(c, "t2m")  # the same everywhere: fine
        step = OrderedDict(c)
        step["ensemble"] = c["ensemble"][members]
        step["lead_time"] = c["lead_time"][:1]
        info["partial"] = _catch(lambda: io.write(field(members, 0, 0), step, "t2m"))
        info["stored_after_refusal"] = int((zarr.open_group(args["location"], mode="r")["t2m"][:] != 0).sum())

        def fail_on_rank1() -> None:
            with io:
                if rank == 1:
                    raise RuntimeError("model blew up on rank 1")

        info["failure"] = _catch(fail_on_rank1)
        info["ok"] = True
    elif scenario == "crash":
        from e2fastio import ZarrBackend

        def run() -> None:
            io = ZarrBackend(args["location"], chunks={"ensemble": 1, "lead_time": 1},
                             backend_kwargs={"overwrite": True}, process_group=dist.group.WORLD,
                             distributed_timeout=args["timeout"])
            io.add_array(coords(), VARS)
            if rank == 1:
                os._exit(3)  # a rank dies mid-run (no close, no goodbye)
            step = OrderedDict(coords())
            step["ensemble"] = step["ensemble"][members]
            step["lead_time"] = step["lead_time"][:1]
            io.write([field(members, 0, v) for v in range(2)], step, VARS)
            io.close()

        info = _catch(run)
    elif scenario == "shards":
        from e2fastio import AsyncZarrBackend

        def run_shards() -> None:
            c = coords()
            pc = OrderedDict(ensemble=c["ensemble"], time=c["time"], lead_time=c["lead_time"])
            io = AsyncZarrBackend(args["location"], parallel_coords=pc, blocking=False,
                                  shard_coords=args["shard_coords"], process_group="world", distributed_timeout=30)
            io.add_array(c, VARS)
            for k in range(STEPS):
                step = OrderedDict(c)
                step["ensemble"] = c["ensemble"][members]
                step["lead_time"] = c["lead_time"][k : k + 1]
                io.write([field(members, k, v) for v in range(len(VARS))], step, VARS)
            io.close()

        info = _catch(run_shards)
    elif scenario == "netcdf":
        netcdf(rank, world, out, args["directory"])
        dist.destroy_process_group()
        return
    elif scenario == "per_rank_stores":
        info = per_rank_stores(rank, world, args["directory"])
    else:
        raise ValueError(f"unknown scenario {scenario}")
    _record(out, rank, **info)
    if scenario != "crash":
        dist.destroy_process_group()


def netcdf(rank: int, world: int, out: str, directory: str) -> None:
    """NetCDF4 in a multi-rank run opted into coordination: one file per rank with {rank}; a shared name is refused.

    Without the opt-in, a ``{rank}`` template still gives each rank its own file.
    """
    from e2fastio import NetCDF4Backend

    members = np.array_split(np.arange(MEMBERS), world)[rank]
    info = {"shared": _catch(lambda: NetCDF4Backend(os.path.join(directory, "one.nc"), {"mode": "w"},
                                                    process_group="world"))}

    def per_rank(template: str, **kw: Any) -> None:
        c = coords()
        c["ensemble"] = c["ensemble"][members]
        with NetCDF4Backend(os.path.join(directory, template), {"mode": "w"}, **kw) as io:
            io.add_array(c, "t2m")
            for k in range(STEPS):
                step = OrderedDict(c)
                step["lead_time"] = c["lead_time"][k : k + 1]
                io.write(field(members, k, 0), step, "t2m")

    info["per_rank"] = _catch(lambda: per_rank("part_{rank:02d}_of_{world_size}.nc", process_group="world"))
    info["template_default"] = _catch(lambda: per_rank("tmpl_{rank}_of_{world_size}.nc"))
    _record(out, rank, ok=True, **info)


# Earth2Studio's distributed example: one store per rank, each rank its own
# initial times, no coordination at all (only an initialised default group).
PER_RANK_TIMES = np.array([f"200{i}-06-01T00" for i in range(5)], dtype="datetime64[ns]")
PER_RANK_KINDS = ["zarr", "async_blocking", "async_nonblocking", "netcdf"]


def per_rank_field(t: np.datetime64, step: int, var: int) -> np.ndarray:
    """One (time, lead_time) field, different for every time, step and variable."""
    rng = np.random.default_rng([int(t.astype("datetime64[h]").astype(np.int64)), step, var])
    return (np.round(rng.normal(280, 10, (1, 1, NLAT, NLON)) * 256) / 256).astype(np.float32)


def per_rank_path(directory: str, kind: str, rank: int) -> str:
    return os.path.join(directory, f"{kind}_{rank}.{'nc' if kind == 'netcdf' else 'zarr'}")


def per_rank_stores(rank: int, world: int, directory: str) -> dict[str, Any]:
    """Each rank writes its own store of every kind, as ``run.deterministic`` drives one.

    The ranks hold different times (3 and 2 of 5) and open their backends in
    opposite orders: any collective step would deadlock or disagree.
    """
    import torch.distributed as dist

    from e2fastio import AsyncZarrBackend, NetCDF4Backend, ZarrBackend

    times = np.array_split(PER_RANK_TIMES, world)[rank]
    total = OrderedDict(time=times, lead_time=coords()["lead_time"], lat=coords()["lat"], lon=coords()["lon"])

    def make(kind: str) -> Any:
        path = per_rank_path(directory, kind, rank)
        if kind == "zarr":
            return ZarrBackend(path, chunks={"time": 1, "lead_time": 1}, backend_kwargs={"overwrite": True})
        if kind == "netcdf":
            return NetCDF4Backend(path, {"mode": "w"})
        return AsyncZarrBackend(path, parallel_coords={"time": times, "lead_time": total["lead_time"]},
                                blocking=kind == "async_blocking", zarr_kwargs={"mode": "w"})

    info: dict[str, Any] = {"world": dist.get_world_size(), "group_rank": dist.get_rank(),
                            "times": [str(t) for t in times]}
    for kind in PER_RANK_KINDS if rank % 2 == 0 else PER_RANK_KINDS[::-1]:

        def run(kind: str = kind) -> None:
            io = make(kind)
            io.add_array(total, VARS)
            for k in range(STEPS):
                step = OrderedDict(total)
                step["lead_time"] = total["lead_time"][k : k + 1]
                xs = [np.concatenate([per_rank_field(t, k, v) for t in times]) for v in range(len(VARS))]
                io.write(xs, step, VARS)
            io.close()

        info[kind] = _catch(run)
    info["ok"] = all(info[k]["ok"] for k in PER_RANK_KINDS)
    return info
