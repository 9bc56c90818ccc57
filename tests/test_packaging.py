"""`pip wheel .` gives a self-contained wheel that installs into a fresh
virtualenv and works there with no compiler on PATH."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.timeout(900)
def test_wheel_is_self_contained_and_installs_in_fresh_venv(tmp_path):
    wheels = tmp_path / "wheels"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "-w", str(wheels)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (wheel,) = wheels.glob("e2fastio-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        so = next(n for n in names if n.startswith("e2fastio/_core") and n.endswith(".so"))
        z.extract(so, tmp_path / "x")
    ext = tmp_path / "x" / so
    # c-blosc is linked statically and hidden: no libblosc dependency, no exported blosc symbols.
    ldd = subprocess.run(["ldd", str(ext)], capture_output=True, text=True).stdout
    assert "blosc" not in ldd and "libcuda" not in ldd and "libcudart" not in ldd, ldd
    if shutil.which("nm"):
        dyn = subprocess.run(["nm", "-D", "--defined-only", str(ext)], capture_output=True, text=True).stdout
        assert not any(w in dyn for w in ("blosc_compress", "ZSTD_compress", "LZ4_compress")), dyn[:2000]

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "--quiet", str(wheel)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # No compiler: PATH holds only the venv's bin; CC/CXX point nowhere.
    env = {"PATH": str(venv / "bin"), "CC": "/nonexistent", "CXX": "/nonexistent", "HOME": str(tmp_path)}
    script = (
        "import numpy as np, zarr, e2fastio, numcodecs\n"
        "io = e2fastio.ZarrBackend('s.zarr', chunks={'a': 2}, zarr_codecs=zarr.codecs.BloscCodec(cname='zstd'))\n"
        "c = {'a': np.arange(4), 'b': np.arange(3)}\n"
        "io.add_array(c, 'v'); io.write(np.arange(12, dtype='float32').reshape(4, 3), c, 'v'); io.close()\n"
        "assert (zarr.open_array('s.zarr/v')[...] == np.arange(12).reshape(4, 3)).all()\n"
        "print('ok', e2fastio.info()['blosc_version'])\n"
    )
    r = subprocess.run([str(py), "-c", script], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("ok 1."), r.stdout + r.stderr
    assert not any(shutil.which(c, path=env["PATH"]) for c in ("gcc", "g++", "cc", "c++"))


def test_import_needs_neither_torch_nor_icechunk():
    """torch and icechunk are optional: importing e2fastio needs neither, and IceChunkBackend says what to install."""
    code = (
        "import sys\n"
        "sys.modules['torch'] = None; sys.modules['icechunk'] = None  # as if not installed\n"
        "import e2fastio\n"
        "try:\n"
        "    e2fastio.IceChunkBackend()\n"
        "except ImportError as err:\n"
        "    print(err)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "pip install 'e2fastio[icechunk]'" in r.stdout


def _pyproject_version() -> str:
    m = re.search(r'^version = "([^"]+)"$', (ROOT / "pyproject.toml").read_text(), re.M)
    assert m, "pyproject.toml has no version line"
    return m.group(1)


def test_version_has_one_source():
    """pyproject.toml's version is what the package, its compiled core and `e2fastio info` report."""
    import e2fastio

    version = _pyproject_version()
    assert e2fastio.__version__ == version
    assert e2fastio._core.__version__ == version  # compiled in from the same pyproject.toml
    r = subprocess.run([sys.executable, "-m", "e2fastio", "info"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["version"] == version
    assert f"## {version} " in (ROOT / "CHANGELOG.md").read_text(), "CHANGELOG.md has no section for this version"
