"""Ownership of native engines: lazily started, closed explicitly, safe after fork."""

from __future__ import annotations

import os
import threading
import weakref
from typing import Any

from e2fastio import _core

_live: weakref.WeakSet[EngineHandle] = weakref.WeakSet()
_live_lock = threading.Lock()

# How much lower than the caller's the scheduling priority of a non-blocking
# backend's threads is (nice value, per thread): its encoders and writers use
# the CPU the caller's thread leaves idle, and yield it as soon as the caller
# needs it. Blocking backends keep the caller's priority (the caller waits).
# 19 (CFS weight 15 against the caller's 1024) rather than 10 (110): with a
# model step that keeps the caller's core busy 20% of the time, the loop
# overhead was 1.7% against 4.2% at 10, lower in each of 5 paired rounds
# (docs/benchmarks.md); data still lands within 0.2 s of the last step.
BACKGROUND_NICE = 19
# Opt-in (E2FASTIO_BACKGROUND_SCHED=idle): each of them under SCHED_IDLE
# (Linux) as well, where it runs only on a core no normal thread wants and
# never preempts one when it wakes, so a caller whose step keeps every core
# busy (torch's intra-op threads, which wait for their slowest member) loses
# no core to it in the middle of an operation. With a model step half torch
# ops on both cores (bench_async.py --busy-kind torch --sched-ab, 6 rounds):
# loop overhead median -0.6% against 4.6% at nice 19 alone, lower in every
# round; level with a pure-Python busy step and with an idle step. Not the
# default: when other processes keep every core busy, SCHED_IDLE threads get
# almost nothing (weight 3 against nice 19's 15) and cannot be raised back
# without privileges; 8 writes of 4 MB and a flush beside two busy processes
# took 5.0 s against 1.0 s at nice 19 (0.04 s idle). docs/benchmarks.md.
BACKGROUND_SCHED_IDLE = os.environ.get("E2FASTIO_BACKGROUND_SCHED", "nice") == "idle"


def _defer_seconds() -> float:
    v = os.environ.get("E2FASTIO_BACKGROUND_DEFER", "")
    if not v:
        return 0.25
    try:
        s = float(v)
    except ValueError:
        raise ValueError(
            f"E2FASTIO_BACKGROUND_DEFER must be a number of seconds (0 turns deferral off), got {v!r}") from None
    if not 0.0 <= s <= 3600.0:
        raise ValueError(f"E2FASTIO_BACKGROUND_DEFER must be between 0 and 3600 seconds, got {v!r}")
    return s


# How long (seconds, per busy stretch) a non-blocking backend's encoders leave
# queued chunks while the thread that writes is busy with its own CPU work
# (time spent inside our write, copying into the ring, does not count), so
# that compression runs in the caller's idle time: a model step's CPU part
# ran about 10% slower with encoders compressing beside it, even on the other
# core (docs/benchmarks.md, session 14). A thread waiting in flush/close or a
# half-full staging ring starts them at once. E2FASTIO_BACKGROUND_DEFER
# (seconds; 0 turns it off).
BACKGROUND_DEFER_SECONDS = _defer_seconds()


class EngineHandle:
    """Owns one native ``Engine`` (its encoder threads and staging buffers).

    The threads start at the first write, stop at :meth:`close`, and are
    never inherited by a forked child: the child starts its own on demand.
    With `background` (non-blocking backends) they run at a lower priority
    than the caller's thread (``BACKGROUND_NICE``).
    """

    def __init__(self, threads: int, max_buffer_bytes: int, ring_bytes: int = 0, background: bool = False) -> None:
        self.threads = threads
        self.max_buffer_bytes = max_buffer_bytes
        self.ring_bytes = ring_bytes
        self.nice = BACKGROUND_NICE if background else 0
        self._engine: _core.Engine | None = None
        self._last_stats: dict[str, Any] = {}
        self._lock = threading.Lock()
        with _live_lock:
            _live.add(self)

    def get(self) -> _core.Engine:
        with self._lock:
            if self._engine is None:
                self._engine = _core.Engine(self.threads, self.max_buffer_bytes, self.ring_bytes, self.nice,
                                            self.nice > 0 and BACKGROUND_SCHED_IDLE,
                                            BACKGROUND_DEFER_SECONDS if self.nice > 0 else 0.0)
            return self._engine

    @property
    def started(self) -> bool:
        return self._engine is not None

    def stats(self) -> dict[str, Any]:
        e = self._engine
        if e is None:
            return dict(self._last_stats)
        out: dict[str, Any] = {**e.stats(), "buffers": e.buffer_stats(), "threads": e.threads,
                               "writer_threads": e.writer_threads, "nice": e.nice,
                               "sched_idle_threads": e.idle_sched_threads,
                               "defer_busy_seconds": e.defer_busy_seconds, "busy_deferrals": e.busy_deferrals}
        out["device_encode"] = e.device_encode_stats()
        if e.has_ring:
            out["ring"] = e.ring_stats()
            out["pending_chunks"] = e.pending_chunks
            out["failed_chunks"] = e.failed_chunks
        return out

    def close(self) -> None:
        with self._lock:
            if self._engine is not None:
                self._last_stats = self.stats()
            e, self._engine = self._engine, None
        if e is not None:
            e.shutdown()

    def _after_fork_in_child(self) -> None:
        e, self._engine = self._engine, None
        self._lock = threading.Lock()
        if e is not None:
            # Leaks (in the child only) whatever parent threads may have held at
            # the fork; what is left is empty and safe to destroy here.
            e.abandon_after_fork()


def _after_fork_in_child() -> None:
    for h in list(_live):
        h._after_fork_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
