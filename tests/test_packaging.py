"""Packaging: the release wheel (scripts/wheel.sh) is self-contained, carries a manylinux
tag and works from a fresh virtualenv with no compiler; the sdist builds with only the
declared build requirements; one version everywhere."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_release_wheel_repaired_and_working_from_a_fresh_venv(tmp_path):
    """scripts/wheel.sh builds the sdist, the wheel from it (isolated: only the declared build
    requirements), repairs it to a manylinux tag and checks what it links and exports. The
    repaired wheel then installs into a fresh virtualenv and works there with no compiler."""
    dist = tmp_path / "dist"
    r = subprocess.run(["bash", str(ROOT / "scripts" / "wheel.sh"), str(dist)], capture_output=True, text=True,
                       env={**os.environ, "PYTHON": sys.executable}, cwd=ROOT)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    out = dict(line.split(": ", 1) for line in r.stdout.splitlines() if ": " in line and not line.startswith("=="))
    tag, wheel, sdist = out["tag"], Path(out["wheel"]), Path(out["sdist"].split(" ")[0])
    assert re.fullmatch(r"manylinux_\d+_\d+_(x86_64|aarch64)", tag), tag
    assert wheel.is_file() and wheel.name.endswith(f"-{tag}.whl") and wheel.parent == dist, wheel
    assert int(out["size"].split()[0]) == wheel.stat().st_size

    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        meta = z.read(next(n for n in names if n.endswith(".dist-info/WHEEL"))).decode()
    assert not any(n.startswith("e2fastio.libs/") for n in names), "libraries outside the policy were bundled"
    assert {"e2fastio/py.typed", "e2fastio/_core.pyi"} <= set(names)
    assert all(line.endswith(tag) for line in meta.splitlines() if line.startswith("Tag: ")), meta
    with tarfile.open(sdist) as t:
        members = {m.split("/", 1)[1] for m in t.getnames() if "/" in m}
    assert {"pyproject.toml", "CMakeLists.txt", "csrc/bindings/module.cpp", "python/e2fastio/_core.pyi",
            "python/e2fastio/py.typed", "CHANGELOG.md"} <= members
    assert not any(m.startswith(("build/", "dist/", ".venv")) or m.endswith(".so") for m in members)

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    # No compiler from here on: PATH holds only the venv's bin; CC/CXX point nowhere; binaries only.
    env = {**os.environ, "PATH": str(venv / "bin"), "CC": "/nonexistent", "CXX": "/nonexistent",
           "HOME": str(tmp_path), "PYTHONPATH": ""}
    assert not any(shutil.which(c, path=env["PATH"]) for c in ("gcc", "g++", "cc", "c++"))
    r = subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--only-binary=:all:", str(wheel)],
                       capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # The same check cibuildwheel runs on every wheel it builds: compressed Zarr stores written
    # and read back (zstd, zlib and lz4 from inside the module), `e2fastio info`.
    r = subprocess.run([str(py), str(ROOT / "tests" / "wheel_smoke.py")], capture_output=True, text=True, env=env,
                       cwd=tmp_path)
    assert r.returncode == 0 and "wheel smoke test passed" in r.stdout, r.stdout + r.stderr
    r = subprocess.run([str(venv / "bin" / "e2fastio"), "info"], capture_output=True, text=True, env=env,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    info = json.loads(r.stdout)
    assert info["version"] == info["core_version"] == _pyproject_version()


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
