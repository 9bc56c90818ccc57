"""The seed's ensemble workflow (Earth2Studio IO example) against several backends."""

from __future__ import annotations

import gc
import json
import logging
import os
import platform
import shutil
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import zarr
import zarr.codecs
import zarr.storage

from e2fastio._zarr_native import get_array
from e2fastio.demo.model import AdvectionDiffusionModel, _smooth_noise, grid, initial_state

logger = logging.getLogger(__name__)

START = np.datetime64("2022-12-20T00:00", "ns")
SAVED = ("t2m", "tcwv")
BLOSC: dict[str, Any] = dict(cname="zstd", clevel=3, shuffle="shuffle")


class DemoError(RuntimeError):
    """The demo's outputs disagree, or an option is invalid."""


@dataclass
class BackendCase:
    name: str
    label: str
    make: Callable[[Path], Any]       # out dir -> IOBackend
    path: Callable[[Path], Path | None]
    baseline: bool = False


def _blosc() -> Any:
    return zarr.codecs.BloscCodec(**BLOSC)


@dataclass(frozen=True)
class S3Target:
    """Where the S3 cases write: ``<url>/<case>.zarr`` (credentials from the AWS_* environment)."""

    url: str
    endpoint: str | None = None

    def store_kwargs(self) -> dict[str, Any]:
        kw: dict[str, Any] = {}
        if self.endpoint:
            kw["endpoint"] = self.endpoint
            kw["virtual_hosted_style_request"] = False
        return kw

    def location(self, name: str) -> str:
        return f"{self.url.rstrip('/')}/{name}.zarr"

    def obstore(self, name: str) -> Any:
        import obstore.store

        kw = self.store_kwargs()
        if (self.endpoint or "").startswith("http://"):
            kw["client_options"] = {"allow_http": True}
        return obstore.store.from_url(self.location(name), **kw)


def _s3_cases(s3: S3Target) -> list[BackendCase]:
    from e2fastio import ZarrBackend
    from e2fastio.baselines import PythonZarrBackend

    ch = {"time": 1, "lead_time": 1}
    return [
        BackendCase("zarr-blosc-s3", "e2fastio Zarr zstd S3", lambda d: ZarrBackend(
            s3.location("e2fastio-zarr-blosc"), chunks=ch, backend_kwargs={"overwrite": True}, zarr_codecs=_blosc(),
            blocking=False, store_kwargs=s3.store_kwargs()), lambda d: None),
        BackendCase("python-zarr-blosc-s3", "pure Python Zarr zstd S3 (obstore)", lambda d: PythonZarrBackend(
            zarr.storage.ObjectStore(s3.obstore("python-zarr-blosc")), ch, _blosc()), lambda d: None,
            baseline=True),
    ]


