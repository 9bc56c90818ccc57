"""The process-wide cache of staging memory.

Every backend owns an engine with a staging ring (non-blocking writes) and a
pool of encode buffers: hundreds of MB that are slow to get fresh (new pages
fault in at a fraction of memcpy speed; page-locked memory is slower still).
When a backend is closed and collected its blocks go to a process-wide cache,
and the next backend takes them warm, as PyTorch's caching allocators do.

The cache holds at most a limit of blocks nobody uses: 1 GiB by default (one
default backend's worth), ``E2FASTIO_HOST_CACHE_BYTES`` at start-up, or
`set_host_cache_limit`; `empty_cache` frees it all now. Page-locked blocks
belong to the CUDA context: call `empty_cache` before resetting the device.
"""

from __future__ import annotations

import operator
import os
import warnings
from typing import Any

from e2fastio import _core

ENV = "E2FASTIO_HOST_CACHE_BYTES"


def empty_cache() -> int:
    """Free every cached staging block now; return the bytes freed.

    Blocks that live backends use are not touched; they come back to the cache
    when those backends are collected.
    """
    return int(_core.empty_host_cache())


def set_host_cache_limit(nbytes: int) -> None:
    """Keep at most `nbytes` of unused staging memory for later backends (0: none).

    Cached blocks beyond the new limit are freed at once, oldest first.
    """
    try:
        n = operator.index(nbytes)
    except TypeError:
        raise TypeError(f"nbytes must be an int number of bytes, got {type(nbytes).__name__}") from None
    if n < 0:
        raise ValueError(f"nbytes must be >= 0 (0 turns the cache off), got {n}")
    _core.set_host_cache_limit(n)


def host_cache_info() -> dict[str, Any]:
    """``limit``, ``cached_bytes`` and ``cached_blocks`` now; ``hits`` and ``misses`` since start-up."""
    return dict(_core.host_cache_stats())


def _apply_environment() -> None:
    """Apply E2FASTIO_HOST_CACHE_BYTES (the one place it is read); warn and keep the default if malformed."""
    value = os.environ.get(ENV, "")
    if not value:
        return
    if value.isdigit() and value.isascii() and len(value) <= 19:
        set_host_cache_limit(int(value))
    else:
        warnings.warn(f"{ENV}={value!r} is not a byte count (digits only, e.g. 2147483648, or 0 for no cache); "
                      f"using the default limit of {host_cache_info()['limit']} bytes", RuntimeWarning, stacklevel=3)


_apply_environment()
