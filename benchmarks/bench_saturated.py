"""A flush on a machine whose every core is taken: does the waiting thread help?

Background threads run at nice 19 (or under SCHED_IDLE with
``E2FASTIO_BACKGROUND_SCHED=idle``), so when other processes keep every core
busy they get a small share of the CPU, and pending chunks wait for it. A
thread waiting in ``flush``/``close`` (``Engine.wait_idle(help=True)``) runs
queued chunk tasks itself, at its own priority. This benchmark writes N
non-blocking steps of one 721 x 1440 float32 field (blosc zstd-3 + shuffle,
4 MB each), then waits until they are stored, with and without the waiter's
help (alternating), beside S processes spinning on the CPU; median seconds
from the first write until every chunk is stored.

    python benchmarks/bench_saturated.py                  # 2 spinners, 8 steps, 6 rounds
    python benchmarks/bench_saturated.py --spinners 0     # the same on an idle machine
    E2FASTIO_BACKGROUND_SCHED=idle python benchmarks/bench_saturated.py --rounds 4
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402


def one_run(path: str, steps: int, help: bool) -> float:
    import numpy as np
    import zarr

    import e2fastio

    io = e2fastio.ZarrBackend(path, chunks={"step": 1}, blocking=False, backend_kwargs={"overwrite": True},
                              zarr_codecs=zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"))
    coords = OrderedDict(step=np.arange(steps), lat=np.arange(721), lon=np.arange(1440))
    io.add_array(coords, "t2m")
    rng = np.random.default_rng(0)
    x = (280 + np.cumsum(rng.integers(-1, 2, (721, 1440)), axis=1) / 8).astype(np.float32)
    engine = io.pipeline.engine.get()
    t0 = time.perf_counter()
    for k in range(steps):
        io.write(x[None], OrderedDict(step=np.arange(k, k + 1), lat=coords["lat"], lon=coords["lon"]), "t2m")
    if not engine.wait_idle(600.0, help):
        raise TimeoutError("chunks still pending after 600 s")
    dt = time.perf_counter() - t0
    io.close()
    return dt


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spinners", type=int, default=2, help="processes spinning on the CPU meanwhile")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--json", default="bench-out/bench_saturated.json")
    args = ap.parse_args(argv)
    spin = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(args.spinners)]
    res: dict[str, list[float]] = {"help": [], "no help": []}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.rounds):
                for mode in (("help", "no help") if r % 2 == 0 else ("no help", "help")):
                    dt = one_run(os.path.join(tmp, f"{r}-{mode}.zarr"), args.steps, mode == "help")
                    res[mode].append(dt)
                    print(f"  round {r + 1}/{args.rounds} {mode:<8s} {dt:7.3f} s")
    finally:
        for p in spin:
            p.kill()
    sched = os.environ.get("E2FASTIO_BACKGROUND_SCHED", "nice") or "nice"
    med = {k: statistics.median(v) for k, v in res.items()}
    print(f"\n{args.steps} writes of 4 MB then wait, beside {args.spinners} spinning processes, background "
          f"policy '{sched}': with the waiter's help {med['help']:.3f} s, without {med['no help']:.3f} s "
          f"(median of {args.rounds})")
    record = {"benchmark": "bench_saturated", "machine": common.machine(), "git": common.git_rev(),
              "command": " ".join([os.path.basename(sys.executable)] + sys.argv), "spinners": args.spinners,
              "steps": args.steps, "background_sched": sched, "seconds": res, "median_seconds": med}
    common.save_json(args.json, record)
    print(f"JSON record: {args.json}")
    return record


if __name__ == "__main__":
    main()
