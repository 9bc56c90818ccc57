"""Seed workload (reduced) to an S3 server: e2fastio vs Earth2Studio 0.19's AsyncZarrBackend.

Starts a local S3-compatible server (moto, in its own process, on 127.0.0.1)
unless ``--endpoint`` names one, then writes the same forecast (blosc zstd-3 +
shuffle) through every competitor in one run, interleaved and repeated, and
reports the median time until every object is stored (writers closed), MB/s of
raw data, and PUT requests per second (objects stored / time).

The headline ratio of each e2fastio backend is against its Earth2Studio 0.19
counterpart in the same run (``pip install e2fastio[compare]``): Earth2Studio's
only S3 writer is its AsyncZarrBackend, so e2fastio's non-blocking
AsyncZarrBackend is paired with it non-blocking, and e2fastio's (blocking)
ZarrBackend with it blocking. zarr-python over obstore and over s3fs are
secondary rows, labelled as stand-ins. ``--fields noisy`` writes less
compressible fields (more bytes per request) than the seed-like default.

    python benchmarks/bench_s3.py               # 4 members x 8 steps x 721 x 1440 (0.27 GB raw)
    python benchmarks/bench_s3.py --quick       # seconds, for smoke runs
    python benchmarks/bench_s3.py --latency-ms 20   # each request held 20 ms, as by a remote endpoint
    python benchmarks/bench_s3.py --fields noisy    # less compressible fields

CPU seconds of this process (compression, clients) and of the server process
are reported too: on a small machine the server shares the cores, and the time
a writer can reach is bounded by (its CPU + the server's CPU) / cores.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import zarr
import zarr.storage

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
import common  # noqa: E402
import s3_support  # noqa: E402  (the test suite's loopback S3 server helper)

import e2fastio  # noqa: E402

VARS = ("t2m", "tcwv")
SIZE = dict(members=4, steps=8, nlat=721, nlon=1440)
QUICK = dict(members=2, steps=4, nlat=181, nlon=360)


def codec() -> Any:
    return zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")


# ----------------------------------------------------------------------------- competitors
def _forecast(io: Any, w: common.Workload) -> None:
    """Earth2Studio's loop: add the arrays, one write per step, close (= every object stored)."""
    io.add_array(w.coords, list(VARS))
    for k in range(w.steps):
        xs, c = w.step(k)
        io.write(xs, c, list(VARS))
    io.close()


def run_e2fastio(w: common.Workload, env: dict[str, Any], prefix: str) -> None:
    _forecast(e2fastio.ZarrBackend(f"s3://{env['bucket']}/{prefix}", chunks={"time": 1, "lead_time": 1},
                                   zarr_codecs=codec(), store_kwargs=env["store_kwargs"]), w)


def run_e2fastio_async(w: common.Workload, env: dict[str, Any], prefix: str) -> None:
    _forecast(e2fastio.AsyncZarrBackend(None, parallel_coords={"lead_time": w.coords["lead_time"]},
                                        store=f"s3://{env['bucket']}/{prefix}", store_kwargs=env["store_kwargs"],
                                        blocking=False, pool_size=16, zarr_codecs=codec()), w)


def run_zarr_obstore(w: common.Workload, env: dict[str, Any], prefix: str) -> None:
    store = zarr.storage.ObjectStore(s3_support.obstore_store(env["endpoint"], env["bucket"], prefix))
    common.write_zarr_slices(store, w, codec(), VARS)


def run_zarr_s3fs(w: common.Workload, env: dict[str, Any], prefix: str) -> None:
    fs = s3_support.s3fs_filesystem(env["endpoint"], asynchronous=True)
    common.write_zarr_slices(zarr.storage.FsspecStore(fs, path=f"{env['bucket']}/{prefix}"), w, codec(), VARS)


