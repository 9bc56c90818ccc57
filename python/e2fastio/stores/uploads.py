"""Uploads of encoded chunks to object stores: the Uploader, its options, retries and redaction.

The encoder threads queue encoded chunks in an ``UploadSink`` (bounded by
``RemoteOptions.queue_bytes``, so memory stays bounded); one :class:`Uploader`
per backend sends them with bounded concurrency from zarr-python's own event
loop thread, the loop every zarr store is bound to. A failed attempt is
retried when another attempt can fix it (:func:`_permanent` decides), with
exponential backoff and jitter; a chunk that still fails is reported as
``UploadError`` with its key and reason, never credentials (:class:`Redactor`).
Which retry layer runs for which kind of store is described in
:mod:`e2fastio.stores.remote`.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import random
import re
import sys
import threading
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import zarr
import zarr.storage
from zarr.abc.store import Store
from zarr.core.buffer import cpu, default_buffer_prototype

from e2fastio.errors import UploadError

logger = logging.getLogger(__name__)


DEFAULT_UPLOAD_QUEUE_BYTES = 256 << 20


MULTIPART_THRESHOLD = 256 << 20  # bytes; larger objects go up in parts


@dataclass(frozen=True)
class RemoteOptions:
    """How chunks reach an object store.

    concurrency : uploads in flight at once.
    retries : further attempts of a failed upload (429/5xx, timeouts, resets),
        with exponential backoff (``backoff`` seconds doubling up to
        ``max_backoff``, with jitter). Permanent errors are not retried. For
        stores built from a URL this is the only retry of a chunk upload;
        metadata requests are retried as often by the client itself.
    timeout : seconds one attempt may take.
    queue_bytes : encoded bytes queued or uploading at most (backpressure).
    """

    concurrency: int = 16
    retries: int = 6
    timeout: float = 60.0
    backoff: float = 0.1
    max_backoff: float = 5.0
    queue_bytes: int = DEFAULT_UPLOAD_QUEUE_BYTES

    def __post_init__(self) -> None:
        if not isinstance(self.concurrency, int) or isinstance(self.concurrency, bool) or self.concurrency < 1:
            raise ValueError(f"upload concurrency must be a positive int, got {self.concurrency!r}")
        if not isinstance(self.retries, int) or isinstance(self.retries, bool) or self.retries < 0:
            raise ValueError(f"upload retries must be an int >= 0, got {self.retries!r}")
        if not isinstance(self.timeout, (int, float)) or not self.timeout > 0:
            raise ValueError(f"upload timeout must be a positive number of seconds, got {self.timeout!r}")
        if not isinstance(self.queue_bytes, int) or self.queue_bytes <= 0:
            raise ValueError(f"upload queue_bytes must be a positive int, got {self.queue_bytes!r}")


_SECRET_PATTERNS = [
    re.compile(r"(?i)(X-Amz-(?:Signature|Credential|Security-Token)=)[^&\s'\"]+"),
    re.compile(r"(?i)(authorization:\s*)[^\r\n'\"]+"),
    re.compile(r"(?i)(Signature=)[0-9a-f]+"),
    re.compile(r"(//)[^/@\s:]+:[^/@\s]+@"),  # user:password@ in URLs
]


class Redactor:
    """Removes known secret values (and signature-like patterns) from messages."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        self.secrets = sorted({s for s in secrets if isinstance(s, str) and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for s in self.secrets:
            text = text.replace(s, "***")
        for p in _SECRET_PATTERNS:
            text = p.sub(lambda m: m.group(1) + "***" + ("@" if m.group(0).endswith("@") else ""), text)
        return text


# Errors raised by Python code (zarr stores, fsspec, s3fs's translation of S3
# error codes) that another attempt cannot fix.
_PERMANENT_BUILTINS: tuple[type[BaseException], ...] = (
    PermissionError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
    ValueError, TypeError, NotImplementedError,
)


# obstore's exception classes (obstore.exceptions) for errors that do not go
# away: denied, not authenticated, missing (obstore < 0.5; later versions raise
# FileNotFoundError), bad path, unsupported, bad configuration, and failed
# conditions. GenericError (5xx, 429, timeouts, connection errors, but also
# other 4xx) and JoinError are decided by their HTTP status, if any.
_OBSTORE_PERMANENT = ("PermissionDeniedError", "UnauthenticatedError", "NotFoundError", "InvalidPathError",
                      "NotSupportedError", "UnknownConfigurationKeyError", "AlreadyExistsError",
                      "PreconditionError", "NotModifiedError")


