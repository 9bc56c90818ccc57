"""Sharded arrays: the one home of shard assembly, merges and the shard notes of multi-rank runs.

Inner chunks of a sharded array go to a native ``ShardSink``, which gathers
them per shard and stores a shard (inner chunks plus its index) as one object
once it is complete. What stays incomplete is written at flush or close,
merged with what the store already holds (a read-modify-write of the shard).

Two policies, chosen by the backend:

* zarr-python's (``ZarrBackend``): a blocking write's shards are in the store
  when the write returns; incomplete ones are written there and then.
* Earth2Studio's ``AsyncZarrBackend``: shards gather until complete, at most
  `max_inflight` under assembly; a merge with stored data is warned about
  once per array (:meth:`Shards.gather_until_complete`). Its ``shard_coords``
  give each new array's shard shape (:func:`shard_shape`).

Multi-rank runs note which shards each rank wrote (:meth:`Shards.note`);
``close`` compares the notes across ranks (:mod:`e2fastio._write.ranks`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from e2fastio import _core
from e2fastio._write import ranks
from e2fastio._write.engine import EngineHandle

logger = logging.getLogger(__name__)

# Per array: dimension names, shard shape, shard positions written, index range per dimension.
Notes = dict[str, tuple[list[str], list[int], set[tuple[int, ...]], list[tuple[int, int]]]]


class Shards:
    """The shard sink of one backend, made with its first sharded array.

    `store_sink` is where complete shards go (the backend's native sink);
    `engine` lends a quarter of its staging budget to shards under assembly
    unless a `capacity` is set.
    """

    def __init__(self, store_sink: _core.Sink | None, engine: EngineHandle) -> None:
        self._store_sink = store_sink
        self._engine = engine
        self._sink: _core.ShardSink | None = None
        self._pid = os.getpid()  # the process that gathers shards (set again when the sink is made)
        self.max_inflight = 4  # shard objects written at once
        self.capacity: int | None = None  # None: a quarter of the engine's max_buffer_bytes
        self.gather = False  # True: Earth2Studio's AsyncZarrBackend policy (see the module's docstring)
        self._merge_warned: set[str] = set()
        self.notes: Notes = {}

    def gather_until_complete(self, max_inflight: int, capacity: int | None) -> None:
        """Earth2Studio's AsyncZarrBackend policy: shards gather until complete; merges are warned about."""
        self.gather = True
        self.max_inflight = max_inflight
        self.capacity = capacity

    @property
    def active(self) -> bool:
        """The sink exists (a sharded array was written or added)."""
        return self._sink is not None

    def register(self, spec: _core.ArraySpec, chunks: Sequence[int], shards: Sequence[int],
                 index_at_start: bool) -> None:
        """A sharded array the sink gathers chunks of."""
        self.sink().add_array(spec.path, list(spec.shape), list(chunks), list(shards), spec.separator,
                              index_at_start)

    def sink(self) -> _core.ShardSink:
        """The sink that gathers inner chunks into shards (made on first use)."""
        if self._sink is not None and self._pid != os.getpid():
            # Its lock pairs with a condition variable: a parent's thread may have held it at the fork.
            raise RuntimeError(
                f"this backend's sharded arrays were opened in process {self._pid}, and shards under "
                "assembly stay with it: create a new backend in the forked child to write sharded arrays"
            )
        if self._sink is None:
            assert self._store_sink is not None
            capacity = self.capacity
            if capacity is None:
                # A quarter of max_buffer_bytes, taken from the engine's share while it has not started.
                capacity = max(1, self._engine.max_buffer_bytes // 4)
                if not self._engine.started:
                    self._engine.max_buffer_bytes -= capacity
            self._sink = _core.ShardSink(self._store_sink, capacity, self.max_inflight)
            self._pid = os.getpid()
        return self._sink

    def flush(self, held: list[tuple[str, list[int]]] | None = None) -> None:
        """Write out every incomplete shard (merging with what is stored) but those in `held`
        (array path, shard position); then warn about merges under the gathering policy."""
        if self._sink is None or self._pid != os.getpid():
            return  # in a forked child, the parent's incomplete shards are the parent's to write
        try:
            self._sink.flush(held or [])
        finally:
            self.warn_merges()

    def warn_merges(self) -> None:
        if not self.gather or self._sink is None:
            return
        for name in self._sink.stats()["merged_by_array"]:
            if name not in self._merge_warned:
                self._merge_warned.add(name)
                logger.warning(
                    "Writing into shards of array '%s' that are already present in the store, these writes fall "
                    "back to a read-modify-write of the entire shard. This happens when `close()` / `flush()` is "
                    "called mid run or when restarting into an existing store with shards left incomplete.", name)

    def note(self, name: str, dims: Sequence[str], shards: Sequence[int], index: Sequence[np.ndarray]) -> None:
        """Multi-rank: remember which shards (and index ranges) this rank wrote of `name`."""
        entry = self.notes.setdefault(name, (list(dims), list(shards), set(), []))
        entry[2].update(ranks.shards_touched(index, shards))
        ranges = [(int(np.min(i)), int(np.max(i))) for i in index]
        entry[3][:] = ranges if not entry[3] else [(min(a[0], b[0]), max(a[1], b[1]))
                                                   for a, b in zip(entry[3], ranges, strict=True)]

    def stats(self) -> _core.ShardStats | None:
        return self._sink.stats() if self._sink is not None else None


def shard_shape(name: str, array_coords: Mapping[str, np.ndarray], chunked: Mapping[str, int], dtype: np.dtype[Any],
                shard_coords: Mapping[str, int], parallel_coords: Mapping[str, Any]) -> tuple[int, ...] | None:
    """The shard shape of a new array from AsyncZarrBackend's `shard_coords` (Earth2Studio's rules), or None.

    Coordinates not named get their chunk size (parallel coordinates) or
    their full length (the others); a named size must be a multiple of the
    chunk size, and cover the whole length of a non-parallel coordinate.
    """
    if not shard_coords:
        return None
    unmatched = set(shard_coords) - set(array_coords)
    if unmatched:
        logger.warning(f"shard_coords keys {sorted(unmatched)} do not appear in array '{name}' and will be "
                       "ignored. The array will be unsharded along those coordinates.")
    shards: list[int] = []
    for key, values in array_coords.items():
        chunk = int(chunked[key])
        size = len(values)
        if key not in shard_coords:
            shards.append(chunk if key in parallel_coords else size)
            continue
        shard = int(shard_coords[key])
        if shard % chunk != 0:
            raise ValueError(
                f"Shard size {shard} for coordinate '{key}' of array '{name}' must be a multiple of its chunk "
                f"size {chunk}. Coordinates in `parallel_coords` have a chunk size of 1, others default to their "
                "full length unless set via `chunked_coords`."
            )
        if key not in parallel_coords and shard < size:
            raise ValueError(
                f"Shard size {shard} for coordinate '{key}' of array '{name}' is smaller than its length {size}. "
                "Non-parallel coordinates are always written as a single slice so their shard size must cover "
                f"the full dimension. Set the shard size to at least {size} or add '{key}' to `parallel_coords`."
            )
        if shard > size:
            logger.warning(f"Shard size {shard} for coordinate '{key}' of array '{name}' exceeds its length "
                           f"{size}, the shard will be truncated")
        shards.append(shard)
    if tuple(shards) == tuple(int(chunked[k]) for k in array_coords):
        logger.debug("Shard shape of array %s matches its chunk shape, not sharding", name)
        return None
    nbytes = int(np.prod(shards)) * np.dtype(dtype).itemsize
    logger.info(f"Array {name} sharded with shape {tuple(shards)}, each in flight shard buffer holds "
                f"{nbytes / 1e9:.2f} GB of host memory")
    return tuple(shards)
