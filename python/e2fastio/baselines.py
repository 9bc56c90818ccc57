"""Pure-Python stand-ins for Earth2Studio 0.19's IO backends (what e2fastio replaces).

These are not Earth2Studio: they exist so that the demo and the benchmarks can
still compare against the pure-Python approach on machines where
``earth2studio`` is not installed (``pip install e2fastio[compare]`` installs
it, and then the real backends are the comparison). Each one writes the way
Earth2Studio 0.19 writes:

- :class:`StandInZarrBackend` (its ``ZarrBackend``): one zarr-python
  ``setitem`` per array and write on the caller's thread, with plain slices
  when the written coordinates are contiguous in the store (0.19's fast path)
  and ``np.ix_`` otherwise;
- :class:`StandInAsyncZarrBackend` (its ``AsyncZarrBackend``): the same
  selections; non-blocking writes copy the data to fresh host memory on the
  caller's thread and hand the ``setitem`` to a thread pool, ``close`` waits;
- :class:`StandInNetCDF4Backend` (its ``NetCDF4Backend``): netCDF4-python,
  index arrays per dimension (0.19 does not slice there) and ``sync()`` after
  ``add_array`` and after every ``write``.

``PythonZarrBackend`` and ``PythonAsyncZarrBackend`` are the older names of the
two Zarr stand-ins.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import zarr
import zarr.abc.store
import zarr.storage

from e2fastio._write.inputs import as_list, convert_multidim_to_singledim, to_host_array
from e2fastio._write.zarr_arrays import get_array

__all__ = [
    "StandInAsyncZarrBackend",
    "StandInNetCDF4Backend",
    "StandInZarrBackend",
    "PythonAsyncZarrBackend",
    "PythonZarrBackend",
    "selection",
]


def selection(stored: Mapping[str, np.ndarray], coords: Mapping[str, np.ndarray]) -> tuple[Any, ...]:
    """Where `coords` lie in the `stored` coordinates, as Earth2Studio 0.19's ZarrBackend finds it.

    Parameters
    ----------
    stored : Mapping[str, numpy.ndarray]
        The store's coordinate values per dimension.
    coords : Mapping[str, numpy.ndarray]
        The written values per dimension, in the array's dimension order.

    Returns
    -------
    tuple
        One ``slice`` per dimension when every dimension's positions are
        contiguous and non-empty; otherwise ``np.ix_`` of the positions.
    """
    positions = [np.where(np.isin(stored[dim], value))[0] for dim, value in coords.items()]
    if all(p.size > 0 and bool(np.all(np.diff(p) == 1)) for p in positions):
        return tuple(slice(int(p[0]), int(p[-1]) + 1) for p in positions)
    return tuple(np.ix_(*positions))


class StandInZarrBackend:
    """Stand-in for Earth2Studio 0.19's ``ZarrBackend``: zarr-python on the caller's thread.

    Parameters
    ----------
    file_name : str | os.PathLike | zarr Store | None
        A local directory, any zarr ``Store`` (e.g. an ``ObjectStore``), or
        ``None`` for an in-memory store.
    chunks : Mapping[str, int], optional
        Chunk length per dimension; dimensions not named are one chunk.
    zarr_codecs : optional
        zarr-python ``compressors`` for every array (``None``: uncompressed).
    """

    def __init__(self, file_name: str | os.PathLike[str] | zarr.abc.store.Store | None = None,
                 chunks: Mapping[str, int] | None = None, zarr_codecs: Any = None) -> None:
        if isinstance(file_name, zarr.abc.store.Store):
            self.store = file_name
        else:
            self.store = (zarr.storage.MemoryStore() if file_name is None
                          else zarr.storage.LocalStore(os.fspath(file_name)))
        self.root = zarr.group(self.store, overwrite=True)
        self.chunks = dict(chunks or {})
        self.zarr_codecs = zarr_codecs
        self.coords: dict[str, np.ndarray] = {}

    def add_array(self, coords: Mapping[str, np.ndarray], array_name: str | list[str], **kwargs: Any) -> None:
        """Create the coordinate arrays (once) and a float32 array per name."""
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

    def _selection(self, coords: Mapping[str, np.ndarray]) -> tuple[Any, ...]:
        adjusted, _ = convert_multidim_to_singledim(coords)
        return selection(self.coords, adjusted)

    def write(self, x: Any, coords: Mapping[str, np.ndarray], array_name: str | list[str]) -> None:
        """Store each tensor of `x` at `coords`; returns when zarr-python has stored it."""
        where = self._selection(coords)
        for xi, name in zip(as_list(x, "x"), as_list(array_name, "array_name"), strict=False):
            get_array(self.root, name)[where] = to_host_array(xi)

    def close(self) -> None:
        """Nothing to drain: every write was synchronous."""


class StandInAsyncZarrBackend(StandInZarrBackend):
    """Stand-in for Earth2Studio 0.19's ``AsyncZarrBackend`` (blocking or not).

    Non-blocking (``blocking=False``) writes copy their tensors to fresh host
    memory on the caller's thread, then hand zarr-python ``setitem`` calls to a
    thread pool of `pool_size`; ``close`` waits for them (memory grows with the
    queue). Blocking writes store before they return.
    """

    def __init__(self, file_name: str | os.PathLike[str] | zarr.abc.store.Store | None = None,
                 chunks: Mapping[str, int] | None = None, zarr_codecs: Any = None, pool_size: int = 8,
                 blocking: bool = False) -> None:
        super().__init__(file_name, chunks, zarr_codecs)
        self.blocking = blocking
        self._pool = ThreadPoolExecutor(pool_size) if not blocking else None
        self._futures: list[Future[None]] = []

    def write(self, x: Any, coords: Mapping[str, np.ndarray], array_name: str | list[str]) -> None:
        """Store (blocking) or queue (non-blocking) each tensor of `x` at `coords`."""
        if self._pool is None:
            super().write(x, coords, array_name)
            return
        where = self._selection(coords)
        for xi, name in zip(as_list(x, "x"), as_list(array_name, "array_name"), strict=False):
            data = np.array(to_host_array(xi), copy=True)
            self._futures.append(self._pool.submit(get_array(self.root, name).__setitem__, where, data))

    def close(self) -> None:
        """Wait for every queued write (raising the first failure) and stop the pool."""
        futures, self._futures = self._futures, []
        for f in futures:
            f.result()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None


class StandInNetCDF4Backend:
    """Stand-in for Earth2Studio 0.19's ``NetCDF4Backend``: netCDF4-python, synced after every write.

    Parameters
    ----------
    file_name : str | os.PathLike
        The NetCDF-4 file (created or truncated: ``mode="w"``).
    zlib : bool, optional
        Compress the data variables with shuffle + deflate (Earth2Studio's
        backend cannot; benchmarks use this to compare compressed files).
    complevel : int, optional
        Deflate level when `zlib`.
    chunksizes : Sequence[int] | None, optional
        Chunk shape of the data variables (netCDF-C's choice when ``None``).
    """

    def __init__(self, file_name: str | os.PathLike[str], zlib: bool = False, complevel: int = 4,
                 chunksizes: Sequence[int] | None = None) -> None:
        import netCDF4

        self.root = netCDF4.Dataset(os.fspath(file_name), "w", format="NETCDF4")
        self.coords: dict[str, np.ndarray] = {}
        self._var_kwargs: dict[str, Any] = dict(zlib=True, complevel=complevel, shuffle=True) if zlib else {}
        if chunksizes is not None:
            self._var_kwargs["chunksizes"] = tuple(chunksizes)

    def add_array(self, coords: Mapping[str, np.ndarray], array_name: str | list[str], **kwargs: Any) -> None:
        """Create dimensions and coordinate variables (once) and a float32 variable per name; sync."""
        adjusted, _ = convert_multidim_to_singledim(coords)
        for dim, values in adjusted.items():
            if dim in self.coords:
                continue
            self.root.createDimension(dim, len(values))
            if values.dtype.kind == "M":  # datetimes: hours since 1970, as CF readers expect
                var = self.root.createVariable(dim, "f8", (dim,))
                var.units = "hours since 1970-01-01 00:00:00"
                var[:] = (values - np.datetime64(0, "s")) / np.timedelta64(1, "h")
            elif values.dtype.kind == "m":
                var = self.root.createVariable(dim, "f8", (dim,))
                var.units = "hours"
                var[:] = values / np.timedelta64(1, "h")
            else:
                self.root.createVariable(dim, values.dtype, (dim,))[:] = values
            self.coords[dim] = values
        for name in as_list(array_name, "array_name"):
            self.root.createVariable(name, "f4", tuple(adjusted), **self._var_kwargs)
        self.root.sync()

    def write(self, x: Any, coords: Mapping[str, np.ndarray], array_name: str | list[str]) -> None:
        """Store each tensor of `x` at `coords` (index arrays per dimension), then sync the file."""
        adjusted, _ = convert_multidim_to_singledim(coords)
        where = tuple(np.where(np.isin(self.coords[dim], value))[0] for dim, value in adjusted.items())
        for xi, name in zip(as_list(x, "x"), as_list(array_name, "array_name"), strict=False):
            self.root[name][where] = to_host_array(xi)
        self.root.sync()

    def close(self) -> None:
        """Close the file."""
        self.root.close()


# The names these stand-ins had before they were labelled as such.
PythonZarrBackend = StandInZarrBackend
PythonAsyncZarrBackend = StandInAsyncZarrBackend
