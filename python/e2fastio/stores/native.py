"""Local directories and the in-memory store: a zarr store plus the native sink that writes its chunks."""

from __future__ import annotations

import os
from collections.abc import Iterator, MutableMapping

import numpy as np
import zarr
import zarr.storage
from zarr.abc.store import Store
from zarr.core.buffer import Buffer, default_buffer_prototype

from e2fastio import _core


class NativeMemoryMapping(MutableMapping[str, Buffer]):
    """The key/value mapping behind a ``zarr.storage.MemoryStore``, held in native memory.

    zarr-python reads and writes metadata through it as usual, while the
    encoder threads store chunks into the same native map with no GIL.
    """

    def __init__(self, sink: _core.MemorySink) -> None:
        self.sink = sink

    def __getitem__(self, key: str) -> Buffer:
        value = self.sink.get(key)
        if value is None:
            raise KeyError(key)
        buf: Buffer = default_buffer_prototype().buffer.from_bytes(value)
        return buf

    def __setitem__(self, key: str, value: Buffer) -> None:
        data = value.as_numpy_array() if isinstance(value, Buffer) else np.frombuffer(value, np.uint8)
        self.sink.write(key, np.ascontiguousarray(data))

    def __delitem__(self, key: str) -> None:
        if not self.sink.erase(key):
            raise KeyError(key)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and key in self.sink

    def __iter__(self) -> Iterator[str]:
        return iter(self.sink.keys())

    def __len__(self) -> int:
        return len(self.sink)

    def clear(self) -> None:
        self.sink.clear()


def make_store(file_name: str | os.PathLike[str] | None) -> tuple[Store, _core.Sink | None]:
    """A zarr store plus the native sink that writes chunks into the same place."""
    if file_name is None:
        sink = _core.MemorySink()
        return zarr.storage.MemoryStore(store_dict=NativeMemoryMapping(sink)), sink
    return zarr.storage.LocalStore(os.fspath(file_name)), None


def sink_for(
    store: Store, memory_sink: _core.Sink | None, fsync: bool, direct_io: bool | None
) -> _core.Sink | None:
    """The native sink for `store`, or None when chunks must go through zarr-python."""
    if memory_sink is not None:
        return memory_sink
    if isinstance(store, zarr.storage.LocalStore):
        mode = {None: _core.DirectIO.automatic, True: _core.DirectIO.on, False: _core.DirectIO.off}
        if direct_io not in mode:
            raise ValueError(f"direct_io must be None (automatic), True or False, got {direct_io!r}")
        return _core.DirectorySink(str(store.root), fsync, mode[direct_io])
    if isinstance(store, zarr.storage.MemoryStore) and isinstance(store._store_dict, NativeMemoryMapping):
        return store._store_dict.sink
    return None
