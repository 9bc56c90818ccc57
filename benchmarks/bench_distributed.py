"""Aggregate write throughput of 1, 2 and 4 ranks writing one Zarr store (torch.distributed, gloo).

Each rank owns an equal share of the ensemble members and writes them step by
step (the ensemble workflow's IO) into one shared local store (opted in with
``process_group="world"``), compressed with blosc zstd-3 + shuffle, then closes
collectively. Reported per world size: the
time from the first write to the end of the collective close (data durable on
every rank), aggregate MB/s of raw data, and peak RSS per rank.

    python benchmarks/bench_distributed.py                  # 16 members x 8 steps x 2 x 181 x 360
    python benchmarks/bench_distributed.py --ranks 1,2,4 --members 32 --nlat 361 --nlon 720
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402

VARS = ["t2m", "tcwv"]


def _rank(rank: int, world: int, init: str, out: str, path: str, members: int, steps: int, nlat: int, nlon: int,
          threads: int) -> None:
    import torch.distributed as dist
    import zarr

    from e2fastio import ZarrBackend

    dist.init_process_group("gloo", init_method=f"file://{init}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=300))
    mine = np.array_split(np.arange(members), world)[rank]
    w = common.make_workload(len(mine), steps, nlat, nlon, seed=rank)
    coords = w.coords
    coords["ensemble"] = np.arange(members)
    io = ZarrBackend(path, chunks={"ensemble": 1, "time": 1, "lead_time": 1}, backend_kwargs={"overwrite": True},
                     zarr_codecs=zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"),
                     threads=threads, process_group="world")  # opt in: one store shared by the ranks
    io.add_array(coords, VARS)
    dist.barrier()
    t0 = time.perf_counter()
    for k in range(steps):
        xs, c = w.step(k)
        c["ensemble"] = mine
        io.write(xs, c, VARS)
    io.close()  # collective: every rank's data is stored when it returns
    dt = time.perf_counter() - t0
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    Path(out, f"{rank}.json").write_text(json.dumps({"seconds": dt, "bytes": w.nbytes, "peak_rss": rss}))
    dist.destroy_process_group()


def run(world: int, args: argparse.Namespace, tmp: Path) -> dict:
    out = Path(tempfile.mkdtemp(dir=tmp))
    path = str(tmp / f"store-{world}.zarr")
    init = str(tmp / f"init-{world}-{time.monotonic_ns()}")
    threads = max(1, len(os.sched_getaffinity(0)) // world)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_rank, args=(r, world, init, str(out), path, args.members, args.steps, args.nlat,
                                                args.nlon, threads)) for r in range(world)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"a rank of the {world}-rank run failed (exit code {p.exitcode})")
    recs = [json.loads(Path(out, f"{r}.json").read_text()) for r in range(world)]
    common.rm(path)
    seconds = max(r["seconds"] for r in recs)
    total = sum(r["bytes"] for r in recs)
    return {"ranks": world, "seconds": seconds, "raw_bytes": total, "mb_per_s": total / seconds / 1e6,
            "threads_per_rank": threads, "peak_rss_per_rank_mib": max(r["peak_rss"] for r in recs) / 2**20}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ranks", default="1,2,4")
    ap.add_argument("--members", type=int, default=16)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--nlat", type=int, default=181)
    ap.add_argument("--nlon", type=int, default=360)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default="bench-out/bench_distributed.json")
    args = ap.parse_args(argv)
    worlds = [int(x) for x in args.ranks.split(",")]
    results: dict[int, list[dict]] = {w: [] for w in worlds}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for world in worlds[r % len(worlds):] + worlds[: r % len(worlds)]:
                res = run(world, args, Path(tmp))
                results[world].append(res)
                print(f"  round {r + 1}/{args.repeats} {world} rank(s): {res['seconds']:.3f} s "
                      f"{res['mb_per_s']:.0f} MB/s")
    table = {}
    print(f"\n{args.members} members x {args.steps} steps x 2 vars x {args.nlat} x {args.nlon} float32, "
          f"one shared store (median of {args.repeats})")
    print(f"{'ranks':>6s}{'threads/rank':>14s}{'s':>9s}{'MB/s':>9s}{'peak RSS/rank MiB':>19s}")
    for world in worlds:
        med = statistics.median(x["seconds"] for x in results[world])
        best = min(results[world], key=lambda x: abs(x["seconds"] - med))
        table[world] = best
        print(f"{world:>6d}{best['threads_per_rank']:>14d}{best['seconds']:>9.3f}{best['mb_per_s']:>9.0f}"
              f"{best['peak_rss_per_rank_mib']:>19.0f}")
    record = {"benchmark": "bench_distributed", "machine": common.machine(), "git": common.git_rev(),
              "command": " ".join([os.path.basename(sys.executable)] + sys.argv), "args": vars(args),
              "results": table, "all": results}
    common.save_json(args.json, record)
    print(f"\nJSON record: {args.json}")
    return record


if __name__ == "__main__":
    main()