def backend_cases(s3: S3Target | None = None) -> dict[str, BackendCase]:
    from e2fastio import NetCDF4Backend, ZarrBackend
    from e2fastio.baselines import PythonAsyncZarrBackend, PythonZarrBackend

    ch = {"time": 1, "lead_time": 1}
    cases = [
        BackendCase("zarr", "e2fastio Zarr", lambda d: ZarrBackend(str(d / "zarr.zarr"), chunks=ch,
                    backend_kwargs={"overwrite": True}), lambda d: d / "zarr.zarr"),
        BackendCase("zarr-blosc", "e2fastio Zarr zstd", lambda d: ZarrBackend(
            str(d / "zarr-blosc.zarr"), chunks=ch, backend_kwargs={"overwrite": True}, zarr_codecs=_blosc()),
            lambda d: d / "zarr-blosc.zarr"),
        BackendCase("zarr-memory", "e2fastio Zarr in memory", lambda d: ZarrBackend(
            chunks=ch, backend_kwargs={"overwrite": True}), lambda d: None),
        BackendCase("zarr-blosc-nonblocking", "e2fastio Zarr zstd non-blocking", lambda d: ZarrBackend(
            str(d / "zarr-blosc-nb.zarr"), chunks=ch, backend_kwargs={"overwrite": True}, zarr_codecs=_blosc(),
            blocking=False), lambda d: d / "zarr-blosc-nb.zarr"),
        BackendCase("netcdf", "e2fastio NetCDF4", lambda d: NetCDF4Backend(
            d / "netcdf.nc", backend_kwargs={"mode": "w"}), lambda d: d / "netcdf.nc"),
        BackendCase("netcdf-zlib", "e2fastio NetCDF4 zlib-4", lambda d: NetCDF4Backend(
            d / "netcdf-zlib.nc", backend_kwargs={"mode": "w"}, compression="zlib", complevel=4),
            lambda d: d / "netcdf-zlib.nc"),
        BackendCase("python-zarr", "pure Python Zarr", lambda d: PythonZarrBackend(str(d / "python-zarr.zarr"), ch),
                    lambda d: d / "python-zarr.zarr", baseline=True),
        BackendCase("python-zarr-blosc", "pure Python Zarr zstd", lambda d: PythonZarrBackend(
            str(d / "python-zarr-blosc.zarr"), ch, _blosc()), lambda d: d / "python-zarr-blosc.zarr", baseline=True),
        BackendCase("python-zarr-memory", "pure Python Zarr in memory", lambda d: PythonZarrBackend(None, ch),
                    lambda d: None, baseline=True),
        BackendCase("python-zarr-blosc-async", "pure Python Zarr zstd async", lambda d: PythonAsyncZarrBackend(
            str(d / "python-zarr-blosc-async.zarr"), ch, _blosc()), lambda d: d / "python-zarr-blosc-async.zarr",
            baseline=True),
    ]
    try:
        from earth2studio.io import ZarrBackend as E2SZarr
    except ImportError:
        pass
    else:
        cases += [
            BackendCase("e2s-zarr", "Earth2Studio Zarr", lambda d: E2SZarr(str(d / "e2s-zarr.zarr"), chunks=ch,
                        backend_kwargs={"overwrite": True}), lambda d: d / "e2s-zarr.zarr", baseline=True),
            BackendCase("e2s-zarr-blosc", "Earth2Studio Zarr zstd", lambda d: E2SZarr(
                str(d / "e2s-zarr-blosc.zarr"), chunks=ch, backend_kwargs={"overwrite": True}, zarr_codecs=_blosc()),
                lambda d: d / "e2s-zarr-blosc.zarr", baseline=True),
            BackendCase("e2s-netcdf", "Earth2Studio NetCDF4", lambda d: _e2s_netcdf(d / "e2s-netcdf.nc"),
                        lambda d: d / "e2s-netcdf.nc", baseline=True),
        ]
    if s3 is not None:
        cases += _s3_cases(s3)
    return {c.name: c for c in cases}


def _e2s_netcdf(path: Path) -> Any:
    from earth2studio.io import NetCDF4Backend as E2SNetCDF

    return E2SNetCDF(str(path), backend_kwargs={"mode": "w"})


# Which baseline each backend's speed-up is measured against.
BASELINE_OF = {"zarr": "python-zarr", "zarr-blosc": "python-zarr-blosc", "zarr-memory": "python-zarr-memory",
               "zarr-blosc-nonblocking": "python-zarr-blosc-async", "netcdf": "e2s-netcdf",
               "zarr-blosc-s3": "python-zarr-blosc-s3"}


def christmas_five_day_ensemble(model: AdvectionDiffusionModel, x0: torch.Tensor, io: Any, nsteps: int,
                                nensemble: int, seed: int, step_seconds: float = 0.0, progress: bool = True) -> None:
    """The seed's workflow: add_array once, then one write of t2m and tcwv per step."""
    lead = np.arange(nsteps + 1) * np.timedelta64(6, "h")  # as Earth2Studio models give it
    total = OrderedDict(ensemble=np.arange(nensemble), time=np.array([START]), lead_time=lead,
                        lat=model.lat, lon=model.lon)
    if io is not None:
        io.add_array(total, list(SAVED))
    g = torch.Generator().manual_seed(seed)
    # Gaussian perturbation, spatially smooth (white noise would be diffused away anyway).
    noise = _smooth_noise((nensemble, 4), model.nlat, model.nlon, g, scale=8)
    amp = torch.tensor([0.5, 0.5, 0.3, 0.3])[:, None, None]
    start = x0.unsqueeze(0).repeat(nensemble, 1, 1, 1) + amp * noise
    bar = _bar(nsteps + 1, progress)
    for step, x in enumerate(model.create_iterator(start)):
        if step_seconds:
            time.sleep(step_seconds)
        if io is not None:
            out = x[:, :2].unsqueeze(1).unsqueeze(1)  # (ensemble, time, lead_time, variable, lat, lon)
            coords = OrderedDict(total, lead_time=lead[step : step + 1])
            io.write([out[:, :, :, i] for i in range(len(SAVED))], coords, list(SAVED))
        bar.update(1)
        if step == nsteps:
            break
    bar.close()


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


