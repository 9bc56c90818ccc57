"""Command line: ``e2fastio demo`` / ``python -m e2fastio demo`` and ``e2fastio info``."""

from __future__ import annotations

import argparse
import json
import sys


def _positive_float(s: str) -> float:
    v = float(s)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {s}")
    return v


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="e2fastio", description="e2fastio: fast IO backends for AI weather models")
    sub = ap.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="what the native core found")
    d = sub.add_parser("demo", help="the seed's ensemble IO comparison, e2fastio beside Earth2Studio (offline)",
                       description="Runs the Earth2Studio IO example's ensemble workflow once per IO case and "
                       "backend: each case with Earth2Studio's own backend (or a pure-Python stand-in when "
                       "earth2studio is not installed) and with e2fastio's drop-in; checks every store reads "
                       "back identical; prints a table, writes demo.json and demo.png.")
    d.add_argument("--members", type=int, default=8)
    d.add_argument("--steps", type=int, default=20, help="6 h steps (default 20 = 5 days)")
    d.add_argument("--grid", type=float, default=None, help="grid spacing in degrees (default 0.25 = 721 x 1440)")
    size = d.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="0.5 degree grid (361 x 720): a minute or two on 2 cores")
    size.add_argument("--full", action="store_true",
                      help="the example's shape: 8 members, 20 steps, 0.25 degree grid (721 x 1440), 1.40 GB per store")
    d.add_argument("--model", default="auto", choices=["auto", "gpu", "cpu", "gpu-like"],
                   help="where the demo model runs: auto = gpu when CUDA is available, else gpu-like "
                        "(precomputed fields, each step's time spent sleeping, off the CPU, as a GPU model would); "
                        "cpu computes on the CPU, competing with the IO threads")
    d.add_argument("--device", default=None, help="torch device for the model (cpu or cuda[:N]); implies --model")
    d.add_argument("--model-step-seconds", type=_positive_float, default=None,
                   help="gpu-like: the step time to spend (default: the CPU model's measured step time); "
                        "gpu/cpu: a sleep added to each step")
    d.add_argument("--backends", default=None,
                   help="comma-separated cases (zarr, zarr-blosc, netcdf, zarr-memory, async-blocking, "
                        "async-nonblocking, s3); default: all")
    d.add_argument("--out", default="outputs/e2fastio-demo")
    d.add_argument("--lead-hours", type=int, default=48, help="lead time of the figure's maps (default 48)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--keep", action="store_true", help="keep the written stores")
    d.add_argument("--no-plot", action="store_true")
    d.add_argument("--no-progress", action="store_true")
    d.add_argument("--s3", default=None, metavar="URL",
                   help="write the S3 case under this URL (s3://bucket/prefix; credentials from AWS_* variables); "
                        "default: a local S3 server (moto) when installed")
    d.add_argument("--s3-endpoint", default=None, metavar="URL",
                   help="S3-compatible endpoint for --s3 (e.g. http://127.0.0.1:9000)")
    d.add_argument("--no-s3", action="store_true", help="skip the S3 case")
    args = ap.parse_args(argv)
    if getattr(args, "s3_endpoint", None) and not getattr(args, "s3", None):
        ap.error("--s3-endpoint needs --s3 URL")
    if getattr(args, "s3", None) and getattr(args, "no_s3", False):
        ap.error("--s3 and --no-s3 contradict each other")

    if args.command == "info":
        from e2fastio import info

        print(json.dumps(info(), indent=2))
        return 0

    from e2fastio.demo.s3 import S3Target
    from e2fastio.demo.workflow import DemoError, run_demo

    grid = args.grid if args.grid is not None else 0.5 if args.quick else 0.25
    if args.full:
        if args.grid not in (None, 0.25):
            ap.error("--full is the 0.25 degree grid; leave out --grid")
        args.members, args.steps = 8, 20
    backends = [b.strip() for b in args.backends.split(",") if b.strip()] if args.backends else None
    try:
        run_demo(members=args.members, steps=args.steps, resolution=grid, model=args.model, device=args.device,
                 backends=backends, out=args.out, seed=args.seed, model_step_seconds=args.model_step_seconds,
                 progress=not args.no_progress, keep=args.keep, plot=not args.no_plot,
                 s3=S3Target(args.s3, args.s3_endpoint) if args.s3 else None, use_s3=not args.no_s3,
                 lead_hours=args.lead_hours)
    except DemoError as err:
        print(f"e2fastio demo: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
