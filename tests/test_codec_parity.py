"""Chunks we encode read back exactly through zarr-python and numcodecs, byte for byte."""

from __future__ import annotations

import itertools

import numcodecs
import numpy as np
import pytest
import zarr
import zarr.storage

import e2fastio
from e2fastio import _core

CNAMES = ["zstd", "lz4", "lz4hc", "blosclz", "zlib"]
SHUFFLES = ["noshuffle", "shuffle", "bitshuffle"]
CLEVELS = [1, 3, 5, 9]
DTYPES = ["float32", "float64", "float16", "int32", "int64", "uint8"]


def _field(dtype: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.meshgrid(np.linspace(0, 3, shape[-2]), np.linspace(0, 6, shape[-1]), indexing="ij")
    smooth = 250 + 40 * np.sin(y) * np.cos(x) + rng.normal(0, 0.5, shape)
    if np.dtype(dtype).kind == "f":
        return np.round(smooth * 256) / 256 if dtype != "float16" else smooth.astype(dtype)
    if dtype == "uint8":
        return (smooth % 256).astype(dtype)
    return (smooth * 1000).astype(dtype)


def _write_both(tmp_path, codec, dtype: str, tag: str):
    """The same writes through e2fastio and through plain zarr-python."""
    shape = (2, 3, 24, 40)
    data = _field(dtype, shape, seed=hash(tag) % 1000).astype(dtype)
    coords = {
        "time": np.arange(2),
        "lead_time": np.arange(3),
        "lat": np.arange(24),
        "lon": np.arange(40),
    }
    ours = tmp_path / f"ours-{tag}.zarr"
    io = e2fastio.ZarrBackend(str(ours), chunks={"time": 1, "lead_time": 1, "lat": 12},
                              backend_kwargs={"overwrite": True}, zarr_codecs=codec)
    io.add_array(coords, "v", data=np.zeros(shape, dtype))
    io.write(data, coords, "v")
    io.close()
    ref_store = zarr.storage.MemoryStore()
    ref = zarr.create_array(ref_store, name="v", shape=shape, chunks=(1, 1, 12, 40), dtype=dtype,
                            compressors=codec, fill_value=None, dimension_names=list(coords))
    ref[...] = data
    return data, ours, ref_store


def _chunk_keys(shape=(2, 3, 2, 1)):
    return [f"v/c/{a}/{b}/{c}/{d}" for a, b, c, d in itertools.product(*map(range, shape))]


@pytest.mark.parametrize("dtype", DTYPES)
def test_uncompressed_roundtrip_and_bytes(tmp_path, dtype):
    data, ours, ref_store = _write_both(tmp_path, None, dtype, f"raw-{dtype}")
    back = zarr.open_array(str(ours / "v"), mode="r")[...]
    np.testing.assert_array_equal(back, data)
    for key in _chunk_keys():
        assert (ours / key).read_bytes() == ref_store._store_dict[key].to_bytes()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shuffle", SHUFFLES)
@pytest.mark.parametrize("cname", CNAMES)
def test_blosc_matrix(tmp_path, cname, shuffle, dtype):
    identical = {}
    for clevel in CLEVELS:
        codec = zarr.codecs.BloscCodec(cname=cname, clevel=clevel, shuffle=shuffle)
        data, ours, ref_store = _write_both(tmp_path, codec, dtype, f"{cname}-{shuffle}-{clevel}-{dtype}")
        # 1. zarr-python reads our store exactly.
        np.testing.assert_array_equal(zarr.open_array(str(ours / "v"), mode="r")[...], data)
        for key in _chunk_keys():
            raw = (ours / key).read_bytes()
            assert raw[0] == 2, "chunks must be c-blosc 1.x frames (header version 2)"
            # 2. numcodecs' Blosc decodes each chunk to the right values.
            dec = np.frombuffer(numcodecs.Blosc().decode(raw), dtype=dtype)
            i, j, k = (int(p) for p in key.split("/")[2:5])
            np.testing.assert_array_equal(dec.reshape(12, 40), data[i, j, 12 * k:12 * (k + 1)])
            identical.setdefault(clevel, True)
            identical[clevel] &= raw == ref_store._store_dict[key].to_bytes()
    # 3. Same c-blosc (1.21.x) and settings as numcodecs: the bytes are identical.
    assert all(identical.values()), f"encoded bytes differ from zarr-python's: {identical}"


def test_core_encode_matches_numcodecs_directly():
    data = _field("float32", (64, 128), 7).astype("float32")
    for cname, shuffle in itertools.product(CNAMES, (0, 1, 2)):
        spec = _core.CodecSpec()
        spec.itemsize = 4
        spec.blosc = True
        spec.cname = cname
        spec.clevel = 5
        spec.shuffle = _core.Shuffle(shuffle)
        spec.typesize = 4
        ours = _core.encode_chunk(spec, data, threads=2)
        ref = numcodecs.Blosc(cname=cname, clevel=5, shuffle=shuffle, typesize=4).encode(data)
        assert ours == bytes(ref), (cname, shuffle)
        assert _core.decode_chunk(spec, ours, data.nbytes) == data.tobytes()


def test_big_endian_bytes_codec(tmp_path):
    codecs = [zarr.codecs.BytesCodec(endian="big"), zarr.codecs.BloscCodec(cname="lz4", clevel=5)]
    store = tmp_path / "be.zarr"
    io = e2fastio.ZarrBackend(str(store), chunks={"a": 2}, backend_kwargs={"overwrite": True})
    coords = {"a": np.arange(5), "b": np.arange(7)}
    data = np.arange(35, dtype="float64").reshape(5, 7)
    # The serializer is not a compressor: pass it through create_array kwargs.
    io.add_array(coords, "v", serializer=codecs[0], compressors=codecs[1])
    io.write(data, coords, "v")
    assert io.stats()["chunks_written"] == 3  # native path, not a fallback
    np.testing.assert_array_equal(zarr.open_array(str(store / "v"), mode="r")[...], data)
