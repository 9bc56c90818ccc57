"""Pure-Python reference backends for comparisons (what e2fastio replaces).

``PythonZarrBackend`` writes the way Earth2Studio's ``ZarrBackend`` drives
zarr-python: one ``setitem`` per array and write, with ``np.ix_`` selections,
on the caller's thread. It exists so benchmarks and the demo can compare
against the pure-Python approach when ``earth2studio`` is not installed.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import zarr
import zarr.abc.store
import zarr.storage

from e2fastio._data import as_list, convert_multidim_to_singledim, to_host_array
from e2fastio._zarr_native import get_array


class PythonZarrBackend:
    """Minimal pure-Python Zarr v3 IOBackend (add_array / write), the Earth2Studio way."""

    def __init__(self, file_name: str | os.PathLike[str] | zarr.abc.store.Store | None = None,
                 chunks: Mapping[str, int] | None = None, zarr_codecs: Any = None) -> None:
        if isinstance(file_name, zarr.abc.store.Store):  # e.g. an ObjectStore or FsspecStore
            self.store = file_name
        else:
            self.store = (zarr.storage.MemoryStore() if file_name is None
                          else zarr.storage.LocalStore(os.fspath(file_name)))
        self.root = zarr.group(self.store, overwrite=True)
        self.chunks = dict(chunks or {})
        self.zarr_codecs = zarr_codecs
        self.coords: dict[str, np.ndarray] = {}

    def add_array(self, coords: Mapping[str, np.ndarray], array_name: str | list[str], **kwargs: Any) -> None:
        adjusted, _ = convert_multidim_to_singledim(coords)
        for dim, values in adjusted.items():
            if dim not in self.coords:
                arr = self.root.create_array(dim, shape=values.shape, chunks=values.shape, dtype=values.dtype,
                                             dimension_names=[dim], compressors=self.zarr_codecs, fill_value=None)
                arr[...] = values
                self.coords[dim] = values
        shape = tuple(len(self.coords[d]) for d in adjusted)
        chunks = tuple(self.chunks.get(d, len(self.coords[d])) for d in adjusted)
        for name in as_list(array_name, "array_name"):
            self.root.create_array(name, shape=shape, chunks=chunks, dtype="float32", dimension_names=list(adjusted),
                                   compressors=self.zarr_codecs, fill_value=None, **kwargs)

    def write(self, x: Any, coords: Mapping[str, np.ndarray], array_name: str | list[str]) -> None:
        adjusted, _ = convert_multidim_to_singledim(coords)
        idx = np.ix_(*[np.where(np.isin(self.coords[d], v))[0] for d, v in adjusted.items()])
        for xi, name in zip(as_list(x, "x"), as_list(array_name, "array_name"), strict=False):
            get_array(self.root, name)[idx] = to_host_array(xi)

    def close(self) -> None:
        """Nothing to drain: every write was synchronous."""


class PythonAsyncZarrBackend(PythonZarrBackend):
    """Pure-Python non-blocking writes, the way Earth2Studio's AsyncZarrBackend does them.

    Each ``write`` copies its tensors to fresh host memory on the caller's
    thread, then hands zarr-python ``setitem`` calls to a thread pool;
    ``close`` waits for them. Memory grows with the queue.
    """

    def __init__(self, file_name: str | os.PathLike[str] | None = None, chunks: Mapping[str, int] | None = None,
                 zarr_codecs: Any = None, pool_size: int = 8) -> None:
        from concurrent.futures import ThreadPoolExecutor

        super().__init__(file_name, chunks, zarr_codecs)
        self._pool = ThreadPoolExecutor(pool_size)
        self._futures: list[Any] = []

    def write(self, x: Any, coords: Mapping[str, np.ndarray], array_name: str | list[str]) -> None:
        adjusted, _ = convert_multidim_to_singledim(coords)
        idx = np.ix_(*[np.where(np.isin(self.coords[d], v))[0] for d, v in adjusted.items()])
        for xi, name in zip(as_list(x, "x"), as_list(array_name, "array_name"), strict=False):
            data = np.array(to_host_array(xi), copy=True)
            self._futures.append(self._pool.submit(get_array(self.root, name).__setitem__, idx, data))

    def close(self) -> None:
        for f in self._futures:
            f.result()
        self._futures.clear()
        self._pool.shutdown()
