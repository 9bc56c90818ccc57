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
    d = sub.add_parser("demo", help="the 5-day, 8-member ensemble IO comparison (offline)")
    d.add_argument("--members", type=int, default=8)
    d.add_argument("--steps", type=int, default=20, help="6 h steps (default 20 = 5 days)")
    d.add_argument("--grid", type=float, default=0.25, help="grid spacing in degrees (0.25 = 721 x 1440)")
    d.add_argument("--device", default="cpu")
    d.add_argument("--backends", default=None, help="comma-separated; default: all available")
    d.add_argument("--out", default="outputs/e2fastio-demo")
    d.add_argument("--quick", action="store_true", help="0.5 degree grid: about a minute on 2 cores")
    d.add_argument("--model-step-seconds", type=_positive_float, default=0.0,
                   help="sleep per step, standing in for GPU compute on machines without a GPU")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--keep", action="store_true", help="keep the written stores")
    d.add_argument("--no-plot", action="store_true")
    d.add_argument("--no-progress", action="store_true")
    d.add_argument("--s3", default=None, metavar="URL",
                   help="also write to S3 under this URL (s3://bucket/prefix); credentials from AWS_* variables")
    d.add_argument("--s3-endpoint", default=None, metavar="URL",
                   help="S3-compatible endpoint for --s3 (e.g. http://127.0.0.1:9000)")
    args = ap.parse_args(argv)
    if getattr(args, "s3_endpoint", None) and not getattr(args, "s3", None):
        ap.error("--s3-endpoint needs --s3 URL")

    if args.command == "info":
        from e2fastio import info

        print(json.dumps(info(), indent=2))
        return 0

    from e2fastio.demo.workflow import DemoError, S3Target, run_demo

    grid = 0.5 if args.quick and args.grid == 0.25 else args.grid
    backends = [b.strip() for b in args.backends.split(",") if b.strip()] if args.backends else None
    try:
        run_demo(members=args.members, steps=args.steps, resolution=grid, device=args.device, backends=backends,
                 out=args.out, seed=args.seed, model_step_seconds=args.model_step_seconds,
                 progress=not args.no_progress, keep=args.keep, plot=not args.no_plot,
                 s3=S3Target(args.s3, args.s3_endpoint) if args.s3 else None)
    except DemoError as err:
        print(f"e2fastio demo: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
