"""The seed's ensemble workflow (Earth2Studio's IO example), each IO case run by e2fastio and its counterpart.

Every case of the seed runs twice in a row: once with Earth2Studio's own
backend (when ``earth2studio`` is installed; otherwise a pure-Python stand-in
from :mod:`e2fastio.baselines`, labelled as one) and once with e2fastio's
drop-in for it. Every store is read back and compared field by field; the
report gives the time until the outputs are durable, what IO added to the
model's own time, throughput, size, compression, peak memory and files.

Size (over 700 lines): one module for the whole seed example, so that the
cases, the pairing, the measuring and the report read as one script does;
it is the demo, not part of the write path.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
import platform
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
import zarr.codecs
import zarr.storage

from e2fastio._write.zarr_arrays import get_array
from e2fastio.demo.model import AdvectionDiffusionModel, GpuLikeModel, ensemble_start, grid, initial_state
from e2fastio.demo.s3 import LocalS3Server, S3Target, local_server_unavailable

logger = logging.getLogger(__name__)

START = np.datetime64("2022-12-20T00:00", "ns")
SAVED = ("t2m", "tcwv")
BLOSC: dict[str, Any] = dict(cname="zstd", clevel=3, shuffle="shuffle")
CHUNKS = {"time": 1, "lead_time": 1}
S3_STEPS = 4  # the seed writes 4 steps to S3
MODELS = ("auto", "gpu", "cpu", "gpu-like")
DURABLE = ("durable s: add_array, every write and close(), then fsync of every file the store wrote "
           "(in memory: close() returned; S3: close() returned = every object acknowledged)")


class DemoError(RuntimeError):
    """The demo's outputs disagree, or an option is invalid."""


def _blosc() -> Any:
    return zarr.codecs.BloscCodec(**BLOSC)


# ----------------------------------------------------------------------------- cases
@dataclass
class Context:
    """What a backend needs to be made: the output directory, the run's coordinates, the S3 target."""

    out: Path
    coords: OrderedDict[str, np.ndarray]
    s3: S3Target | None = None

    @property
    def parallel(self) -> dict[str, np.ndarray]:
        return {"time": self.coords["time"], "lead_time": self.coords["lead_time"]}


@dataclass
class Member:
    """One side of a case: a backend, how to make it and where it writes."""

    key: str
    label: str
    role: str  # "e2fastio" | "earth2studio" | "stand-in"
    make: Callable[[Context, str], Any]  # (context, local path) -> IOBackend
    local: str | None = None  # file or directory name under the output directory
    s3_name: str | None = None  # name under the S3 target

    def target(self, out: Path) -> Path | None:
        return out / self.local if self.local else None


@dataclass
class Case:
    """One IO setup of the seed, run by its counterpart (`theirs`) and by e2fastio (`ours`)."""

    name: str
    title: str
    theirs: Member
    ours: Member
    s3: bool = False

    def steps(self, steps: int) -> int:
        return min(steps, S3_STEPS) if self.s3 else steps


def earth2studio_io() -> tuple[Any | None, str]:
    """``(earth2studio.io, "Earth2Studio <version>")``, or ``(None, why not)``."""
    try:
        import earth2studio
        import earth2studio.io as e2s_io
    except ImportError as err:
        return None, f"earth2studio is not installed ({err}); pip install 'e2fastio[compare]' for the real backends"
    return e2s_io, f"Earth2Studio {getattr(earth2studio, '__version__', '?')}"


