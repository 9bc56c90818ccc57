"""Disk full, on a small file system made for the test (a size-limited tmpfs,
and ext4 on a loop device so that O_DIRECT is exercised too).

A backend writes until the file system is full. Then: the error names the
chunk key and ENOSPC; every write confirmed before (a blocking ``write`` that
returned, or a non-blocking ``flush``) reads back exactly through the ordinary
readers (zarr-python, netCDF4); no chunk is torn and no temporary file is left
behind; and once space is freed (a filler file made at the start is deleted)
the same backend writes again.

Mounting needs root; where it is refused (a container without the capability,
no loop devices) the tests are skipped with the reason.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import subprocess
import sys
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from e2fastio import NetCDF4Backend, ZarrBackend
from e2fastio.errors import BackgroundWriteError

T, LAT, LON = 40, 128, 250  # one chunk per step: 128 * 250 * 4 = 128000 bytes (not a multiple of 4 KiB)
STEP_BYTES = LAT * LON * 4
HEADROOM = 20 * STEP_BYTES  # free space left beside the filler: about 20 steps fit
GROUP = 4  # non-blocking: writes between flushes


def _run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


def _unmount(mnt: Path) -> None:
    if _run(["umount", str(mnt)]).returncode != 0:
        _run(["umount", "-l", str(mnt)])  # still busy (a file left open by a failed test): detach


@pytest.fixture(params=["tmpfs", "ext4-loop"])
def small_fs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """(kind, mount point) of a new, small file system; unmounted afterwards."""
    kind = request.param
    if os.geteuid() != 0:
        pytest.skip(f"making a small file system ({kind}) needs mount, i.e. root; this test runs as uid {os.geteuid()}")
    mnt = tmp_path / "fs"
    mnt.mkdir()
    if kind == "tmpfs":
        cmd = ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)]
    else:
        if not (shutil.which("mkfs.ext4") and Path("/dev/loop-control").exists()):
            pytest.skip("no mkfs.ext4 or no loop devices (/dev/loop-control) here")
        img = tmp_path / "fs.img"
        with open(img, "wb") as f:
            f.truncate(16 << 20)
        made = _run(["mkfs.ext4", "-q", "-F", "-m", "0", str(img)])
        if made.returncode != 0:
            pytest.skip(f"mkfs.ext4 failed: {made.stderr.strip()}")
        cmd = ["mount", "-o", "loop", str(img), str(mnt)]
    mounted = _run(cmd)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a {kind} here ({' '.join(cmd)}: {mounted.stderr.strip()})")
    try:
        yield kind, mnt
    finally:
        _unmount(mnt)


def _fill_leaving(mnt: Path, headroom: int) -> Path:
    """A filler file taking all free space but `headroom` bytes (real blocks: written, synced)."""
    st = os.statvfs(mnt)
    size = st.f_bavail * st.f_frsize - headroom
    assert size > 0, f"the test file system is too small ({st.f_bavail * st.f_frsize} bytes free)"
    filler = mnt / "filler.bin"
    block = np.random.default_rng(0).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    with open(filler, "wb") as f:
        while size > 0:
            size -= f.write(block[: min(size, len(block))])
        f.flush()
        os.fsync(f.fileno())
    return filler


def _fields() -> np.ndarray:
    # Never the fill value (0): a missing chunk and a written one are told apart.
    return (np.random.default_rng(7).standard_normal((T, LAT, LON)) + 100).astype(np.float32)


def _coords() -> OrderedDict[str, np.ndarray]:
    return OrderedDict(time=np.arange(T), lat=np.linspace(90, -90, LAT), lon=np.linspace(0, 360, LON, endpoint=False))


def _step(coords: OrderedDict[str, np.ndarray], t: int) -> OrderedDict[str, np.ndarray]:
    out = OrderedDict(coords)
    out["time"] = coords["time"][t : t + 1]
    return out


def _fill_until_full(be: ZarrBackend | NetCDF4Backend, fields: np.ndarray, coords: OrderedDict[str, np.ndarray],
                     blocking: bool) -> tuple[list[int], list[int], BaseException]:
    """Write steps until one fails; (confirmed steps, steps written but unconfirmed, the error)."""
    confirmed: list[int] = []
    pending: list[int] = []
    for t in range(T):
        try:
            pending.append(t)
            be.write(torch.from_numpy(fields[t : t + 1]), _step(coords, t), "t2m")
            if not blocking and len(pending) == GROUP:
                be.flush()
            if blocking or len(pending) == GROUP:
                confirmed += pending
                pending = []
        except (OSError, BackgroundWriteError) as err:
            return confirmed, pending, err
    pytest.fail(f"{T} steps of {STEP_BYTES} bytes never filled the file system")


def _check_enospc(err: BaseException, key_pattern: str, candidates: list[int]) -> int:
    """The error says ENOSPC and names a chunk of an unconfirmed step; that step."""
    cause = err.__cause__ if isinstance(err, BackgroundWriteError) else err
    assert isinstance(cause, OSError) and cause.errno == errno.ENOSPC, repr(err)
    text = str(err)
    assert "No space left on device" in text, text
    m = re.search(key_pattern, text)
    assert m, f"the error does not name the chunk: {text}"
    step = int(m.group(1))
    assert step in candidates, f"the error names step {step}, not one of the unconfirmed steps {candidates}"
    return step


def _no_temporaries(root: Path) -> None:
    left = [p for p in root.rglob("*") if ".e2fastio-tmp-" in p.name]
    assert not left, f"temporary files left behind: {left}"


@pytest.mark.parametrize("blocking", [True, False], ids=["blocking", "nonblocking"])
def test_zarr_backend_disk_full(small_fs: tuple[str, Path], blocking: bool) -> None:
    kind, mnt = small_fs
    fields, coords = _fields(), _coords()
    store = mnt / "out.zarr"
    # On ext4, fsync and O_DIRECT for every chunk: a page-aligned body, a buffered tail, the file's
    # and its directory's fsync all meet ENOSPC; on tmpfs, the defaults.
    ext4 = kind == "ext4-loop"
    be = ZarrBackend(str(store), chunks={"time": 1}, blocking=blocking, threads=2, max_buffer_bytes=32 << 20,
                     direct_io=True if ext4 else None, fsync=ext4)
    try:
        _zarr_disk_full(kind, be, store, mnt, fields, coords, blocking)
    finally:
        if not be.closed:  # a failed check: stop the threads before the file system goes
            with contextlib.suppress(Exception):
                be.close()


def _zarr_disk_full(kind: str, be: ZarrBackend, store: Path, mnt: Path, fields: np.ndarray,
                    coords: OrderedDict[str, np.ndarray], blocking: bool) -> None:
    import zarr

    be.add_array(coords, "t2m")
    filler = _fill_leaving(mnt, HEADROOM)
    confirmed, unconfirmed, err = _fill_until_full(be, fields, coords, blocking)
    failed = _check_enospc(err, r"chunk 't2m/c/(\d+)/0/0'", unconfirmed)
    assert len(confirmed) >= 8, f"only {len(confirmed)} steps fitted before ENOSPC"
    if not blocking:
        try:  # chunks still queued when the error surfaced may have failed since
            be.flush()
        except BackgroundWriteError as again:
            _check_enospc(again, r"chunk 't2m/c/(\d+)/0/0'", unconfirmed)
        be.flush()  # reported once: nothing more
    _no_temporaries(store)

    # Everything confirmed is intact; an unconfirmed chunk is whole or absent, never torn.
    arr = zarr.open_group(str(store), mode="r")["t2m"]
    back = arr[:]
    for t in confirmed:
        np.testing.assert_array_equal(back[t], fields[t], err_msg=f"confirmed step {t}")
    absent = [t for t in unconfirmed if not np.array_equal(back[t], fields[t])]
    for t in absent:
        assert not (store / "t2m" / "c" / str(t) / "0" / "0").exists(), f"step {t}: a chunk file that is not whole"
        np.testing.assert_array_equal(back[t], 0, err_msg=f"unconfirmed step {t} is torn")
    assert failed in absent
    print(f"\n{kind} {'blocking' if blocking else 'non-blocking'}: {len(confirmed)} steps confirmed and intact, "
          f"{len(unconfirmed)} unconfirmed ({len(absent)} absent, {len(unconfirmed) - len(absent)} whole), "
          f"failed chunk t2m/c/{failed}/0/0: {err}")

    # Space freed: the same backend stores the failed steps and the rest (non-blocking: after taking the
    # reports of other chunks that failed before the space was freed, each reported once).
    filler.unlink()
    _take_pending_reports(be, blocking)
    for t in range(confirmed[-1] + 1 if confirmed else 0, T):
        be.write(torch.from_numpy(fields[t : t + 1]), _step(coords, t), "t2m")
    be.close()
    _no_temporaries(store)
    np.testing.assert_array_equal(zarr.open_group(str(store), mode="r")["t2m"][:], fields)


def _take_pending_reports(be: ZarrBackend | NetCDF4Backend, blocking: bool) -> None:
    """Non-blocking: flush until no earlier failure is left to report (each is reported once)."""
    if blocking:
        return
    for _ in range(T):
        try:
            be.flush()
            return
        except BackgroundWriteError:
            continue
    raise AssertionError(f"flush still reported failures after {T} tries")


def _read_in_another_process(path: Path, out: Path) -> np.ndarray:
    """The variable as netCDF4 in a separate process sees it (the backend still holds the file open)."""
    code = (
        "import sys, numpy as np, netCDF4\n"
        "with netCDF4.Dataset(sys.argv[1]) as ds:\n"
        "    v = ds['t2m']\n"
        "    v.set_auto_mask(False)\n"
        "    np.save(sys.argv[2], np.asarray(v[:]))\n"
    )
    env = dict(os.environ, HDF5_USE_FILE_LOCKING="FALSE")
    r = subprocess.run([sys.executable, "-c", code, str(path), str(out)], capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]
    return np.load(out)


@pytest.mark.parametrize("blocking", [True, False], ids=["blocking", "nonblocking"])
@pytest.mark.parametrize("compression", [None, "zlib"], ids=["contiguous", "zlib"])
def test_netcdf_backend_disk_full(small_fs: tuple[str, Path], tmp_path: Path, compression: str | None,
                                  blocking: bool) -> None:
    import netCDF4

    kind, mnt = small_fs
    fields, coords = _fields(), _coords()
    path = mnt / "out.nc"
    be = NetCDF4Backend(str(path), backend_kwargs={"mode": "w"}, compression=compression, blocking=blocking,
                        threads=2, max_buffer_bytes=32 << 20)
    try:
        be.add_array(coords, "t2m")
        filler = _fill_leaving(mnt, HEADROOM)
        confirmed, unconfirmed, err = _fill_until_full(be, fields, coords, blocking)
        failed = _check_enospc(err, r"chunk 't2m/c/(\d+)/0/0'", unconfirmed)
        assert len(confirmed) >= 8, f"only {len(confirmed)} steps fitted before ENOSPC"

        # What a reader sees now (the file as it would be if this process died here).
        back = _read_in_another_process(path, tmp_path / "seen.npy")
        for t in confirmed:
            np.testing.assert_array_equal(back[t], fields[t], err_msg=f"confirmed step {t}")
        print(f"\n{kind} NetCDF {compression or 'contiguous'} {'blocking' if blocking else 'non-blocking'}: "
              f"{len(confirmed)} steps confirmed and intact, failed chunk t2m/c/{failed}/0/0: {err}")

        # Space freed: the same backend stores the failed steps and the rest. Non-blocking: chunks queued
        # before the space was freed may have failed too; each failure is reported once, so take those
        # reports first (a bounded number of them), then rewrite from the first unconfirmed step.
        filler.unlink()
        _take_pending_reports(be, blocking)
        for t in range(confirmed[-1] + 1 if confirmed else 0, T):
            be.write(torch.from_numpy(fields[t : t + 1]), _step(coords, t), "t2m")
        be.close()
    finally:
        if not be.closed:  # a failed check: release the file before the file system goes
            with contextlib.suppress(Exception):
                be.close()
    with netCDF4.Dataset(str(path)) as ds:
        np.testing.assert_array_equal(np.asarray(ds["t2m"][:]), fields)
