"""Sharded writes: e2fastio vs Earth2Studio 0.19 and tensorstore on the seed workload.

The seed workload (21 writes of 8 members x 2 variables x 721 x 1440 float32,
blosc zstd-3 + shuffle, chunks of one member and one step) written with Zarr v3
sharding along lead_time (``shard_coords={"lead_time": N}``), by

- e2fastio ``AsyncZarrBackend(blocking=False, shard_coords=...)``,
- e2fastio ``AsyncZarrBackend(blocking=False)`` unsharded (the same chunks as files),
- Earth2Studio 0.19 ``AsyncZarrBackend(blocking=False, shard_coords=...)``,
- tensorstore writing the same sharded arrays (data arrays only, no coordinates),
  one transaction per group of N steps, so that each shard is written once,
- the machine's limit: the same inner chunks compressed by c-blosc (numcodecs)
  on every core and each shard object (chunks, index, CRC-32C) written once as
  a plain file, with no metadata and no coordinates.

Each run is a child process (its peak RSS is its own); competitors are
interleaved, rotating the order every round. Reported: seconds until durable
(``close()`` + ``os.sync()``), files created, peak RSS growth during the run,
and ratios against e2fastio sharded; a JSON record is printed and saved.

    python benchmarks/bench_shard.py                 # full size, shards of 4 and 8 steps, 3 rounds
    python benchmarks/bench_shard.py --quick         # small grid, seconds
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402

VARS = ("t2m", "tcwv")
SHARDED = "e2fastio sharded"
UNSHARDED = "e2fastio unsharded"
E2S = "Earth2Studio 0.19 sharded"
TS = "tensorstore sharded"
RAW = "raw limit: shard files"
COMPETITORS = [SHARDED, UNSHARDED, E2S, TS, RAW]


def _blosc() -> Any:
    import zarr

    return zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")


def _parallel(w: common.Workload) -> OrderedDict[str, Any]:
    c = w.coords
    return OrderedDict(ensemble=c["ensemble"], time=c["time"], lead_time=c["lead_time"])


def _run_backend(cls: Any, path: str, w: common.Workload, shard: int | None) -> None:
    import torch

    kw: dict[str, Any] = {"shard_coords": {"lead_time": shard}} if shard else {}
    io = cls(path, parallel_coords=_parallel(w), blocking=False, zarr_codecs=_blosc(), **kw)
    for k in range(w.steps):
        xs, c = w.step(k)
        io.write([torch.from_numpy(x) for x in xs], c, list(VARS))
    io.close()


def _run_tensorstore(path: str, w: common.Workload, shard: int) -> None:
    import tensorstore as ts

    shape = [w.members, 1, w.steps, w.nlat, w.nlon]
    inner = [1, 1, 1, w.nlat, w.nlon]
    codecs = [{"name": "sharding_indexed", "configuration": {
        "chunk_shape": inner,
        "codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                   {"name": "blosc", "configuration": {"cname": "zstd", "clevel": 3, "shuffle": "shuffle",
                                                       "typesize": 4, "blocksize": 0}}],
        "index_codecs": [{"name": "bytes", "configuration": {"endian": "little"}}, {"name": "crc32c"}],
        "index_location": "end"}}]
    arrays = {}
    for v in VARS:
        spec = {"driver": "zarr3", "kvstore": {"driver": "file", "path": f"{path}/{v}"},
                "metadata": {"shape": shape, "data_type": "float32", "fill_value": 0.0, "codecs": codecs,
                             "chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [1, 1, shard, w.nlat,
                                                                                                  w.nlon]}},
                             "dimension_names": ["ensemble", "time", "lead_time", "lat", "lon"]}}
        arrays[v] = ts.open(spec, create=True, delete_existing=True).result()
    txn = ts.Transaction()
    for k in range(w.steps):
        xs, _ = w.step(k)
        for v, x in zip(VARS, xs, strict=True):
            arrays[v].with_transaction(txn)[:, :, k : k + 1].write(x).result()
        if (k + 1) % shard == 0 or k + 1 == w.steps:  # a group of shards is complete: write it once
            txn.commit_async().result()
            txn = ts.Transaction()


def _run_raw(path: str, w: common.Workload, shard: int) -> None:
    """The machine's limit: inner chunks compressed on every core, each shard written once as a plain file.

    Shards of (1, 1, `shard`, lat, lon): one member, `shard` steps; the index
    (offset, nbytes per inner chunk, 2^64-1 for an absent one) and its CRC-32C
    at the end, as Zarr v3's sharding codec lays it out.
    """
    from concurrent.futures import ThreadPoolExecutor

    import numcodecs
    import numpy as np

    codec = numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.SHUFFLE, typesize=4)
    crc = numcodecs.CRC32C()

    def write_shard(v: str, m: int, s: int, chunks: list[bytes | None]) -> None:
        index = np.full((shard, 2), np.iinfo(np.uint64).max, dtype="<u8")
        offset = 0
        for i, c in enumerate(chunks):
            if c is not None:
                index[i] = (offset, len(c))
                offset += len(c)
        d = os.path.join(path, v, "c", str(m), "0", str(s), "0")  # key c/<member>/0/<shard>/0/0
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "0"), "wb") as f:
            f.write(b"".join(c for c in chunks if c is not None) + bytes(crc.encode(index.tobytes())))

    with ThreadPoolExecutor(len(os.sched_getaffinity(0))) as pool:
        group: list[tuple[int, list[Any]]] = []
        for k in range(w.steps):
            xs, _ = w.step(k)
            group.append((k, [[pool.submit(codec.encode, np.ascontiguousarray(x[m])) for m in range(w.members)]
                              for x in xs]))
            if (k + 1) % shard == 0 or k + 1 == w.steps:  # a group of shards is complete: write each once
                s = k // shard
                writes = []
                for vi, v in enumerate(VARS):
                    for m in range(w.members):
                        chunks: list[bytes | None] = [None] * shard
                        for kk, futs in group:
                            chunks[kk - s * shard] = futs[vi][m].result()
                        writes.append(pool.submit(write_shard, v, m, s, chunks))
                for f in writes:
                    f.result()
                group = []


def child(name: str, shard: int, size: dict[str, int], outdir: str) -> dict[str, Any]:
    """One timed run in this (fresh) process."""
    w = common.make_workload(**size, distinct=min(3, size["steps"]))
    target = os.path.join(outdir, name.replace(" ", "_"))
    common.rm(target)
    os.sync()
    common.settle()
    # Imports before the clock starts: only the writes and close() are timed.
    run: Any
    if name in (SHARDED, UNSHARDED):
        from e2fastio import AsyncZarrBackend

        run = lambda: _run_backend(AsyncZarrBackend, target, w, shard if name == SHARDED else None)  # noqa: E731
    elif name == E2S:
        from earth2studio.io import AsyncZarrBackend as E2SAsyncZarrBackend  # type: ignore[import-not-found]

        run = lambda: _run_backend(E2SAsyncZarrBackend, target, w, shard)  # noqa: E731
    elif name == TS:
        import tensorstore  # noqa: F401

        run = lambda: _run_tensorstore(target, w, shard)  # noqa: E731
    else:
        import numcodecs  # noqa: F401

        run = lambda: _run_raw(target, w, shard)  # noqa: E731
    import torch  # noqa: F401
    import zarr  # noqa: F401

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t0 = time.perf_counter()
    run()
    t1 = time.perf_counter()
    os.sync()
    t2 = time.perf_counter()
    rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    files = sum(1 for p in Path(target).rglob("*") if p.is_file())
    out = {"closed_s": t1 - t0, "durable_s": t2 - t0, "files": files, "bytes_on_disk": common.dir_size(target),
           "peak_rss_growth_bytes": max(0, rss1 - rss0), "raw_bytes": w.nbytes}
    common.rm(target)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small grid (seconds)")
    ap.add_argument("--repeats", type=int, default=None, help="rounds (default 3, --quick 1)")
    common.add_size_arg(ap)
    ap.add_argument("--shards", type=int, nargs="+", default=[4, 8], help="shard sizes along lead_time")
    ap.add_argument("--outdir", default=None, help="where stores are written (default: a temporary directory)")
    ap.add_argument("--json", default="docs/results/bench_shard.json", help="where the JSON record goes")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--shard", type=int, default=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    size = common.size_from(args, common.QUICK if args.quick else common.FULL)
    if args.child:
        print(json.dumps(child(args.child, args.shard, size, args.outdir)))
        return {}
    if args.outdir is None:  # a directory of our own, removed at the end
        with tempfile.TemporaryDirectory(prefix="bench_shard_", dir=os.environ.get("TMPDIR")) as tmp:
            return _measure(args, size, tmp)
    return _measure(args, size, args.outdir)


def _measure(args: argparse.Namespace, size: dict[str, int], outdir: str) -> dict:
    """Every competitor, interleaved, per shard size; prints the table and saves the JSON record."""
    repeats = args.repeats or (1 if args.quick else 3)
    record: dict[str, Any] = {"bench": "bench_shard", "git": common.git_rev(), "machine": common.machine(),
                              "size": size, "repeats": repeats, "results": {}}
    for shard in args.shards:
        samples: dict[str, list[dict[str, Any]]] = {n: [] for n in COMPETITORS}
        for r in range(repeats):
            order = COMPETITORS[r % len(COMPETITORS):] + COMPETITORS[: r % len(COMPETITORS)]
            for name in order:
                cmd = [sys.executable, __file__, "--child", name, "--shard", str(shard), "--outdir", outdir]
                cmd += common.size_argv(size)
                p = subprocess.run(cmd, capture_output=True, text=True, check=False)
                if p.returncode != 0:
                    print(f"  {name}: failed\n{p.stderr[-2000:]}")
                    continue
                res = json.loads(p.stdout.strip().splitlines()[-1])
                samples[name].append(res)
                print(f"  shards of {shard} steps, round {r + 1}/{repeats} {name:<28s} durable "
                      f"{res['durable_s']:7.3f} s  files {res['files']:6d}  peak RSS +"
                      f"{res['peak_rss_growth_bytes'] / 2**20:7.0f} MiB", flush=True)
        summary: dict[str, Any] = {}
        for name, runs in samples.items():
            if not runs:
                continue
            summary[name] = {
                "durable_s": statistics.median(x["durable_s"] for x in runs),
                "closed_s": statistics.median(x["closed_s"] for x in runs),
                "files": runs[-1]["files"],
                "bytes_on_disk": runs[-1]["bytes_on_disk"],
                "peak_rss_growth_bytes": statistics.median(x["peak_rss_growth_bytes"] for x in runs),
                "durable_all_s": [x["durable_s"] for x in runs],
            }
        base = summary.get(SHARDED)
        print(f"\nshard_coords={{'lead_time': {shard}}}  ({size})")
        print(f"{'writer':<30s}{'durable s':>11s}{'files':>8s}{'peak RSS MiB':>14s}{'time / e2fastio sharded':>25s}")
        for name, s in summary.items():
            ratio = s["durable_s"] / base["durable_s"] if base else float("nan")
            s["time_ratio_vs_e2fastio_sharded"] = ratio
            print(f"{name:<30s}{s['durable_s']:>11.3f}{s['files']:>8d}{s['peak_rss_growth_bytes'] / 2**20:>14.0f}"
                  f"{ratio:>24.2f}x")
        record["results"][f"lead_time={shard}"] = summary
    print(json.dumps(record))
    if args.json:
        common.save_json(args.json if not args.quick else args.json.replace(".json", "_quick.json"), record)
    return record


if __name__ == "__main__":
    main()