def _size(path: Path | None, io: Any) -> int:
    if path is not None and path.is_file():
        return path.stat().st_size
    if path is None:
        store = getattr(io, "store", None)
        if isinstance(store, zarr.storage.ObjectStore):  # S3: what the bucket holds under the prefix
            import obstore

            return int(sum(o["size"] for batch in obstore.list(store.store) for o in batch))
        d = getattr(store, "_store_dict", None)
        if d is not None and hasattr(d, "sink"):
            return int(d.sink.nbytes())
        return int(sum(len(v) for v in d.values())) if d is not None else 0
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def _read_back(path: Path | None, io: Any) -> dict[str, np.ndarray]:
    if path is not None and path.suffix == ".nc":
        import h5netcdf

        with h5netcdf.File(path, "r") as f:
            return {v: np.asarray(f.variables[v][...]) for v in SAVED}
    root = zarr.open_group(zarr.storage.LocalStore(str(path)) if path is not None else io.store, mode="r")
    return {v: np.asarray(get_array(root, v)[...]) for v in SAVED}


def run_demo(members: int = 8, steps: int = 20, resolution: float = 0.25, device: str = "cpu",
             backends: list[str] | None = None, out: str | Path = "outputs/e2fastio-demo", seed: int = 0,
             model_step_seconds: float = 0.0, progress: bool = True, keep: bool = False,
             plot: bool = True, s3: S3Target | None = None) -> dict[str, Any]:
    """Run the ensemble workflow through each backend; report, check, plot.

    Returns the JSON record (also written to ``<out>/demo.json``); raises
    :class:`DemoError` when any backend's output differs from the others.
    """
    if s3 is not None and not s3.url.startswith(("s3://", "s3a://")):
        raise DemoError(f"--s3 {s3.url!r}: give an S3 URL such as s3://bucket/prefix")
    cases = backend_cases(s3)
    names = backends or list(cases)
    unknown = [n for n in names if n not in cases]
    if unknown:
        raise DemoError(f"--backends: unknown backend(s) {unknown}; choose from {sorted(cases)}")
    if members < 1 or steps < 1:
        raise DemoError("--members and --steps must be at least 1")
    if resolution <= 0 or (180 / resolution) % 1 or (360 / resolution) % 1:
        raise DemoError(f"--grid {resolution}: use a spacing in degrees that divides 180, e.g. 0.25, 0.5, 1, 2")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DemoError(f"--device {device}: no CUDA device is available here; use --device cpu")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    lat, lon = grid(resolution)
    model = AdvectionDiffusionModel(lat, lon, device=device)
    x0 = initial_state(lat, lon, seed).to(device)
    raw_bytes = (steps + 1) * members * len(SAVED) * len(lat) * len(lon) * 4

    # The model alone (no IO), after a warm-up, is what IO overhead is measured against.
    christmas_five_day_ensemble(model, x0, None, min(steps, 2), members, seed, 0.0, progress=False)
    t0 = time.perf_counter()
    christmas_five_day_ensemble(model, x0, None, steps, members, seed, model_step_seconds, progress=False)
    model_only = time.perf_counter() - t0

    results: dict[str, dict[str, Any]] = {}
    outputs: dict[str, dict[str, np.ndarray]] = {}
    for name in names:
        case = cases[name]
        target = case.path(out)
        if target is not None and target.exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()
        io = case.make(out)
        gc.collect()  # untimed: a full collection due from the previous backend's garbage would land in this one
        t0 = time.perf_counter()
        christmas_five_day_ensemble(model, x0, io, steps, members, seed, model_step_seconds, progress)
        if hasattr(io, "close"):
            io.close()
        elapsed = time.perf_counter() - t0
        size = _size(target, io)
        outputs[name] = _read_back(target, io)
        results[name] = {"label": case.label, "seconds": elapsed, "io_seconds": max(elapsed - model_only, 0.0),
                         "bytes": size, "mb_per_s": raw_bytes / elapsed / 1e6,
                         "ratio": raw_bytes / size if size else None}
        logger.info("%s: %.2f s", name, elapsed)
    for name, r in results.items():
        base = BASELINE_OF.get(name)
        r["baseline"] = base if base in results else None
        r["speedup"] = results[base]["seconds"] / r["seconds"] if base in results else None

    # Every backend must have stored exactly the same numbers.
    ref_name = names[0]
    mismatches = []
    for name in names[1:]:
        for v in SAVED:
            if not np.array_equal(outputs[name][v], outputs[ref_name][v], equal_nan=True):
                mismatches.append(f"{name}:{v}")
    record = {
        "demo": "christmas_five_day_ensemble",
        "machine": {"host": platform.node(), "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
                    "torch": torch.__version__, "device": device},
        "options": {"members": members, "steps": steps, "grid": resolution, "lat": len(lat), "lon": len(lon),
                    "model_step_seconds": model_step_seconds, "backends": names},
        "raw_bytes": raw_bytes,
        "model_only_seconds": model_only,
        "results": results,
        "identical": not mismatches,
        "mismatches": mismatches,
    }
    (out / "demo.json").write_text(json.dumps(record, indent=2))
    print_report(record)
    if plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            record["figure"] = None
            print("figure skipped: matplotlib is not installed (pip install 'e2fastio[plot]'); "
                  f"the table above and {out / 'demo.json'} are complete")
        else:
            record["figure"] = str(plot_report(record, outputs, model, out / "demo.png"))
        (out / "demo.json").write_text(json.dumps(record, indent=2))
    if not keep:
        for name in names:
            t = cases[name].path(out)
            if t is not None and t.exists():
                shutil.rmtree(t) if t.is_dir() else t.unlink()
        if s3 is not None:
            _delete_s3_outputs(s3)
    if mismatches:
        raise DemoError(f"backends disagree with {ref_name}: {mismatches}")
    return record