def build_cases(e2s: Any | None, e2s_name: str = "Earth2Studio") -> list[Case]:
    """The seed's cases, each paired with Earth2Studio's backend (`e2s`) or a stand-in when it is ``None``."""
    import e2fastio
    from e2fastio import baselines as sb

    Maker = tuple[str, Callable[[Context, str], Any]]

    def pair(name: str, title: str, theirs: Maker, standin: Maker, ours: Maker,
             local: str | None = None, s3: bool = False) -> Case:
        label, make = theirs if e2s is not None else standin
        role = "earth2studio" if e2s is not None else "stand-in"
        tkey = ("e2s-" if e2s is not None else "standin-") + name

        def loc(who: str) -> str | None:
            return f"{who}-{local}" if local else None

        return Case(name, title,
                    Member(tkey, label, role, make, loc(tkey.split("-")[0]), f"{tkey}" if s3 else None),
                    Member(name, ours[0], "e2fastio", ours[1], loc("e2fastio"), f"e2fastio-{name}" if s3 else None),
                    s3=s3)

    e = e2s_name
    e2s_zarr: Any = getattr(e2s, "ZarrBackend", None)
    e2s_nc: Any = getattr(e2s, "NetCDF4Backend", None)
    e2s_async: Any = getattr(e2s, "AsyncZarrBackend", None)
    ow = {"overwrite": True}
    cases = [
        pair("zarr", "Zarr, uncompressed",
             (f"{e} ZarrBackend", lambda c, p: e2s_zarr(p, chunks=CHUNKS, backend_kwargs=ow)),
             ("stand-in: zarr-python (E2S 0.19's writes)",
              lambda c, p: sb.StandInZarrBackend(p, CHUNKS)),
             ("e2fastio ZarrBackend", lambda c, p: e2fastio.ZarrBackend(p, chunks=CHUNKS,
                                                                     backend_kwargs=ow)), "zarr.zarr"),
        pair("zarr-blosc", "Zarr, blosc zstd-3 + shuffle",
             (f"{e} ZarrBackend", lambda c, p: e2s_zarr(p, chunks=CHUNKS,
                                                      backend_kwargs=ow, zarr_codecs=_blosc())),
             ("stand-in: zarr-python (E2S 0.19's writes)",
              lambda c, p: sb.StandInZarrBackend(p, CHUNKS, _blosc())),
             ("e2fastio ZarrBackend", lambda c, p: e2fastio.ZarrBackend(
                 p, chunks=CHUNKS, backend_kwargs=ow, zarr_codecs=_blosc())),
             "zarr-blosc.zarr"),
        pair("netcdf", "NetCDF4, uncompressed",
             (f"{e} NetCDF4Backend", lambda c, p: e2s_nc(p, backend_kwargs={"mode": "w"})),
             ("stand-in: netCDF4-python (E2S 0.19's writes)",
              lambda c, p: sb.StandInNetCDF4Backend(p)),
             ("e2fastio NetCDF4Backend", lambda c, p: e2fastio.NetCDF4Backend(p,
                                                                           backend_kwargs={"mode": "w"})),
             "netcdf.nc"),
        pair("zarr-memory", "Zarr in memory, uncompressed",
             (f"{e} ZarrBackend()", lambda c, p: e2s_zarr(chunks=CHUNKS, backend_kwargs=ow)),
             ("stand-in: zarr-python MemoryStore", lambda c, p: sb.StandInZarrBackend(None, CHUNKS)),
             ("e2fastio ZarrBackend()", lambda c, p: e2fastio.ZarrBackend(chunks=CHUNKS, backend_kwargs=ow))),
        pair("async-blocking", "AsyncZarr blocking, blosc zstd-3",
             (f"{e} AsyncZarrBackend", lambda c, p: e2s_async(p,
                                                            parallel_coords=c.parallel, zarr_codecs=_blosc())),
             ("stand-in: zarr-python (E2S 0.19's writes)", lambda c, p: sb.StandInAsyncZarrBackend(
                 p, CHUNKS, _blosc(), blocking=True)),
             ("e2fastio AsyncZarrBackend", lambda c, p: e2fastio.AsyncZarrBackend(
                 p, parallel_coords=c.parallel, zarr_codecs=_blosc())),
             "async-blocking.zarr"),
        pair("async-nonblocking", "AsyncZarr non-blocking, blosc zstd-3",
             (f"{e} AsyncZarrBackend(blocking=False)", lambda c, p: e2s_async(
                 p, parallel_coords=c.parallel, blocking=False,
                 zarr_codecs=_blosc())),
             ("stand-in: zarr-python in a thread pool", lambda c, p: sb.StandInAsyncZarrBackend(
                 p, CHUNKS, _blosc(), blocking=False)),
             ("e2fastio AsyncZarrBackend(blocking=False)", lambda c, p: e2fastio.AsyncZarrBackend(
                 p, parallel_coords=c.parallel, blocking=False,
                 zarr_codecs=_blosc())),
             "async-nonblocking.zarr"),
        pair("s3", f"S3, AsyncZarr non-blocking, pool_size=16, blosc zstd-3 ({S3_STEPS} steps, as the seed)",
             (f"{e} AsyncZarrBackend(store=s3://)", lambda c, p: _s3_async(e2s_async, c, p)),
             ("stand-in: zarr-python + obstore, thread pool", lambda c, p: sb.StandInAsyncZarrBackend(
                 zarr.storage.ObjectStore(_s3(c).obstore(p)), CHUNKS, _blosc(), pool_size=16)),
             ("e2fastio AsyncZarrBackend(store=s3://)", lambda c, p: _s3_async(e2fastio.AsyncZarrBackend, c, p)),
             s3=True),
    ]
    return cases


