"""``AsyncZarrBackend``: Earth2Studio's non-blocking Zarr backend, on the native pipeline."""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import zarr
import zarr.storage

from e2fastio import _data, _stores
from e2fastio.errors import CoordinateError
from e2fastio.zarr_backend import ZarrBackend

logger = logging.getLogger(__name__)

CoordSystem = Mapping[str, np.ndarray]


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
        Uploads in flight at once for object stores (Earth2Studio's loop
        count); the native encoder threads are set by ``threads``.
    async_timeout : float
        Seconds ``flush``/``close`` wait for pending writes before raising
        ``TimeoutError``.
    zarr_kwargs : dict
        ``mode``: ``"a"`` (default, open or create) or ``"w"`` (overwrite).
    zarr_codecs : zarr codec(s), optional
        Compressor(s) of new arrays.
    chunked_coords : dict[str, int]
        Chunk sizes of other dimensions (default: one chunk).
    shard_coords : dict[str, int]
        Not supported yet (sharding): a non-empty value raises.
    max_inflight_shards : int
        Accepted for compatibility (sharding).
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
    upload_retries, upload_timeout : optional, keyword-only
        Object stores: further attempts of a failed chunk upload (exponential
        backoff) and seconds one attempt may take.
    process_group, distributed_timeout, consolidate_metadata : optional, keyword-only
        Multi-rank writes into one store, as for :class:`e2fastio.ZarrBackend`.
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
        upload_retries: int = 6,
        upload_timeout: float = 60.0,
        process_group: Any = None,
        distributed_timeout: float = 600.0,
        consolidate_metadata: bool = False,
    ) -> None:
        if shard_coords:
            raise ValueError(
                "shard_coords: sharded arrays are not supported by e2fastio yet; "
                "leave shard_coords empty (plain chunks) or use earth2studio.io.AsyncZarrBackend"
            )
        if fs_factory is not None:
            _stores.deprecated_fs_factory()
        if not isinstance(pool_size, int) or isinstance(pool_size, bool) or pool_size < 1:
            raise ValueError(f"pool_size must be a positive int, got {pool_size!r}")
        if max_inflight_shards < 1:
            raise ValueError(f"max_inflight_shards must be at least 1 but got {max_inflight_shards}")
        if not (isinstance(async_timeout, (int, float)) and async_timeout > 0):
            raise ValueError(f"async_timeout must be a positive number of seconds, got {async_timeout!r}")
        mode = dict(zarr_kwargs).get("mode", "a")
        if mode not in ("a", "w", "w-", "r+"):
            raise ValueError(f"zarr_kwargs['mode'] must be 'a', 'r+', 'w' or 'w-' for writing, got {mode!r}")
        if store is not None and file_name is not None:
            logger.warning("Both file_name and store were provided; file_name is ignored and the store "
                           "defines the output location")
        if store is None and file_name is None:
            raise ValueError("An output location is required: pass `store` (preferred) or `file_name`")
        if store is None and fs_factory is None and isinstance(file_name, str) and "://" in file_name:
            raise ValueError(f"file_name={file_name!r} is a URL: pass it as store= (with store_kwargs)")
        options = _stores.RemoteOptions(concurrency=pool_size, retries=upload_retries, timeout=upload_timeout)
        location = _stores.resolve(
            store if store is not None else file_name,
            store_kwargs=store_kwargs,
            fs_factory=fs_factory if store is None else None,
            options=options,
            what="store" if store is not None else "file_name",
        )
        if mode == "w-" and location.local_path is not None and os.path.exists(location.local_path):
            if location.uploader is not None:
                location.uploader.close()
            raise FileExistsError(f"zarr_kwargs mode 'w-': {location.local_path} already exists")

        self.parallel_coords: OrderedDict[str, np.ndarray] = OrderedDict()
        for key, value in _data.convert_multidim_to_singledim(parallel_coords)[0].items():
            value = np.asarray(value)
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
        self.shard_coords: dict[str, int] = {}
        self.max_inflight_shards = max_inflight_shards
        self.pool_size = pool_size
        self.async_timeout = float(async_timeout)
        self.blocking = blocking
        self.zarr_codecs = zarr_codecs
        chunks = {k: 1 for k in self.parallel_coords} | self.chunked_coords
        self._z = ZarrBackend(location, chunks=chunks, backend_kwargs={"overwrite": mode == "w"},
                              zarr_codecs=zarr_codecs, threads=threads, max_buffer_bytes=max_buffer_bytes,
                              blocking=blocking, process_group=process_group,
                              distributed_timeout=distributed_timeout, consolidate_metadata=consolidate_metadata)
        self._z.flush_timeout = self.async_timeout
        # Parallel coordinates already in the store must hold the same values.
        for key, value in self.parallel_coords.items():
            if key in self._z.coords and not np.array_equal(self._z.coords[key], value):
                raise ValueError(
                    f"Parallel coordinate array '{key}' already present in Zarr store but has different values "
                    "than provided array; make them the same or create a new store."
                )

    # ------------------------------------------------------------------ attributes users reach for
    @property
    def root(self) -> zarr.Group:
        return self._z.root

    @property
    def store(self) -> Any:
        return self._z.store

    @property
    def coords(self) -> OrderedDict[str, np.ndarray]:
        return self._z.coords

    def __contains__(self, item: str) -> bool:
        return item in self._z

    def __getitem__(self, item: str) -> zarr.Array:
        self.flush()
        return self._z.root[item]

    def __len__(self) -> int:
        return len(self._z)

    def __iter__(self) -> Iterator[str]:
        return iter(self._z)

    def __enter__(self) -> AsyncZarrBackend:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._z.__exit__(exc_type, exc, tb)

    def stats(self) -> dict[str, object]:
        return self._z.stats()

    # ------------------------------------------------------------------ arrays
    def _array_coords(self, coords: CoordSystem) -> OrderedDict[str, np.ndarray]:
        """The coordinates an array written at `coords` is created with."""
        adjusted, _ = _data.convert_multidim_to_singledim(coords)
        out: OrderedDict[str, np.ndarray] = OrderedDict()
        for key, value in adjusted.items():
            value = np.asarray(value)
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
        names = _data.as_list(array_name, "array_name")
        full = self._array_coords(coords)
        for key, value in full.items():
            if key in self._z.coords and key not in self.parallel_coords:
                existing = self._z.coords[key]
                if existing.shape != value.shape or not np.array_equal(existing, value):
                    raise CoordinateError(
                        f"Coordinate array '{key}' already exists in the store with different values, "
                        "use a different dimension name"
                    )
        missing = [n for n in names if _data.check_array_name(n) and n not in self._z]
        if missing:
            self._z.add_array(full, missing, dtype=np.dtype(dtype))

    def write(self, x: Any, coords: CoordSystem, array_name: str | list[str]) -> None:
        """Write tensor(s); returns once staged (``blocking=False``) or stored.

        Parallel coordinates may be any subset of their values; every other
        coordinate must be passed in full, as in Earth2Studio.
        """
        xs = _data.as_list(x, "x")
        names = _data.as_list(array_name, "array_name")
        if len(xs) != len(names):
            raise ValueError(
                f"Input tensors and array names must same length but got {len(xs)} and {len(names)}."
            )
        adjusted, _ = _data.convert_multidim_to_singledim(coords)
        for key, value in adjusted.items():
            if key in self.parallel_coords or key not in self._z.coords:
                continue
            if not np.array_equal(np.asarray(value), self._z.coords[key]):
                raise CoordinateError(
                    f"Non-index coordinate {key} must match the complete coordinate system defined in zarr "
                    "array. Sliced writes of non-index coordinates are not supported."
                )
        full = self._array_coords(coords)
        for xi, name in zip(xs, names, strict=True):
            if _data.check_array_name(name) and name not in self._z and self._z._coord is None:
                # dtype only: a CUDA tensor stays on its device (no host copy here)
                self._z.add_array(full, name, dtype=_data.to_input(xi, True, "x").dtype)
        self._z.write(xs, coords, names)

    def read(self, coords: CoordSystem, array_name: str, device: Any = "cpu") -> tuple[Any, CoordSystem]:
        return self._z.read(coords, array_name, device)

    def flush(self) -> None:
        """Wait until every write so far is stored; raise the first background error."""
        self._z.flush()

    def close(self) -> None:
        """Store what is pending and stop every thread of ours (idempotent)."""
        self._z.close()

    @property
    def closed(self) -> bool:
        return self._z.closed