def print_report(record: dict[str, Any]) -> None:
    o = record["options"]
    print(f"\nEnsemble forecast: {o['members']} members, {o['steps']} steps of 6 h, grid {o['lat']} x {o['lon']}, "
          f"{record['raw_bytes'] / 1e9:.2f} GB written per backend; model alone {record['model_only_seconds']:.2f} s")
    print(f"{'backend':<30s}{'durable s':>11s}{'IO s':>8s}{'MB/s':>9s}{'size MB':>10s}{'ratio':>7s}{'speed-up':>10s}")
    for r in record["results"].values():
        sp = f"{r['speedup']:.2f}x" if r["speedup"] else "-"
        print(f"{r['label']:<30s}{r['seconds']:>11.2f}{r['io_seconds']:>8.2f}{r['mb_per_s']:>9.0f}"
              f"{r['bytes'] / 1e6:>10.1f}{(r['ratio'] or 0):>7.2f}{sp:>10s}")
    print("outputs identical across backends: " + ("yes" if record["identical"] else f"NO {record['mismatches']}"))


def plot_report(record: dict[str, Any], outputs: dict[str, dict[str, np.ndarray]],
                model: AdvectionDiffusionModel, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(outputs)
    lead = min(8, record["options"]["steps"])  # 48 h, as the seed plots
    ncol = min(3, len(names))
    nrow = (len(names) + ncol - 1) // ncol + 1
    fig = plt.figure(figsize=(5 * ncol, 2.8 * nrow), layout="constrained")
    subs = fig.subfigures(2, 1, height_ratios=[nrow - 1, 1.2], squeeze=False)
    top, bottom = subs[0, 0], subs[1, 0]
    maps = top.subplots(nrow - 1, ncol, squeeze=False)
    im = None
    for i, ax in enumerate(maps.flat):
        if i >= len(names):
            ax.set_axis_off()
            continue
        name = names[i]
        field = outputs[name]["t2m"][:, 0, lead].mean(axis=0)
        im = ax.imshow(field, extent=(0, 360, -90, 90), cmap="Spectral_r", vmin=220, vmax=305, aspect="auto")
        ax.set_title(f"{record['results'][name]['label']}\nensemble mean t2m, +{6 * lead} h", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    top.colorbar(im, ax=maps, shrink=0.8, label="K")
    ax = bottom.subplots()
    labels = [record["results"][n]["label"] for n in names]
    secs = [record["results"][n]["seconds"] for n in names]
    colors = ["tab:gray" if n.startswith(("python-", "e2s-")) else "tab:green" for n in names]
    ax.barh(labels, secs, color=colors)
    ax.axvline(record["model_only_seconds"], color="k", ls="--", lw=1, label="model alone")
    ax.set_xlabel("seconds until outputs are durable (lower is better)")
    ax.legend(loc="lower right")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _delete_s3_outputs(s3: S3Target) -> None:
    import obstore

    for name in ("e2fastio-zarr-blosc", "python-zarr-blosc"):
        store = s3.obstore(name)
        for batch in obstore.list(store):
            obstore.delete(store, [o["path"] for o in batch])
