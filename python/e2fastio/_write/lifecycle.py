"""One lifecycle for every file and object-store backend.

ZarrBackend, AsyncZarrBackend (through its ZarrBackend) and NetCDF4Backend
share what "open" and "closed" mean, what happens to a backend that is never
closed, and how an error of a background thread reaches the user:

* open -> closed, once: ``close()`` is idempotent; a closed backend refuses
  further use with :class:`~e2fastio.errors.BackendClosedError` (an
  ``AsyncZarrBackend`` suspends instead, as Earth2Studio's does).
* ``with backend:`` closes on leaving; the caller's exception wins over ours.
* Earth2Studio's workflows never call ``close()``. A backend still open at
  interpreter exit is closed then (a non-blocking one with a ``RuntimeWarning``
  saying how many chunks were still pending).
* A backend that becomes garbage without ``close()`` does not take its
  pipeline down with the GIL held: a finalizer, which owns the native engine
  and the upload thread (never the backend), stores what is pending with the
  GIL released, reports a background error as a ``RuntimeWarning`` (nobody is
  left to raise it to), and stops the threads. A backend whose pending work
  cannot be finished without the backend itself (NetCDF: HDF5 is written
  from the caller's thread) is kept alive by the exit registry until closed.
* Background errors surface at the next ``write``, ``flush`` or ``close`` as
  :class:`~e2fastio.errors.BackgroundWriteError`, after every other chunk was
  stored.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import contextlib
import functools
import logging
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, TypeVar, cast

import zarr.core.sync  # noqa: F401 - registers zarr-python's atexit handler before ours (below)

from e2fastio.errors import BackendClosedError, BackgroundWriteError, background_error, surface_background_error

logger = logging.getLogger(__name__)

_lock = threading.Lock()
_exit_weak: weakref.WeakSet[Lifecycle] = weakref.WeakSet()  # closed at exit if still alive and open
_exit_strong: set[Lifecycle] = set()  # kept alive until closed: only the backend can finish their work
_reapers: set[threading.Thread] = set()
_exit_watch: weakref.WeakSet[Lifecycle] = weakref.WeakSet()  # asked, after the exit close, what was left undone

_L = TypeVar("_L", bound="Lifecycle")
_Method = TypeVar("_Method", bound=Callable[..., Any])


def _close_at_exit() -> None:
    with _lock:
        backends = list(_exit_strong) + [b for b in _exit_weak if b not in _exit_strong]
    if any(not b.closed for b in backends):
        _zarr_io_on_its_loop()
    for b in backends:
        if b.closed:
            continue
        pending = b._pending() if b._warn_at_exit and not b._idle() else 0
        if pending:  # nothing left to store: nothing to warn about (Earth2Studio's workflows never close)
            warnings.warn(
                f"e2fastio: a non-blocking {b._kind} for {b._where} was not closed; storing its "
                f"{pending} pending chunk(s) at exit. Call close() (or use `with`) to control when.",
                RuntimeWarning,
                stacklevel=1,
            )
        try:
            b.close()
        except Exception as err:  # noqa: BLE001 - exit: report, never raise
            logger.error("e2fastio: closing %s at exit failed: %s", b._where, err)
    with _lock:
        watched = list(_exit_watch)
    for b in watched:
        try:
            b._after_exit_close()
        except Exception:  # noqa: BLE001 - libraries may already be finalising
            pass
    for t in list(_reapers):
        t.join()


def _zarr_io_on_its_loop() -> None:
    """Let zarr-python do file I/O at exit, for the closes that need it.

    Once the interpreter begins to exit, Python's thread pools refuse work (their
    workers quit before atexit handlers run), and zarr-python's local store does
    each read and write on its event loop's default pool: consolidated metadata,
    coordinate and fallback writes of a close at exit would fail. From here on
    that pool runs each call on the loop's own thread instead.
    """
    try:
        from zarr.core import sync as zsync

        loop = zsync.loop[0]
    except Exception:  # noqa: BLE001 - another zarr-python layout: nothing to adjust
        return
    if loop is None or loop.is_closed():
        return

    class _OnTheLoop(concurrent.futures.ThreadPoolExecutor):  # the loop accepts only this type
        def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> concurrent.futures.Future[Any]:
            done: concurrent.futures.Future[Any] = concurrent.futures.Future()
            try:
                done.set_result(fn(*args, **kwargs))
            except BaseException as err:  # noqa: BLE001 - handed to the awaiting coroutine
                done.set_exception(err)
            return done

    loop.set_default_executor(_OnTheLoop(max_workers=1))


# atexit runs its handlers last-registered first. zarr-python stops its event
# loop in an atexit handler of its own, registered when zarr.core.sync is first
# imported (above): ours comes after it, so it runs first.
atexit.register(_close_at_exit)


def _reap(kind: str, where: str, engine: Any, uploader: Any, unflushed: list[bool], timeout: float,
          release: Any = None) -> None:
    """Finish and stop the pipeline of a backend that was collected without close().

    `unflushed[0]`: non-blocking writes were made since the last flush (or
    commit): the user never learnt whether they landed, so we say so.
    """
    if isinstance(threading.current_thread(), threading._DummyThread):
        # Collected on one of our native threads (inside a callback): never wait for the pool from
        # the pool. A Python thread does it, and exit waits for that thread.
        t = threading.Thread(target=_reap, args=(kind, where, engine, uploader, unflushed, timeout, release),
                             name="e2fastio-reap")
        with _lock:
            _reapers.add(t)
        t.start()
        return
    try:
        # Pool threads waiting for the backend itself give up (their chunks fail); chunks that
        # already waited there for the backend are dropped, and said so below.
        dropped = release() if release is not None else 0
        if engine.started:
            e = engine.get()
            pending = int(e.pending_chunks) if e.has_ring else 0
            if unflushed[0]:
                warnings.warn(
                    f"e2fastio: a non-blocking {kind} for {where} was garbage-collected without close() after "
                    f"writes that were never flushed; storing its {pending} pending chunk(s) now. Call close() "
                    "(or use `with`).",
                    RuntimeWarning,
                    stacklevel=2,
                )
            try:
                if not e.wait_idle(timeout):  # the GIL is released while waiting
                    raise TimeoutError(f"{e.pending_chunks} chunk(s) still pending after {timeout:g} s")
                if uploader is not None and not uploader.wait(timeout):
                    raise TimeoutError(f"uploads still pending after {timeout:g} s")
                e.check()
                if uploader is not None:
                    uploader.raise_failures()
                if dropped:
                    raise RuntimeError(f"{dropped} encoded chunk(s) had not reached {where} and were dropped")
            except Exception as err:  # noqa: BLE001 - nobody is left to raise it to
                warnings.warn(
                    f"e2fastio: a {kind} for {where} was garbage-collected without close() and a background "
                    f"write had failed: {err}",
                    RuntimeWarning,
                    stacklevel=2,
                )
    finally:
        try:
            if uploader is not None:
                uploader.close()
        finally:
            engine.close()  # shuts the pool down with the GIL released
        with _lock:
            _reapers.discard(threading.current_thread())


class Outcomes:
    """What a backend's user has and has not yet been told about its writes.

    One per backend, shared by its write pipeline (which records and raises)
    and its lifecycle (whose finalizer reads :attr:`unflushed`).
    `failed_so_far` counts the chunks that failed so far (engine and uploads).
    """

    def __init__(self, failed_so_far: Callable[[], int]) -> None:
        self.unflushed = [False]  # a list: shared with the finalizer, which must not hold the backend
        self._failed_so_far = failed_so_far

    def written(self) -> None:
        """A non-blocking write was staged: until the next flush its fate is unknown to the user."""
        self.unflushed[0] = True

    def flushed(self) -> None:
        self.unflushed[0] = False

    def raise_background(self, fn: Callable[[], Any]) -> None:
        """Run an engine/uploader call that may rethrow a background error; wrap it."""
        surface_background_error(fn, self._failed_so_far)

    @contextlib.contextmanager
    def staging(self, *checks: Callable[[], Any]) -> Iterator[None]:
        """Around a non-blocking write's staging: the first background error the engine/uploader
        `checks` rethrow is taken before the body stages and raised (wrapped) once it has.

        A chunk of this very write that fails meanwhile is then the next call's to report, never
        blamed on "an earlier write" by the call that queued it. An error of the body wins, with
        the earlier one noted on it, so that neither is lost.
        """
        earlier: BackgroundWriteError | None = None
        for check in checks:
            earlier = background_error(check, self._failed_so_far)
            if earlier is not None:
                break
        try:
            yield
        except BaseException as exc:
            if earlier is not None:
                exc.add_note(f"also, before this write: {earlier}")
            raise
        if earlier is not None:
            raise earlier


def serialized(method: _Method) -> _Method:
    """Calls of a backend's public methods from several threads are taken one at a time.

    Writes from two threads both land (each one's chunks still encode in
    parallel); none interleaves its metadata updates with another's.
    """

    @functools.wraps(method)
    def call(self: Lifecycle, *args: Any, **kwargs: Any) -> Any:
        with self._calls():
            return method(self, *args, **kwargs)

    return cast(_Method, call)  # the same signature as `method`


class Lifecycle:
    """The open/closed state and the exit and collection handling of a backend (a mixin).

    Subclasses call :meth:`_start_lifecycle` once their pipeline exists,
    :meth:`_end_lifecycle` first thing in their close, and implement
    ``close()`` (and may override :meth:`_close_with` for ``with``).
    """

    _closed: bool = False
    _warn_at_exit: bool = False
    _where: str = "?"
    _pipeline: Any  # the backend's write pipeline (ZarrPipeline, NetCDFPipeline): has a flush_timeout

    if TYPE_CHECKING:

        def close(self) -> None:
            """Implemented by each backend."""

    def _start_lifecycle(self, *, where: str, engine: Any, uploader: Any = None, nonblocking: bool,
                         outcomes: Outcomes, keep_alive: bool = False, timeout: float = 600.0,
                         release: Any = None) -> None:
        """Register for the exit close and for collection without close().

        `keep_alive`: the backend itself is needed to finish its work (held
        strongly until closed); otherwise a finalizer owning `engine` and
        `uploader` finishes it if the backend is collected while open.
        `release`: called first by that finalizer, so that pool threads waiting
        for the backend itself (NetCDF encoders waiting for the caller's thread
        to take chunks to HDF5) give up instead of holding the pool forever.
        `outcomes`: the write pipeline's (what the user has been told about its writes).
        """
        self._closed = False
        self._where = where
        self._kind = type(self).__name__  # as the user knows it (AsyncZarrBackend names its ZarrBackend so)
        self._warn_at_exit = nonblocking
        self._lifecycle_engine = engine
        self._outcomes = outcomes
        with _lock:
            (_exit_strong.add if keep_alive else _exit_weak.add)(self)
        self._finalizer = weakref.finalize(self, _reap, type(self).__name__, where, engine, uploader,
                                           self._outcomes.unflushed, timeout, release)
        self._finalizer.atexit = False  # at exit the backend is closed by _close_at_exit while still alive

    def _watch_at_exit(self) -> None:
        """Have :meth:`_after_exit_close` called at exit, closed or not (while the backend is alive)."""
        with _lock:
            _exit_watch.add(self)

    def _after_exit_close(self) -> None:
        """At exit, after every open backend was closed: report what closing cannot finish."""

    def _mark_written(self) -> None:
        self._outcomes.written()

    def _mark_flushed(self) -> None:
        self._outcomes.flushed()

    def _end_exit_registration(self) -> None:
        """Not closed at exit (the finalizer still finishes it if collected while open)."""
        with _lock:
            _exit_weak.discard(self)
            _exit_strong.discard(self)

    def _end_lifecycle(self) -> bool:
        """Mark closed and unregister; False if it was closed already."""
        if self._closed:
            return False
        self._closed = True
        fin = getattr(self, "_finalizer", None)
        if fin is not None:
            fin.detach()
        with _lock:
            _exit_weak.discard(self)
            _exit_strong.discard(self)
        return True

    def _calls(self) -> threading.RLock:
        lock: threading.RLock | None = self.__dict__.get("_call_lock")
        if lock is None:
            with _lock:
                lock = self.__dict__.setdefault("_call_lock", threading.RLock())
        return lock

    # -- state
    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def flush_timeout(self) -> float:
        """Seconds ``flush``/``close`` wait for pending chunks (default 600)."""
        return float(self._pipeline.flush_timeout)

    @flush_timeout.setter
    def flush_timeout(self, seconds: float) -> None:
        self._pipeline.flush_timeout = float(seconds)

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise BackendClosedError(f"cannot {what}: this {type(self).__name__} was closed; create a new one")

    def _idle(self) -> bool:
        return not self._lifecycle_engine.started

    def _pending(self) -> int:
        return int(self._lifecycle_engine.stats().get("pending_chunks", 0))

    # -- background errors
    def _background(self, fn: Any) -> None:
        self._outcomes.raise_background(fn)

    def _staging(self, *checks: Any) -> contextlib.AbstractContextManager[None]:
        return self._outcomes.staging(*checks)

    # -- context manager
    def __enter__(self: _L) -> _L:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._close_with(exc if isinstance(exc, Exception) else None)

    def _close_with(self, caller_error: Exception | None) -> None:
        """Close on leaving ``with``; when the block raised, its error wins and ours is logged."""
        if caller_error is None:
            self.close()
            return
        try:
            self.close()
        except Exception as err:  # noqa: BLE001
            logger.error("%s: closing after an error failed too: %s", type(self).__name__, err)
