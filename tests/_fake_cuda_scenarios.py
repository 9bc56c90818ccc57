"""Run in a child process with E2FASTIO_CUDART pointing at the fake CUDA runtime
(see test_fake_cuda.py): the device path of the Python bindings, end to end."""

from __future__ import annotations

import ctypes
import os
import sys
import time
from collections import OrderedDict

import numpy as np
import zarr

import e2fastio
from e2fastio._write.zarr_arrays import array_spec

fake = ctypes.CDLL(os.environ["E2FASTIO_CUDART"])
fake.fake_cuda_copies.restype = ctypes.c_ulonglong


def stream() -> int:
    s = ctypes.c_void_p()
    assert fake.cudaStreamCreateWithFlags(ctypes.byref(s), 0) == 0
    return s.value


def main(tmp: str) -> None:
    info = e2fastio.info()
    assert info["cuda"]["available"] and info["cuda"]["runtime"] == os.environ["E2FASTIO_CUDART"], info
    io = e2fastio.ZarrBackend(os.path.join(tmp, "d.zarr"), chunks={"a": 1}, blocking=False,
                              zarr_codecs=zarr.codecs.BloscCodec(cname="lz4"))
    coords = OrderedDict(a=np.arange(3), b=np.arange(1000))
    io.add_array(coords, "v")
    engine = io.pipeline.engine.get()
    assert engine.ring_stats()["pinned"], "the ring must be page-locked memory when a runtime is present"
    spec, _ = array_spec(io.root["v"])
    dev = np.full((1, 1000), -1.0, np.float32)  # "device" memory of the fake runtime
    producer = stream()
    fake.fake_cuda_hold_stream(ctypes.c_void_p(producer), 1)  # the producing kernel is still running
    before = fake.fake_cuda_copies()
    t0 = time.perf_counter()
    sink = io.pipeline.sink
    seq = engine.submit_device([(spec, sink, (dev.ctypes.data, [1, 1000], 4), [np.array([1]), np.arange(1000)])],
                               producer)
    assert time.perf_counter() - t0 < 0.05, "write must not wait for the device"
    time.sleep(0.1)
    assert fake.fake_cuda_copies() == before, "copied before the producer's event"
    assert engine.copies_done() < seq
    dev[:] = 7.0  # the kernel's result
    fake.fake_cuda_hold_stream(ctypes.c_void_p(producer), 0)
    io.flush()
    assert engine.copies_done() == seq
    got = zarr.open_array(os.path.join(tmp, "d.zarr", "v"))[...]
    assert (got[1] == 7).all() and got[0, 0] == 0, got[:, :3]
    # A copy that fails on the device surfaces at flush, naming the copy.
    fake.fake_cuda_fail_next_copy_async()
    other = stream()
    engine.submit_device([(spec, sink, (dev.ctypes.data, [1, 1000], 4), [np.array([2]), np.arange(1000)])], other)
    try:
        io.flush()
    except e2fastio.BackgroundWriteError as err:
        assert "device-to-host copy" in str(err.__cause__), err
    else:
        raise AssertionError("a failed device copy was not reported")
    io.close()
    sharded(tmp)
    compressed_on_the_device(tmp)
    print("fake-cuda scenarios passed")


def sharded(tmp: str) -> None:
    """Device copies into a sharded array: the staged inner chunks gather into one shard object."""
    path = os.path.join(tmp, "s.zarr")
    io = e2fastio.ZarrBackend(path, chunks={"a": 1}, blocking=False, zarr_codecs=zarr.codecs.BloscCodec(cname="lz4"))
    io.add_array(OrderedDict(a=np.arange(3), b=np.arange(1000)), "v", shards=(3, 1000))
    t = io.pipeline.target("v")
    assert t.shard is not None, t.path
    engine = io.pipeline.engine.get()
    dev = np.arange(3000, dtype=np.float32).reshape(3, 1000)  # "device" memory of the fake runtime
    producer = stream()
    fake.fake_cuda_hold_stream(ctypes.c_void_p(producer), 1)
    seq = engine.submit_device([(t.spec, io.pipeline.shards.sink(), (dev.ctypes.data, [3, 1000], 4),
                                 [np.arange(3), np.arange(1000)])], producer)
    expected = dev * 2
    dev *= 2  # the producing kernel finishes only now: the copy must see this
    fake.fake_cuda_hold_stream(ctypes.c_void_p(producer), 0)
    io.flush()
    assert engine.copies_done() == seq
    io.close()
    shards = [f for _, _, fs in os.walk(os.path.join(path, "v", "c")) for f in fs]
    assert shards == ["0"], shards  # one object: the whole array is one shard
    got = zarr.open_array(os.path.join(path, "v"))[...]
    assert (got == expected).all(), got[:, :3]


