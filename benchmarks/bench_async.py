"""Non-blocking writes behind a simulated model: e2fastio vs a pure-Python async backend.

Each competitor runs the seed workload (21 writes of 8 x 2 x 721 x 1440
float32, blosc zstd-3 + shuffle) behind a model step of T seconds (a sleep,
standing in for GPU compute that leaves the CPU free), in its own child
process so that its peak RSS is its own. Reports the loop's overhead against
the same loop without IO, the time until the data is durable after the last
step (``close()``), and peak RSS growth; interleaved and repeated.

    python benchmarks/bench_async.py                    # T = 0.5 s, 3 rounds
    python benchmarks/bench_async.py --quick            # small grid, seconds
    python benchmarks/bench_async.py --busy 0.2         # the step keeps one core busy 20% of its time
    python benchmarks/bench_async.py --busy 0.5 --busy-kind torch   # half of it torch ops on every core

With ``--busy F`` the model step first does a fixed amount of CPU work on the
calling thread (pure Python, holding the GIL: pre- and post-processing, a
sampler), calibrated once in the parent to take F x T seconds on an idle
core, then sleeps the rest of T. Work, not time, is fixed: when IO threads
slow the caller's thread, the loop takes longer and the overhead shows it;
the CPU part is also timed on its own each step ("the step's CPU part": how
much slower the same work ran beside each competitor than without IO).
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import common  # noqa: E402

VARS = ["t2m", "tcwv"]
E2S_ASYNC = "Earth2Studio 0.19 AsyncZarrBackend(blocking=False)"
STAND_IN = "stand-in: pure Python async (Earth2Studio's way)"
COMPETITORS = ["no IO", "e2fastio ZarrBackend(blocking=False)", "e2fastio AsyncZarrBackend", E2S_ASYNC, STAND_IN]
PROBE_WRITES = 12
NICE_AB = "e2fastio ZarrBackend(blocking=False), threads at nice "
SCHED_IDLE_AB = "e2fastio ZarrBackend(blocking=False), threads under SCHED_IDLE (E2FASTIO_BACKGROUND_SCHED=idle)"
# The same backend compressing CUDA tensors on the host (the default compresses them on the GPU where nvCOMP loads).
HOST_COMPRESSION_AB = "e2fastio ZarrBackend(blocking=False), device_compression=False"

def _have_earth2studio() -> bool:
    try:
        from earth2studio.io import AsyncZarrBackend  # type: ignore[import-not-found]  # noqa: F401
    except Exception:  # not installed, or installed without what it imports
        return False
    return True


def d2h_probe(make_io, fields, coords, lead) -> dict:
    """Write latency and time until the copy landed, per CUDA write, strided and contiguous inputs.

    After a write, the caller's stream waits for our copy, so synchronising it
    tells when the data is on the host: bytes / (write start -> synced) is
    the device-to-host throughput the caller sees, Python overhead included.
    Each write starts with the pipeline idle (a flush, untimed), so a full
    ring's backpressure is not mistaken for copy time.
    A cProfile of the strided writes says where `write` spends its time.
    """
    import cProfile
    import pstats

    import numpy as np

    def contig(t):
        return t.contiguous() if hasattr(t, "is_cuda") else np.ascontiguousarray(t)

    cuda = hasattr(fields[0], "is_cuda") and fields[0].is_cuda
    if cuda:
        import torch

        sync_all, sync_stream = torch.cuda.synchronize, torch.cuda.current_stream().synchronize
    else:  # a rehearsal on the CPU: the same calls, nothing to wait for
        sync_all = sync_stream = lambda: None
    out: dict = {}
    io = make_io()
    io.add_array(coords, VARS)
    for label, make in (("strided", lambda x: [x[:, :, :, 0], x[:, :, :, 1]]),
                        ("contiguous", lambda x: [contig(x[:, :, :, 0]), contig(x[:, :, :, 1])])):
        lat, landed = [], []
        prof = cProfile.Profile()
        for k in range(PROBE_WRITES):
            xs = make(fields[k % 2])
            io.flush()  # an empty ring and idle encoders: measure the copy path, not backpressure
            sync_all()
            c = dict(coords)
            c["lead_time"] = lead[k % len(lead) : k % len(lead) + 1]
            if label == "strided" and k >= 2:
                prof.enable()
            t0 = time.perf_counter()
            io.write(xs, c, VARS)
            t1 = time.perf_counter()
            if label == "strided" and k >= 2:
                prof.disable()
            sync_stream()
            t2 = time.perf_counter()
            if k >= 2:  # the first writes pay for stream and event creation
                lat.append(t1 - t0)
                landed.append(t2 - t0)
        nbytes = fields[0].nbytes
        out[label] = {"write_ms_median": statistics.median(lat) * 1e3,
                      "landed_ms_median": statistics.median(landed) * 1e3,
                      "d2h_gbps": nbytes / statistics.median(landed) / 1e9}
        if label == "strided":
            st = pstats.Stats(prof).stats  # {(file, line, func): (cc, nc, tottime, cumtime, callers)}
            n = PROBE_WRITES - 2
            rows = sorted(st.items(), key=lambda kv: -kv[1][2])[:14]
            out["profile"] = "\n".join(
                f"{v[2] / n * 1e6:9.1f} us own {v[3] / n * 1e6:9.1f} us cum per write  {v[1] / n:5.1f} calls  "
                f"{os.path.basename(k[0])}:{k[1]}({k[2]})" for k, v in rows)
    io.close()
    return out


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def pinned_d2h_gbps(nbytes: int) -> float:
    """The machine's reference: one cudaMemcpy of `nbytes` from device to pinned host memory."""
    import torch

    src = torch.empty(nbytes // 4, device="cuda")
    dst = torch.empty(nbytes // 4, pin_memory=True)
    dst.copy_(src)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(5):
        dst.copy_(src)
    torch.cuda.synchronize()
    return 5 * nbytes / (time.perf_counter() - t) / 1e9


# What the busy part of a model step is (--busy-kind): "python", a pure-Python loop on the caller's
# thread (one core, holds the GIL); "torch", torch ops on fresh tensors each unit, run by torch's own
# intra-op threads on every core, as a model whose step also computes on the CPU.
BUSY_KIND = "python"
_PROBE_UNITS = {"python": 200_000, "torch": 10}


def busy_work(iters: int) -> int:
    """A fixed amount of CPU work started from this thread (see BUSY_KIND)."""
    if BUSY_KIND == "torch":
        import torch

        total = 0.0
        for _ in range(iters):
            a = torch.randn(384, 384)  # fresh tensors every unit, as a model's activations
            b = torch.randn(384, 384)
            total += float((torch.tanh(a @ b) @ a).sum())
        return int(total) & 0xFFFFFFFF
    acc = 0
    for i in range(iters):
        acc = (acc * 31 + i) & 0xFFFFFFFF
    return acc


def calibrate_busy(seconds: float) -> int:
    """Iterations of busy_work that take `seconds` here (best of 5 short probes)."""
    if seconds <= 0:
        return 0
    n = _PROBE_UNITS[BUSY_KIND]
    _timed_busy(n)  # warm up (torch's thread pool, allocator)
    best = min(_timed_busy(n) for _ in range(5))
    return max(1, int(n * seconds / best))


def _timed_busy(n: int) -> float:
    t = time.perf_counter()
    busy_work(n)
    return time.perf_counter() - t


def worker(name: str, size: dict, step_s: float, path: str, max_buffer_bytes: int, device: str = "cpu",
           probe_on_cpu: bool = False, busy_iters: int = 0, busy_s: float = 0.0) -> dict:
    import numpy as np
    import zarr

    import e2fastio
    from e2fastio.baselines import PythonAsyncZarrBackend

    w = common.make_workload(size["members"], 2, size["nlat"], size["nlon"])  # two distinct steps, cycled
    steps = size["steps"]
    coords = w.coords
    lead = (np.arange(steps) * np.timedelta64(6, "h")).astype("timedelta64[ns]")
    coords["lead_time"] = lead
    codec = zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")
    base_rss = _rss()
    if name == "no IO":
        io = None
    elif name.startswith(NICE_AB):  # the same backend, its threads at another nice value (--nice-ab)
        import e2fastio._write.engine

        e2fastio._write.engine.BACKGROUND_NICE = int(name[len(NICE_AB):])
        io = e2fastio.ZarrBackend(path, chunks={"time": 1, "lead_time": 1}, backend_kwargs={"overwrite": True},
                                  zarr_codecs=codec, blocking=False, max_buffer_bytes=max_buffer_bytes)
    elif name == SCHED_IDLE_AB:  # the opt-in background policy (--sched-ab)
        import e2fastio._write.engine

        e2fastio._write.engine.BACKGROUND_SCHED_IDLE = True
        io = e2fastio.ZarrBackend(path, chunks={"time": 1, "lead_time": 1}, backend_kwargs={"overwrite": True},
                                  zarr_codecs=codec, blocking=False, max_buffer_bytes=max_buffer_bytes)
    elif name == HOST_COMPRESSION_AB:  # --device-compression-ab
        io = e2fastio.ZarrBackend(path, chunks={"time": 1, "lead_time": 1}, backend_kwargs={"overwrite": True},
                                  zarr_codecs=codec, blocking=False, max_buffer_bytes=max_buffer_bytes,
                                  device_compression=False)
    elif name == "e2fastio ZarrBackend(blocking=False)":
        io = e2fastio.ZarrBackend(path, chunks={"time": 1, "lead_time": 1}, backend_kwargs={"overwrite": True},
                                  zarr_codecs=codec, blocking=False, max_buffer_bytes=max_buffer_bytes)
    elif name == E2S_ASYNC:
        from earth2studio.io import AsyncZarrBackend as E2SAsync  # type: ignore[import-not-found]

        io = E2SAsync(path, parallel_coords={"time": coords["time"], "lead_time": lead}, blocking=False,
                      zarr_codecs=codec, zarr_kwargs={"mode": "w"})
    elif name == "e2fastio AsyncZarrBackend":
        io = e2fastio.AsyncZarrBackend(path, parallel_coords={"time": coords["time"], "lead_time": lead},
                                       blocking=False, zarr_codecs=codec, zarr_kwargs={"mode": "w"},
                                       max_buffer_bytes=max_buffer_bytes)
    else:
        io = PythonAsyncZarrBackend(path, {"time": 1, "lead_time": 1}, codec)
    if io is not None:
        io.add_array(coords, VARS)
    fields = w.fields
    if device != "cpu":
        import torch

        fields = [torch.from_numpy(f).to(device) for f in w.fields]
        torch.cuda.synchronize()
    elif name == E2S_ASYNC:  # it takes torch tensors only
        import torch

        fields = [torch.from_numpy(f) for f in w.fields]
    write_s = []
    busy_part_s: list[float] = []  # how long the step's CPU part took, per step: IO threads slowing it show here
    if busy_iters:
        busy_work(_PROBE_UNITS[BUSY_KIND])  # warm up outside the timed loop (torch's threads and allocator)
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    for k in range(steps):
        if busy_iters:  # the step's CPU part: fixed work on this thread
            tb = time.perf_counter()
            busy_work(busy_iters)
            busy_part_s.append(time.perf_counter() - tb)
        time.sleep(step_s - busy_s)  # the rest of the step (GPU compute: the CPU is free)
        x = fields[k % 2]
        if io is not None:
            c = dict(coords)
            c["lead_time"] = lead[k : k + 1]
            tw = time.perf_counter()
            io.write([x[:, :, :, 0], x[:, :, :, 1]], c, VARS)
            write_s.append(time.perf_counter() - tw)
    loop = time.perf_counter() - t0
    t1 = time.perf_counter()
    if io is not None:
        io.close()
    durable = time.perf_counter() - t1
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu_s = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)  # every thread of this process
    peak = ru1.ru_maxrss * 1024
    probe = None
    if (device != "cpu" or probe_on_cpu) and name.startswith("e2fastio"):
        codec2 = zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")
        try:
            probe = d2h_probe(lambda: e2fastio.ZarrBackend(path + ".probe", chunks={"time": 1, "lead_time": 1},
                                                           backend_kwargs={"overwrite": True}, zarr_codecs=codec2,
                                                           blocking=False), fields, coords, lead)
        except Exception as e:  # a probe failure must not lose the run's numbers
            probe = {"error": repr(e)}
    nbytes = steps * w.fields[0].nbytes
    stats = io.stats() if hasattr(io, "stats") else {}
    stored = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs) if io else 0
    # Bytes that crossed from the device: raw copies plus the compressed blocks of chunks compressed there.
    d2h = stats.get("bytes_from_device", 0) + stats.get("device_encode", {}).get("bytes_to_host", 0)
    out = {"cpu_s": cpu_s, "stored_bytes": stored, "device_to_host_bytes": d2h,
           "loop_s": loop, "durable_after_last_step_s": durable, "peak_rss_growth_bytes": peak - base_rss,
           "bytes": nbytes, "write_s_median": statistics.median(write_s) if write_s else 0.0,
           "write_s_max": max(write_s) if write_s else 0.0,
           "busy_part_s_median": statistics.median(busy_part_s) if busy_part_s else 0.0, "stats": stats}
    if device != "cpu":
        out["pinned_d2h_gbps"] = pinned_d2h_gbps(w.fields[0].nbytes)
        out["write_gbps_median"] = w.fields[0].nbytes / out["write_s_median"] / 1e9 if write_s else 0.0
    if probe is not None:
        out["d2h_probe"] = probe
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--step-seconds", type=float, default=0.5)
    ap.add_argument("--busy", type=float, default=0.0,
                    help="fraction of each model step spent busy on the calling thread's core (e.g. 0.2)")
    ap.add_argument("--busy-kind", choices=sorted(_PROBE_UNITS), default="python",
                    help="python: a pure-Python loop on the caller's core; torch: torch ops on fresh tensors, "
                         "on torch's own threads (every core)")
    ap.add_argument("--busy-iters", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--quick", action="store_true")
    common.add_size_arg(ap)
    ap.add_argument("--max-buffer-bytes", type=int, default=1 << 30)
    ap.add_argument("--json", default="bench-out/bench_async.json")
    ap.add_argument("--device", default="cpu", help="cpu, or cuda to write CUDA tensors (needs a GPU)")
    ap.add_argument("--skip", default="", help="comma-separated competitors (substrings) to skip")
    ap.add_argument("--probe", action="store_true", help="also run the write-latency probe on the CPU (rehearsal)")
    ap.add_argument("--nice-ab", default="", help="comma-separated nice values: also run e2fastio ZarrBackend "
                    "(blocking=False) with its threads at each (an A/B of the priority of background threads)")
    ap.add_argument("--sched-ab", action="store_true", help="also run e2fastio ZarrBackend (blocking=False) with "
                    "its threads under SCHED_IDLE (E2FASTIO_BACKGROUND_SCHED=idle): an A/B of the background policy")
    ap.add_argument("--device-compression-ab", action="store_true", help="also run e2fastio ZarrBackend "
                    "(blocking=False) with device_compression=False: with --device cuda, compression on the GPU "
                    "(the default, where nvCOMP loads) beside compression on the host; reports bytes copied from "
                    "the device, CPU seconds of the process, stored bytes and time until durable for both")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--path", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if not 0.0 <= args.busy < 1.0:
        ap.error(f"--busy must be in [0, 1), got {args.busy}")
    size = common.size_from(args, common.QUICK if args.quick else common.FULL)
    global BUSY_KIND
    BUSY_KIND = args.busy_kind
    if args.worker:
        print(json.dumps(worker(args.worker, size, args.step_seconds, args.path, args.max_buffer_bytes, args.device,
                                args.probe, args.busy_iters or 0, args.busy * args.step_seconds)))
        return {}
    busy_iters = calibrate_busy(args.busy * args.step_seconds)
    if busy_iters:
        print(f"busy part of each step: {busy_iters} iterations = {args.busy * args.step_seconds:.3f} s on an idle "
              "core (calibrated here)")
    repeats = args.repeats or (1 if args.quick else 3)
    skip = [s.strip() for s in args.skip.split(",") if s.strip()]
    competitors = [n for n in COMPETITORS if n == "no IO" or not any(s in n for s in skip)]
    if _have_earth2studio():
        if STAND_IN in competitors:
            competitors.remove(STAND_IN)  # the real peer is here: the stand-in is not needed
    elif E2S_ASYNC in competitors:
        competitors.remove(E2S_ASYNC)
        print("Earth2Studio is not installed (pip install e2fastio[compare]): comparing with a stand-in")
    competitors += [f"{NICE_AB}{int(v)}" for v in args.nice_ab.split(",") if v.strip()]
    if args.sched_ab:
        competitors.append(SCHED_IDLE_AB)
    if args.device_compression_ab:
        competitors.append(HOST_COMPRESSION_AB)
    samples: dict[str, list[dict]] = {n: [] for n in competitors}
    failed: set[str] = set()
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(repeats):
            order = competitors[r % len(competitors):] + competitors[: r % len(competitors)]
            for n in order:
                if n in failed:
                    continue
                path = os.path.join(tmp, "store.zarr")
                common.rm(path)
                cmd = [sys.executable, __file__, "--worker", n, "--path", path, "--step-seconds",
                       str(args.step_seconds), "--max-buffer-bytes", str(args.max_buffer_bytes),
                       "--device", args.device, "--busy", str(args.busy), "--busy-iters", str(busy_iters),
                       "--busy-kind", args.busy_kind]
                cmd += common.size_argv(size)
                if args.probe:
                    cmd.append("--probe")
                out = subprocess.run(cmd, capture_output=True, text=True)
                if out.returncode != 0:
                    if n == "no IO":
                        raise RuntimeError(f"the no-IO reference failed:\n{out.stderr[-3000:]}")
                    print(f"  round {r + 1}/{repeats} {n}: FAILED (dropped from the table)\n{out.stderr[-2000:]}")
                    failed.add(n)
                    continue
                res = json.loads(out.stdout.strip().splitlines()[-1])
                samples[n].append(res)
                print(f"  round {r + 1}/{repeats} {n:<40s} loop {res['loop_s']:7.3f} s  durable after "
                      f"{res['durable_after_last_step_s']:6.3f} s  "
                      f"peak RSS +{res['peak_rss_growth_bytes'] / 2**20:7.0f} MiB")
                common.rm(path)
                common.rm(path + ".probe")
    base = statistics.median(s["loop_s"] for s in samples["no IO"])
    table = {}
    competitors = [n for n in competitors if samples[n]]
    for n in competitors:
        loop = statistics.median(s["loop_s"] for s in samples[n])
        table[n] = {
            "loop_s": loop,
            "overhead_pct": 100 * (loop - base) / base,
            "durable_after_last_step_s": statistics.median(s["durable_after_last_step_s"] for s in samples[n]),
            "peak_rss_growth_mib": statistics.median(s["peak_rss_growth_bytes"] for s in samples[n]) / 2**20,
            "cpu_s": statistics.median(s["cpu_s"] for s in samples[n]),
            "stored_bytes": statistics.median(s["stored_bytes"] for s in samples[n]),
            "device_to_host_bytes": statistics.median(s["device_to_host_bytes"] for s in samples[n]),
            "samples": samples[n],
        }
        if args.busy:  # the same fixed CPU work, timed on its own: how much slower it ran beside this competitor
            part = statistics.median(s["busy_part_s_median"] for s in samples[n])
            base_part = statistics.median(s["busy_part_s_median"] for s in samples["no IO"])
            table[n]["busy_part_s"] = part
            table[n]["busy_part_slowdown_pct"] = 100 * (part - base_part) / base_part
    busy_txt = (f" ({100 * args.busy:.0f}% busy: {args.busy_kind} work started from the caller's thread)"
                if args.busy else "")
    print(f"\nmodel step {args.step_seconds} s{busy_txt} x {size['steps']} steps, "
          f"{samples['no IO'][0]['bytes'] / 1e9:.2f} GB, "
          f"blosc zstd-3 + shuffle, max_buffer_bytes {args.max_buffer_bytes / 2**20:.0f} MiB (median of {repeats})")
    print(f"{'backend':<42s}{'loop s':>9s}{'overhead':>10s}{'durable after s':>17s}{'peak RSS +MiB':>15s}"
          f"{'write ms (median/max)':>24s}")
    for n, t in table.items():
        wm = statistics.median(s["write_s_median"] for s in samples[n]) * 1e3
        wx = max(s["write_s_max"] for s in samples[n]) * 1e3
        t["write_ms_median"], t["write_ms_max"] = wm, wx
        print(f"{n:<42s}{t['loop_s']:>9.3f}{t['overhead_pct']:>9.1f}%{t['durable_after_last_step_s']:>17.3f}"
              f"{t['peak_rss_growth_mib']:>15.0f}{wm:>14.2f} / {wx:<8.2f}")
        if args.busy and n != "no IO":
            print(f"    the step's CPU part: {1e3 * t['busy_part_s']:.1f} ms per step, "
                  f"{t['busy_part_slowdown_pct']:+.1f}% against no IO (the rest of the overhead: write calls, sleeps)")
        if args.device != "cpu" and n != "no IO":
            print(f"    device->host: write {statistics.median(s['write_gbps_median'] for s in samples[n]):.1f} GB/s, "
                  f"pinned cudaMemcpy {statistics.median(s['pinned_d2h_gbps'] for s in samples[n]):.1f} GB/s")
        probes = [s["d2h_probe"] for s in samples[n] if "d2h_probe" in s]
        for q in probes:
            if "error" in q:
                print(f"    probe failed: {q['error']}")
        probes = [q for q in probes if "error" not in q]
        if probes:
            for label in ("strided", "contiguous"):
                p = {k: statistics.median(q[label][k] for q in probes) for k in probes[0][label]}
                t["d2h_probe_" + label] = p
                print(f"    probe ({label} inputs): write {p['write_ms_median']:.2f} ms, on the host after "
                      f"{p['landed_ms_median']:.2f} ms = {p['d2h_gbps']:.1f} GB/s")
            if probes:
                print("    where write spends its time (one run, cProfile, by own time):")
                print("\n".join("      " + ln for ln in probes[-1]["profile"].splitlines()[:30] if ln.strip()))
    if args.device_compression_ab and "e2fastio ZarrBackend(blocking=False)" in table and HOST_COMPRESSION_AB in table:
        gpu, host = table["e2fastio ZarrBackend(blocking=False)"], table[HOST_COMPRESSION_AB]
        enc = gpu["samples"][-1]["stats"].get("device_encode", {})
        steps_n = size["steps"]
        print("\ncompression on the GPU (default) / on the host (device_compression=False):")
        print(f"  chunks compressed on the device: {enc.get('chunks', 0)}; host-way reasons: {enc.get('host_reasons')}")
        g_d2h, h_d2h = gpu["device_to_host_bytes"], host["device_to_host_bytes"]
        print(f"  bytes from the device: {g_d2h / 1e9:.3f} GB / {h_d2h / 1e9:.3f} GB"
              f" = {h_d2h / max(g_d2h, 1):.2f}x fewer (target >= 3x)")
        print(f"  host CPU per step: {gpu['cpu_s'] / steps_n:.3f} s / {host['cpu_s'] / steps_n:.3f} s"
              f" = {host['cpu_s'] / max(gpu['cpu_s'], 1e-9):.2f}x lower (target >= 5x)")
        print(f"  durable after the last step: {gpu['durable_after_last_step_s']:.3f} s / "
              f"{host['durable_after_last_step_s']:.3f} s (target: no worse)")
        print(f"  stored: {gpu['stored_bytes'] / 1e6:.1f} MB / {host['stored_bytes'] / 1e6:.1f} MB"
              f" = {gpu['stored_bytes'] / max(host['stored_bytes'], 1):.3f} (target <= 1.10)")
    record = {"benchmark": "bench_async", "machine": common.machine(), "git": common.git_rev(),
              "command": " ".join([os.path.basename(sys.executable)] + sys.argv), "size": size,
              "step_seconds": args.step_seconds, "busy": args.busy, "busy_iters": busy_iters,
              "busy_kind": args.busy_kind,
              "max_buffer_bytes": args.max_buffer_bytes, "results": table}
    common.save_json(args.json, record)
    print(f"\nJSON record: {args.json}")
    return record


if __name__ == "__main__":
    main()
