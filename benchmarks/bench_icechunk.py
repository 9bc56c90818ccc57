"""Icechunk repositories: e2fastio's IceChunkBackend vs Earth2Studio 0.19's, side by side.

Both write the same forecast (blosc zstd-3 + shuffle, one chunk per member,
variable and step) into a fresh repository on local disk, through their
default mode (non-blocking, as Earth2Studio's default), then ``commit`` and
``close``; the time is until the snapshot is committed and the files are
synced (``os.sync()`` for both, Icechunk's local storage does not fsync).
Competitors alternate round by round; medians are reported with the ratio
Earth2Studio time / e2fastio time, plus a JSON record naming the machine.

Needs Python 3.12 (icechunk 2) with Earth2Studio 0.19 and torch beside
e2fastio (on PyPI, torch for 3.12 is a CUDA build of a few GB):

    python benchmarks/bench_icechunk.py                 # 4 members x 8 steps x 721 x 1440 (0.27 GB), 3 rounds
    python benchmarks/bench_icechunk.py --quick         # seconds, for smoke runs
    python benchmarks/bench_icechunk.py --size 8x8x721x1440 --repeats 5
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402

VARS = ("t2m", "tcwv")
E2F = "e2fastio IceChunkBackend"
E2S = "Earth2Studio 0.19 IceChunkBackend"
DEFAULT = dict(members=4, steps=8, nlat=721, nlon=1440)


def run_one(name: str, repo: str, w: common.Workload) -> dict[str, float]:
    import zarr

    codec = zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")
    chunks = {"ensemble": 1, "time": 1, "lead_time": 1}
    t0 = time.perf_counter()
    if name == E2F:
        import e2fastio

        io: Any = e2fastio.IceChunkBackend(repo, chunks=chunks, zarr_codecs=codec)
        tensors = False
    else:
        from earth2studio.io import IceChunkBackend  # type: ignore[import-not-found]
        from loguru import logger as loguru  # type: ignore[import-not-found]

        loguru.disable("earth2studio")  # it logs every write and commit at DEBUG to stderr

        io = IceChunkBackend(repo, chunks=chunks, zarr_codecs=codec)
        tensors = True  # its write takes torch tensors
    io.add_array(w.coords, list(VARS))
    write_s = []
    for k in range(w.steps):
        xs, c = w.step(k)
        if tensors:
            import torch

            xs = [torch.from_numpy(x) for x in xs]
        tw = time.perf_counter()
        io.write(xs, c, list(VARS))
        write_s.append(time.perf_counter() - tw)
    loop = time.perf_counter() - t0
    io.commit("forecast")
    if hasattr(io, "close"):
        io.close()
    os.sync()
    total = time.perf_counter() - t0
    return {"total_s": total, "loop_s": loop, "write_ms_median": 1e3 * statistics.median(write_s),
            "stored_bytes": common.dir_size(repo)}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    common.add_size_arg(ap)
    ap.add_argument("--json", default="bench-out/bench_icechunk.json")
    ap.add_argument("--tmp", default=None, help="directory for the repositories (default: the system's temp)")
    args = ap.parse_args(argv)
    size = common.size_from(args, common.QUICK if args.quick else DEFAULT)
    repeats = args.repeats or (1 if args.quick else 3)
    w = common.make_workload(size["members"], size["steps"], size["nlat"], size["nlon"], distinct=min(size["steps"], 3))
    competitors = [E2F, E2S]
    samples: dict[str, list[dict[str, float]]] = {n: [] for n in competitors}
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for name in competitors:  # warm-up (imports, first allocations), not timed
            run_one(name, os.path.join(tmp, "warm"), common.make_workload(1, 1, 91, 180))
            shutil.rmtree(os.path.join(tmp, "warm"))
        for r in range(repeats):
            for name in competitors[r % 2:] + competitors[: r % 2]:
                repo = os.path.join(tmp, "repo")
                res = run_one(name, repo, w)
                shutil.rmtree(repo)
                samples[name].append(res)
                print(f"  round {r + 1}/{repeats} {name:<36s} until committed and synced {res['total_s']:7.3f} s"
                      f"  (writes {res['loop_s']:.3f} s, stored {res['stored_bytes'] / 1e6:.1f} MB)")
    table = {n: {k: statistics.median(s[k] for s in samples[n]) for k in samples[n][0]} | {"samples": samples[n]}
             for n in competitors}
    ratio = table[E2S]["total_s"] / table[E2F]["total_s"]
    print(f"\n{w.nbytes / 1e9:.2f} GB ({size['members']} members x {size['steps']} steps x {size['nlat']} x "
          f"{size['nlon']} x 2 variables), blosc zstd-3 + shuffle, median of {repeats}")
    for n, t in table.items():
        print(f"  {n:<36s} {t['total_s']:7.3f} s   write median {t['write_ms_median']:7.1f} ms")
    print(f"  e2fastio vs Earth2Studio 0.19: {ratio:.2f}x (issue 26 target: >= 1.5x)")
    record = {"benchmark": "bench_icechunk", "machine": common.machine(), "git": common.git_rev(),
              "command": " ".join([os.path.basename(sys.executable)] + sys.argv), "size": size, "repeats": repeats,
              "results": table, "ratio_e2s_over_e2fastio": ratio}
    common.save_json(args.json, record)
    print(f"JSON record: {args.json}")
    return record


if __name__ == "__main__":
    main()
