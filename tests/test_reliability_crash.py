"""Crash consistency: ``kill -9`` at random moments of a non-blocking ZarrBackend run.

Each trial forks a fresh writer (tests/_crash_writer.py: one non-blocking
``ZarrBackend`` on a local directory, Blosc zstd, chunks of 8 steps x 2
variables rewritten at every step, an array added at every chunk boundary,
``flush()`` then ``CONFIRMED`` every few steps) and kills it with SIGKILL at a
random point (a random delay after a random one of its progress lines, seeded).
Then, with zarr-python alone:

- the store opens (if the writer got as far as creating it; once anything was
  confirmed it must exist);
- every array reads in full: every chunk file there decodes, and zarr counts
  exactly the chunk files as chunks (temporary files are never seen as chunks);
- every step and array confirmed before the kill reads back exactly, and every
  other step is either untouched (fill value) or exactly what was written: no
  torn or partly written chunk is visible;
- nothing but chunk files, metadata and the writers' hidden temporary files is
  in the store.
"""

from __future__ import annotations

import contextlib
import io as io_
import os
import queue
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import _crash_writer as cw
import numpy as np
import pytest
import zarr

import e2fastio
from e2fastio import ZarrBackend, _core

HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs Linux (fork, SIGKILL)")

TRIALS = 50
SEED = 14_2026
TMP_PREFIX = ".e2fastio-tmp-"  # csrc/src/sink/directory_sink.cpp: temp_name_for
WAIT = 30.0  # seconds any one message from the writer may take


