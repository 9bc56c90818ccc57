"""Soak: 1000 steps through each backend; threads, open files and memory stay flat.

Each backend is driven as Earth2Studio's deterministic workflow drives it:
``add_array`` once with every lead time, then one ``write`` of two variables
per step (64 KiB a step: small enough for a run of a few seconds, large
enough that keeping anything per step shows in resident memory). After a warm-up of
50 steps the process's thread count (``/proc/self/task``), open file
descriptors (``/proc/self/fd``) and resident memory are sampled every 100
steps (non-blocking backends are flushed first, so that chunks in flight do not
count): threads and descriptors must not change at all, resident memory may
grow by at most `RSS_SLACK` (KVBackend's arrays are allocated, zeroed, by
``add_array``), counted after malloc's free pages are trimmed (see `_rss`).
After ``close()`` no e2fastio thread may be left and the process holds exactly
the descriptors it held before the backend.

Each backend's soak runs in a fresh interpreter of its own (the test runs
itself in a child pytest): resident memory then measures this loop, not the
heap a long-lived test worker built up over hundreds of earlier tests (under
pytest-xdist that once added 35-40 MiB to a 5-7 MiB growth).
"""

from __future__ import annotations

import ctypes
import gc
import os
import subprocess
import sys
import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import zarr

from e2fastio import AsyncZarrBackend, KVBackend, NetCDF4Backend, ZarrBackend

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux (/proc/self)")

STEPS = 1000
WARMUP = 50
EVERY = 100
RSS_SLACK = 32 << 20
BLOSC = zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")
BUFFER = 8 << 20  # staging memory of the native backends (the default 1 GiB would only be slower to fault in)
LEAD = (np.arange(STEPS) * np.timedelta64(6, "h")).astype("timedelta64[ns]")
COORDS = OrderedDict(
    time=np.array(["2026-01-01T00"], dtype="datetime64[ns]"),
    lead_time=LEAD,
    lat=np.linspace(90, -90, 64),
    lon=np.linspace(0, 360, 128, endpoint=False),
)
NAMES = ["t2m", "u10"]


def _threads() -> int:
    return len(os.listdir("/proc/self/task"))


def _fds() -> int:
    return len(os.listdir("/proc/self/fd")) - 1  # less the one listdir itself opened


def _rss() -> int:
    """Resident memory in use: pages glibc's malloc holds free (in its arenas) are handed back first.

    Under load the encoder, store and caller threads free each other's blocks in an order that
    leaves free holes in malloc's arenas; those count as resident until trimmed. Measured with
    both cores kept busy (2 spinners): +15 MiB over 1000 steps untrimmed, levelling off at about
    +8 MiB by 1200 steps in a 3000-step run, and +1.4 MiB after malloc_trim. A leak is memory
    still referenced, which trimming cannot hand back; that is what the bound is on.
    """
    if _malloc_trim is not None:
        _malloc_trim(0)
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _glibc_malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL(None).malloc_trim  # glibc; other C libraries: RSS as it is
    except (OSError, AttributeError):
        return None


_malloc_trim = _glibc_malloc_trim()


def _zarr(blocking: bool) -> Callable[[Any], Any]:
    def make(tmp_path: Any) -> Any:
        return ZarrBackend(str(tmp_path / "soak.zarr"), chunks={"time": 1, "lead_time": 1},
                           backend_kwargs={"overwrite": True}, zarr_codecs=BLOSC, blocking=blocking,
                           max_buffer_bytes=BUFFER)
    return make


def _async(tmp_path: Any) -> Any:
    return AsyncZarrBackend(str(tmp_path / "soak.zarr"), parallel_coords={"lead_time": LEAD}, blocking=False,
                            zarr_kwargs={"mode": "w"}, zarr_codecs=BLOSC, max_buffer_bytes=BUFFER)


def _netcdf(blocking: bool) -> Callable[[Any], Any]:
    def make(tmp_path: Any) -> Any:
        return NetCDF4Backend(str(tmp_path / "soak.nc"), backend_kwargs={"mode": "w"}, compression="zlib",
                              blocking=blocking, max_buffer_bytes=BUFFER)
    return make


BACKENDS = {
    "ZarrBackend-blocking": _zarr(True),
    "ZarrBackend-nonblocking": _zarr(False),
    "AsyncZarrBackend-nonblocking": _async,
    "NetCDF4Backend-blocking": _netcdf(True),
    "NetCDF4Backend-nonblocking": _netcdf(False),
    "KVBackend": lambda tmp_path: KVBackend(),
}


