"""Backends nobody closed: collected or left at exit, they lose nothing, hang nothing and leave no thread.

Earth2Studio's workflows never call ``close()``. These tests drop backends with
work pending (local and S3 stores, partial-chunk writes that need Python on the
encoder threads, a failing chunk) and check what a user would see.
"""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import threading
import warnings
import weakref
from collections import OrderedDict

import numpy as np
import pytest
import s3_support as S
import zarr

from e2fastio import NetCDF4Backend, ZarrBackend

BLOSC = zarr.codecs.BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")
C = OrderedDict(step=np.arange(12), lat=np.arange(64), lon=np.arange(96))


def _write_steps(io, n=12, chunks_per_step_partial=False):
    for k in range(n):
        x = np.full((1, 64, 96), k, "float32")
        if chunks_per_step_partial:  # half a chunk: the other half is read back (fetch callback, with the GIL)
            io.write(x[:, :32], OrderedDict(C, step=C["step"][k : k + 1], lat=C["lat"][:32]), "v")
        else:
            io.write(x, OrderedDict(C, step=C["step"][k : k + 1]), "v")


def _uploads() -> int:
    """Upload threads alive (Python threads: their kernel name is not set on every Python version)."""
    return sum(t.name == "e2fastio-upload" and t.is_alive() for t in threading.enumerate())


def _collect(ref: weakref.ref) -> None:
    for _ in range(3):
        gc.collect()
    assert ref() is None, "the backend is still referenced"


def test_unclosed_nonblocking_backend_is_finished_when_collected(tmp_path, native_threads):
    gc.collect()
    before = native_threads()
    io = ZarrBackend(str(tmp_path / "a.zarr"), chunks={"step": 1}, zarr_codecs=BLOSC, blocking=False, threads=2)
    io.add_array(C, "v")
    _write_steps(io)
    ref = weakref.ref(io)
    with pytest.warns(RuntimeWarning, match="garbage-collected without close"):
        del io
        _collect(ref)
    assert native_threads(settle_to=before) == before
    got = zarr.open_array(str(tmp_path / "a.zarr" / "v"))[...]
    np.testing.assert_array_equal(got[:, 0, 0], np.arange(12))


def test_a_refused_nonblocking_write_leaves_nothing_to_warn_about(tmp_path):
    """A write the core refuses (here: a chunk larger than the encode buffers) stages nothing:
    collecting the backend afterwards is quiet, there are no pending chunks to speak of."""
    io = ZarrBackend(str(tmp_path / "r.zarr"), blocking=False, threads=1, max_buffer_bytes=1 << 12)
    io.add_array(C, "v")
    with pytest.raises(ValueError, match="max_buffer_bytes"):
        io.write(np.ones((12, 64, 96), "float32"), C, "v")
    ref = weakref.ref(io)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del io
        _collect(ref)
    assert not [w for w in caught if "garbage-collected" in str(w.message)], [str(w.message) for w in caught]


def test_background_error_of_a_collected_backend_is_reported_not_dropped(tmp_path, native_threads):
    gc.collect()
    before = native_threads()
    path = tmp_path / "e.zarr"
    io = ZarrBackend(str(path), chunks={"step": 1}, blocking=False, threads=2)
    io.add_array(C, ["v", "bad"])
    (path / "bad" / "c").write_bytes(b"a file where the chunk directory goes")
    io.write([np.ones((12, 64, 96), "float32")] * 2, C, ["v", "bad"])
    ref = weakref.ref(io)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        del io
        _collect(ref)
    messages = [str(w.message) for w in caught if issubclass(w.category, RuntimeWarning)]
    assert any("background write had failed" in m and "bad/c" in m for m in messages), messages
    assert native_threads(settle_to=before) == before
    np.testing.assert_array_equal(zarr.open_array(str(path / "v"))[...], 1)  # the good array landed


@pytest.mark.parametrize("blocking", [True, False])
def test_unclosed_s3_backend_releases_threads_store_and_client(s3_bucket, native_threads, blocking):
    """Earth2Studio never closes ZarrBackend: on an object store that must not pin an upload thread for ever."""
    endpoint, bucket = s3_bucket
    gc.collect()
    before, pool_before = _uploads(), native_threads()
    io = ZarrBackend(f"s3://{bucket}/g.zarr", store_kwargs=S.store_kwargs(endpoint), chunks={"step": 1},
                     zarr_codecs=BLOSC, blocking=blocking, threads=2)
    io.add_array(C, "v")
    _write_steps(io, 6, chunks_per_step_partial=True)  # partial chunks: encoders call back into Python
    assert _uploads() == before + 1
    ref, uploader = weakref.ref(io), weakref.ref(io.pipeline.uploader)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the non-blocking one warns (tested above)
        del io
        _collect(ref)
    assert uploader() is None, "the uploader (thread, store, client) outlived its backend"
    assert _uploads() == before
    assert native_threads(settle_to=pool_before) == pool_before
    got = zarr.open_group(f"s3://{bucket}/g.zarr", mode="r", storage_options=S._s3fs_kwargs(endpoint, True))
    np.testing.assert_array_equal(got["v"][:6, 0, 0], np.arange(6))


