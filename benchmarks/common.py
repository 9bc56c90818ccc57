"""Shared pieces of the benchmarks: the seed workload, timing, reporting."""

from __future__ import annotations

import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

# The seed workload (Earth2Studio's IO example): 21 writes of 8 members x 2
# variables x 721 x 1440 float32, chunks time=1, lead_time=1 (1.33 GB).
FULL = dict(members=8, steps=21, nlat=721, nlon=1440)
QUICK = dict(members=2, steps=4, nlat=91, nlon=180)


@dataclass
class Workload:
    members: int
    steps: int
    nlat: int
    nlon: int
    variables: tuple[str, ...] = ("t2m", "tcwv")
    fields: list[np.ndarray] = field(default_factory=list)  # one (members, 1, 1, nvar, lat, lon) per step

    @property
    def coords(self) -> OrderedDict[str, np.ndarray]:
        return OrderedDict(
            ensemble=np.arange(self.members),
            time=np.array(["2022-12-20T00"], dtype="datetime64[ns]"),
            lead_time=(np.arange(self.steps) * np.timedelta64(6, "h")).astype("timedelta64[ns]"),
            lat=np.linspace(90, -90, self.nlat),
            lon=np.linspace(0, 360, self.nlon, endpoint=False),
        )

    @property
    def nbytes(self) -> int:
        return sum(f.nbytes for f in self.fields)

    def step(self, k: int) -> tuple[list[np.ndarray], OrderedDict[str, np.ndarray]]:
        """Step k as Earth2Studio's split_coords hands it over: non-contiguous views."""
        x = self.fields[k]
        c = self.coords
        c["lead_time"] = c["lead_time"][k : k + 1]
        return [x[:, :, :, i] for i in range(len(self.variables))], c


def make_workload(
    members: int, steps: int, nlat: int, nlon: int, seed: int = 0, distinct: int | None = None, noisy: bool = False
) -> Workload:
    """Smooth, weather-like fields with ~8 meaningful fraction bits (zstd-3+shuffle ~3x).

    With `distinct`, only that many different steps are generated and cycled
    (generation costs ~1 s per step at full size; the bytes written are the same).
    With `noisy`, the fields keep every mantissa bit and carry a little noise
    (sd 0.01), as a model's raw float32 output does: zstd-3+shuffle ~1.7x.
    """
    if distinct is not None and 0 < distinct < steps:
        w = make_workload(members, distinct, nlat, nlon, seed, noisy=noisy)
        w.steps = steps
        w.fields = [w.fields[k % distinct] for k in range(steps)]
        return w
    rng = np.random.default_rng(seed)
    lat = np.deg2rad(np.linspace(90, -90, nlat))[:, None]
    lon = np.deg2rad(np.linspace(0, 360, nlon, endpoint=False))[None, :]
    t2m0 = 255 + 45 * np.cos(lat) ** 2 + 8 * np.sin(2 * lon) * np.cos(lat)
    tcwv0 = 55 * np.cos(lat) ** 4 + 4 * np.sin(3 * lon + 1) * np.cos(lat) ** 2
    w = Workload(members, steps, nlat, nlon)
    for k in range(steps):
        x = np.empty((members, 1, 1, 2, nlat, nlon), dtype=np.float32)
        for m in range(members):
            for v, (base, amp) in enumerate(((t2m0, 6.0), (tcwv0, 5.0))):
                f = base.copy()
                for _ in range(4):  # travelling low-wavenumber waves
                    kl, kx = rng.integers(1, 8), rng.integers(1, 12)
                    ph = rng.uniform(0, 2 * np.pi) + 0.3 * k
                    f += amp * rng.uniform(0.2, 1) * np.sin(kl * lat + ph) * np.cos(kx * lon - ph)
                if v == 1:
                    f = np.maximum(f, 0)
                if noisy:
                    x[m, 0, 0, v] = f + rng.normal(0, 0.01, f.shape)
                else:
                    x[m, 0, 0, v] = np.round(f * 256) / 256  # multiples of 2^-8
        w.fields.append(x)
    return w


def dir_size(path: str | Path) -> int:
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def rm(path: str | Path) -> None:
    p = Path(path)
    if p.is_dir():
        shutil.rmtree(p)
    elif p.exists():
        p.unlink()


