"""Encoded chunks waiting for HDF5: a NetCDF4Backend's ``CollectSink``, safe across fork.

The native pool encodes NetCDF chunks and leaves them in the collector; the
caller's thread takes them to HDF5 (direct chunk writes), since HDF5 is not
thread-safe.
"""

from __future__ import annotations

import os
from typing import Any

from e2fastio import _core


class Collector:
    """A backend's ``CollectSink`` (encoded chunks waiting for HDF5), made anew in a forked child.

    The sink pairs its lock with condition variables, so a fork can leave it
    held by a parent's thread that the child does not have: a child writing
    through the backend gets a sink of its own, and the parent's is kept (never
    destroyed there), as the child's engine keeps the parent's.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._pid = os.getpid()
        self._sink = _core.CollectSink(capacity)

    @property
    def sink(self) -> _core.CollectSink:
        if self._pid != os.getpid():
            _parents_collectors.append(self._sink)
            self._sink, self._pid = _core.CollectSink(self.capacity), os.getpid()
        return self._sink

    def stats(self) -> dict[str, Any]:
        return dict(self.sink.stats())

    def close(self) -> int:
        """No consumer any more: held chunks are dropped, encoders waiting for room fail (never hang).
        Returns how many encoded chunks it dropped."""
        return self.sink.close()


_parents_collectors: list[_core.CollectSink] = []
