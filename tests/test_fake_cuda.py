"""The CUDA device path without a GPU: a fake CUDA runtime (host threads, same
functions) is loaded through the same run-time mechanism as the real one."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def fake_cudart() -> Path:
    cmake = shutil.which("cmake")
    assert cmake, "cmake is a test requirement"
    build = ROOT / "build" / "fake-cudart"
    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    subprocess.run([cmake, "-S", str(ROOT), "-B", str(build), *gen, "-DE2FASTIO_BUILD_PYTHON=OFF",
                    "-DE2FASTIO_BUILD_TESTS=ON", "-DE2FASTIO_SANITIZE=", f"-DPython_EXECUTABLE={sys.executable}"],
                   check=True, capture_output=True)
    subprocess.run([cmake, "--build", str(build), "--target", "e2fastio_fake_cudart"], check=True, capture_output=True)
    (lib,) = build.glob("libe2fastio_fake_cudart.so")
    return lib


def test_device_path_through_fake_cuda_runtime(fake_cudart, tmp_path):
    # The same library is the fake nvCOMP (loaded by path as the real one is).
    env = dict(os.environ, E2FASTIO_CUDART=str(fake_cudart), E2FASTIO_NVCOMP=str(fake_cudart))
    r = subprocess.run([sys.executable, str(ROOT / "tests" / "_fake_cuda_scenarios.py"), str(tmp_path)],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "fake-cuda scenarios passed" in r.stdout


def test_without_runtime_everything_works_on_plain_memory():
    import e2fastio

    info = e2fastio.info()
    if info["cuda"]["available"]:
        pytest.skip("a CUDA runtime is present here")
    assert info["pinned_staging"] is False and info["cuda"]["reason"]


def test_nvcomp_of_another_major_version_is_refused(fake_cudart):
    """The loader pins nvCOMP 6 (5.x exported other names): a library reporting 5.0 is not used."""
    env = dict(os.environ, E2FASTIO_CUDART=str(fake_cudart), E2FASTIO_NVCOMP=str(fake_cudart),
               FAKE_NVCOMP_VERSION="5000")
    code = "import e2fastio, json; i = e2fastio.info(); print(json.dumps([i['nvcomp'], i['device_compression']]))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    nv, choice = json.loads(r.stdout)
    assert nv["available"] is False and "nvCOMP 5.0 found, 6.x needed" in nv["reason"], nv
    assert choice.startswith("host (")