# S3 error codes that come with a 4xx status but say "try again".
_TRANSIENT_CODES = frozenset({
    "RequestTimeout", "RequestTimeoutException", "PriorRequestNotComplete", "SlowDown", "Throttling",
    "ThrottlingException", "ThrottledException", "RequestThrottled", "RequestThrottledException",
    "TooManyRequestsException", "RequestLimitExceeded", "BandwidthLimitExceeded", "OperationAborted",
})


# obstore's GenericError carries the HTTP status only in its text, in object_store's
# words ("Server returned non-2xx status code: 400 Bad Request: <body>").
_OBSTORE_STATUS = re.compile(r"status code: (\d{3})\b")


_S3_CODE = re.compile(r"<Code>([A-Za-z]+)</Code>")


def _http_permanent(status: int | None, code: str | None) -> bool | None:
    """None when the status says nothing; else whether an HTTP error is permanent.

    4xx are permanent except 408 (request timeout), 429 (too many requests)
    and S3's "try again" codes; 5xx are transient.
    """
    if status is None:
        return None
    if code in _TRANSIENT_CODES or status in (408, 429):
        return False
    return 400 <= status < 500


def _client_error_status(err: BaseException) -> tuple[int | None, str | None] | None:
    """(HTTP status, error code) of a botocore/aiobotocore ``ClientError``, else None."""
    exceptions = sys.modules.get("botocore.exceptions")  # not imported: no ClientError can exist
    if exceptions is None or not isinstance(err, exceptions.ClientError):
        return None
    response = getattr(err, "response", None) or {}
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    code = response.get("Error", {}).get("Code")
    return (int(status) if isinstance(status, int) else None), (str(code) if code else None)


def _obstore_permanent(err: BaseException) -> bool | None:
    """Whether an obstore exception is permanent; None if `err` is not one."""
    exceptions = sys.modules.get("obstore.exceptions")
    base = getattr(exceptions, "BaseError", None)
    if base is None or not isinstance(err, base):
        return None
    if isinstance(err, tuple(getattr(exceptions, n) for n in _OBSTORE_PERMANENT if hasattr(exceptions, n))):
        return True
    text = str(err)
    m = _OBSTORE_STATUS.search(text)
    code = _S3_CODE.search(text)
    return bool(_http_permanent(int(m.group(1)) if m else None, code.group(1) if code else None))


def _permanent(err: BaseException) -> bool:
    """Whether another attempt cannot fix `err` (credentials, missing bucket, bad request, bad arguments).

    Decided by type: timeouts and connection errors are transient; a
    botocore ``ClientError`` anywhere in the chain (s3fs raises builtin
    ``OSError`` subclasses caused by one) by its HTTP status and S3 code (4xx
    permanent except 408, 429 and throttling codes; 5xx transient); obstore's
    exceptions by class (``PermissionDeniedError``, ``UnauthenticatedError``,
    ``InvalidPathError``, ...; ``GenericError`` by the HTTP status it reports);
    then builtin ``PermissionError``, ``FileNotFoundError``, ``ValueError``,
    ``TypeError`` and the like are permanent. Anything else is retried.
    """
    if isinstance(err, (TimeoutError, asyncio.TimeoutError, ConnectionError)):
        return False
    seen: set[int] = set()
    link: BaseException | None = err
    while link is not None and id(link) not in seen:  # the error itself, then what caused it
        seen.add(id(link))
        http = _client_error_status(link)
        if http is not None:
            decided = _http_permanent(*http)
            if decided is not None:
                return decided
        decided = _obstore_permanent(link)
        if decided is not None:
            return decided
        link = link.__cause__ or link.__context__
    return isinstance(err, _PERMANENT_BUILTINS)


_live_uploaders: weakref.WeakSet[Uploader] = weakref.WeakSet()


# Process that sent chunks to a store implemented in Rust on tokio (icechunk); see below.
_tokio_store_pid: int | None = None


TOKIO_SETTLE_SECONDS = 0.2


