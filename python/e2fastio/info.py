"""What the native core found on this machine."""

from __future__ import annotations

from typing import Any

from e2fastio import _core
from e2fastio._version import __version__
from e2fastio._write import device_encode
from e2fastio._write.budget import DEFAULT_MAX_BUFFER_BYTES, default_threads
from e2fastio.memory import host_cache_info


def info() -> dict[str, Any]:
    """Report the core's build and runtime facts.

    Returns
    -------
    dict
        ``version``, ``core_version``, ``blosc_version`` (the c-blosc 1.x the
        extension is statically linked with), ``deflate_library`` (the one zlib
        linked into it, with its version: NetCDF-4 deflate/inflate and blosc's
        ``zlib`` codec), ``default_threads`` and
        ``default_max_buffer_bytes``, ``default_ring_bytes`` (non-blocking
        staging), ``cuda`` (whether a CUDA runtime was found, loaded at run time,
        and from where, or why not), ``pinned_staging`` (the ring is
        page-locked memory from that runtime), ``nvcomp`` (whether nvCOMP 6
        loaded for compression on the GPU, from where, its version, or why
        not; ``device_compression`` says which encoder CUDA tensors written
        as Blosc zstd get by default: ``"device (nvCOMP zstd)"`` or
        ``"host (<reason>)"``) and ``host_cache`` (the process-wide cache of
        staging memory, `e2fastio.memory`).
    """
    nv = device_encode.nvcomp_info()
    why = nv["reason"] or nv["device_reason"]
    return {
        "version": __version__,
        "core_version": _core.__version__,
        "blosc_version": _core.blosc_version(),
        "deflate_library": _core.deflate_library(),
        "default_threads": default_threads(),
        "default_max_buffer_bytes": DEFAULT_MAX_BUFFER_BYTES,
        "default_ring_bytes": DEFAULT_MAX_BUFFER_BYTES * 3 // 4,
        "cuda": _core.cuda_info(),
        "pinned_staging": bool(_core.cuda_info()["available"]),
        "nvcomp": {k: nv[k] for k in ("available", "path", "version", "reason")},
        "device_compression": "device (nvCOMP zstd)" if not why else f"host ({why})",
        "host_cache": host_cache_info(),
    }
