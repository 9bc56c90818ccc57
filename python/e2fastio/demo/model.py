"""A small, deterministic prognostic model in torch (no downloads).

State variables ``t2m`` (K), ``tcwv`` (kg m-2), ``u10m``, ``v10m`` (m s-1) on a
regular lat/lon grid. One 6 h step does semi-Lagrangian advection of t2m and
tcwv by the (slowly evolving) wind, horizontal diffusion, and relaxation
towards a zonal climatology; the wind itself is advected and relaxed. Output
is rounded to 2^-8 of the unit, the precision real model output carries
(about 8 meaningful fraction bits), so compressors see realistic data.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F

VARIABLES = ("t2m", "tcwv", "u10m", "v10m")
QUANTUM = 2.0**-8


def grid(resolution: float) -> tuple[np.ndarray, np.ndarray]:
    nlat = int(round(180 / resolution)) + 1
    nlon = int(round(360 / resolution))
    return np.linspace(90, -90, nlat), np.linspace(0, 360, nlon, endpoint=False)


def _smooth_noise(shape: tuple[int, ...], nlat: int, nlon: int, g: torch.Generator, scale: int = 24) -> torch.Tensor:
    """Smooth random fields: coarse noise, bicubically upsampled (periodic in longitude)."""
    coarse = torch.randn(*shape, max(2, nlat // scale), max(4, nlon // scale), generator=g)
    coarse = torch.cat([coarse, coarse[..., :1]], dim=-1)
    flat = coarse.reshape(-1, 1, *coarse.shape[-2:])
    up = F.interpolate(flat, size=(nlat, nlon + nlon // coarse.shape[-1] + 1), mode="bicubic", align_corners=True)
    return up[..., :nlon].reshape(*shape, nlat, nlon)


def climatology(lat: np.ndarray, lon: np.ndarray) -> torch.Tensor:
    la = torch.tensor(np.deg2rad(lat), dtype=torch.float32)[:, None]
    lo = torch.tensor(np.deg2rad(lon), dtype=torch.float32)[None, :]
    t2m = 222 + 80 * torch.cos(la) ** 2 + 4 * torch.sin(2 * lo) * torch.cos(la)  # ~220-305 K
    tcwv = 55 * torch.cos(la) ** 6 + 3 * torch.cos(la) ** 2                       # ~0-60 kg m-2
    u = 12 * torch.sin(2 * la) ** 2 * torch.sign(la) - 4 * torch.cos(la) ** 8     # jets + trades
    v = 0 * la + 0 * lo
    return torch.stack(torch.broadcast_tensors(t2m, tcwv, u, v))


def initial_state(lat: np.ndarray, lon: np.ndarray, seed: int = 0) -> torch.Tensor:
    """A weather-like initial state, shape (variable, lat, lon), for 2022-12-20 00 UTC."""
    g = torch.Generator().manual_seed(seed)
    clim = climatology(lat, lon)
    anom = _smooth_noise((4,), len(lat), len(lon), g, scale=12)
    amp = torch.tensor([6.0, 8.0, 5.0, 5.0])[:, None, None]
    x = clim + amp * anom
    x[1].clamp_(min=0.0, max=70.0)
    return x


class AdvectionDiffusionModel:
    """Steps (..., variable, lat, lon) states forward by 6 h; deterministic."""

    def __init__(self, lat: np.ndarray, lon: np.ndarray, device: str | torch.device = "cpu") -> None:
        self.lat, self.lon = np.asarray(lat), np.asarray(lon)
        self.device = torch.device(device)
        self.clim = climatology(self.lat, self.lon).to(self.device)
        nlat, nlon = len(lat), len(lon)
        self.dlat = math.radians(abs(lat[1] - lat[0]))
        self.dlon = math.radians(lon[1] - lon[0])
        coslat = torch.cos(torch.tensor(np.deg2rad(self.lat), dtype=torch.float32)).clamp(min=0.05)
        self.coslat = coslat.to(self.device)[:, None]
        # Normalised sampling grid of the identity map (grid_sample convention).
        ys = torch.linspace(-1, 1, nlat, device=self.device)
        xs = torch.linspace(-1, 1, nlon, device=self.device)
        self.base_y, self.base_x = torch.meshgrid(ys, xs, indexing="ij")
        self.dt = 6 * 3600.0
        self.nlat, self.nlon = nlat, nlon

    def input_coords(self) -> OrderedDict[str, np.ndarray]:
        return OrderedDict(lead_time=np.array([np.timedelta64(0, "h")]), variable=np.array(VARIABLES),
                           lat=self.lat, lon=self.lon)

    def step(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-3]
        x = x.reshape(-1, 4, self.nlat, self.nlon)
        u, v = x[:, 2], x[:, 3]
        earth = 6.371e6
        # Displacement over dt in grid units (normalised to [-1, 1]), backtracked.
        dx = u * self.dt / (earth * self.coslat * self.dlon) * (2.0 / (self.nlon - 1))
        dy = -v * self.dt / (earth * self.dlat) * (2.0 / (self.nlat - 1))
        gx = torch.remainder(self.base_x - dx + 1, 2.0) - 1  # periodic in longitude
        gy = (self.base_y - dy).clamp(-1, 1)
        grid_ = torch.stack([gx, gy], dim=-1)
        adv = F.grid_sample(x, grid_, mode="bilinear", padding_mode="border", align_corners=True)
        lap = (torch.roll(adv, 1, -1) + torch.roll(adv, -1, -1) - 2 * adv) + (
            F.pad(adv, (0, 0, 1, 1), mode="replicate")[..., 2:, :]
            + F.pad(adv, (0, 0, 1, 1), mode="replicate")[..., :-2, :] - 2 * adv)
        relax = torch.tensor([0.04, 0.05, 0.08, 0.08], device=x.device)[:, None, None]
        out = adv + 0.05 * lap + (self.clim - adv) * relax
        out[:, 1].clamp_(min=0.0, max=70.0)
        out = torch.round(out / QUANTUM) * QUANTUM
        return out.reshape(*lead, 4, self.nlat, self.nlon)

    def create_iterator(self, x: torch.Tensor) -> Iterator[torch.Tensor]:
        """Yields the initial state, then one state per 6 h step (forever)."""
        x = torch.round(x.to(self.device) / QUANTUM) * QUANTUM
        yield x
        while True:
            x = self.step(x)
            yield x


def ensemble_start(x0: torch.Tensor, nensemble: int, seed: int) -> torch.Tensor:
    """The perturbed ensemble's initial states, shape (ensemble, variable, lat, lon), on x0's device.

    A Gaussian perturbation, spatially smooth (white noise would be diffused
    away in the first steps anyway), the same for every device and seed.
    """
    g = torch.Generator().manual_seed(seed)
    noise = _smooth_noise((nensemble, 4), x0.shape[-2], x0.shape[-1], g, scale=8)
    amp = torch.tensor([0.5, 0.5, 0.3, 0.3])[:, None, None]
    return x0.unsqueeze(0).repeat(nensemble, 1, 1, 1) + (amp * noise).to(x0.device)


class GpuLikeModel:
    """The stand-in model as a GPU runs it, on a machine without one.

    The states are computed once, before anything is timed (on the CPU, with
    :class:`AdvectionDiffusionModel`); iterating then hands out the same fields
    and spends each step's time off the CPU (a sleep), as a model busy on a GPU
    leaves the CPU to the IO backend. The step time is the one measured while
    precomputing, unless `step_seconds` declares it.

    Parameters
    ----------
    model : AdvectionDiffusionModel
        A CPU model.
    start : torch.Tensor
        The ensemble's initial states (see :func:`ensemble_start`).
    nsteps : int
        Steps after the initial state.
    keep : int
        How many leading variables to keep of each state (the saved ones).
    step_seconds : float | None
        Declared time per step; ``None`` uses the measured one.
    """

    def __init__(self, model: AdvectionDiffusionModel, start: torch.Tensor, nsteps: int, keep: int,
                 step_seconds: float | None = None) -> None:
        self.lat, self.lon = model.lat, model.lon
        self.states: list[torch.Tensor] = []
        it = model.create_iterator(start)
        self.states.append(next(it)[:, :keep].clone())
        t0 = time.perf_counter()
        for _ in range(nsteps):
            self.states.append(next(it)[:, :keep].clone())
        self.measured_step_seconds = (time.perf_counter() - t0) / max(nsteps, 1)
        self.step_seconds = self.measured_step_seconds if step_seconds is None else float(step_seconds)

    def create_iterator(self) -> Iterator[torch.Tensor]:
        """Yields the initial state at once, then one precomputed state per step after the step's time."""
        yield self.states[0]
        for x in self.states[1:]:
            time.sleep(self.step_seconds)
            yield x
