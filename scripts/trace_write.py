"""Follow the data of one write through e2fastio's modules until it reaches the native engine.

    python scripts/trace_write.py                    # Zarr, AsyncZarr and NetCDF4 backends
    python scripts/trace_write.py --max-returns 2    # exit 1 if a path returns more often

A profile hook (``sys.setprofile``) watches every Python call inside
``e2fastio`` during one ``write``. A call is on the data's path when one of
its arguments holds the data: the array or tensor passed as ``x``, a view of
it, or what a call on the path returned from it (a cast copy, the plan), also
inside lists, tuples, dicts and objects with slots, a few levels deep. The
path is the sequence of modules the data is in, from the backend's method to
the first call into the engine (``e2fastio._core``: ``Engine.submit`` or
``Engine.write_batch``); a *return* is an entry of a module the data had
already been in and left. The write goes into an existing array (the steady
state of a forecast loop).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections import OrderedDict
from types import FrameType
from typing import Any

import numpy as np

_ENGINE_CALLS = {"submit", "write_batch", "submit_device"}


class DataTrace:
    """Record the modules that the data of `x` passes through until the engine takes it."""

    def __init__(self, x: Any) -> None:
        self.ranges: list[tuple[int, int]] = []
        self.objects: set[int] = {id(x)}
        self._kept: list[Any] = [x]  # adopted objects stay alive, so that their ids stay theirs
        self.sizes = {n for n in [self._elements(x)] if n is not None}  # elements of the data
        self._add_memory(x)
        self.path: list[str] = []
        self.tracked: set[int] = set()  # ids of frames on the path
        self.engine_reached = False

    # -- what holds the data
    @staticmethod
    def _memory(obj: Any) -> tuple[int, int] | None:
        if isinstance(obj, np.ndarray):
            start = obj.__array_interface__["data"][0]
            return start, start + max(1, obj.nbytes)
        if type(obj).__module__.startswith("torch") and hasattr(obj, "data_ptr"):
            start = obj.data_ptr()
            return start, start + max(1, obj.numel() * obj.element_size())
        return None

    def _add_memory(self, obj: Any) -> None:
        r = self._memory(obj)
        if r is not None:
            self.ranges.append(r)

    def holds(self, obj: Any, depth: int = 3) -> bool:
        if id(obj) in self.objects:
            return True
        r = self._memory(obj)
        if r is not None:
            return any(r[0] < b and a < r[1] for a, b in self.ranges)
        if depth == 0 or isinstance(obj, (str, bytes, int, float, bool, type(None))):
            return False
        if isinstance(obj, (list, tuple)):
            return any(self.holds(o, depth - 1) for o in obj[:64])
        if isinstance(obj, dict):
            return any(self.holds(o, depth - 1) for o in list(obj.values())[:64])
        slots = getattr(type(obj), "__slots__", None)
        if slots and type(obj).__module__.startswith("e2fastio"):
            return any(self.holds(getattr(obj, s, None), depth - 1) for s in slots)
        return False

    @staticmethod
    def _elements(obj: Any) -> int | None:
        if isinstance(obj, np.ndarray):
            return int(obj.size)
        if type(obj).__module__.startswith("torch") and hasattr(obj, "numel"):
            return int(obj.numel())
        return None

    def _adopt(self, obj: Any, depth: int = 3) -> bool:
        """What a call on the path returned holds the data from now on: arrays with as many
        elements as the data (a view or a cast copy; not index arrays), and what contains them."""
        if depth == 0 or isinstance(obj, (str, bytes, int, float, bool, type(None))):
            return False
        n = self._elements(obj)
        if n is not None:
            found = n in self.sizes
            if found:
                self._add_memory(obj)
        else:
            found = False
            if isinstance(obj, (list, tuple)):
                for o in obj[:64]:
                    found = self._adopt(o, depth - 1) or found
            slots = getattr(type(obj), "__slots__", None)
            if slots and type(obj).__module__.startswith("e2fastio"):
                for s in slots:
                    found = self._adopt(getattr(obj, s, None), depth - 1) or found
        if found:
            self.objects.add(id(obj))
            self._kept.append(obj)
        return found

    # -- the hook
    def _enter(self, module: str) -> None:
        if not self.path or self.path[-1] != module:
            self.path.append(module)

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        if self.engine_reached:
            return
        module = frame.f_globals.get("__name__", "")
        if event == "c_call":
            # pybind11 methods: their __self__ is pybind11's function record, not the Engine
            if id(frame) in self.tracked and getattr(arg, "__name__", "") in _ENGINE_CALLS \
                    and "pybind11" in type(getattr(arg, "__self__", None)).__module__:
                self._enter("e2fastio._core (engine)")
                self.engine_reached = True
            return
        if not module.startswith("e2fastio"):
            return
        if event == "call":
            if any(self.holds(v) for v in list(frame.f_locals.values())):
                self.tracked.add(id(frame))
                self._enter(module)
        elif event == "return" and id(frame) in self.tracked:
            self.tracked.discard(id(frame))
            if arg is not None and self.holds(arg):
                self._adopt(arg)
            caller = frame.f_back
            while caller is not None and id(caller) not in self.tracked:
                caller = caller.f_back
            if caller is not None:
                self._enter(caller.f_globals.get("__name__", ""))

    def returns(self) -> int:
        """Entries of a module the data had already left."""
        seen: set[str] = set()
        count = 0
        for m in self.path:
            count += m in seen
            seen.add(m)
        return count


def trace(backend: Any, x: Any, coords: Any, name: str) -> DataTrace:
    t = DataTrace(x)
    sys.setprofile(t)
    try:
        backend.write(x, coords, name)
    finally:
        sys.setprofile(None)
    return t


def cases(tmp: str) -> list[tuple[str, Any, Any, Any]]:
    """(label, backend, x, coords): one write each into an existing array."""
    import e2fastio

    coords = OrderedDict(time=np.arange(2), lat=np.linspace(-90, 90, 181), lon=np.arange(360.0))
    try:
        import torch

        x: Any = torch.randn(1, 181, 360)
    except ImportError:
        x = np.random.default_rng(0).standard_normal((1, 181, 360)).astype(np.float32)
    one = OrderedDict(time=coords["time"][:1], lat=coords["lat"], lon=coords["lon"])
    out = []
    for blocking in (True, False):
        io = e2fastio.ZarrBackend(f"{tmp}/z{int(blocking)}.zarr", chunks={"time": 1}, blocking=blocking)
        io.add_array(coords, "t2m")
        io.write(x, one, "t2m")  # warm: the target is described, the engine started
        out.append((f"ZarrBackend(blocking={blocking})", io, x, one))
    a = e2fastio.AsyncZarrBackend(f"{tmp}/a.zarr", parallel_coords={"time": coords["time"]}, blocking=False)
    a.add_array(coords, "t2m")
    a.write(x, one, "t2m")
    out.append(("AsyncZarrBackend(blocking=False)", a, x, one))
    for blocking in (True, False):
        nc = e2fastio.NetCDF4Backend(f"{tmp}/n{int(blocking)}.nc", {"mode": "w"}, compression="zlib",
                                     blocking=blocking)
        nc.add_array(coords, "t2m")
        nc.write(x, one, "t2m")
        out.append((f"NetCDF4Backend(compression='zlib', blocking={blocking})", nc, x, one))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-returns", type=int, default=None, help="exit 1 if a path has more returns")
    args = parser.parse_args(argv)
    worst = 0
    with tempfile.TemporaryDirectory() as tmp:
        for label, io, x, coords in cases(tmp):
            t = trace(io, x, coords, "t2m")
            io.close()
            if not t.engine_reached:
                print(f"{label}: the data never reached the engine", file=sys.stderr)
                return 1
            worst = max(worst, t.returns())
            print(f"{label}: {t.returns()} return(s)\n    " + "\n -> ".join(t.path))
    if args.max_returns is not None and worst > args.max_returns:
        print(f"more than {args.max_returns} return(s) on a path", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
