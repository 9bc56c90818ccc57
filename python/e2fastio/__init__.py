"""e2fastio: fast, drop-in IO backends for AI weather and climate pipelines."""

from __future__ import annotations

from e2fastio import _core
from e2fastio._version import __version__
from e2fastio.backends.async_zarr import AsyncZarrBackend
from e2fastio.backends.icechunk import IceChunkBackend  # icechunk itself is imported on first use
from e2fastio.backends.kv import KVBackend
from e2fastio.backends.netcdf import NetCDF4Backend
from e2fastio.backends.xarray import XarrayBackend
from e2fastio.backends.zarr import ZarrBackend
from e2fastio.base import IOBackend
from e2fastio.errors import (
    ArrayNameError,
    ArrayNameTypeError,
    ArrayNotFoundError,
    BackendClosedError,
    BackgroundWriteError,
    CoordinateError,
    E2FastIOError,
    UnknownDimensionError,
    UploadError,
)
from e2fastio.info import info
from e2fastio.memory import empty_cache, set_host_cache_limit

__all__ = [
    "ArrayNameError",
    "ArrayNameTypeError",
    "ArrayNotFoundError",
    "AsyncZarrBackend",
    "BackendClosedError",
    "BackgroundWriteError",
    "CoordinateError",
    "E2FastIOError",
    "IOBackend",
    "IceChunkBackend",
    "KVBackend",
    "NetCDF4Backend",
    "UnknownDimensionError",
    "UploadError",
    "XarrayBackend",
    "ZarrBackend",
    "__version__",
    "_core",
    "empty_cache",
    "info",
    "set_host_cache_limit",
]