def test_nonblocking_netcdf_backend_is_kept_until_exit_and_closed_then(tmp_path):
    """Its chunks reach HDF5 through the backend itself: it must not be collected before they did."""
    script = textwrap.dedent(f"""
        import gc, numpy as np
        from collections import OrderedDict
        from e2fastio import NetCDF4Backend
        c = OrderedDict(step=np.arange(6), lat=np.arange(32), lon=np.arange(48))
        io = NetCDF4Backend({str(tmp_path / 'n.nc')!r}, backend_kwargs={{"mode": "w"}}, blocking=False,
                            compression="zlib")
        io.add_array(c, "v")
        for k in range(6):
            io.write(np.full((1, 32, 48), float(k), "float32"), OrderedDict(c, step=c["step"][k:k+1]), "v")
        del io
        gc.collect()  # not collected: kept for the exit close
    """)
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "was not closed" in r.stderr and "Traceback" not in r.stderr
    import netCDF4

    with netCDF4.Dataset(tmp_path / "n.nc") as ds:
        np.testing.assert_array_equal(ds["v"][:, 0, 0], np.arange(6))


def test_lifecycle_is_shared(tmp_path):
    from e2fastio._write.lifecycle import Lifecycle

    assert issubclass(ZarrBackend, Lifecycle) and issubclass(NetCDF4Backend, Lifecycle)
    import e2fastio.backends.netcdf as nb

    assert "e2fastio.backends.zarr" not in {getattr(v, "__module__", "") for v in vars(nb).values()}


@pytest.mark.parametrize("kind", ["zarr-blocking", "zarr-nonblocking", "netcdf-blocking", "netcdf-nonblocking"])
def test_writes_from_several_threads_all_land(tmp_path, kind):
    """Documented: calls from several threads on one backend are taken one at a time, and all land."""
    if kind.startswith("zarr"):
        io = ZarrBackend(str(tmp_path / "t.zarr"), chunks={"step": 1}, zarr_codecs=BLOSC,
                         blocking=kind.endswith("-blocking"), threads=2)
    else:
        io = NetCDF4Backend(str(tmp_path / "t.nc"), backend_kwargs={"mode": "w"}, compression="zlib",
                            blocking=kind.endswith("-blocking"))
    io.add_array(C, "v")
    errors: list[BaseException] = []

    def run(first: int) -> None:
        try:
            for k in range(first, 12, 3):
                io.write(np.full((1, 64, 96), float(k), "float32"), OrderedDict(C, step=C["step"][k : k + 1]), "v")
                if k % 2 and kind.startswith("zarr"):  # metadata changes interleaved with the writes
                    io.add_array(C, f"extra{k}")
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    io.close()
    assert not errors, errors
    if kind.startswith("zarr"):
        got = zarr.open_array(str(tmp_path / "t.zarr" / "v"))[...]
    else:
        import netCDF4

        with netCDF4.Dataset(tmp_path / "t.nc") as ds:
            got = ds["v"][...]
    np.testing.assert_array_equal(np.asarray(got)[:, 0, 0], np.arange(12))


def test_a_nonblocking_write_reports_earlier_failures_only_after_staging_its_own():
    """The error recorded before a write is taken first and raised once the write is staged; what fails
    after that (a chunk of this very write) stays recorded for the next call. An error of the staging
    itself wins, with the earlier one noted on it."""
    from e2fastio.errors import BackgroundWriteError

    io = ZarrBackend(None, blocking=False)
    recorded = [OSError("chunk 'v/c/0' failed")]

    def check() -> None:  # as Engine.check: rethrows the recorded error once
        if recorded:
            raise recorded.pop(0)

    staged = []
    with pytest.raises(BackgroundWriteError, match="v/c/0") as caught:
        with io._staging(check):
            staged.append(True)
            recorded.append(OSError("chunk 'v/c/1' failed"))  # this write's own chunk, failing meanwhile
    assert staged and isinstance(caught.value.__cause__, OSError)
    assert [str(e) for e in recorded] == ["chunk 'v/c/1' failed"]  # left for the next call

    with pytest.raises(ValueError, match="refused") as caught:
        with io._staging(check):
            raise ValueError("refused")
    assert any("v/c/1" in note for note in caught.value.__notes__)
    io.close()
