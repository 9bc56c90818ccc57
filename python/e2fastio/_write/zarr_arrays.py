"""What the native chunk pipeline needs to know about a stored Zarr array: its spec, shards, dimensions."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr

from e2fastio import _core
from e2fastio.errors import ArrayNameError

logger = logging.getLogger(__name__)

_SHUFFLE = {
    "noshuffle": _core.Shuffle.noshuffle,
    "shuffle": _core.Shuffle.shuffle,
    "bitshuffle": _core.Shuffle.bitshuffle,
}


def get_array(root: zarr.Group, name: str) -> zarr.Array[Any]:
    """The array `name` of `root`; a clear error when that name is a group."""
    node = root[name]
    if not isinstance(node, zarr.Array):
        raise ArrayNameError(f"{name!r} is a group in this store, not an array; name one of its arrays ('{name}/...')")
    return node


def dimension_names(array: zarr.Array[Any]) -> tuple[str, ...]:
    """The dimension names in `array`'s Zarr v3 metadata ('' for an unnamed one); () if it has none."""
    names = getattr(array.metadata, "dimension_names", None) or ()
    return tuple("" if n is None else str(n) for n in names)


@dataclass(frozen=True)
class ShardGeometry:
    """How a sharded array's inner chunks are packed (Zarr v3 ``sharding_indexed``)."""

    shards: tuple[int, ...]
    chunks: tuple[int, ...]
    index_at_start: bool


def _enum_value(v: Any) -> str:
    # Enums up to zarr-python 3.3, plain strings from 3.4 on.
    return str(getattr(v, "value", v))


def _sharding(codecs: list[Any], grid_shape: tuple[int, ...]) -> tuple[list[Any], ShardGeometry | None, str]:
    """The inner codecs and geometry of a sharded array, or the reason the core cannot write it."""
    if not codecs or type(codecs[0]).__name__ != "ShardingCodec":
        return codecs, None, ""
    if len(codecs) != 1:
        return codecs, None, f"codecs after the sharding codec {codecs[1:]}"
    sc = codecs[0]
    index = list(sc.index_codecs)
    if (len(index) != 2 or type(index[0]).__name__ != "BytesCodec"
            or (index[0].endian is not None and _enum_value(index[0].endian) != "little")
            or type(index[1]).__name__ != "Crc32cCodec"):
        return codecs, None, f"shard index codecs {index} (the core writes bytes + crc32c)"
    inner = tuple(int(c) for c in sc.chunk_shape)
    if len(inner) != len(grid_shape) or any(s % c for s, c in zip(grid_shape, inner, strict=True)):
        return codecs, None, f"inner chunks {inner} do not tile shards {grid_shape}"
    location = _enum_value(sc.index_location)
    return list(sc.codecs), ShardGeometry(tuple(grid_shape), inner, location == "start"), ""


def shard_geometry(array: zarr.Array[Any]) -> ShardGeometry | None:
    """The sharding of `array` when the core writes it (see `array_spec`), else None."""
    meta: Any = array.metadata
    if getattr(meta, "zarr_format", None) != 3:
        return None
    grid = tuple(int(c) for c in getattr(meta.chunk_grid, "chunk_shape", ()))
    _, geom, _ = _sharding(list(meta.codecs), grid)
    return geom


def array_spec(array: zarr.Array[Any]) -> tuple[_core.ArraySpec | None, str]:
    """Describe `array` for the core, or (None, reason) when the core cannot encode it.

    The core encodes exactly what zarr-python's pipeline does for
    ``[bytes]`` and ``[bytes, blosc]`` on a regular grid with the default
    chunk key encoding, plain or inside a ``sharding_indexed`` codec (index
    codecs bytes + crc32c, index at either end): then the spec describes the
    inner chunks and `shard_geometry` the shards. Anything else (other codecs,
    other index codecs, Zarr v2) is written through zarr-python instead, so any
    codec a user picks still works.
    """
    # Metadata, grid, key encoding and codecs are recognised by class name: their
    # classes were moved and renamed across zarr-python 3.x (see below).
    meta: Any = array.metadata
    if getattr(meta, "zarr_format", None) != 3:
        return None, "not a Zarr v3 array"
    grid = meta.chunk_grid
    # zarr-python 3.4 renamed the class (RegularChunkGrid -> RegularChunkGridMetadata).
    if type(grid).__name__ not in ("RegularChunkGrid", "RegularChunkGridMetadata"):
        return None, f"chunk grid {type(grid).__name__}"
    kenc = meta.chunk_key_encoding
    if type(kenc).__name__ != "DefaultChunkKeyEncoding":
        return None, f"chunk key encoding {type(kenc).__name__}"
    dtype = np.dtype(array.dtype)
    if dtype.kind not in "fiubc" or dtype.itemsize not in (1, 2, 4, 8):
        return None, f"dtype {dtype}"
    chunk_shape = tuple(int(c) for c in grid.chunk_shape)
    codecs, shard, why = _sharding(list(meta.codecs), chunk_shape)
    if why:
        return None, why
    if shard is not None:
        chunk_shape = shard.chunks
    what = "inner codecs" if shard is not None else "codecs"
    if not codecs or type(codecs[0]).__name__ != "BytesCodec" or len(codecs) > 2:
        return None, f"{what} {codecs}"
    big = codecs[0].endian is not None and _enum_value(codecs[0].endian) == "big"
    if dtype.kind == "c" and big:  # two 4-byte parts to swap, not one 8-byte item
        return None, f"dtype {dtype} big-endian"
    codec = _core.CodecSpec()
    codec.itemsize = dtype.itemsize
    codec.big_endian = big
    if len(codecs) == 2:
        blosc = codecs[1]
        if type(blosc).__name__ != "BloscCodec":
            return None, f"{what[:-1]} {type(blosc).__name__}"
        codec.blosc = True
        codec.cname = _enum_value(blosc.cname)
        codec.clevel = int(blosc.clevel)
        codec.shuffle = _SHUFFLE[_enum_value(blosc.shuffle)]
        codec.typesize = int(blosc.typesize)
        codec.blocksize = int(blosc.blocksize)
    spec = _core.ArraySpec()
    spec.path = array.path
    spec.shape = list(array.shape)
    spec.chunks = list(chunk_shape)
    spec.codec = codec
    spec.separator = kenc.separator
    fill = meta.fill_value
    spec.fill_value = np.asarray(fill if fill is not None else 0, dtype=dtype.newbyteorder("=")).tobytes()
    spec.validate()
    return spec, ""