def _earth2studio_async(w: common.Workload, blocking: bool = False, **kwargs: Any) -> None:
    import torch
    from earth2studio.io import AsyncZarrBackend  # type: ignore[import-not-found]

    io = AsyncZarrBackend(parallel_coords={"lead_time": w.coords["lead_time"]}, blocking=blocking,
                          zarr_codecs=codec(), **kwargs)
    for k in range(w.steps):
        xs, c = w.step(k)
        io.write([torch.from_numpy(np.ascontiguousarray(x)) for x in xs], c, list(VARS))
    io.close()


def run_e2s_store(w: common.Workload, env: dict[str, Any], prefix: str) -> None:
    _earth2studio_async(w, file_name=None, store=f"s3://{env['bucket']}/{prefix}",
                        store_kwargs=env["store_kwargs"])


def run_e2s_store_blocking(w: common.Workload, env: dict[str, Any], prefix: str) -> None:
    _earth2studio_async(w, blocking=True, file_name=None, store=f"s3://{env['bucket']}/{prefix}",
                        store_kwargs=env["store_kwargs"])


def run_e2s_fs_factory(w: common.Workload, env: dict[str, Any], prefix: str) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        _earth2studio_async(w, file_name=f"{env['bucket']}/{prefix}",
                            fs_factory=s3_support.fs_factory(env["endpoint"]))


COMPETITORS: dict[str, Callable[..., None]] = {
    "e2fastio ZarrBackend": run_e2fastio,
    "e2fastio AsyncZarrBackend (non-blocking)": run_e2fastio_async,
    "Earth2Studio AsyncZarrBackend store=": run_e2s_store,
    "Earth2Studio AsyncZarrBackend store= (blocking)": run_e2s_store_blocking,
    "Earth2Studio AsyncZarrBackend fs_factory=": run_e2s_fs_factory,
    "stand-in: zarr-python + obstore": run_zarr_obstore,
    "stand-in: zarr-python + s3fs": run_zarr_s3fs,
}
# Each e2fastio backend's Earth2Studio 0.19 counterpart: the headline ratio.
PAIRS = {
    "e2fastio ZarrBackend": "Earth2Studio AsyncZarrBackend store= (blocking)",
    "e2fastio AsyncZarrBackend (non-blocking)": "Earth2Studio AsyncZarrBackend store=",
}


