"""The writer killed by tests/test_reliability_crash.py.

``python _crash_writer.py serve``: import everything once, print ``READY``,
then for every ``RUN <store> fsync|nofsync`` line read from stdin fork a child
that runs the workload below into ``<store>`` (with ``fsync=True`` or not).
The child's lines are relayed to stdout, each prefixed with its pid; the
server first prints ``PID <pid>`` and, once the child has ended (killed or
not), ``EXIT <pid> <wait status>``. Forking from a
process that has imported (but never used) zarr and e2fastio spares each trial
the interpreter's start-up; every child is a fresh writer all the same: it
opens the store, starts its threads and is killed with SIGKILL by the test.

The workload (one non-blocking ``ZarrBackend``, a local directory store, Blosc
zstd): an array ``fields`` (lead_time, variable, lat, lon) with chunks of 8
steps x 2 variables (about 240 KB raw), written one step at a time so every
write rewrites a chunk holding earlier steps; a new array ``aux<k>`` added
(with data) at every chunk boundary; ``flush()`` every few writes, after which
the child prints ``CONFIRMED <step> <arrays>``: steps ``0..step`` of ``fields``
and ``aux0..aux<arrays-1>`` are stored. Before each call it prints what it is
about to do (``PHASE write|flush|add_array``), so the test can tell where the
kill landed.
"""

from __future__ import annotations

import os
import sys
from collections import OrderedDict

import numpy as np

STEPS = 32
CHUNK_STEPS = 8
VARIABLES = 2
LAT, LON = 40, 96
FLUSH_EVERY = 3


def coords() -> OrderedDict[str, np.ndarray]:
    return OrderedDict(
        lead_time=np.arange(STEPS, dtype=np.int64),
        variable=np.arange(VARIABLES, dtype=np.int64),
        lat=np.linspace(90, -90, LAT),
        lon=np.linspace(0, 360, LON, endpoint=False),
    )


def step_values(step: int, variable: int) -> np.ndarray:
    """What `fields[step, variable]` holds: ``step * 1000 + variable`` plus a
    deterministic fraction in [1, 2) (noise, so chunks do not compress to nothing,
    and never the fill value 0)."""
    frac = np.random.default_rng([step, variable]).random((LAT, LON))
    return (step * 1000 + variable + 1 + frac).astype(np.float32)


def aux_values(k: int) -> np.ndarray:
    """What `aux<k>` (variable, lat, lon) holds."""
    return np.stack([step_values(100 + k, v) for v in range(VARIABLES)])


def run(store: str, fsync: bool = False) -> None:
    import zarr

    from e2fastio import ZarrBackend

    def say(line: str) -> None:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()

    c = coords()
    say("PHASE open")
    io = ZarrBackend(
        store,
        chunks={"lead_time": CHUNK_STEPS, "variable": VARIABLES},
        backend_kwargs={"overwrite": True},
        zarr_codecs=zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"),
        blocking=False,
        max_buffer_bytes=8 << 20,
        fsync=fsync,
    )
    say("PHASE add_array")
    io.add_array(c, "fields")
    aux_coords = OrderedDict((d, c[d]) for d in ("variable", "lat", "lon"))
    arrays = 0
    for step in range(STEPS):
        if step % CHUNK_STEPS == 0:
            say("PHASE add_array")
            io.add_array(aux_coords, f"aux{arrays}", data=aux_values(arrays))
            arrays += 1
        say("PHASE write")
        sc = OrderedDict(c)
        sc["lead_time"] = c["lead_time"][step:step + 1]
        x = np.stack([step_values(step, v) for v in range(VARIABLES)])[None]
        io.write(x, sc, "fields")
        if step % FLUSH_EVERY == FLUSH_EVERY - 1 or step == STEPS - 1:
            say("PHASE flush")
            io.flush()
            say(f"CONFIRMED {step} {arrays}")
    say("PHASE close")
    io.close()
    say("DONE")


def serve() -> None:
    import zarr  # noqa: F401 - imported once here, used by the children
    import zarr.codecs  # noqa: F401

    import e2fastio  # noqa: F401

    out = sys.stdout
    out.write("READY\n")
    out.flush()
    for line in sys.stdin:
        cmd, *args = line.split()
        if cmd != "RUN" or len(args) != 2:
            break
        store, fsync = args[0], args[1] == "fsync"
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(r)
            os.dup2(w, 1)
            os.close(w)
            sys.stdout = os.fdopen(1, "w")
            code = 0
            try:
                run(store, fsync)
            except BaseException as err:  # noqa: BLE001 - reported to the test, then exit
                sys.stdout.write(f"ERROR {type(err).__name__}: {err}\n")
                sys.stdout.flush()
                code = 1
            os._exit(code)
        os.close(w)
        out.write(f"PID {pid}\n")
        out.flush()
        with os.fdopen(r) as child:
            for child_line in child:
                out.write(f"{pid} {child_line}")
                out.flush()
        _, status = os.waitpid(pid, 0)
        out.write(f"EXIT {pid} {status}\n")
        out.flush()


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve()
    elif sys.argv[1:2] == ["run"] and len(sys.argv) in (3, 4):
        run(sys.argv[2], sys.argv[3:] == ["fsync"])
    else:
        sys.exit("usage: _crash_writer.py serve | run STORE [fsync]")