_CHILD = "E2FASTIO_SOAK_CHILD"


@pytest.mark.parametrize("kind", list(BACKENDS))
def test_soak_threads_files_memory_flat(tmp_path, kind):
    """The soak below, in a fresh interpreter (see the module's docstring)."""
    if os.environ.get(_CHILD):
        pytest.skip("already in the soak's own process")
    env = dict(os.environ, **{_CHILD: "1"})
    env.pop("PYTEST_XDIST_WORKER", None)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-s", "-p", "no:cacheprovider", "-p", "no:xdist",
                        "--basetemp", str(tmp_path / "child"), f"{__file__}::test_soak_in_this_process[{kind}]"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "1 passed" in r.stdout, r.stdout[-2000:]


@pytest.mark.parametrize("kind", list(BACKENDS))
def test_soak_in_this_process(tmp_path, kind, native_threads):
    if not os.environ.get(_CHILD):
        pytest.skip("runs in its own interpreter, from test_soak_threads_files_memory_flat")
    zarr.storage.MemoryStore()  # zarr's event loop and its descriptors exist before we count
    zarr.open_group(zarr.storage.MemoryStore(), mode="w")
    gc.collect()
    pool_before = native_threads(settle_to=0)
    fds_before = _fds()

    io = BACKENDS[kind](tmp_path)
    io.add_array(COORDS, NAMES)
    base = torch.from_numpy(np.random.default_rng(0).normal(size=(2, 1, 1, 64, 128)).astype(np.float32))
    nonblocking = getattr(io, "blocking", True) is False
    samples: list[tuple[int, int, int, int]] = []  # (step, threads, fds, rss)
    for step in range(STEPS):
        x = base + step  # a new tensor every step, as a model gives
        sc = OrderedDict(COORDS, lead_time=LEAD[step:step + 1])
        io.write([x[0], x[1]], sc, NAMES)
        done = step + 1
        if done == WARMUP or (done > WARMUP and (done - WARMUP) % EVERY == 0) or done == STEPS:
            if nonblocking:
                io.flush()
            samples.append((done, _threads(), _fds(), _rss()))
    if hasattr(io, "flush"):
        io.flush()
    # Everything written reads back (a soak that loses data is no soak).
    for name, ch in zip(NAMES, (0, 1), strict=True):
        got, _ = io.read(OrderedDict(COORDS), name)
        want = base[ch].squeeze(0).squeeze(0) + torch.arange(STEPS, dtype=torch.float32)[:, None, None]
        np.testing.assert_array_equal(np.asarray(got)[0], want.numpy(), err_msg=f"{kind}: {name}")
    if hasattr(io, "close"):
        io.close()
    gc.collect()
    pool_after = native_threads(settle_to=pool_before)
    fds_after = _fds()
    upload_threads = [t.name for t in threading.enumerate() if t.name.startswith("e2fastio")]

    _, t0, f0, r0 = samples[0]
    print(f"\nsoak {kind}: {STEPS} steps; after {WARMUP}: threads {t0}, fds {f0}, RSS {r0 / 2**20:.1f} MiB; "
          f"at the end: threads {samples[-1][1]}, fds {samples[-1][2]}, RSS {samples[-1][3] / 2**20:.1f} MiB "
          f"(max growth {(max(s[3] for s in samples) - r0) / 2**20:+.1f} MiB); after close: "
          f"e2fastio threads {pool_after}, fds {fds_after} (before: {fds_before})")
    assert all(s[1] == t0 for s in samples), f"{kind}: thread count changed after warm-up: {samples}"
    assert all(s[2] == f0 for s in samples), f"{kind}: open descriptors changed after warm-up: {samples}"
    growth = max(s[3] for s in samples) - r0
    assert growth < RSS_SLACK, f"{kind}: RSS grew by {growth / 2**20:.1f} MiB after warm-up: {samples}"
    assert pool_after == pool_before, f"{kind}: {pool_after - pool_before} e2fastio-pool thread(s) left after close"
    assert not upload_threads, f"{kind}: threads left after close: {upload_threads}"
    assert fds_after == fds_before, f"{kind}: {fds_after - fds_before} descriptor(s) left open after close"
