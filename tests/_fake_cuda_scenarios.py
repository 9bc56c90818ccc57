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


if __name__ == "__main__":
    main(sys.argv[1])
