"""Types shipped with the package: the compiled module's stub matches it, and the
type-checked code paths behave (a group named where an array is expected)."""

from __future__ import annotations

import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import zarr

import e2fastio
from e2fastio.errors import ArrayNameError

ROOT = Path(__file__).resolve().parents[1]


def test_core_stub_matches_the_compiled_module(tmp_path):
    """mypy's stubtest compares _core.pyi, as installed next to the module, with the module itself:
    a binding added, removed or renamed without its stub fails here. What the stub's types mean is
    mypy's part (scripts/test.sh type-checks it with the package), so here mypy follows no import:
    it would otherwise analyse e2fastio, zarr and numpy from scratch (stubtest keeps no cache),
    a minute on 2 cores for the same verdict."""
    pytest.importorskip("mypy")
    stub = Path(e2fastio.__file__).with_name("_core.pyi")
    assert stub.is_file(), f"{stub} is missing: the package ships without the compiled module's stub"
    assert stub.with_name("py.typed").is_file()
    config = tmp_path / "stubtest.ini"
    config.write_text("[mypy]\nfollow_imports = skip\nfollow_imports_for_stubs = True\n")
    r = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "e2fastio._core", "--mypy-config-file", str(config),
         "--allowlist", str(ROOT / "tests" / "stubtest_allowlist.txt")],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]


def test_a_group_named_where_an_array_is_read_is_a_clear_error():
    coords = OrderedDict(lat=np.arange(3.0), lon=np.arange(4.0))
    io = e2fastio.ZarrBackend(None)
    io.add_array(coords, "surface/t2m")
    io.write(np.ones((3, 4), dtype=np.float32), coords, "surface/t2m")
    assert isinstance(io["surface"], zarr.Group)  # indexing gives what the store holds, as zarr does
    with pytest.raises(ArrayNameError, match="'surface' is a group"):
        io.read(coords, "surface")
    x, _ = io.read(coords, "surface/t2m")
    assert x.numpy().tolist() == np.ones((3, 4)).tolist()
    io.close()
