"""``AsyncZarrBackend``: Earth2Studio's non-blocking Zarr backend, on the native pipeline.

An adapter over a :class:`~e2fastio.ZarrBackend` (and its pipeline, through
public names only). Size (over 500 lines, the class about 420 besides its
docstring): Earth2Studio's AsyncZarrBackend has the largest surface of its
backends, and each part is kept here: the location arguments (``store``,
``file_name``, the deprecated ``fs_factory``) and their errors, parallel
coordinates, array creation from the first write, the ``pool_size`` throttle,
its lifecycle (``close`` suspends), and the coroutine API.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import zarr
import zarr.storage

from e2fastio._write import inputs, ranks
from e2fastio._write.budget import NONBLOCKING_SPLIT, engine_kwargs, split_buffer
from e2fastio._write.shards import shard_shape
from e2fastio._write.zarr_arrays import dimension_names
from e2fastio._write.zarr_nodes import read_whole
from e2fastio.backends.zarr import ZarrBackend
from e2fastio.errors import CoordinateError
from e2fastio.stores import remote

logger = logging.getLogger(__name__)

CoordSystem = Mapping[str, np.ndarray]


_ZARR_KWARGS = ("mode", "zarr_format", "use_consolidated")


def _scrub(coords: CoordSystem) -> OrderedDict[str, np.ndarray]:
    """Earth2Studio's coordinate clean-up: datetime objects to datetime64[ns], timedelta objects to
    timedelta64[ns]; a 0-d coordinate is an error."""
    out: OrderedDict[str, np.ndarray] = OrderedDict()
    for key, value in coords.items():
        v = np.asarray(value)
        if v.ndim == 0:
            raise ValueError(f"Coordinate {key} has a 0 shape, needs to be a 1D coordinate")
        if v.dtype == object and v.size:
            if isinstance(v.flat[0], datetime.datetime):
                v = v.astype("datetime64[ns]")
            elif isinstance(v.flat[0], datetime.timedelta):
                v = v.astype("timedelta64[ns]")
        out[key] = v
    return out


def _check_zarr_kwargs(zarr_kwargs: Mapping[str, Any]) -> str:
    """The open mode of `zarr_kwargs`; every other key is honoured or refused by name."""
    if not isinstance(zarr_kwargs, Mapping):
        raise TypeError(f"zarr_kwargs must be a dict, got {type(zarr_kwargs).__name__}")
    unknown = sorted(set(zarr_kwargs) - set(_ZARR_KWARGS))
    if unknown:
        hint = {
            "path": "put the sub-path into the store location (file_name or store) instead",
            "storage_options": "pass object-store options as store_kwargs with store='s3://...' instead",
        }
        why = "; ".join(f"{k!r}: {hint.get(k, 'not supported by e2fastio')}" for k in unknown)
        raise ValueError(f"zarr_kwargs: unsupported key(s) {why}. Supported keys: {', '.join(_ZARR_KWARGS)}")
    mode = zarr_kwargs.get("mode", "a")
    if mode not in ("a", "w", "w-", "r+"):
        raise ValueError(f"zarr_kwargs['mode'] must be 'a', 'r+', 'w' or 'w-' for writing, got {mode!r}")
    if zarr_kwargs.get("zarr_format", 3) not in (3, None):
        raise ValueError(f"zarr_kwargs['zarr_format']: e2fastio writes Zarr v3 only, got "
                         f"{zarr_kwargs['zarr_format']!r}; leave it out or pass 3")
    if zarr_kwargs.get("use_consolidated"):  # as Earth2Studio: ignored, with a warning
        logger.warning("zarr_kwargs['use_consolidated'] is ignored: the backend needs the live store membership "
                       "to create and write arrays (consolidate at the end with zarr.consolidate_metadata(io.store))")
    return str(mode)


class AsyncZarrBackend:
    """Non-blocking Zarr v3 backend with Earth2Studio's ``AsyncZarrBackend`` interface.

    With ``blocking=False`` each ``write`` copies its tensors into a fixed
    staging ring (with the GIL released) and returns; native threads encode
    and store the chunks. The caller may modify or free its tensors as soon
    as ``write`` returns. Errors of background writes are raised at the next
    ``write``, ``flush`` or ``close``.

    Parameters
    ----------
    file_name : str, optional
        Local store directory (``store`` takes precedence).
    parallel_coords : CoordSystem
        Coordinates written slice by slice (e.g. ``time``, ``lead_time``):
        arrays get chunk size 1 along them and the full values up front.
    fs_factory : callable, optional
        Deprecated (warns): a factory of an asynchronous fsspec filesystem,
        e.g. ``functools.partial(s3fs.S3FileSystem, asynchronous=True, ...)``;
        `file_name` is then the path inside it. Prefer `store`.
    blocking : bool
        ``True``: ``write`` returns when the data is stored.
    pool_size : int
        Earth2Studio's number of writes in flight. Here: non-blocking writes
        in flight at once (a ``write`` waits while `pool_size` earlier writes
        are still being stored). Uploads to object stores are bounded by
        ``upload_concurrency`` instead (in Earth2Studio each of the
        `pool_size` event loops has many uploads in flight). The native
        encoder threads are set by ``threads``; staging memory is bounded by
        ``max_buffer_bytes`` in any case.
    async_timeout : float
        Seconds ``flush``/``close`` wait for pending writes before raising
        ``TimeoutError``.
    zarr_kwargs : dict
        Earth2Studio passes these to ``zarr.api.asynchronous.open``. Honoured:
        ``mode`` (``"a"`` default: open or create; ``"w"``: overwrite;
        ``"w-"``: fail if it exists; ``"r+"``: must exist), ``zarr_format``
        (3 or ``None``), ``use_consolidated`` (ignored with a warning, as in
        Earth2Studio: the live membership is used). Any other key raises
        ``ValueError`` naming it: nothing is silently dropped.
    zarr_codecs : zarr codec(s), optional
        Compressor(s) of new arrays.
    chunked_coords : dict[str, int]
        Chunk sizes of other dimensions (default: one chunk).
    shard_coords : dict[str, int]
        Zarr v3 sharding, as in Earth2Studio: elements per shard along the
        named coordinates (each a multiple of that coordinate's chunk size; a
        non-parallel coordinate's must cover its whole length); coordinates not
        named get shards of their chunk size (parallel coordinates) or their
        full length. Shard sizes need not divide a coordinate. The core
        gathers the encoded inner chunks of each shard and writes the shard as
        one object once every chunk of it was written; ``flush``/``close``
        write incomplete shards (unwritten chunks read back as the fill value).
        Writing into a shard already in the store merges with it
        (read-modify-write, with a warning). Shards under assembly are held
        in a quarter of ``max_buffer_bytes``; when that is full the oldest
        incomplete shard is written out early (later chunks of it merge).
    max_inflight_shards : int
        Shard objects written at once (at least 1); writes of one shard never overlap.
    store : str | obstore store | zarr Store, optional
        Takes precedence over `file_name`: a local path or ``file://`` URL,
        ``"memory://"``, an object-store URL (``"s3://bucket/x.zarr"``,
        ``gs://``, ``az://``; opened with ``obstore.store.from_url``), an
        obstore store, or any writable zarr ``Store``.
    store_kwargs : dict
        Options of ``obstore.store.from_url`` for a URL `store` (``endpoint``,
        ``region``, credentials, ``client_options``, ``retry_config``).
    threads, max_buffer_bytes : optional, keyword-only
        As for :class:`e2fastio.ZarrBackend`.
    upload_concurrency : int, optional, keyword-only
        Object stores: chunk uploads in flight at once; by default 16 (as
        :class:`e2fastio.ZarrBackend`), or `pool_size` when that is more.
    upload_retries, upload_timeout : optional, keyword-only
        Object stores: further attempts of a failed chunk upload (exponential
        backoff) and seconds one attempt may take, as for
        :class:`e2fastio.ZarrBackend` (the only retries of a chunk for a URL
        `store`; a store passed in keeps its own client's retries inside ours).
    process_group, distributed_timeout, consolidate_metadata : optional, keyword-only
        Multi-rank writes into one store, as for :class:`e2fastio.ZarrBackend`.
    device_compression : {"auto", True, False}, optional, keyword-only
        Compress CUDA tensors on the GPU (nvCOMP zstd into Blosc1 chunks), as
        for :class:`e2fastio.ZarrBackend`.
    """

    def __init__(
        self,
        file_name: str | None,
        parallel_coords: CoordSystem,
        fs_factory: Callable[..., Any] | None = None,
        blocking: bool = True,
        pool_size: int = 8,
        async_timeout: float = 600,
        zarr_kwargs: dict[str, Any] = {"mode": "a"},  # noqa: B006 - Earth2Studio's signature
        zarr_codecs: Any = None,
        chunked_coords: dict[str, int] = {},  # noqa: B006
        shard_coords: dict[str, int] = {},  # noqa: B006
        max_inflight_shards: int = 4,
        store: Any = None,
        store_kwargs: dict[str, Any] = {},  # noqa: B006
        *,
        threads: int | None = None,
        max_buffer_bytes: int | None = None,
        upload_concurrency: int | None = None,
        upload_retries: int = 6,
        upload_timeout: float = 60.0,
        process_group: Any = None,
        distributed_timeout: float = 600.0,
        consolidate_metadata: bool = False,
        device_compression: bool | str = "auto",
    ) -> None:
        for dim, shard_size in dict(shard_coords).items():
            if shard_size <= 0:
                raise ValueError(f"Shard size for coordinate '{dim}' must be positive but got {shard_size}")
        if fs_factory is not None:
            remote.deprecated_fs_factory()
        if not isinstance(pool_size, int) or isinstance(pool_size, bool) or pool_size < 1:
            raise ValueError(f"pool_size must be a positive int, got {pool_size!r}")
        if max_inflight_shards < 1:
            raise ValueError(f"max_inflight_shards must be at least 1 but got {max_inflight_shards}")
        if not (isinstance(async_timeout, (int, float)) and async_timeout > 0):
            raise ValueError(f"async_timeout must be a positive number of seconds, got {async_timeout!r}")
        mode = _check_zarr_kwargs(zarr_kwargs)
        if store is not None and file_name is not None:
            logger.warning("Both file_name and store were provided; file_name is ignored and the store "
                           "defines the output location")
        if store is None and file_name is None:
            raise ValueError("An output location is required: pass `store` (preferred) or `file_name`")
        if store is None and fs_factory is None and isinstance(file_name, str) and "://" in file_name:
            raise ValueError(f"file_name={file_name!r} is a URL: pass it as store= (with store_kwargs)")
        target = store if store is not None else file_name
        if isinstance(target, (str, os.PathLike)) and "://" not in os.fspath(target):  # a local directory
            if mode == "w-" and os.path.exists(target):
                raise FileExistsError(f"zarr_kwargs mode 'w-': {os.fspath(target)} already exists")
            if mode == "r+" and not os.path.exists(target):
                raise FileNotFoundError(f"zarr_kwargs mode 'r+': {os.fspath(target)} does not exist; use mode 'a' "
                                        "to create it")
        self.parallel_coords: OrderedDict[str, np.ndarray] = OrderedDict()
        for key, value in _scrub(inputs.convert_multidim_to_singledim(parallel_coords)[0]).items():
            if len(np.unique(value)) != len(value):
                raise ValueError(
                    f"Chunked coordinate array '{key}' contains duplicate values. "
                    "All index coordinates must have unique values."
                )
            self.parallel_coords[key] = value
        for key, size in chunked_coords.items():
            if not isinstance(size, (int, np.integer)) or size < 1:
                raise ValueError(f"chunked_coords[{key!r}] must be a positive int, got {size!r}")
        self.chunked_coords = dict(chunked_coords)
        # Sharding: a quarter of max_buffer_bytes holds shards under assembly, the rest stages and encodes.
        budget = engine_kwargs(threads, max_buffer_bytes)["max_buffer_bytes"]
        shard_bytes = split_buffer(budget, "AsyncZarrBackend with shard_coords",
                                   {"shards under assembly": (1, 4), "staging and encode buffers": (3, 4)}
                                   )["shards under assembly"] if shard_coords else 0
        if not blocking:  # and the rest as its ZarrBackend splits it
            split_buffer(budget - shard_bytes, "a non-blocking AsyncZarrBackend", NONBLOCKING_SPLIT)
        ranks.resolve_group(process_group)  # checked here too: ZarrBackend sees it after the location
        # Every argument is checked: only now is the location opened (a local one is created).
        if upload_concurrency is None:  # as many as ZarrBackend's default, or pool_size when that is more
            upload_concurrency = max(remote.RemoteOptions.concurrency, pool_size)
        options = remote.RemoteOptions(concurrency=upload_concurrency, retries=upload_retries,
                                        timeout=upload_timeout)
        location = remote.resolve(
            store if store is not None else file_name,
            store_kwargs=store_kwargs,
            fs_factory=fs_factory if store is None else None,
            options=options,
            what="store" if store is not None else "file_name",
        )
        self.shard_coords: dict[str, int] = dict(shard_coords)
        self.max_inflight_shards = max_inflight_shards
        self.pool_size = pool_size
        self.async_timeout = float(async_timeout)
        self.blocking = blocking
        self.zarr_codecs = zarr_codecs
        chunks = {k: 1 for k in self.parallel_coords} | self.chunked_coords
        location.owner = type(self).__name__  # in what the user is told at exit
        self._z = ZarrBackend(location, chunks=chunks, backend_kwargs={"overwrite": mode == "w"},
                              zarr_codecs=zarr_codecs, threads=threads, max_buffer_bytes=budget - shard_bytes,
                              blocking=blocking, process_group=process_group,
                              distributed_timeout=distributed_timeout, consolidate_metadata=consolidate_metadata,
                              device_compression=device_compression)
        self._z.flush_timeout = self.async_timeout
        # Shards accumulate until complete (not one write each, as ZarrBackend's blocking writes do);
        # incomplete ones are written at flush/close.
        self._z.pipeline.shards.gather_until_complete(max_inflight_shards, shard_bytes or None)
        # Serialises this backend's writes (sync calls from several threads and
        # async_write tasks alike); the chunks of one write still encode in parallel.
        self._lock = threading.RLock()
        self._inflight: list[int] = []  # chunks still pending after each non-blocking write, oldest first
        # Parallel coordinates already in the store must hold the same values.
        for key, value in self.parallel_coords.items():
            if key in self._z.coords and not np.array_equal(self._z.coords[key], value):
                raise ValueError(
                    f"Parallel coordinate array '{key}' already present in Zarr store but has different values "
                    "than provided array; make them the same or create a new store."
                )

    # ------------------------------------------------------------------ attributes users reach for
    @property
    def root(self) -> zarr.AsyncGroup:
        """The store's root as a ``zarr.AsyncGroup`` (as in Earth2Studio); ``self[name]`` gives synchronous arrays."""
        return self._z.root._async_group

    @property
    def store(self) -> Any:
        return self._z.store

    @property
    def coords(self) -> OrderedDict[str, np.ndarray]:
        """Coordinate arrays read back from the store (the store is the source of truth).

        Dimensions come in the order data arrays name them; coordinate arrays
        that no data array uses (a coordinate-only store) follow.
        """
        self._z.pipeline.wait_uploads()  # coordinates written through the upload path are visible
        arrays = dict(sorted((k, v) for k, v in self._z.root.members() if isinstance(v, zarr.Array)))
        dims_of = {name: list(dimension_names(a)) for name, a in arrays.items()}
        order: list[str] = []
        for name, dims in dims_of.items():
            if dims != [name]:
                order += [d for d in dims if d not in order]
        order += [name for name, dims in dims_of.items() if dims == [name] and name not in order]
        present = [d for d in order if d in arrays]
        values = read_whole(self._z.root, [arrays[d] for d in present])
        return OrderedDict(zip(present, values, strict=True))

    def __contains__(self, item: str) -> bool:
        return item in self._z

    def __getitem__(self, item: str) -> zarr.Array[Any] | zarr.Group:
        self.flush()  # what is read includes every write so far
        return self._z.root[item]

    def __len__(self) -> int:
        return len(self._z)

    def __iter__(self) -> Iterator[str]:
        return iter(self._z)

    def __enter__(self) -> AsyncZarrBackend:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is None:
            self.close()
        else:  # the caller's error wins; ours is logged
            try:
                self.close()
            except Exception as err:  # noqa: BLE001
                logger.error("AsyncZarrBackend: closing after an error failed too: %s", err)

    def stats(self) -> dict[str, object]:
        return self._z.stats()

    # ------------------------------------------------------------------ arrays
    def _array_coords(self, coords: CoordSystem) -> OrderedDict[str, np.ndarray]:
        """The coordinates an array written at `coords` is created with."""
        adjusted, _ = inputs.convert_multidim_to_singledim(coords)
        out: OrderedDict[str, np.ndarray] = OrderedDict()
        for key, value in _scrub(adjusted).items():
            if key in self.parallel_coords:
                if not np.all(np.isin(value, self.parallel_coords[key])):
                    raise CoordinateError(f"Coordinate array '{key}' contains values not present in parallel_coords")
                value = self.parallel_coords[key]
            out[key] = value
        return out

    def add_array(self, coords: CoordSystem, array_name: str | list[str], dtype: Any = np.float32,
                  **kwargs: Any) -> None:
        """Create array(s) and their coordinates up front (idempotent).

        Raises ``ValueError`` when a coordinate already in the store has
        different values (other than parallel coordinates).
        """
        if kwargs:
            logger.warning("AsyncZarrBackend.add_array ignoring unsupported kwargs: %s", sorted(kwargs))
        names = inputs.as_list(array_name, "array_name")
        full = self._array_coords(coords)
        for key, value in full.items():
            if key in self._z.coords and key not in self.parallel_coords:
                existing = self._z.coords[key]
                if existing.shape != value.shape or not np.array_equal(existing, value):
                    raise CoordinateError(
                        f"Coordinate array '{key}' already exists in the store with different values, "
                        "use a different dimension name"
                    )
        missing = [n for n in names if inputs.check_array_name(n) and n not in self._z]
        if missing or not names:  # no names: the coordinates alone (a store other ranks validate against)
            self._create(full, missing, np.dtype(dtype))

    def _create_missing(self, full: OrderedDict[str, np.ndarray], xs: list[Any], names: list[str],
                        coords: CoordSystem) -> None:
        """Create the arrays of a write that the store lacks: those of one dtype together, in one round.

        Every input is checked first (shape against `coords`, the write's own):
        a bad write creates nothing, as ZarrBackend's does not.
        """
        dims = list(coords)
        extent = [np.arange(len(np.asarray(v).reshape(-1))) for v in coords.values()]
        by_dtype: dict[np.dtype[Any], list[str]] = {}
        seen: set[str] = set()
        for xi, name in zip(xs, names, strict=True):
            if inputs.check_array_name(name) and name not in self._z:
                arr = inputs.to_input(xi, True, "x", "c")  # a CUDA tensor stays on its device (no host copy)
                inputs.check_shape(arr, extent, dims, name)
                if name not in seen:
                    seen.add(name)  # the first tensor of a name decides its dtype
                    by_dtype.setdefault(np.dtype(arr.dtype), []).append(name)
        for dtype, group in by_dtype.items():
            self._create(full, group, dtype)

    def _create(self, full: OrderedDict[str, np.ndarray], names: list[str], dtype: np.dtype[Any]) -> None:
        """Create arrays `names` (and missing coordinates) with the chunks and shards of this backend."""
        self._sync_chunks()
        chunked = {k: min(int(self._z.chunks.get(k, len(v))), max(1, len(v))) for k, v in full.items()}
        groups: dict[tuple[int, ...] | None, list[str]] = {}
        for name in names:
            shards = shard_shape(name, full, chunked, dtype, self.shard_coords, self.parallel_coords)
            groups.setdefault(shards, []).append(name)
        if not names:
            self._z.add_array(full, [], dtype=dtype)
        for shards, group in groups.items():
            kw: dict[str, Any] = {} if shards is None else {"shards": shards}
            self._z.add_array(full, group, dtype=dtype, **kw)

    def _sync_chunks(self) -> None:
        """New arrays take `chunked_coords` as it is now (users may set it after construction)."""
        self._z.chunks.update({k: 1 for k in self.parallel_coords} | dict(self.chunked_coords))

    @property
    def fs(self) -> Any:
        """The fsspec filesystem of a deprecated `fs_factory` store; ``None`` otherwise (as in Earth2Studio)."""
        return getattr(self._z.store, "fs", None)

    def write(self, x: Any, coords: CoordSystem, array_name: str | list[str]) -> None:
        """Write tensor(s); returns once staged (``blocking=False``) or stored.

        Parallel coordinates may be any subset of their values; every other
        coordinate must be passed in full, as in Earth2Studio. Safe to call
        from several threads (writes are taken one at a time).
        """
        with self._lock:
            self._throttle()
            self._write(x, coords, array_name)
            if not self.blocking and self._z.pipeline.engine.started:
                done, pending = self._z.pipeline.progress()
                self._inflight.append(done + pending)  # this write is stored once that many chunks are done

    def _throttle(self) -> None:
        """Earth2Studio's pool_size: wait while `pool_size` earlier non-blocking writes are still being stored."""
        if self.blocking or not self._z.pipeline.engine.started:
            self._inflight.clear()
            return
        deadline = time.monotonic() + self.async_timeout
        while self._inflight:
            done, _ = self._z.pipeline.progress()
            while self._inflight and self._inflight[0] <= done:
                self._inflight.pop(0)
            if len(self._inflight) < self.pool_size:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"a write waited {self.async_timeout:g} s (async_timeout) for one of the "
                                   f"{self.pool_size} writes in flight (pool_size) to be stored")
            # Sleep (GIL released) until another chunk finishes: not the oldest write's end,
            # any write's (chunks finish out of order).
            self._z.pipeline.engine.get().wait_progress(done, max(0.0, deadline - time.monotonic()))

    def _write(self, x: Any, coords: CoordSystem, array_name: str | list[str]) -> None:
        xs = list(x) if isinstance(x, (list, tuple)) else [x]  # checked once, by the plan of self._z.write
        names = inputs.as_list(array_name, "array_name")
        if len(xs) != len(names):
            raise ValueError(
                f"Input tensors and array names must same length but got {len(xs)} and {len(names)}."
            )
        coords = _scrub(coords)
        adjusted, _ = inputs.convert_multidim_to_singledim(coords)
        self._check_write_coords(adjusted)
        full = self._array_coords(coords)
        if self._z.pipeline.coord is None:
            self._create_missing(full, xs, names, adjusted)
        self._z.write(xs, coords, names)

    def _check_write_coords(self, adjusted: CoordSystem) -> None:
        for key, value in adjusted.items():
            if key in self.parallel_coords or key not in self._z.coords:
                continue
            if not np.array_equal(np.asarray(value), self._z.coords[key]):
                raise CoordinateError(
                    f"Non-index coordinate {key} must match the complete coordinate system defined in zarr "
                    "array. Sliced writes of non-index coordinates are not supported."
                )

    def read(self, coords: CoordSystem, array_name: str, device: Any = "cpu") -> tuple[Any, CoordSystem]:
        with self._lock:  # never beside a close that suspends the pipeline
            return self._z.read(coords, array_name, device)

    def flush(self) -> None:
        """Wait until every write so far is stored; raise the first background error."""
        with self._lock:
            self._inflight.clear()
            self._z.flush()

    def close(self) -> None:
        """Store everything pending, then stop every thread of ours; raise the first background error.

        As in Earth2Studio, the backend stays usable: a later ``write`` starts
        the threads again, and ``close`` may be called any number of times.
        Nothing of ours runs while the backend is idle after ``close``. With an
        opted-in ``process_group``, ``close`` is collective and final.
        """
        with self._lock:
            self._inflight.clear()
            if self._z.pipeline.coord is not None:
                self._z.close()  # opted-in multi-rank: collective, and final
            else:
                self._z.pipeline.suspend()

    @property
    def closed(self) -> bool:
        """True while no thread of ours runs for this backend (after ``close``, until the next write)."""
        return self._z.pipeline.idle()

    # ------------------------------------------------------------------ coroutines (Earth2Studio's async API)
    async def prepare_inputs(
        self, x: Any, coords: CoordSystem, array_name: str | list[str]
    ) -> tuple[dict[str, Any], CoordSystem]:
        """Check a write and create its missing arrays; return ``({name: tensor}, coords)``.

        As Earth2Studio's: lengths of `x` and `array_name` must match, parallel
        coordinates must hold values given at construction, every other
        coordinate must be complete.
        """
        xs = inputs.as_list(x, "x")
        names = inputs.as_list(array_name, "array_name")
        if len(xs) != len(names):
            raise ValueError(f"Input tensors and array names must same length but got {len(xs)} and {len(names)}.")
        adjusted, _ = inputs.convert_multidim_to_singledim(_scrub(coords))
        await asyncio.to_thread(self._prepare, xs, adjusted, names)
        return dict(zip(names, xs, strict=True)), OrderedDict(adjusted)

    def _prepare(self, xs: list[Any], coords: CoordSystem, names: list[str]) -> None:
        with self._lock:
            self._check_write_coords(coords)
            self._create_missing(self._array_coords(coords), xs, names, coords)

    async def async_write(self, x: Any, coords: CoordSystem, array_name: str | list[str]) -> None:
        """Write and wait (without blocking the event loop) until the data is stored.

        As in Earth2Studio, the tensors must not change until this completes.
        """
        await asyncio.to_thread(self._write_and_store, x, coords, array_name)

    def _write_and_store(self, x: Any, coords: CoordSystem, array_name: str | list[str]) -> None:
        with self._lock:
            self._write(x, coords, array_name)
            if not self.blocking:
                self._inflight.clear()
                self._z.flush()

    async def async_flush(self) -> None:
        """Wait (without blocking the event loop) until every write so far is stored."""
        await asyncio.to_thread(self.flush)