def _s3(c: Context) -> S3Target:
    if c.s3 is None:
        raise DemoError("the S3 case needs an S3 target")
    return c.s3


def _s3_async(cls: Any, c: Context, name: str) -> Any:
    s3 = _s3(c)
    return cls(None, parallel_coords=c.parallel, store=s3.location(name), store_kwargs=s3.store_kwargs(),
               blocking=False, pool_size=16, zarr_codecs=_blosc())


def case_names() -> list[str]:
    return [c.name for c in build_cases(None)]


# ----------------------------------------------------------------------------- the model
class ModelRun:
    """The stand-in model as the report runs it: on a GPU, on the CPU, or GPU-like (see :class:`GpuLikeModel`)."""

    def __init__(self, mode: str, lat: np.ndarray, lon: np.ndarray, members: int, seed: int, steps: int,
                 step_seconds: float | None, device: str | None) -> None:
        self.mode = mode
        self.step_seconds = step_seconds
        x0 = initial_state(lat, lon, seed)
        if mode == "gpu-like":
            model = AdvectionDiffusionModel(lat, lon, "cpu")
            self.device = "cpu"
            self.gpulike: GpuLikeModel | None = GpuLikeModel(model, ensemble_start(x0, members, seed), steps,
                                                             len(SAVED), step_seconds)
            self.model = model
        else:
            self.device = device or ("cuda" if mode == "gpu" else "cpu")
            self.model = AdvectionDiffusionModel(lat, lon, self.device)
            self.start = ensemble_start(x0.to(self.device), members, seed)
            self.gpulike = None

    def describe(self) -> str:
        if self.gpulike is not None:
            how = ("measured on the CPU while precomputing" if self.step_seconds is None else "declared")
            return (f"gpu-like: the demo model's fields, precomputed; each step sleeps "
                    f"{self.gpulike.step_seconds:.3f} s ({how}), leaving the CPU to the IO as a GPU model would")
        extra = f", plus {self.step_seconds:g} s sleep per step" if self.step_seconds else ""
        if self.mode == "gpu":
            return f"gpu: the demo model computes on {self.device}{extra}"
        return (f"cpu: the demo model computes on the CPU{extra}, competing with the encoder threads "
                "(a GPU model would not)")

    def outputs(self, nsteps: int) -> Iterator[torch.Tensor]:
        """The saved variables of the initial state and of each of `nsteps` steps, (ensemble, variable, lat, lon)."""
        it: Iterator[torch.Tensor]
        if self.gpulike is not None:
            it = self.gpulike.create_iterator()
        else:
            it = (x[:, : len(SAVED)] for x in self.model.create_iterator(self.start))
        for step, x in enumerate(it):
            if step and self.gpulike is None and self.step_seconds:
                time.sleep(self.step_seconds)
            yield x
            if step == nsteps:
                break

    def synchronize(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)


def resolve_model(model: str, device: str | None) -> tuple[str, str | None]:
    """The model mode and device that `--model` and `--device` ask for; :class:`DemoError` if impossible."""
    if model not in MODELS:
        raise DemoError(f"--model {model!r}: choose one of {', '.join(MODELS)}")
    if device is not None:
        kind = "gpu" if device.startswith("cuda") else "cpu" if device == "cpu" else None
        if kind is None:
            raise DemoError(f"--device {device!r}: give cpu or cuda[:N]")
        if model == "auto":
            model = kind
        elif model != kind:
            raise DemoError(f"--device {device} contradicts --model {model}; leave one out")
    if model == "auto":
        model = "gpu" if torch.cuda.is_available() else "gpu-like"
    if model == "gpu" and not torch.cuda.is_available():
        what = f"--device {device}" if device else "--model gpu"
        raise DemoError(f"{what}: no CUDA device is available here; use --model gpu-like (the default without a "
                        "GPU) or --model cpu")
    return model, (device if model == "gpu" else None)