def _is_tokio_store(store: Any) -> bool:
    return type(store).__module__.split(".")[0] == "icechunk"


@atexit.register
def _stop_uploaders_at_exit() -> None:
    # Registered before the backends' exit drain (so it runs after it): by now
    # every backend that had pending chunks has stored them. A feeder thread
    # must not be inside the core when the interpreter finalises.
    for u in list(_live_uploaders):
        if u.pid != os.getpid():
            continue  # a forked child: the parent's threads and locks are not ours
        try:
            u.close()
        except Exception:  # noqa: BLE001 - exit: nothing to raise to
            pass
    if _tokio_store_pid == os.getpid():
        # icechunk's Python binding (pyo3-async-runtimes on tokio) releases the
        # Python objects of a finished call on its own threads, slightly after
        # the call returned. If the interpreter is finalising by then, that
        # thread crashes the process (SIGSEGV in context_tp_dealloc; seen in
        # about 2% of short processes here; PyO3/pyo3-async-runtimes#40). Let
        # those threads finish while Python is still whole.
        import time

        time.sleep(TOKIO_SETTLE_SECONDS)


class Uploader:
    """Sends the encoded chunks queued in an ``UploadSink`` to a zarr store.

    One feeder thread (``e2fastio-upload``) takes chunks from the sink (GIL
    released while it waits) and starts one coroutine per chunk on
    zarr-python's event loop, at most ``options.concurrency`` at once. Each
    attempt is bounded by ``options.timeout``; transient failures are retried
    (``options.retries`` times) with exponential backoff and jitter, permanent
    ones not at all, and a chunk that still fails is recorded in the sink (key
    and reason, credentials redacted) for the backend to raise.

    `chunk_client`: the obstore store chunks are PUT through (for stores built
    from a URL, one whose own retries are off); by default the obstore store
    inside a ``zarr.storage.ObjectStore``, or ``store.set`` for other stores.
    ``retries_done`` counts this loop's retries only, never a client's own.
    """

    def __init__(self, store: Store, sink: Any, options: RemoteOptions, redact: Redactor, description: str,
                 chunk_client: Any = None) -> None:
        from zarr.core.sync import _get_loop

        self.store = store
        if chunk_client is None and isinstance(store, zarr.storage.ObjectStore):
            chunk_client = store.store
        self.chunk_client = chunk_client
        self.sink = sink
        self.options = options
        self.redact = redact
        self.description = description
        self.retries_done = 0
        self._loop = _get_loop()
        self._slots = threading.Semaphore(options.concurrency)
        self._closed = False
        self._stopping = False
        self.pid = os.getpid()
        self._thread: threading.Thread | None = None
        self._thread_lock = threading.Lock()
        # The native sink holds this callback where the collector cannot see it: held
        # strongly, it would keep the uploader (its thread, store and client) alive for
        # ever once the backend is gone. It holds a weak reference instead.
        sink.set_fetch(_weak_fetch(weakref.ref(self)))
        _live_uploaders.add(self)
        if _is_tokio_store(store):
            global _tokio_store_pid
            _tokio_store_pid = os.getpid()

    def start(self) -> None:
        with self._thread_lock:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(target=self._feed, name="e2fastio-upload", daemon=True)
                self._thread.start()

    # -- feeder thread
    def _feed(self) -> None:
        while True:
            self._slots.acquire()
            item = self.sink.next(0.2)
            if item is None:
                self._slots.release()
                if self._closed or self._stopping:
                    return
                continue
            try:
                asyncio.run_coroutine_threadsafe(self._upload(*item), self._loop)
            except RuntimeError as err:  # the loop is gone (interpreter exit)
                self.sink.done(item[0], f"upload not started: {err}")
                self._slots.release()

    # -- zarr's event loop
    async def _upload(self, ident: int, key: str, data: np.ndarray) -> None:
        error = ""
        try:
            error = await self._put_with_retries(key, data)
        except BaseException as err:  # noqa: BLE001 - recorded, raised by the backend
            error = self.redact(f"{type(err).__name__}: {err}")
        finally:
            try:
                self.sink.done(ident, error)
            finally:
                self._slots.release()

    def _put(self, key: str, data: np.ndarray) -> Any:
        """One upload attempt (a coroutine)."""
        if self.chunk_client is not None:
            import obstore

            # One PUT per chunk: obstore would split objects over 5 MiB into a
            # multipart upload (4+ requests); chunks are far below S3's 5 GB limit.
            return obstore.put_async(self.chunk_client, key, data.data,
                                     use_multipart=data.nbytes > MULTIPART_THRESHOLD)
        return self.store.set(key, cpu.Buffer.from_array_like(data))

    async def _put_with_retries(self, key: str, data: np.ndarray) -> str:
        o = self.options
        for attempt in range(o.retries + 1):
            try:
                await asyncio.wait_for(self._put(key, data), timeout=o.timeout)
                return ""
            except asyncio.CancelledError:
                raise
            except BaseException as err:  # noqa: BLE001
                if isinstance(err, asyncio.TimeoutError):
                    reason = f"no answer within {o.timeout:g} s"
                else:
                    reason = f"{type(err).__name__}: {err}"
                permanent = _permanent(err)
                if permanent or attempt == o.retries:
                    tries = "(not retried: permanent error)" if permanent else f"after {attempt + 1} attempt(s)"
                    return self.redact(f"upload to {self.description} failed {tries}: {reason}")
                self.retries_done += 1
                delay = min(o.max_backoff, o.backoff * (2**attempt))
                logger.debug("retrying %s in %.2f s: %s", key, delay, self.redact(reason))
                await asyncio.sleep(delay * (0.5 + random.random() / 2))
        return "unreachable"  # pragma: no cover

    # -- encoder threads (partial-chunk merges), with the GIL
    def _fetch(self, key: str) -> Any:
        from zarr.core.sync import sync

        value = sync(self.store.get(key, prototype=default_buffer_prototype()))
        return None if value is None else value.as_numpy_array()

    # -- backend
    def check_process(self, what: str) -> None:
        """Refuse use from a forked child: the upload thread lives in the parent."""
        if self.pid != os.getpid():
            raise RuntimeError(
                f"cannot {what}: this backend uploads to {self.description} through a thread of process "
                f"{self.pid}, and this is a forked child ({os.getpid()}); create a new backend in the child"
            )

    def wait(self, timeout: float) -> bool:
        """Wait until every queued chunk was uploaded or failed."""
        return bool(self.sink.wait_idle(timeout))

    def retarget(self, store: Store) -> None:
        """Send later chunks to `store` (an Icechunk backend's new session after a commit).

        Only while idle (after :meth:`wait`): a chunk queued for the old store
        must never land in the new one.
        """
        st = self.sink.stats()
        if st["queued_objects"] or st["in_flight"]:
            raise RuntimeError(
                f"cannot switch {self.description} to a new store while {st['queued_objects'] + st['in_flight']} "
                "chunk(s) are queued or uploading; wait for them first"
            )
        self.store = store
        self.chunk_client = store.store if isinstance(store, zarr.storage.ObjectStore) else None

    def raise_failures(self) -> None:
        """Raise UploadError for chunks whose upload failed since the last call."""
        failures = self.sink.take_errors()
        if failures:
            raise UploadError(failures)

    def stop(self) -> None:
        """Stop the feeder thread while idle (call wait() first); the next start() runs a new one."""
        with self._thread_lock:
            t, self._stopping = self._thread, True
        self.sink.wake()  # its wait for work ends now, not at its poll timeout (which cost every close)
        try:
            if t is not None and t is not threading.current_thread():
                t.join()
        finally:
            with self._thread_lock:
                self._thread, self._stopping = None, False

    @property
    def running(self) -> bool:
        return self._thread is not None

    def close(self) -> None:
        """Stop the feeder thread after the queue is empty (call wait() first to upload everything)."""
        self._closed = True
        self.sink.close()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join()
        self.sink.set_fetch(None)

    def stats(self) -> dict[str, Any]:
        return {**self.sink.stats(), "retries": self.retries_done, "concurrency": self.options.concurrency}


def _weak_fetch(ref: weakref.ref[Uploader]) -> Any:
    def fetch(key: str) -> Any:
        uploader = ref()
        if uploader is None:
            raise RuntimeError(f"reading chunk {key!r} for a partial write: its backend is gone")
        return uploader._fetch(key)

    return fetch
