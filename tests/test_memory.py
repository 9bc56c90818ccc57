"""The process-wide cache of staging memory (e2fastio.memory)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections import OrderedDict
from datetime import timedelta

import numpy as np
import pytest
import zarr

import e2fastio
from e2fastio import ZarrBackend
from e2fastio.memory import host_cache_info

BLOSC = zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")
MiB = 1 << 20


@pytest.fixture
def fresh_cache():
    limit = host_cache_info()["limit"]
    e2fastio.set_host_cache_limit(1 << 30)
    e2fastio.empty_cache()
    yield
    e2fastio.set_host_cache_limit(limit)


def _write(path, data, **kw):
    c = OrderedDict(ensemble=np.arange(data.shape[0]), time=np.array(["2022-12-20"], dtype="datetime64[ns]"),
                    lead_time=np.array([timedelta(hours=6 * i) for i in range(data.shape[2])],
                                       dtype="timedelta64[ns]"),
                    lat=np.linspace(90, -90, data.shape[3]), lon=np.linspace(0, 360, data.shape[4], endpoint=False))
    io = ZarrBackend(str(path), chunks={"lead_time": 1}, zarr_codecs=BLOSC, max_buffer_bytes=64 * MiB, **kw)
    io.add_array(c, ["t2m"])
    for k in range(data.shape[2]):
        io.write(data[:, :, k : k + 1], OrderedDict(c, lead_time=c["lead_time"][k : k + 1]), "t2m")
    io.close()


@pytest.mark.parametrize("blocking", [False, True])
def test_a_new_backend_stages_in_the_memory_a_closed_one_left_warm(tmp_path, rng, fresh_cache, blocking):
    data = rng.standard_normal((2, 1, 3, 91, 180)).astype(np.float32)
    _write(tmp_path / "a.zarr", data, blocking=blocking)
    first = host_cache_info()
    # The closed backend's staging (the ring, 3/4 of max_buffer_bytes, when non-blocking; its encode buffers) is cached.
    assert first["cached_bytes"] >= (48 * MiB if not blocking else 91 * 180 * 8)
    for name in ("b.zarr", "c.zarr", "d.zarr"):
        before = host_cache_info()
        _write(tmp_path / name, data, blocking=blocking)
        after = host_cache_info()
        assert after["hits"] > before["hits"]  # each backend took the previous one's blocks
        # and gave them back: one backend at a time never leaves more than its own staging bound cached
        assert first["cached_bytes"] <= after["cached_bytes"] <= 64 * MiB
    for name in ("a.zarr", "b.zarr", "c.zarr", "d.zarr"):
        np.testing.assert_array_equal(zarr.open_group(str(tmp_path / name), mode="r")["t2m"][:], data)


def test_empty_cache_frees_it_and_the_limit_bounds_it(tmp_path, rng, fresh_cache):
    data = rng.standard_normal((1, 1, 2, 45, 90)).astype(np.float32)
    _write(tmp_path / "a.zarr", data, blocking=False)
    cached = host_cache_info()["cached_bytes"]
    assert cached > 0
    assert e2fastio.empty_cache() == cached
    assert host_cache_info()["cached_bytes"] == 0 and host_cache_info()["cached_blocks"] == 0
    e2fastio.set_host_cache_limit(1 * MiB)  # smaller than the ring: it is freed when its backend closes
    _write(tmp_path / "b.zarr", data, blocking=False)
    assert host_cache_info()["cached_bytes"] <= 1 * MiB
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "b.zarr"), mode="r")["t2m"][:], data)


@pytest.mark.parametrize("bad, err, match", [(-1, ValueError, "nbytes must be >= 0"),
                                             ("1GB", TypeError, "nbytes must be an int"),
                                             (1.5, TypeError, "nbytes must be an int")])
def test_set_host_cache_limit_rejects_bad_input(bad, err, match):
    before = host_cache_info()["limit"]
    with pytest.raises(err, match=match):
        e2fastio.set_host_cache_limit(bad)
    assert host_cache_info()["limit"] == before


def test_the_environment_variable_sets_the_limit_at_start_up(tmp_path):
    code = textwrap.dedent(f"""
        import numpy as np, sys
        sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_memory import _write
        from e2fastio.memory import host_cache_info
        assert host_cache_info()["limit"] == 0, host_cache_info()
        _write({str(tmp_path / "a.zarr")!r}, np.ones((1, 1, 2, 9, 16), np.float32), blocking=False)
        assert host_cache_info()["cached_bytes"] == 0, host_cache_info()
        print("ok")
    """)
    env = dict(os.environ, E2FASTIO_HOST_CACHE_BYTES="0")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


@pytest.mark.parametrize("value", ["1GB", "-1"])
def test_a_malformed_environment_variable_warns_and_keeps_the_default(value):
    code = "import warnings, e2fastio; print(e2fastio.info()['host_cache']['limit'])"
    env = dict(os.environ, E2FASTIO_HOST_CACHE_BYTES=value)
    out = subprocess.run([sys.executable, "-W", "always", "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(1 << 30)
    assert "E2FASTIO_HOST_CACHE_BYTES" in out.stderr and "not a byte count" in out.stderr