def christmas_five_day_ensemble(run: ModelRun, io: Any, nsteps: int, nensemble: int,
                                progress: bool = True) -> None:
    """The seed's workflow: ``add_array`` once, then one write of t2m and tcwv per step (``io=None``: no IO)."""
    lead = np.arange(nsteps + 1) * np.timedelta64(6, "h")  # as Earth2Studio models give it
    total = OrderedDict(ensemble=np.arange(nensemble), time=np.array([START]), lead_time=lead,
                        lat=run.model.lat, lon=run.model.lon)
    if io is not None:
        io.add_array(total, list(SAVED))
    bar = _bar(nsteps + 1, progress)
    for step, x in enumerate(run.outputs(nsteps)):
        if io is not None:
            out = x.unsqueeze(1).unsqueeze(1)  # (ensemble, time, lead_time, variable, lat, lon)
            coords = OrderedDict(total, lead_time=lead[step : step + 1])
            io.write([out[:, :, :, i] for i in range(len(SAVED))], coords, list(SAVED))
        bar.update(1)
    bar.close()


def run_coords(nsteps: int, nensemble: int, lat: np.ndarray, lon: np.ndarray) -> OrderedDict[str, np.ndarray]:
    lead = np.arange(nsteps + 1) * np.timedelta64(6, "h")
    return OrderedDict(ensemble=np.arange(nensemble), time=np.array([START]), lead_time=lead, lat=lat, lon=lon)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, progress: bool) -> Any:
    if not progress:
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, position=1, leave=False)


