"""The shape of the write path: data flows one way, and backends use each other only through public names."""

from __future__ import annotations

import ast
import importlib.util
import pathlib
import sys
import tempfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _trace_write():  # scripts/trace_write.py, the command the docs give
    spec = importlib.util.spec_from_file_location("trace_write", ROOT / "scripts" / "trace_write.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["trace_write"] = module
    spec.loader.exec_module(module)
    return module


def test_returns_count_entries_of_modules_already_left():
    tw = _trace_write()
    t = tw.DataTrace(object())
    t.path = ["a", "b", "a", "c", "b", "d"]
    assert t.returns() == 2
    t.path = ["a", "b", "c"]
    assert t.returns() == 0


def test_a_write_reaches_the_engine_with_at_most_two_returns():
    """Followed as data, `x` goes backend -> plan -> backend -> pipeline -> engine (ARCHITECTURE.md)."""
    tw = _trace_write()
    with tempfile.TemporaryDirectory() as tmp:
        for label, io, x, coords in tw.cases(tmp):
            t = tw.trace(io, x, coords, "t2m")
            io.close()
            assert t.engine_reached, f"{label}: the data never reached the engine: {t.path}"
            assert t.returns() <= 2, f"{label}: {t.returns()} returns: {' -> '.join(t.path)}"
            assert any(m.endswith(".pipeline") for m in t.path), t.path


_BOUNCER = """
from e2fastio._write import inputs

class Bouncer:  # a backend that calls into inputs once per check, getting the data back each time
    def write(self, x, coords, name):
        a = inputs.to_host_array(x)
        a = inputs.cast_for_array(a, a.dtype, name)
        inputs.check_shape(a, [range(n) for n in a.shape], list("abc"), name)
"""


def test_the_trace_sees_a_path_that_turns_back():
    """The check can fail: data handed back and forth between two modules counts every return."""
    import types

    import numpy as np

    tw = _trace_write()
    module = types.ModuleType("e2fastio.backends._bouncer")  # a module of ours, as far as the trace knows
    exec(_BOUNCER, module.__dict__)
    x = np.zeros((1, 2, 3), np.float32)
    t = tw.trace(module.Bouncer(), x, None, "v")
    assert t.path == ["e2fastio.backends._bouncer", "e2fastio._write.inputs"] * 3 + ["e2fastio.backends._bouncer"]
    assert t.returns() == 5
    assert not t.engine_reached


def _private_uses_of_other_objects(path: pathlib.Path) -> list[str]:
    """`self.<attr>.<_private>` and `from e2fastio.backends.<m> import _private` in one module."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("e2fastio.backends"):
            found += [f"import {a.name} from {node.module}" for a in node.names if a.name.startswith("_")]
        if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                and isinstance(node.value, ast.Attribute) and isinstance(node.value.value, ast.Name)
                and node.value.value.id == "self"):
            found.append(f"line {node.lineno}: self.{node.value.attr}.{node.attr}")
    return found


# Private names of other libraries' objects that have no public equivalent.
_THIRD_PARTY = {"self._nc._h5file"}  # h5netcdf.File's h5py file: HDF5's caches are flushed through it


@pytest.mark.parametrize("module", sorted(p.name for p in (ROOT / "python/e2fastio/backends").glob("*.py")))
def test_no_backend_reaches_into_another_objects_private_names(module):
    """Backends are adapters over the pipeline: they use other objects through their public names."""
    found = _private_uses_of_other_objects(ROOT / "python/e2fastio/backends" / module)
    assert [f for f in found if f.split(": ")[-1] not in _THIRD_PARTY] == []


def test_the_private_name_check_sees_one(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from e2fastio.backends.zarr import _x\nclass A:\n    def f(self):\n        self._z._engine.get()\n")
    assert _private_uses_of_other_objects(bad) == ["import _x from e2fastio.backends.zarr", "line 4: self._z._engine"]