def _cpu_self() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _cpu_of(pid: int | None) -> float:
    """User + system CPU seconds of another process (Linux /proc), 0 when unknown."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def _objects(client: Any, bucket: str, prefix: str) -> tuple[int, int]:
    n = size = 0
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        for obj in page.get("Contents", []):
            n += 1
            size += obj["Size"]
    return n, size


def _delete(client: Any, bucket: str, prefix: str) -> None:
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
        keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys})


def _check_same(w: common.Workload, env: dict[str, Any], prefix: str) -> None:
    g = zarr.open_group(zarr.storage.ObjectStore(s3_support.obstore_store(env["endpoint"], env["bucket"], prefix),
                                                 read_only=True), mode="r")
    for i, name in enumerate(VARS):
        got = g[name][:]
        want = np.concatenate([f[:, :, :, i] for f in w.fields], axis=2)
        if not np.array_equal(got, want):
            raise AssertionError(f"{prefix}: {name} differs from what was written")


def _measure(w: common.Workload, comps: dict[str, Callable[..., None]], endpoint: str | None, latency_ms: float,
             repeats: int, warmup: bool) -> dict[str, dict[str, Any]]:
    """Every competitor to one server (moto started here unless `endpoint`), interleaved; per-competitor medians."""
    server = None
    if endpoint is None:
        server = s3_support.MotoServer(latency=latency_ms / 1000)
        endpoint = server.endpoint
        print(f"S3 server: moto on {endpoint} (its own process), {latency_ms:g} ms added per request")
    try:
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        s3_support.create_bucket(endpoint, bucket)
        client = s3_support.boto3_client(endpoint)
        env = {"endpoint": endpoint, "bucket": bucket, "store_kwargs": s3_support.store_kwargs(endpoint)}
        samples: dict[str, list[float]] = {n: [] for n in comps}
        cpu: dict[str, list[tuple[float, float]]] = {n: [] for n in comps}  # (this process, server)
        server_pid = server.pid if server is not None else None
        objects: dict[str, tuple[int, int]] = {}
        names = list(comps)
        if warmup:  # imports, first connections, first-touch memory: not what a long run pays per step
            for n in names:
                prefix = f"warmup-{uuid.uuid4().hex[:6]}.zarr"
                comps[n](w, env, prefix)
                _delete(client, bucket, prefix)
            print("  warm-up round done (not timed)")
        for r in range(repeats):
            for n in names[r % len(names):] + names[: r % len(names)]:
                prefix = f"{n.split()[0].lower().rstrip(':')}-{uuid.uuid4().hex[:6]}.zarr"
                common.settle()
                c0, s0 = _cpu_self(), _cpu_of(server_pid)
                t0 = time.perf_counter()
                comps[n](w, env, prefix)
                dt = time.perf_counter() - t0
                samples[n].append(dt)
                cpu[n].append((_cpu_self() - c0, _cpu_of(server_pid) - s0))
                objects[n] = _objects(client, bucket, prefix)
                if r == 0:
                    _check_same(w, env, prefix)
                _delete(client, bucket, prefix)
                print(f"  round {r + 1}/{repeats} {n:<44s} {dt:7.3f} s  {objects[n][0]} objects  "
                      f"CPU s: client {cpu[n][-1][0]:.2f} server {cpu[n][-1][1]:.2f}")
    finally:
        if server is not None:
            server.stop()
    return {n: {"seconds": statistics.median(samples[n]), "all_s": samples[n], "objects": objects[n][0],
                "bytes_stored": objects[n][1], "mb_per_s": w.nbytes / statistics.median(samples[n]) / 1e6,
                "put_per_s": objects[n][0] / statistics.median(samples[n]),
                "client_cpu_s": statistics.median(c for c, _ in cpu[n]),
                "server_cpu_s": statistics.median(s for _, s in cpu[n])} for n in names}


def _report(results: dict[str, dict[str, Any]], w: common.Workload,
            repeats: int) -> tuple[dict[str, float], dict[str, float]]:
    """Print the table, each e2fastio backend's ratio to its Earth2Studio pair (headline) and to the others.

    Returns every ratio ("ours vs other") and the headline ratio per e2fastio backend (against its
    Earth2Studio 0.19 pair, or against the best stand-in when Earth2Studio did not run, as labelled).
    """
    print(f"\nmedian of {repeats}, time until every object is stored ({w.nbytes / 1e9:.2f} GB raw)")
    print(f"{'backend':<50s}{'s':>8s}{'MB/s':>8s}{'PUT/s':>8s}{'objects':>9s}{'stored MB':>11s}"
          f"{'client CPU s':>14s}{'server CPU s':>14s}")
    for n, r in results.items():
        print(f"{n:<50s}{r['seconds']:>8.3f}{r['mb_per_s']:>8.0f}{r['put_per_s']:>8.0f}{r['objects']:>9d}"
              f"{r['bytes_stored'] / 1e6:>11.1f}{r['client_cpu_s']:>14.2f}{r['server_cpu_s']:>14.2f}")
    others = {n: r["seconds"] for n, r in results.items() if not n.startswith("e2fastio")}
    ratios: dict[str, float] = {}
    headline: dict[str, float] = {}
    for ours in (n for n in results if n.startswith("e2fastio")):
        t = results[ours]["seconds"]
        ratios.update({f"{ours} vs {n}": b / t for n, b in others.items()})
        pair = PAIRS.get(ours)
        if pair in others:
            headline[ours] = others[pair] / t
            print(f"{ours}: {headline[ours]:.2f}x {pair} (Earth2Studio 0.19, same run)")
        else:
            stand_ins = {n: b for n, b in others.items() if n.startswith("stand-in")}
            if stand_ins:
                best = min(stand_ins, key=stand_ins.__getitem__)
                headline[ours] = stand_ins[best] / t
                print(f"{ours}: {headline[ours]:.2f}x the best stand-in ({best}); Earth2Studio did not run")
        rest = [f"{b / t:.2f}x {n}" for n, b in others.items() if n != pair]
        if rest:
            print("    secondary: " + ", ".join(rest))
    return ratios, headline


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small grid, one repeat (smoke run)")
    ap.add_argument("--repeats", type=int, default=None, help="rounds per competitor (default 3, quick 1)")
    common.add_size_arg(ap)
    ap.add_argument("--endpoint", default=None, help="an S3 endpoint to use instead of a local moto server "
                    "(credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)")
    ap.add_argument("--latency-ms", default="0",
                    help="hold every request this long in the local server (a remote endpoint's round trip); "
                         "a comma-separated list (0,5,20) measures each in turn, each with a fresh server")
    ap.add_argument("--json", default="bench-out/bench_s3.json")
    ap.add_argument("--skip", default="", help="comma-separated competitors to skip (substrings)")
    ap.add_argument("--no-warmup", dest="warmup", action="store_false", help="skip the untimed warm-up round")
    ap.add_argument("--fields", choices=common.FIELDS, default="smooth",
                    help="smooth: seed-like, ~3x compressible; noisy: unquantised noise added, ~1.5x")
    args = ap.parse_args(argv)
    try:
        latencies = [float(v) for v in args.latency_ms.split(",") if v.strip()]
    except ValueError:
        ap.error(f"--latency-ms takes numbers separated by commas, got {args.latency_ms!r}")
    if not latencies or any(not v >= 0 for v in latencies):
        ap.error(f"--latency-ms values must be >= 0, got {args.latency_ms!r}")
    if args.endpoint is not None and latencies != [0.0]:
        ap.error("--latency-ms applies to the local server only; leave it out with --endpoint")
    size = common.size_from(args, QUICK if args.quick else SIZE)
    repeats = args.repeats or (1 if args.quick else 3)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    comps = {n: f for n, f in COMPETITORS.items() if not any(s in n for s in skip)}
    try:
        import earth2studio  # noqa: F401
        from loguru import logger as loguru

        loguru.disable("earth2studio")  # it logs every write at DEBUG to stderr
    except ImportError:
        comps = {n: f for n, f in comps.items() if not n.startswith("Earth2Studio")}
        print("earth2studio not installed (pip install e2fastio[compare]); skipping its backends")

    w = common.make_fields(args.fields, **size)
    print(f"workload: {w.steps} writes of {w.members} x {len(VARS)} x {w.nlat} x {w.nlon} float32 "
          f"= {w.nbytes / 1e9:.2f} GB raw, {args.fields} fields, blosc zstd-3 + shuffle")
    runs = []
    headline_by_latency = []
    for latency in latencies:
        results = _measure(w, comps, args.endpoint, latency, repeats, args.warmup)
        ratios, headline = _report(results, w, repeats)
        runs.append({"latency_ms": latency, "results": results, "ratios": ratios, "headline": headline})
        headline_by_latency.append(headline)
    if len(runs) > 1:
        ours = [n for n in comps if n.startswith("e2fastio")]
        print("\nratio to its Earth2Studio 0.19 counterpart by added latency per request")
        print(f"{'latency ms':>11s}" + "".join(f"{n:>44s}" for n in ours))
        for latency, best in zip(latencies, headline_by_latency, strict=True):
            print(f"{latency:>11g}" + "".join(f"{best.get(n, float('nan')):>43.2f}x" for n in ours))
    record = {"benchmark": "bench_s3", "machine": common.machine(), "git": common.git_rev(),
              "command": " ".join([os.path.basename(sys.executable)] + sys.argv), "workload": size,
              "endpoint": "moto (local process)" if args.endpoint is None else "given", "repeats": repeats,
              "cores": len(os.sched_getaffinity(0)), "warmup": args.warmup, "fields": args.fields,
              "pairs": PAIRS, "e2fastio": e2fastio.info()}
    if len(runs) == 1:
        record.update(runs[0])
    else:
        record["runs"] = runs
    common.save_json(args.json, record)
    print(f"\nJSON record: {args.json}")
    return record


if __name__ == "__main__":
    main()
