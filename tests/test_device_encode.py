"""Compression on the GPU, the parts that run on any machine: the byte shuffle the
pipeline runs with torch, the `device_compression` argument, and nvCOMP's loading
(the real wheel's library when it is installed; the fake one in test_fake_cuda.py).
The device path end to end runs through the fake CUDA runtime and its fake nvCOMP
(test_fake_cuda.py, csrc/tests/test_device_encode.cpp)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections import OrderedDict

import numpy as np
import pytest

import e2fastio


def reference_shuffle(chunk: bytes, blocksize: int, typesize: int) -> bytes:
    """c-blosc's per-block byte shuffle, written plainly."""
    out = bytearray()
    for start in range(0, len(chunk), blocksize):
        block = chunk[start : start + blocksize]
        n = len(block) // typesize
        for k in range(typesize):
            out += block[k : n * typesize : typesize]
        out += block[n * typesize :]
    return bytes(out)


@pytest.mark.torch
@pytest.mark.parametrize(("nchunks", "chunk_nbytes", "blocksize", "typesize"), [
    (3, 4096, 1024, 4),      # whole blocks only
    (2, 5000, 2048, 4),      # a shorter last block
    (2, 1000 * 8, 3000, 8),  # typesize 8, shorter last block
    (4, 3 * 2 + 1, 4, 2),    # trailing bytes in the last block
    (1, 64, 64, 4),          # one block
])
def test_shuffle_blocks_matches_c_blosc_per_block(nchunks, chunk_nbytes, blocksize, typesize):
    import torch

    from e2fastio._write.device_encode import shuffle_blocks

    rng = np.random.default_rng(1)
    raw = rng.integers(0, 256, nchunks * chunk_nbytes, dtype=np.uint8)
    got = shuffle_blocks(torch.from_numpy(raw.copy()), nchunks, chunk_nbytes, blocksize, typesize)
    assert got.dtype == torch.uint8 and got.is_contiguous()
    want = b"".join(reference_shuffle(raw[c * chunk_nbytes : (c + 1) * chunk_nbytes].tobytes(), blocksize, typesize)
                    for c in range(nchunks))
    assert got.numpy().tobytes() == want


def test_device_compression_argument_is_checked_by_name(tmp_path):
    coords = OrderedDict(a=np.arange(2))
    with pytest.raises(ValueError, match="device_compression must be 'auto', True or False"):
        e2fastio.ZarrBackend(str(tmp_path / "x.zarr"), device_compression="yes")
    with pytest.raises(ValueError, match="device_compression"):
        e2fastio.ZarrBackend(str(tmp_path / "y.zarr"), device_compression=1)
    assert not (tmp_path / "x.zarr").exists()  # refused before the store was created
    io = e2fastio.ZarrBackend(str(tmp_path / "z.zarr"), device_compression=False, blocking=False)
    io.add_array(coords, "v")
    io.write(np.ones(2, np.float32), coords, "v")
    io.close()
    assert io.stats()["device_encode"]["mode"] is False


def run_info(env: dict[str, str]) -> dict:
    code = "import e2fastio, json; print(json.dumps({k: e2fastio.info()[k] for k in ('nvcomp', 'device_compression')}))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_device_compression_true_without_nvcomp_says_what_to_install(tmp_path):
    env = dict(os.environ, E2FASTIO_NVCOMP=str(tmp_path / "missing" / "libnvcomp.so.6"))
    code = ("import e2fastio\n"
            "try:\n"
            f"    e2fastio.ZarrBackend({str(tmp_path / 'g.zarr')!r}, device_compression=True)\n"
            "except RuntimeError as e:\n"
            "    print('refused:', e)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "refused: device_compression=True needs nvCOMP 6" in r.stdout, r.stdout + r.stderr
    assert "pip install e2fastio[gpu]" in r.stdout
    assert not (tmp_path / "g.zarr").exists()
    info = run_info(env)
    assert info["nvcomp"]["available"] is False and "missing" in info["nvcomp"]["reason"]
    assert info["device_compression"].startswith("host (")


@pytest.mark.skipif(importlib.util.find_spec("nvidia") is None
                    or importlib.util.find_spec("nvidia.libnvcomp") is None,
                    reason="the nvidia-libnvcomp wheel (the gpu extra) is not installed")
def test_the_real_nvcomp_wheel_loads_with_every_symbol_we_bind():
    """nvCOMP 6 from the user's wheel, found through the package and opened RTLD_LOCAL: every
    function we call binds and the version is pinned. Without a GPU the encoder still says why not."""
    env = {k: v for k, v in os.environ.items() if k not in ("E2FASTIO_NVCOMP", "E2FASTIO_CUDART")}
    info = run_info(env)
    nv = info["nvcomp"]
    assert nv["available"] is True, nv
    assert nv["version"].startswith("6.") and nv["path"].endswith(os.path.join("lib64", "libnvcomp.so.6")), nv
    assert "nvidia" in nv["path"]
    if not e2fastio.info()["cuda"]["available"]:
        assert info["device_compression"].startswith("host ("), info
