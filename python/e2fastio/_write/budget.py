"""Threads and staging memory of a backend's engine: defaults, checks, and how the budget is split."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def engine_kwargs(threads: int | None, max_buffer_bytes: int | None) -> dict[str, Any]:
    if threads is None:
        threads = default_threads()
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads must be a positive int (or None for all cores), got {threads!r}")
    if max_buffer_bytes is None:
        max_buffer_bytes = DEFAULT_MAX_BUFFER_BYTES
    if not isinstance(max_buffer_bytes, int) or isinstance(max_buffer_bytes, bool) or max_buffer_bytes <= 0:
        raise ValueError(f"max_buffer_bytes must be a positive int, got {max_buffer_bytes!r}")
    return {"threads": threads, "max_buffer_bytes": max_buffer_bytes}


def split_buffer(max_buffer_bytes: int, who: str, shares: Mapping[str, tuple[int, int]]) -> dict[str, int]:
    """`max_buffer_bytes` split into named parts (each a fraction, numerator and
    denominator, of it; the last part takes the rest). A part that would get no
    byte is refused here, at construction, naming the argument, not at the
    first write in words about the engine."""
    parts: dict[str, int] = {}
    names = list(shares)
    for name in names[:-1]:
        num, den = shares[name]
        parts[name] = max_buffer_bytes * num // den
    parts[names[-1]] = max_buffer_bytes - sum(parts.values())
    empty = [name for name, n in parts.items() if n < 1]
    if empty:
        split = [f"{n} ({shares[n][0]}/{shares[n][1]})" for n in names]
        raise ValueError(
            f"max_buffer_bytes={max_buffer_bytes} is too small for {who}: it is split into "
            f"{', '.join(split[:-1])} and {split[-1]}, so {' and '.join(empty)} would get nothing; give at least "
            f"a few chunks' worth (the default is {DEFAULT_MAX_BUFFER_BYTES} bytes)"
        )
    return parts


DEFAULT_MAX_BUFFER_BYTES = 1 << 30
# How a non-blocking Zarr backend splits max_buffer_bytes (see split_buffer).
NONBLOCKING_SPLIT = {"the staging ring": (3, 4), "encode buffers": (1, 4)}