def add_size_arg(ap: Any) -> None:
    """`--size MEMBERSxSTEPSxNLATxNLON`: the grid of a run, instead of the full or --quick one."""
    ap.add_argument("--size", default=None, metavar="MxSxLATxLON",
                    help="members x steps x lat x lon, e.g. 4x6x721x1440 (instead of the default grid or --quick's)")


def size_from(args: Any, default: dict[str, int]) -> dict[str, int]:
    """The grid `--size` names, else `default` (a copy)."""
    if not getattr(args, "size", None):
        return dict(default)
    try:
        members, steps, nlat, nlon = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        raise SystemExit(f"--size takes MEMBERSxSTEPSxNLATxNLON (four positive integers), got {args.size!r}") from None
    if min(members, steps, nlat, nlon) < 1:
        raise SystemExit(f"--size: every extent must be positive, got {args.size!r}")
    return dict(members=members, steps=steps, nlat=nlat, nlon=nlon)


def size_argv(size: dict[str, int]) -> list[str]:
    """`--size ...` for a child process of a benchmark (the inverse of size_from)."""
    return ["--size", f"{size['members']}x{size['steps']}x{size['nlat']}x{size['nlon']}"]


def _cpuinfo() -> dict[str, Any]:
    """The first CPU's family, model and stepping, and the instruction sets a compressor may use (Linux)."""
    info: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for ln in f:
                if not ln.strip():
                    break  # the first processor's block is enough
                k, _, v = ln.partition(":")
                info[k.strip()] = v.strip()
    except OSError:
        return {}
    flags = set(info.get("flags", "").split())
    out: dict[str, Any] = {k.replace(" ", "_"): info[k] for k in ("vendor_id", "cpu family", "model", "stepping")
                           if k in info}
    out["isa"] = [f for f in ("sse4_2", "avx2", "bmi2", "avx512f", "avx512bw", "sha_ni") if f in flags]
    return out


def compress_calibration() -> float:
    """MB/s of one core compressing a seed-like field with blosc zstd-3 + shuffle (numcodecs, the peers' path).

    `lscpu` names two very different VMs alike ("AMD EPYC"); this number tells
    them apart in a record: it is the rate every host-compressing writer here is
    bounded by (best of 5 on one 4 MB field, single-threaded, about 0.1 s).
    """
    try:
        import numcodecs
        import numcodecs.blosc
    except ImportError:
        return 0.0
    w = make_workload(1, 1, 721, 1440)
    field = np.ascontiguousarray(w.fields[0][0, 0, 0, 0])
    codec = numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.SHUFFLE)
    threads = numcodecs.blosc.set_nthreads(1)  # returns the previous setting
    try:
        codec.encode(field)  # warm up
        best = float("inf")
        for _ in range(5):
            t = time.perf_counter()
            codec.encode(field)
            best = min(best, time.perf_counter() - t)
    finally:
        numcodecs.blosc.set_nthreads(threads)
    return round(field.nbytes / best / 1e6, 1)