def compressed_on_the_device(tmp: str) -> None:
    """Chunks compressed by the (fake) nvCOMP into Blosc1 zstd chunks, shuffled by the pipeline's own
    torch code: every chunk decodes exactly through numcodecs, zarr-python and tensorstore."""
    import numcodecs

    from e2fastio._write import device_encode

    if os.environ.get("E2FASTIO_NVCOMP") is None:
        return
    try:
        import torch  # the shuffle runs in torch (the 3.12 side has none: its C++ twin covers it there)
    except ImportError:
        return
    info = e2fastio.info()
    assert info["nvcomp"]["available"] and info["nvcomp"]["version"].startswith("6."), info["nvcomp"]
    assert info["device_compression"] == "device (nvCOMP zstd)", info["device_compression"]
    nvcomp = ctypes.CDLL(os.environ["E2FASTIO_NVCOMP"])
    nvcomp.fake_nvcomp_misuse.restype = ctypes.c_ulonglong
    path = os.path.join(tmp, "gpu.zarr")
    io = e2fastio.ZarrBackend(path, chunks={"ensemble": 1}, blocking=False,
                              zarr_codecs=zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"))
    coords = OrderedDict(ensemble=np.arange(4), lat=np.arange(181), lon=np.arange(360))
    io.add_array(coords, "t2m")
    engine = io.pipeline.engine.get()
    spec, _ = array_spec(io.root["t2m"])
    rng = np.random.default_rng(0)
    data = (280 + np.cumsum(rng.integers(-1, 2, (4, 181, 360)), axis=2) / 8).astype(np.float32)
    data[3] = rng.integers(0, 2**32, (181, 360), dtype=np.uint32).view(np.float32)  # every bit random: memcpyed
    t = torch.from_numpy(data)  # "device" memory of the fake runtime
    index = [np.arange(4), np.arange(181), np.arange(360)]
    layout = engine.device_layout((spec, io.pipeline.sink, (t.data_ptr(), list(t.shape), 4), index))
    assert layout["ok"] and layout["nchunks"] == 4 and layout["shuffle"], layout
    shuffled = device_encode.shuffle_blocks(t, layout["nchunks"], layout["chunk_nbytes"], layout["blocksize"],
                                            layout["typesize"])
    producer = stream()
    fake.fake_cuda_hold_stream(ctypes.c_void_p(producer), 1)  # the shuffle is still "running"
    seq = engine.submit_device([(spec, io.pipeline.sink, (shuffled.data_ptr(), list(t.shape), 4), index)],
                               producer, compress=True)
    assert engine.copies_done() < seq
    fake.fake_cuda_hold_stream(ctypes.c_void_p(producer), 0)
    io.flush()
    assert engine.copies_done() == seq
    stats = io.stats()["device_encode"]
    assert stats["chunks"] == 4 and stats["memcpyed_chunks"] == 1 and stats["bytes_to_host"] < data.nbytes, stats
    assert nvcomp.fake_nvcomp_misuse() == 0
    # A write whose chunks are covered in part goes the host way, and says why.
    part = engine.device_layout((spec, io.pipeline.sink, (t.data_ptr(), [4, 181, 100], 4),
                                 [np.arange(4), np.arange(181), np.arange(100)]))
    assert not part["ok"] and "whole chunks" in part["why"], part
    io.close()
    codec = numcodecs.Blosc()
    for m in range(4):
        with open(os.path.join(path, "t2m", "c", str(m), "0", "0"), "rb") as f:
            raw = np.frombuffer(codec.decode(f.read()), np.float32).reshape(181, 360)
        assert np.array_equal(raw.view(np.uint32), data[m].view(np.uint32)), m
    got = zarr.open_array(os.path.join(path, "t2m"))[...]
    assert np.array_equal(got.view(np.uint32), data.view(np.uint32))
    try:
        import tensorstore as ts
    except ImportError:
        return
    arr = ts.open({"driver": "zarr3", "kvstore": {"driver": "file", "path": os.path.join(path, "t2m")}}).result()
    assert np.array_equal(arr.read().result().view(np.uint32), data.view(np.uint32))


if __name__ == "__main__":
    main(sys.argv[1])
