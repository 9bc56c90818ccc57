"""Seed workload to NetCDF-4: e2fastio NetCDF4Backend vs netCDF4-python (Earth2Studio's way).

Time until the file is closed (and synced), size, MB/s, ratios, interleaved and
repeated, uncompressed and zlib (shuffle + deflate) at levels 1 and 4; chunks
of one field (1 x 1 x 1 x 721 x 1440) for the compressed files on both sides.

    python benchmarks/bench_netcdf.py            # full seed workload
    python benchmarks/bench_netcdf.py --quick    # seconds
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

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


def run_netcdf4_python(w: common.Workload, level: int | None, path: str) -> None:
    """netCDF4-python as Earth2Studio's NetCDF4Backend drives it (one setitem per array and step)."""
    import netCDF4

    ds = netCDF4.Dataset(path, "w", format="NETCDF4")
    coords = w.coords
    for d, v in coords.items():
        ds.createDimension(d, len(v))
        if v.dtype.kind == "M":
            var = ds.createVariable(d, "f8", (d,))
            var[:] = (v.astype("datetime64[s]") - np.datetime64("0001-01-01T00:00:00", "s")) / np.timedelta64(1, "h")
        elif v.dtype.kind == "m":
            var = ds.createVariable(d, "i8", (d,))
            var[:] = v / np.timedelta64(1, "h")
        else:
            ds.createVariable(d, v.dtype, (d,))[:] = v
    kw = dict(zlib=True, complevel=level, shuffle=True, chunksizes=(1, 1, 1, w.nlat, w.nlon)) if level else {}
    for name in VARS:
        ds.createVariable(name, "f4", tuple(coords), **kw)
    for k in range(w.steps):
        xs, c = w.step(k)
        for x, name in zip(xs, VARS, strict=True):
            ds[name][:, :, k : k + 1] = x
    ds.close()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--levels", default="none,1,4", help="comma-separated: none and/or zlib levels")
    ap.add_argument("--json", default="bench-out/bench_netcdf.json")
    args = ap.parse_args(argv)
    size = common.QUICK if args.quick else common.FULL
    repeats = args.repeats or (1 if args.quick else 3)
    levels = [None if s.strip() == "none" else int(s) for s in args.levels.split(",") if s.strip()]
    t0 = time.perf_counter()
    w = common.make_workload(**size)
    print(f"workload: {w.steps} writes of {w.members} x 2 x {w.nlat} x {w.nlon} float32 = {w.nbytes / 1e9:.2f} GB "
          f"(generated in {time.perf_counter() - t0:.1f} s)")
    record = {"benchmark": "bench_netcdf", "machine": common.machine(), "git": common.git_rev(),
              "command": " ".join([os.path.basename(sys.executable)] + sys.argv), "workload": size,
              "repeats": repeats, "results": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for level in levels:
            mode = "uncompressed" if level is None else f"zlib-{level}"
            print(f"\n[{mode}]")
            fns = {
                "e2fastio NetCDF4Backend": lambda p, lv=level: run_e2fastio(w, lv, p + ".nc"),
                "netCDF4-python (Earth2Studio's way)": lambda p, lv=level: run_netcdf4_python(w, lv, p + ".nc"),
            }
            # run_interleaved measures the path it is given; the functions add ".nc".
            res = common.run_interleaved({n: (lambda p, f=f: (f(p), os.replace(p + ".nc", p))[0])
                                          for n, f in fns.items()}, Path(tmp), repeats, w.nbytes)
            record["results"][mode] = res
            common.print_table(f"{mode}: median of {repeats}", res, "netCDF4-python (Earth2Studio's way)", w.nbytes)
            a, b = res["e2fastio NetCDF4Backend"], res["netCDF4-python (Earth2Studio's way)"]
            print(f"  e2fastio speed-up (closed): {b['closed_s'] / a['closed_s']:.2f}x, "
                  f"size ratio {a['bytes_on_disk'] / b['bytes_on_disk']:.4f}")
    common.save_json(args.json, record)
    print(f"\nJSON record: {args.json}")
    return record


if __name__ == "__main__":
    main()