# ----------------------------------------------------------------------------- measuring
def _reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark (Linux: ``clear_refs`` 5); False where that is refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_bytes(key: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _peak_rss() -> int | None:
    """This process's RSS high-water mark (Linux ``VmHWM``), ``None`` where unknown."""
    return _status_bytes("VmHWM:")


def _rss() -> int | None:
    return _status_bytes("VmRSS:")


def _fsync_tree(target: Path | None) -> None:
    """fsync every file and directory under `target` (a file: that file)."""
    if target is None or not target.exists():
        return
    paths = [target] if target.is_file() else [target, *target.rglob("*")]
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _remove(target: Path | None) -> None:
    if target is not None and target.exists():
        shutil.rmtree(target) if target.is_dir() else target.unlink()


def _open_zarr(member: Member, ctx: Context, io: Any) -> zarr.Group:
    target = member.target(ctx.out)
    if member.s3_name is not None:
        return zarr.open_group(zarr.storage.ObjectStore(_s3(ctx).obstore(member.s3_name), read_only=True), mode="r")
    if target is not None:
        return zarr.open_group(zarr.storage.LocalStore(str(target), read_only=True), mode="r")
    return zarr.open_group(io.store, mode="r")


def _size_and_files(member: Member, ctx: Context, io: Any) -> tuple[int, int]:
    """(bytes stored, files created): local files, S3 objects, or in-memory bytes (no files)."""
    target = member.target(ctx.out)
    if member.s3_name is not None:
        import obstore

        objs = [o for batch in obstore.list(_s3(ctx).obstore(member.s3_name)) for o in batch]
        return int(sum(o["size"] for o in objs)), len(objs)
    if target is not None:
        if target.is_file():
            return target.stat().st_size, 1
        files = [f for f in target.rglob("*") if f.is_file()]
        return sum(f.stat().st_size for f in files), len(files)
    d = getattr(io.store, "_store_dict", None)
    if d is not None and hasattr(d, "sink"):  # e2fastio's native mapping
        return int(d.sink.nbytes()), 0
    return (int(sum(len(v) for v in d.values())) if d is not None else 0), 0


@dataclass
class ReadBack:
    """Digests of every stored field (per variable, per lead time) and the plotted lead's statistics."""

    digests: dict[str, list[str]] = field(default_factory=dict)
    mean: np.ndarray | None = None
    spread: np.ndarray | None = None


def _read_back(member: Member, ctx: Context, io: Any, plot_lead: int | None) -> ReadBack:
    target = member.target(ctx.out)
    rb = ReadBack()
    with contextlib.ExitStack() as stack:
        sources: dict[str, Any]  # netCDF variables or zarr arrays, (ensemble, time, lead_time, lat, lon)
        if target is not None and target.suffix == ".nc":
            ds = stack.enter_context(_open_netcdf(target))
            sources = {v: ds[v] for v in SAVED}
        else:
            root = _open_zarr(member, ctx, io)
            sources = {v: get_array(root, v) for v in SAVED}
        nlead = int(sources[SAVED[0]].shape[2])
        for v in SAVED:
            rb.digests[v] = []
            for k in range(nlead):
                field_ = np.ascontiguousarray(sources[v][:, :, k], dtype=np.float32)
                rb.digests[v].append(hashlib.blake2b(field_.data, digest_size=16).hexdigest())
                if v == "t2m" and k == plot_lead:
                    f64 = field_[:, 0].astype(np.float64)
                    rb.mean, rb.spread = f64.mean(axis=0), f64.std(axis=0)
    return rb


@contextlib.contextmanager
def _open_netcdf(path: Path) -> Iterator[Any]:
    try:
        import netCDF4
    except ImportError:
        import h5netcdf

        with h5netcdf.File(path, "r") as f:
            yield f
        return
    ds = netCDF4.Dataset(str(path), "r")
    ds.set_auto_mask(False)
    try:
        yield ds
    finally:
        ds.close()


def _measure(member: Member, ctx: Context, run: ModelRun, nsteps: int, members: int, progress: bool,
             plot_lead: int | None, keep: bool) -> tuple[dict[str, Any], ReadBack]:
    target = member.target(ctx.out)
    _remove(target)
    io = member.make(ctx, member.s3_name or str(target))
    # Untimed: a full collection due from the previous backend's garbage would land in this one. (No
    # os.sync() here: every store's files were fsynced inside its own timing, so none of ours are dirty.)
    gc.collect()
    rss_before = _rss()
    reset = _reset_peak_rss()
    t0 = time.perf_counter()
    christmas_five_day_ensemble(run, io, nsteps, members, progress)
    close = getattr(io, "close", None)
    if callable(close):
        close()
    closed = time.perf_counter() - t0
    _fsync_tree(target)
    durable = time.perf_counter() - t0
    peak = _peak_rss()
    size, files = _size_and_files(member, ctx, io)
    rb = _read_back(member, ctx, io, plot_lead)
    del io
    gc.collect()
    if not keep:
        _remove(target)
    logger.info("%s: %.2f s", member.key, durable)
    return {"label": member.label, "role": member.role, "steps": nsteps, "seconds": durable,
            "closed_seconds": closed, "bytes": size, "files": files, "peak_rss_bytes": peak,
            "rss_before_bytes": rss_before, "peak_rss_reset": reset}, rb


# ----------------------------------------------------------------------------- the run
def run_demo(members: int = 8, steps: int = 20, resolution: float = 0.25, model: str = "auto",
             device: str | None = None, backends: list[str] | None = None, out: str | Path = "outputs/e2fastio-demo",
             seed: int = 0, model_step_seconds: float | None = None, progress: bool = True, keep: bool = False,
             plot: bool = True, s3: S3Target | None = None, use_s3: bool = True,
             lead_hours: int = 48) -> dict[str, Any]:
    """Run every case of the seed with e2fastio and its counterpart; report, check, plot.

    Parameters
    ----------
    members, steps, resolution :
        Ensemble size, 6 h steps after the initial state, grid spacing in degrees.
    model : {"auto", "gpu", "cpu", "gpu-like"}
        How the stand-in model runs ("auto": on the GPU if there is one, else GPU-like).
    device : str | None
        Torch device (``cpu`` or ``cuda[:N]``); implies the model mode when `model` is "auto".
    backends : list[str] | None
        Case names (default: every case).
    model_step_seconds : float | None
        GPU-like: the declared step time (default: measured); otherwise a sleep added to each step.
    s3, use_s3 :
        The S3 target; without one a local S3 server (moto) is started when installed. ``use_s3=False`` skips S3.
    lead_hours :
        Lead time of the figure's maps (a multiple of 6).

    Returns
    -------
    dict
        The JSON record (also written to ``<out>/demo.json``).

    Raises
    ------
    DemoError
        When an option is invalid, or when any store's contents differ from the others'.
    """
    if s3 is not None and not s3.url.startswith(("s3://", "s3a://")):
        raise DemoError(f"--s3 {s3.url!r}: give an S3 URL such as s3://bucket/prefix")
    e2s, e2s_name = earth2studio_io()
    cases = {c.name: c for c in build_cases(e2s, e2s_name if e2s is not None else "Earth2Studio")}
    names = backends or list(cases)
    unknown = [n for n in names if n not in cases]
    if unknown:
        raise DemoError(f"--backends: unknown case(s) {unknown}; choose from {', '.join(cases)}")
    if members < 1 or steps < 1:
        raise DemoError("--members and --steps must be at least 1")
    if resolution <= 0 or (180 / resolution) % 1 or (360 / resolution) % 1:
        raise DemoError(f"--grid {resolution}: use a spacing in degrees that divides 180, e.g. 0.25, 0.5, 1, 2")
    if lead_hours < 0 or lead_hours % 6:
        raise DemoError(f"--lead-hours {lead_hours}: give a multiple of 6")
    mode, device = resolve_model(model, device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lat, lon = grid(resolution)
    plot_lead = min(lead_hours // 6, steps)

    skipped: dict[str, str] = {}
    server: LocalS3Server | None = None
    if "s3" in names:
        if not use_s3:
            skipped["s3"] = "--no-s3"
        elif s3 is None:
            why = local_server_unavailable()
            if why is None:
                try:
                    server = LocalS3Server()
                except RuntimeError as err:
                    why = str(err)
                else:
                    s3 = server.target()
            if why is not None:
                skipped["s3"] = why
    for n in skipped:
        print(f"{cases[n].title}: skipped: {skipped[n]}")
    names = [n for n in names if n not in skipped]

    loguru = _quiet_earth2studio()
    try:
        return _run(cases, names, skipped, e2s_name if e2s is not None else None, members, steps, lat, lon,
                    resolution, mode, device, seed, model_step_seconds, progress, keep, plot, s3, server, out,
                    plot_lead)
    finally:
        if loguru is not None:
            loguru.enable("earth2studio")
        if server is not None:
            server.stop()


def _quiet_earth2studio() -> Any:
    """Earth2Studio logs each write at DEBUG to stderr (loguru); silence it for the run."""
    try:
        from loguru import logger as loguru
    except ImportError:
        return None
    loguru.disable("earth2studio")
    return loguru


def _run(cases: dict[str, Case], names: list[str], skipped: dict[str, str], e2s: str | None, members: int,
         steps: int, lat: np.ndarray, lon: np.ndarray, resolution: float, mode: str, device: str | None, seed: int,
         model_step_seconds: float | None, progress: bool, keep: bool, plot: bool, s3: S3Target | None,
         server: LocalS3Server | None, out: Path, plot_lead: int) -> dict[str, Any]:
    run = ModelRun(mode, lat, lon, members, seed, steps, model_step_seconds, device)
    print(f"model: {run.describe()}")
    print("counterparts: " + (f"{e2s} (earth2studio.io)" if e2s else
                              "pure-Python stand-ins (earth2studio is not installed: pip install 'e2fastio[compare]')"))
    # The model alone (no IO), after a warm-up, is what the IO time is measured against.
    christmas_five_day_ensemble(run, None, min(steps, 2), members, progress=False)
    model_only: dict[int, float] = {}
    for n in sorted({cases[c].steps(steps) for c in names} | {steps}):
        t0 = time.perf_counter()
        christmas_five_day_ensemble(run, None, n, members, progress=False)
        run.synchronize()
        model_only[n] = time.perf_counter() - t0

    results: dict[str, dict[str, Any]] = {}
    reads: dict[str, ReadBack] = {}
    figure_from: str | None = None
    for name in names:
        case = cases[name]
        n = case.steps(steps)
        ctx = Context(out, run_coords(n, members, lat, lon), s3)
        for member in (case.theirs, case.ours):
            r, rb = _measure(member, ctx, run, n, members, progress, plot_lead if figure_from is None else None,
                             keep)
            raw = (n + 1) * members * len(SAVED) * len(lat) * len(lon) * 4
            r.update(case=name, model_seconds=model_only[n], io_seconds=max(r["seconds"] - model_only[n], 0.0),
                     raw_bytes=raw, mb_per_s=raw / r["seconds"] / 1e6, ratio=raw / r["bytes"] if r["bytes"] else None)
            results[member.key] = r
            reads[member.key] = rb
            if figure_from is None and rb.mean is not None:
                figure_from = member.key
        if case.s3 and not keep:
            _delete_s3(ctx, (case.theirs, case.ours))
        theirs, ours = results[case.theirs.key], results[case.ours.key]
        theirs["pair"], ours["pair"] = case.ours.key, case.theirs.key
        ours["speedup"] = theirs["seconds"] / ours["seconds"]
        theirs["speedup"] = None

    mismatches = _compare(reads)
    record: dict[str, Any] = {
        "demo": "christmas_five_day_ensemble",
        "machine": {"host": platform.node(), "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
                    "torch": torch.__version__, "cuda": torch.cuda.is_available()},
        "options": {"members": members, "steps": steps, "grid": resolution, "lat": len(lat), "lon": len(lon),
                    "model": mode, "device": run.device, "model_step_seconds": model_step_seconds,
                    "cases": names, "lead_hours_plotted": 6 * plot_lead},
        "model": run.describe(),
        "model_step_seconds": run.gpulike.step_seconds if run.gpulike is not None else None,
        "counterparts": e2s or "stand-ins",
        "definitions": {"seconds": DURABLE, "io_seconds": "seconds minus the model alone for the same steps",
                        "mb_per_s": "raw bytes written / seconds", "speedup": "the counterpart's seconds / e2fastio's",
                        "peak_rss_bytes": "this process's RSS high-water mark during the run (reset before it); "
                                          "the table shows it minus rss_before_bytes"},
        "s3": ({"url": s3.url, "endpoint": s3.endpoint, "local_server": server is not None} if s3 else None),
        "skipped": skipped,
        "model_only_seconds": model_only,
        "results": results,
        "identical": not mismatches,
        "compared": len(reads),
        "mismatches": mismatches,
        "figure_from": figure_from,
    }
    (out / "demo.json").write_text(json.dumps(record, indent=2))
    print_report(record, cases)
    if plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            record["figure"] = None
            print("figure skipped: matplotlib is not installed (pip install 'e2fastio[plot]'); "
                  f"the table above and {out / 'demo.json'} are complete")
        else:
            fig = plot_report(record, cases, reads.get(figure_from) if figure_from else None, lat, lon,
                              out / "demo.png")
            record["figure"] = str(fig)
            print(f"figure: {fig}")
        (out / "demo.json").write_text(json.dumps(record, indent=2))
    print(f"JSON record: {out / 'demo.json'}")
    if mismatches:
        raise DemoError(f"stores disagree: {mismatches[:10]}{' ...' if len(mismatches) > 10 else ''}")
    return record


def _compare(reads: dict[str, ReadBack]) -> list[str]:
    """Every store against the one with the most lead times: ``key:variable@lead`` of each differing field."""
    if not reads:
        return []
    ref_key = max(reads, key=lambda k: len(reads[k].digests[SAVED[0]]))
    ref = reads[ref_key].digests
    bad = []
    for key, rb in reads.items():
        for v in SAVED:
            for k, d in enumerate(rb.digests[v]):
                if k >= len(ref[v]) or d != ref[v][k]:
                    bad.append(f"{key}:{v}@{6 * k}h")
    return bad


def _delete_s3(ctx: Context, members: tuple[Member, ...]) -> None:
    import obstore

    for m in members:
        if m.s3_name is None:
            continue
        store = _s3(ctx).obstore(m.s3_name)
        for batch in obstore.list(store):
            obstore.delete(store, [o["path"] for o in batch])


# ----------------------------------------------------------------------------- report
def print_report(record: dict[str, Any], cases: dict[str, Case]) -> None:
    o = record["options"]
    raw = (o["steps"] + 1) * o["members"] * len(SAVED) * o["lat"] * o["lon"] * 4
    print(f"\nEnsemble forecast: {o['members']} members, {o['steps']} steps of 6 h, grid {o['lat']} x {o['lon']}, "
          f"{raw / 1e9:.2f} GB per store; model alone {record['model_only_seconds'][o['steps']]:.2f} s "
          f"({o['model']}); counterparts: {record['counterparts']}")
    print(DURABLE)
    w = 2 + max([len(r["label"]) for r in record["results"].values()] + [36])
    head = (f"{'backend':<{w}s}{'durable s':>10s}{'IO s':>8s}{'MB/s':>8s}{'size MB':>9s}{'ratio':>7s}"
            f"{'peak RSS +MB':>13s}{'files':>7s}{'speed-up':>10s}")
    print(head)
    for name in record["options"]["cases"]:
        case = cases[name]
        print(case.title)
        for m in (case.theirs, case.ours):
            r = record["results"][m.key]
            sp = f"{r['speedup']:.2f}x" if r.get("speedup") else ""
            rss = (f"{max(r['peak_rss_bytes'] - r['rss_before_bytes'], 0) / 1e6:.0f}"
                   if r["peak_rss_bytes"] and r["rss_before_bytes"] and r["peak_rss_reset"] else "?")
            files = str(r["files"]) if r["files"] or m.local or m.s3_name else "-"
            print(f"  {r['label']:<{w - 2}s}{r['seconds']:>10.2f}{r['io_seconds']:>8.2f}{r['mb_per_s']:>8.0f}"
                  f"{r['bytes'] / 1e6:>9.1f}{(r['ratio'] or 0):>7.2f}{rss:>13s}{files:>7s}{sp:>10s}")
    for name, why in record["skipped"].items():
        print(f"{cases[name].title}: skipped: {why}")
    print("IO s: durable s minus the model alone; speed-up: the counterpart's durable s / e2fastio's;\n"
          "peak RSS +MB: this process's RSS high-water mark during the run above its RSS before it; "
          "files: S3 objects for S3, '-' in memory")
    if record["identical"]:
        print(f"outputs identical across all {record['compared']} stores: yes (every t2m and tcwv field compared)")
    else:
        print(f"outputs identical across all {record['compared']} stores: NO {record['mismatches'][:10]}")


def plot_report(record: dict[str, Any], cases: dict[str, Case], fields: ReadBack | None, lat: np.ndarray,
                lon: np.ndarray, path: Path) -> Path:
    """The figure: ensemble mean and spread of t2m (from one store), and time until durable per backend."""
    from matplotlib.figure import Figure

    names = record["options"]["cases"]
    rows = [(cases[n], m) for n in names for m in (cases[n].theirs, cases[n].ours)]
    fig = Figure(figsize=(13, 4.4 + 0.3 * len(rows)), layout="constrained")
    gs = fig.add_gridspec(2, 2, height_ratios=[3.4, 0.9 + 0.3 * len(rows)])
    extent = (float(lon[0]), float(lon[-1]), float(lat[-1]), float(lat[0]))
    lead = record["options"]["lead_hours_plotted"]
    if fields is not None and fields.mean is not None and fields.spread is not None:
        src = record["results"][record["figure_from"]]["label"]
        for col, (data, title, cmap, vmax) in enumerate((
                (fields.mean, f"ensemble mean t2m, +{lead} h", "Spectral_r", None),
                (fields.spread, f"ensemble spread (standard deviation) of t2m, +{lead} h", "magma",
                 float(np.percentile(fields.spread, 99.5))))):
            ax = fig.add_subplot(gs[0, col])
            im = ax.imshow(data, extent=extent, cmap=cmap, aspect="auto", origin="upper", vmax=vmax)
            ax.set_title(title, fontsize=11)
            ax.set_xlabel("longitude (deg E)")
            ax.set_ylabel("latitude (deg N)")
            fig.colorbar(im, ax=ax, label="K", extend="max" if vmax is not None else "neither")
        same = (f"all {record['compared']} stores read back identical (every field compared)" if record["identical"]
                else f"STORES DIFFER: {', '.join(record['mismatches'][:4])}")
        fig.suptitle(f"{record['options']['members']}-member forecast from 2022-12-20 00 UTC, maps read from "
                     f"{src}; {same}", fontsize=11, color="black" if record["identical"] else "red")
    ax = fig.add_subplot(gs[1, :])
    ys = np.arange(len(rows))[::-1]
    model_s = [record["results"][m.key]["model_seconds"] for _, m in rows]
    io_s = [record["results"][m.key]["io_seconds"] for _, m in rows]
    colors = ["tab:green" if m.role == "e2fastio" else "tab:gray" for _, m in rows]
    ax.barh(ys, model_s, color="#c6dbef", edgecolor="white", label="model")
    ax.barh(ys, io_s, left=model_s, color=colors, edgecolor="white")
    ax.set_yticks(ys, [f"{c.name}: {m.label}" for c, m in rows], fontsize=8)
    for y, (_, m), ms, io in zip(ys, rows, model_s, io_s, strict=True):
        sp = record["results"][m.key].get("speedup")
        if sp:
            ax.text(ms + io, y, f"  {sp:.2f}x", va="center", fontsize=8, fontweight="bold")
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color="#c6dbef", label="model alone"),
                       Patch(color="tab:gray", label=f"IO: {record['counterparts']}"),
                       Patch(color="tab:green", label="IO: e2fastio (speed-up vs its pair)")],
              loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=3, fontsize=8, frameon=False)
    ax.set_xlabel(f"seconds until outputs are durable (lower is better); model: {record['options']['model']}")
    fig.savefig(path, dpi=90)
    return path