def machine() -> dict[str, Any]:
    """The machine a record comes from: CPU (lscpu's name, family/model, ISA), cores, kernel, memory, Python,
    and a one-core compression rate (`compress_calibration`) that tells alike-named VMs apart."""
    cpu = ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        cpu = next(ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name"))
    except (OSError, StopIteration, subprocess.SubprocessError):
        pass
    if not cpu:
        try:
            cpu = next(ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name"))
        except (OSError, StopIteration):
            pass
    mem = 0
    try:
        mem = int(next(ln.split()[1] for ln in open("/proc/meminfo") if ln.startswith("MemTotal"))) * 1024
    except (OSError, StopIteration):
        pass
    return {
        "host": platform.node(),
        "cpu": cpu,
        "cpuinfo": _cpuinfo(),
        "cores": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "memory_gib": round(mem / 2**30, 1),
        "python": platform.python_version(),
        "zstd3_1core_mbps": compress_calibration(),
    }


def settle() -> None:
    """Collect garbage before a timed run (untimed).

    A full collection of this process's heap (torch, zarr, earth2studio loaded)
    takes 0.4-0.6 s; without this, one that the previous competitor's garbage
    made due lands inside whichever competitor runs next.
    """
    gc.collect()


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    """(seconds until fn returned = files closed, seconds until synced)."""
    t0 = time.perf_counter()
    fn()
    t1 = time.perf_counter()
    os.sync()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t0


def run_interleaved(
    competitors: dict[str, Callable[[str], None]],
    outdir: Path,
    repeats: int,
    nbytes: int,
    log: Callable[[str], None] = print,
) -> dict[str, dict[str, Any]]:
    """Run each competitor `repeats` times, rotating the order every round."""
    names = list(competitors)
    samples: dict[str, dict[str, list[float]]] = {n: {"closed": [], "synced": []} for n in names}
    sizes: dict[str, int] = {}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for n in order:
            target = outdir / n.replace(" ", "_").replace("/", "_")
            rm(target)
            os.sync()
            settle()
            closed, synced = timed(lambda n=n, target=target: competitors[n](str(target)))
            samples[n]["closed"].append(closed)
            samples[n]["synced"].append(synced)
            sizes[n] = dir_size(target)
            log(f"  round {r + 1}/{repeats} {n:<34s} closed {closed:7.3f} s  synced {synced:7.3f} s")
            rm(target)
    out = {}
    for n in names:
        c, s = statistics.median(samples[n]["closed"]), statistics.median(samples[n]["synced"])
        out[n] = {
            "closed_s": c,
            "synced_s": s,
            "closed_all_s": samples[n]["closed"],
            "synced_all_s": samples[n]["synced"],
            "bytes_on_disk": sizes[n],
            "ratio": nbytes / sizes[n] if sizes[n] else None,
            "mb_per_s_synced": nbytes / s / 1e6,
        }
    return out


def print_table(title: str, results: dict[str, dict[str, Any]], baseline: str, nbytes: int) -> None:
    print(f"\n{title}  ({nbytes / 1e9:.2f} GB raw)")
    print(f"{'backend':<36s}{'closed s':>10s}{'synced s':>10s}{'MB/s':>9s}{'size MB':>10s}{'ratio':>7s}"
          f"{'speed-up':>10s}")
    base = results[baseline]["synced_s"]
    for n, r in results.items():
        print(
            f"{n:<36s}{r['closed_s']:>10.3f}{r['synced_s']:>10.3f}{r['mb_per_s_synced']:>9.0f}"
            f"{r['bytes_on_disk'] / 1e6:>10.1f}{(r['ratio'] or 0):>7.2f}{base / r['synced_s']:>9.2f}x"
        )


def git_rev() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=False).stdout.strip()
    except OSError:
        return ""


def save_json(path: str | Path, record: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(record, indent=2, default=str))


def write_zarr_slices(store: Any, w: Workload, codec: Any, variables: tuple[str, ...] = ("t2m", "tcwv")) -> None:
    """zarr-python at its best from Python: one slice assignment per array and step.

    `store` is a local path or any zarr Store (ObjectStore, FsspecStore, ...).
    """
    from e2fastio.baselines import StandInZarrBackend

    io = StandInZarrBackend(store, {"time": 1, "lead_time": 1}, codec)
    io.add_array(w.coords, list(variables))
    arrays = [io.root[name] for name in variables]
    for k in range(w.steps):
        xs, _ = w.step(k)
        for x, arr in zip(xs, arrays, strict=True):
            arr[:, :, k : k + 1] = x


FIELDS = ("smooth", "noisy")


def make_noisy_workload(
    members: int, steps: int, nlat: int, nlon: int, seed: int = 0, distinct: int | None = None
) -> Workload:
    """`make_workload`'s fields plus unquantised Gaussian noise (0.5 of the unit): less compressible.

    Every mantissa bit then carries information, as in model output that was
    never rounded, and blosc zstd-3 + shuffle compresses it about 1.2-1.9x
    instead of ~3x. tcwv stays non-negative. Steps that `distinct` makes
    share one array get the same noise (the bytes written do not change).
    """
    w = make_workload(members, steps, nlat, nlon, seed, distinct)
    rng = np.random.default_rng(seed + 1_000_003)
    noisy: dict[int, np.ndarray] = {}
    fields = []
    for f in w.fields:
        if id(f) not in noisy:
            g = f + rng.standard_normal(f.shape, dtype=np.float32) * np.float32(0.5)
            np.maximum(g[:, :, :, 1], 0, out=g[:, :, :, 1])
            noisy[id(f)] = g
        fields.append(noisy[id(f)])
    w.fields = fields
    return w


def make_fields(kind: str, **size: Any) -> Workload:
    """The seed workload with `kind` fields: "smooth" (`make_workload`, seed-like) or "noisy"."""
    if kind == "smooth":
        return make_workload(**size)
    if kind == "noisy":
        return make_noisy_workload(**size)
    raise ValueError(f"fields must be one of {FIELDS}, got {kind!r}")
