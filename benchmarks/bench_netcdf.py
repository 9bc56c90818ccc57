"""Seed workload to NetCDF-4: e2fastio NetCDF4Backend vs Earth2Studio 0.19's NetCDF4Backend.

Time until the file is closed (and synced), size, MB/s, ratios, interleaved and
repeated, uncompressed and zlib (shuffle + deflate) at levels 1 and 4; chunks
of one field (1 x 1 x 1 x 721 x 1440) for the compressed files.

The headline ratio of every mode is against Earth2Studio 0.19's own
NetCDF4Backend, run in the same rounds (``pip install e2fastio[compare]``). It
has no compression, so in the zlib modes it writes the uncompressed file a user
of it gets. The secondary row is a pure-Python stand-in (netCDF4-python driven
the way Earth2Studio 0.19 drives it: index arrays, ``sync()`` after every
write), which can also compress, so the zlib modes have a like-for-like ratio.

    python benchmarks/bench_netcdf.py                   # full seed workload, smooth (seed-like) fields
    python benchmarks/bench_netcdf.py --fields noisy    # less compressible fields
    python benchmarks/bench_netcdf.py --quick           # seconds
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402

import e2fastio  # noqa: E402

VARS = ("t2m", "tcwv")


def run_e2fastio(w: common.Workload, level: int | None, path: str) -> None:
    io = e2fastio.NetCDF4Backend(path, backend_kwargs={"mode": "w"}, compression="zlib" if level else None,
                                 complevel=level or 4)
    io.add_array(w.coords, list(VARS))
    for k in range(w.steps):
        xs, c = w.step(k)
        io.write(xs, c, list(VARS))
    io.close()


def run_earth2studio(w: common.Workload, path: str) -> None:
    """Earth2Studio 0.19's NetCDF4Backend (uncompressed: it has no compression), fed torch tensors."""
    import torch
    from earth2studio.io import NetCDF4Backend  # type: ignore[import-not-found]

    def hours(c: dict) -> dict:  # its NetCDF4Backend maps lead times in h/m/s units, not ns
        return {**c, "lead_time": c["lead_time"].astype("timedelta64[h]")}

    io = NetCDF4Backend(path, backend_kwargs={"mode": "w"})
    io.add_array(hours(w.coords), list(VARS))
    for k in range(w.steps):
        xs, c = w.step(k)
        io.write([torch.from_numpy(x) for x in xs], hours(c), list(VARS))
    io.close()


def run_stand_in(w: common.Workload, level: int | None, path: str) -> None:
    """The stand-in: netCDF4-python the way Earth2Studio 0.19 drives it, optionally with zlib."""
    from e2fastio.baselines import StandInNetCDF4Backend

    io = StandInNetCDF4Backend(path, zlib=bool(level), complevel=level or 4,
                               chunksizes=(1, 1, 1, w.nlat, w.nlon) if level else None)
    io.add_array(w.coords, list(VARS))
    for k in range(w.steps):
        xs, c = w.step(k)
        io.write(xs, c, list(VARS))
    io.close()


E2S = "Earth2Studio 0.19 NetCDF4Backend"
STAND_IN = "stand-in: netCDF4-python, E2S writes"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    common.add_size_arg(ap)
    ap.add_argument("--levels", default="none,1,4", help="comma-separated: none and/or zlib levels")
    ap.add_argument("--fields", choices=common.FIELDS, default="smooth",
                    help="smooth: seed-like, ~3x compressible; noisy: unquantised noise added, ~1.5x")
    ap.add_argument("--json", default="bench-out/bench_netcdf.json")
    args = ap.parse_args(argv)
    size = common.size_from(args, common.QUICK if args.quick else common.FULL)
    repeats = args.repeats or (1 if args.quick else 3)
    levels = [None if s.strip() == "none" else int(s) for s in args.levels.split(",") if s.strip()]
    t0 = time.perf_counter()
    w = common.make_fields(args.fields, **size)
    print(f"workload: {w.steps} writes of {w.members} x 2 x {w.nlat} x {w.nlon} float32 = {w.nbytes / 1e9:.2f} GB, "
          f"{args.fields} fields (generated in {time.perf_counter() - t0:.1f} s)")
    try:
        import earth2studio.io  # noqa: F401
    except ImportError as err:
        has_e2s = False
        print(f"earth2studio is not installed ({err}; pip install e2fastio[compare]): "
              "ratios against the stand-in only")
    else:
        has_e2s = True
    record = {"benchmark": "bench_netcdf", "machine": common.machine(), "git": common.git_rev(),
              "command": " ".join([os.path.basename(sys.executable)] + sys.argv), "workload": size,
              "fields": args.fields, "repeats": repeats, "headline": E2S if has_e2s else STAND_IN,
              "results": {}, "speedups": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for level in levels:
            mode = "uncompressed" if level is None else f"zlib-{level}"
            print(f"\n[{mode}]")
            fns = {"e2fastio NetCDF4Backend": lambda p, lv=level: run_e2fastio(w, lv, p + ".nc")}
            if has_e2s:
                fns[E2S] = lambda p: run_earth2studio(w, p + ".nc")
            fns[STAND_IN] = lambda p, lv=level: run_stand_in(w, lv, p + ".nc")
            # run_interleaved measures the path it is given; the functions add ".nc".
            res = common.run_interleaved({n: (lambda p, f=f: (f(p), os.replace(p + ".nc", p))[0])
                                          for n, f in fns.items()}, Path(tmp), repeats, w.nbytes)
            record["results"][mode] = res
            head = E2S if has_e2s else STAND_IN
            common.print_table(f"{mode}: median of {repeats}, speed-up against {head}", res, head, w.nbytes)
            a = res["e2fastio NetCDF4Backend"]
            speedups = {n: {"closed": r["closed_s"] / a["closed_s"], "synced": r["synced_s"] / a["synced_s"]}
                        for n, r in res.items() if n != "e2fastio NetCDF4Backend"}
            record["speedups"][mode] = speedups
            note = " (it writes uncompressed: it has no compression)" if has_e2s and level else ""
            print(f"  headline: e2fastio {speedups[head]['synced']:.2f}x {head}{note} until synced, "
                  f"{speedups[head]['closed']:.2f}x until closed")
            s = speedups[STAND_IN]
            print(f"  secondary: {s['synced']:.2f}x the {STAND_IN} until synced (same compression), "
                  f"size ratio {a['bytes_on_disk'] / res[STAND_IN]['bytes_on_disk']:.4f}")
    common.save_json(args.json, record)
    print(f"\nJSON record: {args.json}")
    return record


if __name__ == "__main__":
    main()
