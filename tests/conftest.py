from __future__ import annotations

import os
import time
from collections import OrderedDict

import numpy as np
import pytest

try:
    import torch
except ImportError:
    torch = None

# torch is optional for the library; most backend tests pass numpy arrays, and the
# ones that need torch itself (torch tensors as input or output, CUDA,
# torch.distributed) are marked `torch` (pyproject's markers) and skip where it is
# missing. Where it is missing (the Python 3.12 environment that scripts/test.sh
# builds, with the newest zarr-python, numcodecs and numpy) only these modules are
# collected: they import without torch. The rest need it throughout.
TORCH_FREE_MODULES = frozenset({
    "test_async.py",
    "test_async_dropin.py",
    "test_codec_parity.py",
    "test_icechunk.py",
    "test_io_policy.py",
    "test_kv_backend.py",
    "test_lifecycle.py",
    "test_memory.py",
    "test_netcdf_backend.py",
    "test_netcdf_chunks.py",
    "test_netcdf_collector.py",
    "test_netcdf_dropin.py",
    "test_netcdf_filters.py",
    "test_s3.py",
    "test_sharding.py",
    "test_xarray_backend.py",
    "test_zarr_backend.py",
    "test_zarr_dropin.py",
})
NO_TORCH = "needs torch, which is not installed here"


def pytest_ignore_collect(collection_path, config: pytest.Config) -> bool | None:
    name = collection_path.name
    if torch is None and name.startswith("test_") and name.endswith(".py") and name not in TORCH_FREE_MODULES:
        return True
    return None  # no opinion: pytest's own rules decide


# The long checks (marked `slow`: the C++ core under sanitizers, the release wheel
# repaired and run from a fresh venv) run with E2FASTIO_FULL=1 (`scripts/test.sh
# --full`) or when a `-m` expression names them; otherwise they skip, saying how.
FULL = os.environ.get("E2FASTIO_FULL", "") not in ("", "0")


def _skip_long_checks(config: pytest.Config, items: list[pytest.Item]) -> None:
    if FULL or "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="a long check: run with E2FASTIO_FULL=1 (scripts/test.sh --full) or -m slow")
    for item in items:
        if item.get_closest_marker("slow") is not None:
            item.add_marker(skip)


def pytest_report_header(config: pytest.Config) -> str | None:
    if torch is None:
        return (f"torch is not installed: only {', '.join(sorted(TORCH_FREE_MODULES))} are collected, "
                "and their tests marked `torch` skip")
    return None


@pytest.fixture
def seed_coords() -> OrderedDict[str, np.ndarray]:
    """Earth2Studio-like coordinates on a small grid."""
    return OrderedDict(
        ensemble=np.arange(3),
        time=np.array(["2022-12-20T00"], dtype="datetime64[ns]"),
        lead_time=(np.arange(4) * np.timedelta64(6, "h")).astype("timedelta64[ns]"),
        lat=np.linspace(90, -90, 9),
        lon=np.linspace(0, 360, 16, endpoint=False),
    )


@pytest.fixture
def native_threads():
    """A function counting this process's e2fastio worker threads, by their kernel
    name (zarr's, torch's and the asyncio executors come and go on their own)."""

    def count(name: str = "e2fastio-pool", settle_to: int | None = None, reach: int | None = None) -> int:
        """With `settle_to`: wait (up to 5 s) for the count to drop to it. A joined
        thread can stay listed for a moment: the kernel wakes the joiner as the
        thread exits, before its task entry is gone. With `reach`: wait (up to 5 s)
        for it to grow to that many (a new thread names itself once it runs)."""
        deadline = time.monotonic() + 5
        while True:
            n = 0
            for tid in os.listdir("/proc/self/task"):
                try:
                    with open(f"/proc/self/task/{tid}/comm") as f:
                        n += f.read().strip() == name
                except (FileNotFoundError, ProcessLookupError):  # ended meanwhile
                    pass
            settled = settle_to is None or n <= settle_to
            reached = reach is None or n >= reach
            if (settled and reached) or time.monotonic() > deadline:
                return n
            time.sleep(0.01)

    return count


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    _skip_long_checks(config, items)
    if torch is None:
        skip_torch = pytest.mark.skip(reason=NO_TORCH)
        for item in items:
            if item.get_closest_marker("torch") is not None:
                item.add_marker(skip_torch)
    if torch is not None and torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (none here); the fake-CUDA tests cover the logic")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


# ----------------------------------------------------------------------------- S3 (loopback)
# A real S3-compatible server (moto, in its own process) and a fault-injecting
# proxy; see tests/s3_support.py.


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1 in a separate process, for the whole session."""
    try:
        import moto.server  # noqa: F401
    except ImportError as err:
        pytest.skip(f"moto[server] is not installed ({err}); "
                    "pip install 'moto[server]' to run the S3 tests")
    from s3_support import MotoServer

    server = MotoServer()
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh, uniquely named bucket: (endpoint, bucket). Emptied and deleted afterwards."""
    from s3_support import create_bucket, delete_bucket, unique_bucket_name

    bucket = create_bucket(s3_server.endpoint, unique_bucket_name())
    yield s3_server.endpoint, bucket
    if s3_server.running:
        try:
            delete_bucket(s3_server.endpoint, bucket)
        except Exception:  # cleanup only; moto keeps it in memory anyway
            pass


@pytest.fixture
def fault_proxy(s3_server):
    """Factory: fault_proxy(fail_503=..., drop=..., ...) -> a FaultProxy in front of s3_server.

    Every proxy made is closed at teardown."""
    from s3_support import FaultProxy

    made = []

    def make(**kwargs):
        proxy = FaultProxy(s3_server.endpoint, **kwargs)
        made.append(proxy)
        return proxy

    yield make
    for proxy in made:
        proxy.close()
    errors = [e for proxy in made for e in proxy.errors]
    assert not errors, f"FaultProxy internal errors: {errors}"