class _Server:
    """tests/_crash_writer.py in ``serve`` mode, with its lines read by a thread."""

    def __init__(self) -> None:
        env = dict(os.environ)
        package_root = str(Path(e2fastio.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join([package_root, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "_crash_writer.py"), "serve"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, bufsize=1,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        assert self.next() == "READY"

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def next(self, timeout: float | None = None) -> str:
        """The next line; `timeout` given: raise queue.Empty after it, else fail after WAIT."""
        try:
            line = self.lines.get(timeout=WAIT if timeout is None else timeout)
        except queue.Empty:
            if timeout is not None:
                raise
            raise AssertionError(f"the writer sent nothing for {WAIT:g} s") from None
        if line is None:
            raise AssertionError(f"the writer server ended (exit status {self.proc.wait()})")
        return line

    def trial(self, store: Path, fsync: bool, kill: tuple[int, float] | None) -> tuple[list[str], int]:
        """Run the workload into `store`; `kill` = (n, delay): SIGKILL it `delay`
        seconds after its n-th line reached us (n = 0: after it started); None: let
        it finish. Returns the child's lines and its wait status."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"RUN {store} {'fsync' if fsync else 'nofsync'}\n")
        self.proc.stdin.flush()
        first = self.next()
        assert first.startswith("PID "), first
        pid = int(first.split()[1])
        after, delay = kill if kill is not None else (-1, 0.0)
        deadline = time.monotonic() + delay if after == 0 else None
        out: list[str] = []
        while True:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    with contextlib.suppress(ProcessLookupError):  # ended (and reaped) just now
                        os.kill(pid, signal.SIGKILL)  # the server reaps it, then sends EXIT
                    deadline = None
                    continue
                try:
                    line = self.next(timeout=left)
                except queue.Empty:
                    continue
            else:
                line = self.next()
            if line.startswith("EXIT "):
                assert int(line.split()[1]) == pid, line
                return out, int(line.split()[2])
            child, _, text = line.partition(" ")
            assert int(child) == pid, line
            out.append(text)
            if len(out) == after:
                deadline = time.monotonic() + delay

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._reader.join(timeout=WAIT)
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def _confirmed(lines: list[str]) -> tuple[int, int]:
    """The last ``CONFIRMED <step> <arrays>`` the writer printed ((-1, 0) if none).

    Every line read was written before the writer died, whenever it reached us."""
    step, arrays = -1, 0
    for line in lines:
        if line.startswith("CONFIRMED "):
            step, arrays = map(int, line.split()[1:])
    return step, arrays


def _files(array_dir: Path) -> tuple[int, list[Path], list[Path]]:
    """Chunk files, writers' temporary files (ours, and zarr-python's for the
    coordinates it writes) and anything else under an array's ``c/``."""
    chunks, temps, other = 0, [], []
    for dirpath, _, names in os.walk(array_dir / "c"):
        for name in names:
            if name.isdigit():
                chunks += 1
            elif name.startswith(TMP_PREFIX) or name.endswith(".partial"):  # ours, zarr-python's
                temps.append(Path(dirpath) / name)
            else:
                other.append(Path(dirpath) / name)
    return chunks, temps, other


def _verify(store: Path, lines: list[str]) -> dict[str, int]:
    """Check one store after a kill; return what was checked."""
    step, arrays = _confirmed(lines)
    checked = Counter()
    if not (store / "zarr.json").exists():
        assert step < 0, f"{store}: steps up to {step} were confirmed but the store has no root metadata"
        return checked
    group = zarr.open_group(store, mode="r")
    members = dict(group.members(max_depth=None))
    expected = cw.coords()
    checked["zarr_partial_files"] += sum(1 for _ in store.rglob("*.partial"))  # zarr-python's temporaries
    for name, arr in members.items():
        assert isinstance(arr, zarr.Array), f"{store}: unexpected group {name!r}"
        try:
            data = arr[...]  # decodes every chunk present
        except Exception as err:
            raise AssertionError(f"{store}/{name} does not read (a torn chunk?): {err!r}") from err
        n, temps, other = _files(store / name)
        assert not other, f"{store}/{name}: unexpected files {other}"
        assert arr.nchunks_initialized == n, (
            f"{store}/{name}: zarr sees {arr.nchunks_initialized} chunks; {n} chunk files and "
            f"{len(temps)} temporary files exist"
        )
        checked["chunks"] += n
        checked["temp_files"] += sum(p.name.startswith(TMP_PREFIX) for p in temps)
        if name in expected:
            if n:  # coordinates are written once, whole
                np.testing.assert_array_equal(data, expected[name], err_msg=f"{store}: coordinate {name}")
            else:
                assert step < 0, f"{store}: coordinate {name} has no data but steps up to {step} were confirmed"
        elif name == "fields":
            for s in range(cw.STEPS):
                want = np.stack([cw.step_values(s, v) for v in range(cw.VARIABLES)])
                if np.array_equal(data[s], want):
                    checked["steps_intact"] += 1
                    checked["confirmed_steps_verified"] += s <= step
                    continue
                assert s > step, f"{store}: step {s} was confirmed (up to {step}) but does not read back"
                assert not data[s].any(), f"{store}: step {s} is neither written nor untouched (torn)"
        elif name.startswith("aux"):
            k = int(name[3:])
            if np.array_equal(data, cw.aux_values(k)):
                checked["confirmed_arrays_verified"] += k < arrays
                continue
            assert k >= arrays, f"{store}: array {name} was confirmed but does not read back"
            assert not data.any(), f"{store}: array {name} is neither written nor untouched (torn)"
        else:
            raise AssertionError(f"{store}: unexpected array {name!r}")
    if step >= 0:
        missing = {"fields", *expected, *(f"aux{k}" for k in range(arrays))} - set(members)
        assert not missing, f"{store}: confirmed arrays missing: {sorted(missing)}"
    return checked


def test_sigkill_at_random_moments_keeps_confirmed_writes(tmp_path):
    rng = random.Random(SEED)
    server = _Server()
    try:
        # Runs to the end: the clean case, and how long a run takes here (the
        # shorter of two: the first child also pays for what zarr imports lazily).
        durations = []
        for fsync in (False, True):
            t0 = time.monotonic()
            lines, status = server.trial(tmp_path / f"full-{fsync}.zarr", fsync, None)
            durations.append(time.monotonic() - t0)
            assert lines[-1] == "DONE" and status == 0, lines[-3:]
            assert _verify(tmp_path / f"full-{fsync}.zarr", lines)["confirmed_steps_verified"] == cw.STEPS
        duration = min(durations)
        n_lines = len(lines)
        gap = duration / n_lines  # mean time between two of the writer's lines

        totals: Counter[str] = Counter()
        landed: Counter[str] = Counter()
        trials = 0
        for i in range(TRIALS):
            store = tmp_path / f"t{i:02d}.zarr"
            fsync = i % 2 == 1
            # Anywhere in the run (opening the store included): a random line of the
            # writer's, then a random delay, so the kills spread over every phase
            # however fast this machine is right now.
            kill = (rng.randrange(n_lines), rng.uniform(0.0, 2 * gap))
            lines, status = server.trial(store, fsync, kill)
            errors = [line for line in lines if line.startswith("ERROR")]
            assert not errors, errors
            if os.WIFSIGNALED(status):
                assert os.WTERMSIG(status) == signal.SIGKILL, status
                last = lines[-1] if lines else "PHASE start"  # what the writer said last
                landed[last.split()[1] if last.startswith("PHASE ") else "between calls"] += 1
            else:
                assert os.WEXITSTATUS(status) == 0 and lines[-1] == "DONE", lines[-3:]
                landed["after the end"] += 1
            checked = _verify(store, lines)
            totals.update(checked)
            totals["trials_with_temp_files"] += checked["temp_files"] > 0
            trials += 1
    finally:
        server.close()

    killed = trials - landed["after the end"]
    print(
        f"\ncrash consistency: {trials} trials ({killed} killed with SIGKILL, {landed['after the end']} finished "
        f"first; a run takes {duration:.2f} s), kill landed in: "
        + ", ".join(f"{k} {v}" for k, v in sorted(landed.items()) if k != "after the end")
        + f"; {totals['chunks']} chunk files decoded, {totals['confirmed_steps_verified']} confirmed steps and "
        f"{totals['confirmed_arrays_verified']} confirmed arrays read back exactly, "
        f"{totals['steps_intact'] - totals['confirmed_steps_verified']} unconfirmed steps landed whole, none torn; "
        f"temporary files left: {totals['temp_files']} (in {totals['trials_with_temp_files']} trials; "
        f"never seen as chunks), zarr .partial files: {totals['zarr_partial_files']}"
    )
    assert trials == TRIALS
    assert killed >= TRIALS // 2, landed  # most trials must really be killed mid-run
    assert landed["write"] and landed["flush"], landed  # the kills reach the steady state
    assert totals["confirmed_steps_verified"] > 0


def test_leftover_temp_file_is_never_read_and_is_removed_once_its_writer_is_gone(tmp_path):
    """A temporary chunk file as a killed writer leaves it (torn): readers never see
    it as a chunk, and a writer reopening the store reads and rewrites the real chunk
    and removes the leftover (its writer's pid is gone); a live writer's is kept."""
    store = tmp_path / "s.zarr"
    lines = _run_writer_in_process(store)
    chunk = store / "fields" / "c" / "0" / "0" / "0" / "0"
    dead = _dead_pid()
    stale = chunk.parent / f"{_core._temp_prefix()}{dead}-0-0"
    stale.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])  # torn, as a kill leaves it
    live = chunk.parent / f"{_core._temp_prefix()}{os.getppid()}-0-0"  # another live process's, in progress
    live.write_bytes(b"x")
    assert _verify(store, lines)["temp_files"] == 2
    with ZarrBackend(str(store), blocking=False) as io:
        sc = cw.coords()
        sc["lead_time"] = sc["lead_time"][:1]
        io.write(np.stack([cw.step_values(0, v) for v in range(cw.VARIABLES)])[None], sc, "fields")
    assert _verify(store, lines)["confirmed_steps_verified"] == cw.STEPS
    assert not stale.exists() and live.exists()


def _run_writer_in_process(store: Path) -> list[str]:
    out = io_.StringIO()
    with contextlib.redirect_stdout(out):
        cw.run(str(store))
    lines = out.getvalue().splitlines()
    assert lines[-1] == "DONE"
    return lines


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid
