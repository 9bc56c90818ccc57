"""Every write path against its real peer, in one run: the check to make before resolving performance work.

Runs the other benchmarks of this folder one after another, each in its own
process (each interleaves and repeats its own competitors), at grids small
enough for the whole run to take a few minutes on 2 cores, and prints one
table: per path, e2fastio's time, the peer's, the ratio and the target, and
whether the target held. The JSON record (machine: CPU model, family and
instruction sets, cores, kernel, and one core's blosc zstd-3 rate, which tells
apart VMs that ``lscpu`` names alike) holds every sub-record too.

    python benchmarks/bench_all.py --quick        # a few minutes on 2 cores
    python benchmarks/bench_all.py                # larger grids, 5 rounds (about 15 minutes)
    python benchmarks/bench_all.py --quick --only zarr,s3

Paths and peers (Earth2Studio 0.19 needs ``pip install e2fastio[compare]``):

- zarr compressed / uncompressed: e2fastio ``ZarrBackend`` vs Earth2Studio's
  ``ZarrBackend`` and tensorstore, and the machine's limit (the same chunks
  compressed on all cores and written as plain files); time until synced.
- non-blocking, idle and busy caller: e2fastio ``AsyncZarrBackend`` behind a
  model step that sleeps (idle) or also keeps the caller's core busy, vs
  Earth2Studio's ``AsyncZarrBackend(blocking=False)``; loop overhead over the
  same loop without IO.
- netcdf uncompressed / zlib-4: e2fastio ``NetCDF4Backend`` vs Earth2Studio's
  (which cannot compress) and netCDF4-python with the same filters.
- s3: e2fastio ``AsyncZarrBackend`` (non-blocking, default ``pool_size``) vs
  Earth2Studio's to a local S3 server (moto, its own process).
- sharded: e2fastio ``AsyncZarrBackend`` with ``shard_coords`` vs
  Earth2Studio's and tensorstore's sharded writes.
- icechunk: needs Python 3.12 with icechunk and Earth2Studio (with torch)
  beside it; reported as not run when that interpreter is missing.

Ratios are "peer time / e2fastio time" (above 1: e2fastio is faster), except
the raw-limit ratio "e2fastio time / limit" and overheads in percent. Targets
are the open issues' and the documented claims; rows without one are reported
only. These grids are small: a fixed cost shows more than in the full runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402

HERE = Path(__file__).parent
E2S_ZARR = "Earth2Studio 0.19 ZarrBackend"
E2S_ASYNC = "Earth2Studio 0.19 AsyncZarrBackend(blocking=False)"
E2S_NC = "Earth2Studio 0.19 NetCDF4Backend"
NC_PY = "stand-in: netCDF4-python, E2S writes"
TS = "tensorstore zarr3 (all issued)"  # tensorstore's fastest mode: every write issued, then awaited
RAW = "raw: chunks as plain files"


# Grids: quick = a few minutes in all on 2 cores; full = larger and more rounds.
GRIDS = {
    "quick": {"zarr": "4x6x721x1440", "async": "4x10x721x1440", "netcdf": "4x4x721x1440", "s3": "4x4x721x1440",
              "shard": "4x8x721x1440", "repeats": 3, "step_seconds": 0.3},
    "full": {"zarr": "8x21x721x1440", "async": "8x21x721x1440", "netcdf": "8x8x721x1440", "s3": "4x8x721x1440",
             "shard": "8x8x721x1440", "repeats": 5, "step_seconds": 0.5},
}


def _run(script: str, args: list[str], out: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """One benchmark in its own process; its JSON record (or the failure's tail)."""
    cmd = [sys.executable, str(HERE / script), *args, "--json", str(out)]
    log(f"$ {' '.join(cmd[1:])}")
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    log(f"  ({time.perf_counter() - t0:.0f} s)")
    if p.returncode != 0 or not out.exists():
        return {"error": (p.stdout[-1500:] + p.stderr[-2500:]).strip() or f"exit {p.returncode}"}
    return json.loads(out.read_text())


def f(v: Any) -> str:
    return f"{v:10.3f}" if isinstance(v, float) else f"{'-':>10s}"


def _row(path: str, ours: float | None, peer: str, theirs: float | None, ratio: float | None, target: str,
         held: bool | None, unit: str = "s") -> dict[str, Any]:
    return {"path": path, "e2fastio": ours, "peer": peer, "peer_value": theirs, "ratio": ratio, "target": target,
            "held": held, "unit": unit}


def zarr_rows(rec: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for mode in ("compressed", "uncompressed"):
        res = rec["results"].get(mode)
        if not res:
            continue
        ours = res["e2fastio ZarrBackend"]["synced_s"]
        if E2S_ZARR in res:  # the documented claim (docs/benchmarks.md): at least 1.5x
            r = res[E2S_ZARR]["synced_s"] / ours
            rows.append(_row(f"zarr {mode}", ours, E2S_ZARR, res[E2S_ZARR]["synced_s"], r, ">= 1.5x", r >= 1.5))
        compressed = mode == "compressed"  # uncompressed: reported (no target in the issues)
        if TS in res:
            r = res[TS]["synced_s"] / ours
            rows.append(_row(f"zarr {mode}", ours, "tensorstore zarr3", res[TS]["synced_s"], r,
                             ">= 1.0x" if compressed else "(reported)", r >= 1.0 if compressed else None))
        if RAW in res:
            r = ours / res[RAW]["synced_s"]
            rows.append(_row(f"zarr {mode}", ours, "machine limit (raw files)", res[RAW]["synced_s"], r,
                             "<= 1.1 (ours / limit)" if compressed else "(reported: ours / limit)",
                             r <= 1.1 if compressed else None))
    return rows


def zarr_cell_rows(rec: dict[str, Any]) -> list[dict[str, Any]]:
    """The --matrix cell(s): chunks of one member, noisy fields, few steps (the hardest shape for the limit)."""
    rows = []
    for name, cell in rec["cells"].items():
        res = cell["results"]
        ours = res["e2fastio ZarrBackend"]["synced_s"]
        if TS in res:
            r = res[TS]["synced_s"] / ours
            rows.append(_row(f"zarr {name}", ours, "tensorstore zarr3", res[TS]["synced_s"], r, ">= 1.0x", r >= 1.0))
        if RAW in res:
            r = ours / res[RAW]["synced_s"]
            rows.append(_row(f"zarr {name}", ours, "machine limit (raw files)", res[RAW]["synced_s"], r,
                             "<= 1.1 (ours / limit)", r <= 1.1))
    return rows


def async_rows(rec: dict[str, Any], label: str) -> list[dict[str, Any]]:
    res = rec["results"]
    ours = res.get("e2fastio AsyncZarrBackend")
    if not ours:
        return []
    peer = res.get(E2S_ASYNC)
    target = 3.0
    return [_row(f"non-blocking, {label} caller", ours["overhead_pct"], E2S_ASYNC if peer else "(not run)",
                 peer["overhead_pct"] if peer else None, None, f"overhead <= {target:g}%",
                 ours["overhead_pct"] <= target, unit="% loop overhead"),
            _row(f"non-blocking, {label} caller: durable after last step", ours["durable_after_last_step_s"],
                 E2S_ASYNC if peer else "(not run)", peer["durable_after_last_step_s"] if peer else None,
                 (peer["durable_after_last_step_s"] / ours["durable_after_last_step_s"]) if peer else None,
                 "(reported)", None)]


def netcdf_rows(rec: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for mode, res in rec["results"].items():
        ours = res["e2fastio NetCDF4Backend"]["synced_s"]
        plain = mode == "uncompressed"
        if E2S_NC in res:  # it cannot compress: against a compressed file its time is only reported
            r = res[E2S_NC]["synced_s"] / ours
            rows.append(_row(f"netcdf {mode}", ours, E2S_NC + ("" if plain else " (uncompressed file)"),
                             res[E2S_NC]["synced_s"], r, ">= 1.0x" if plain else "(reported)",
                             r >= 1.0 if plain else None))
        if NC_PY in res and not plain:
            r = res[NC_PY]["synced_s"] / ours
            rows.append(_row(f"netcdf {mode}", ours, "netCDF4-python, same filters", res[NC_PY]["synced_s"], r,
                             ">= 1.8x", r >= 1.8))
    return rows


def s3_rows(rec: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    res = rec.get("results", {})
    for ours_name, peer in rec.get("pairs", {}).items():
        if ours_name in res and peer in res:
            ours, theirs = res[ours_name]["seconds"], res[peer]["seconds"]
            nonblocking = "non-blocking" in ours_name  # the issues' target is for this pair
            rows.append(_row(f"s3 {ours_name.removeprefix('e2fastio ')}", ours, peer, theirs, theirs / ours,
                             ">= 2x" if nonblocking else "(reported)", theirs / ours >= 2.0 if nonblocking else None))
    return rows


def shard_rows(rec: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for key, res in rec["results"].items():
        ours = res.get("e2fastio sharded")
        if not ours:
            continue
        for peer in ("Earth2Studio 0.19 sharded", "tensorstore sharded"):  # no target in the issues: reported
            if peer in res:
                r = res[peer]["durable_s"] / ours["durable_s"]
                rows.append(_row(f"sharded {key}", ours["durable_s"], peer, res[peer]["durable_s"], r,
                                 "(reported)", None))
        raw = res.get("raw limit: shard files")
        if raw:
            r = ours["durable_s"] / raw["durable_s"]
            rows.append(_row(f"sharded {key}", ours["durable_s"], "machine limit (shard files)", raw["durable_s"],
                             r, "(reported: ours / limit)", None))
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small grids, 3 rounds: a few minutes on 2 cores")
    ap.add_argument("--only", default="", help="comma-separated paths: zarr, async, netcdf, s3, shard")
    ap.add_argument("--busy", type=float, default=0.5,
                    help="fraction of each model step the busy caller keeps its core busy (default 0.5)")
    ap.add_argument("--json", default="bench-out/bench_all.json")
    args = ap.parse_args(argv)
    g = GRIDS["quick" if args.quick else "full"]
    rep = ["--repeats", str(g["repeats"])]
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    unknown = only - {"zarr", "async", "netcdf", "s3", "shard"}
    if unknown:
        ap.error(f"--only: unknown path(s) {sorted(unknown)}; choose from zarr, async, netcdf, s3, shard")
    started = time.perf_counter()
    record: dict[str, Any] = {"benchmark": "bench_all", "machine": common.machine(), "git": common.git_rev(),
                              "command": " ".join([os.path.basename(sys.executable)] + sys.argv), "grids": g,
                              "records": {}, "rows": [], "not_run": {}}
    print(f"machine: {record['machine']}")
    plan: list[tuple[str, str, list[str], Callable[[dict[str, Any]], list[dict[str, Any]]]]] = [
        ("zarr", "bench_zarr.py", ["--size", g["zarr"], *rep, "--skip", "zarr-python slices"], zarr_rows),
        ("zarr 4MB-noisy-6", "bench_zarr.py", ["--matrix", "--cells", "4MB-noisy-6", *rep], zarr_cell_rows),
        ("async idle", "bench_async.py", ["--size", g["async"], *rep, "--step-seconds", str(g["step_seconds"]),
                                          "--skip", "e2fastio ZarrBackend"],
         lambda r: async_rows(r, "idle")),
        ("async busy", "bench_async.py", ["--size", g["async"], *rep, "--step-seconds", str(g["step_seconds"]),
                                          "--busy", str(args.busy), "--skip", "e2fastio ZarrBackend"],
         lambda r: async_rows(r, f"busy ({100 * args.busy:.0f}%)")),
        ("netcdf", "bench_netcdf.py", ["--size", g["netcdf"], *rep, "--levels", "none,4"], netcdf_rows),
        ("s3", "bench_s3.py", ["--size", g["s3"], *rep, "--skip", "fs_factory,stand-in"], s3_rows),
        ("shard", "bench_shard.py", ["--size", g["shard"], *rep, "--shards", "4"], shard_rows),
    ]
    with tempfile.TemporaryDirectory() as tmp:
        for name, script, sub_args, rows_of in plan:
            if only and name.split()[0] not in only:
                continue
            print(f"\n[{name}]", flush=True)
            rec = _run(script, sub_args, Path(tmp) / f"{name.replace(' ', '_')}.json", print)
            record["records"][name] = rec
            if "error" in rec:
                print(f"  FAILED:\n{rec['error']}")
                record["not_run"][name] = "failed: " + rec["error"][-300:]
                continue
            record["rows"] += rows_of(rec)
    record["not_run"]["icechunk"] = ("not part of this run: IceChunkBackend needs Python 3.12 (icechunk 2), where "
                                     "Earth2Studio's needs a CUDA build of torch; see tests/test_icechunk.py")
    record["seconds"] = time.perf_counter() - started
    print(f"\n{'path':<46s}{'peer':<46s}{'e2fastio':>10s}{'peer':>10s}{'ratio':>8s}  {'target':<22s}held")
    for r in record["rows"]:
        ratio = f"{r['ratio']:7.2f}x" if r["ratio"] is not None else f"{'':8s}"
        held = {True: "yes", False: "NO", None: ""}[r["held"]]
        print(f"{r['path'][:45]:<46s}{r['peer'][:45]:<46s}{f(r['e2fastio'])}{f(r['peer_value'])}{ratio}  "
              f"{r['target']:<22s}{held}")
    for name, why in record["not_run"].items():
        print(f"not run: {name}: {why.splitlines()[0][:150]}")
    print(f"\n{sum(r['held'] is True for r in record['rows'])} targets held, "
          f"{sum(r['held'] is False for r in record['rows'])} missed; {record['seconds'] / 60:.1f} min on "
          f"{record['machine']['cpu']} ({record['machine']['cores']} cores, kernel {record['machine']['kernel']}, "
          f"zstd-3 on one core {record['machine']['zstd3_1core_mbps']} MB/s)")
    common.save_json(args.json, record)
    print(f"JSON record: {args.json}")
    return record


if __name__ == "__main__":
    main()
