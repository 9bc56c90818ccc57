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

from e2fastio import _data
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
        Not supported yet (remote stores land with the S3 issue): raises.
    blocking : bool
        ``True``: ``write`` returns when the data is stored.
    pool_size : int
        Accepted for compatibility (Earth2Studio's async loop count); the
        native encoder threads are set by ``threads``.
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
    store : str | zarr Store, optional
        ``"memory://"`` or a ``zarr.storage.MemoryStore`` for an in-memory
        store, a local path, ``file://`` URL or ``zarr.storage.LocalStore``.
        Remote stores are not supported yet: raises.
    store_kwargs : dict
        Options of remote stores (not supported yet).
    threads, max_buffer_bytes : optional, keyword-only
        As for :class:`e2fastio.ZarrBackend`.
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
    ) -> None:
        if shard_coords:
            raise ValueError(
                "shard_coords: sharded arrays are not supported by e2fastio yet; "
                "leave shard_coords empty (plain chunks) or use earth2studio.io.AsyncZarrBackend"
            )
        if fs_factory is not None:
            raise ValueError(
                "fs_factory: fsspec filesystems are not supported by e2fastio yet (remote stores are "
                "an open issue); pass file_name for a local store or store='memory://'"
            )
        if store_kwargs:
            raise ValueError("store_kwargs: remote stores are not supported by e2fastio yet; leave it empty")
        if not isinstance(pool_size, int) or pool_size < 1:
            raise ValueError(f"pool_size must be a positive int, got {pool_size!r}")
        if max_inflight_shards < 1:
            raise ValueError(f"max_inflight_shards must be at least 1 but got {max_inflight_shards}")
        if not (isinstance(async_timeout, (int, float)) and async_timeout > 0):
            raise ValueError(f"async_timeout must be a positive number of seconds, got {async_timeout!r}")
        mode = dict(zarr_kwargs).get("mode", "a")
        if mode not in ("a", "w", "w-", "r+"):
            raise ValueError(f"zarr_kwargs['mode'] must be 'a', 'r+', 'w' or 'w-' for writing, got {mode!r}")
        location = self._resolve(file_name, store)
        if mode == "w-" and location is not None and os.path.exists(location):
            raise FileExistsError(f"zarr_kwargs mode 'w-': {location} already exists")

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
                              blocking=blocking)
        self._z.flush_timeout = self.async_timeout
        # Parallel coordinates already in the store must hold the same values.
        for key, value in self.parallel_coords.items():
            if key in self._z.coords and not np.array_equal(self._z.coords[key], value):
                raise ValueError(
                    f"Parallel coordinate array '{key}' already present in Zarr store but has different values "
                    "than provided array; make them the same or create a new store."
                )

    @staticmethod
    def _resolve(file_name: str | None, store: Any) -> str | None:
        if store is None:
            if file_name is None:
                raise ValueError("An output location is required: pass `store` (preferred) or `file_name`")
            return os.fspath(file_name)
        if isinstance(store, zarr.storage.MemoryStore) or store == "memory://":
            return None
        if isinstance(store, zarr.storage.LocalStore):
            return str(store.root)
        if isinstance(store, (str, os.PathLike)):
            s = os.fspath(store)
            if s.startswith("file://"):
                return s[len("file://"):]
            if "://" not in s:
                return s
        raise ValueError(
            f"store={store!r}: remote and custom stores are not supported by e2fastio yet (an open issue); "
            "use a local path, 'file://...', 'memory://', a zarr LocalStore or MemoryStore"
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

    def __exit__(self, *exc: object) -> None:
        self.close()

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
        for xi, name in zip(xs, names):
            if _data.check_array_name(name) and name not in self._z:
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
