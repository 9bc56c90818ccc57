"""A real S3-compatible server on loopback, and a fault-injecting proxy, for tests and benchmarks.

Nothing here imports pytest; the optional dependencies (moto[server], boto3,
s3fs, obstore) are imported only by the helpers that need them.

    with MotoServer() as server:                      # moto in its own process
        create_bucket(server.endpoint, "bkt")
        store = obstore_store(server.endpoint, "bkt")   # obstore.store.S3Store
        fs = s3fs_filesystem(server.endpoint)           # s3fs.S3FileSystem
        obs = obstore.store.from_url("s3://bkt/a.zarr", **store_kwargs(server.endpoint))
        with FaultProxy(server.endpoint, fail_503=0.3, drop=0.1) as proxy:
            flaky = obstore_store(proxy.endpoint, "bkt")

Credentials are dummies, deliberately distinct (``ACCESS_KEY`` != ``SECRET_KEY``)
so that tests can assert the secret never shows up in an error message.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import http.client
import os
import random
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import uuid
import weakref
from collections.abc import Iterable
from typing import Any

ACCESS_KEY = "testing"
SECRET_KEY = "testing-secret"
REGION = "us-east-1"

__all__ = [
    "ACCESS_KEY",
    "SECRET_KEY",
    "REGION",
    "MotoServer",
    "FaultProxy",
    "free_port",
    "boto3_client",
    "create_bucket",
    "delete_bucket",
    "list_keys",
    "s3fs_filesystem",
    "fs_factory",
    "close_s3fs",
    "obstore_store",
    "store_kwargs",
    "unique_bucket_name",
]

_PROXY_ENV = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def unique_bucket_name(prefix: str = "test") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# ----------------------------------------------------------------------------- moto server
def _stop_process(proc: subprocess.Popen, log: Any) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
    with contextlib.suppress(Exception):
        log.close()


# ``python -m moto.server``, except that werkzeug's "Server: Werkzeug/..." header
# is left out: moto adds its own ("server: amazon.com"), and aiohttp's strict
# response parser (used under ``python -X dev`` / PYTHONASYNCIODEBUG=1) rejects
# a response with two Server headers, so s3fs would fail there.
_MOTO_LAUNCHER = """
import os
import sys
import time
from werkzeug.serving import WSGIRequestHandler

def send_response(self, code, message=None):
    self.log_request(code)
    self.send_response_only(code, message)
    self.send_header("Date", self.date_time_string())

WSGIRequestHandler.send_response = send_response

latency = float(os.environ.get("E2F_MOTO_LATENCY_S") or 0)
if latency > 0:  # each request waits in its own thread: time, not CPU
    handle = WSGIRequestHandler.run_wsgi

    def run_wsgi(self):
        time.sleep(latency)
        return handle(self)

    WSGIRequestHandler.run_wsgi = run_wsgi
sys.argv[0] = "moto.server"
from moto.server import main
main()
"""


class MotoServer:
    """moto's S3 server (werkzeug, threaded) in a separate process on 127.0.0.1.

    The child runs ``sys.executable -m moto.server -H 127.0.0.1 -p PORT`` (via a
    ``-c`` launcher that drops werkzeug's duplicate Server header; `command`); it
    shares nothing with this process (no GIL), and its stdout/stderr go to a
    temporary file (a pipe would fill up with request logs and block it), read
    back by `log()` and quoted in the error if it fails to start.

    `latency` (seconds) holds every request that long before moto handles it,
    as a remote endpoint's round trip and time to first byte would (tens of
    milliseconds for S3 within a region); each request waits in its own server
    thread, so waiting costs no CPU and concurrent requests wait side by side.
    """

    def __init__(self, host: str = "127.0.0.1", port: int | None = None, timeout: float = 30.0,
                 latency: float = 0.0) -> None:
        if not latency >= 0:
            raise ValueError(f"latency must be >= 0 seconds, got {latency!r}")
        self.host = host
        self.latency = float(latency)
        self.port = 0
        self._proc: subprocess.Popen | None = None
        self._log: Any = None
        self._final_log = ""
        self._finalizer: weakref.finalize | None = None
        last_error = ""
        for _ in range(1 if port else 3):  # a picked port can be taken before the child binds it
            p = port or free_port(host)
            try:
                self._start(p, timeout)
                return
            except _PortTaken as err:
                last_error = str(err)
        raise RuntimeError(f"moto server could not bind a port on {host}: {last_error}")

    # -- lifecycle
    def _start(self, port: int, timeout: float) -> None:
        env = dict(os.environ)
        for k in _PROXY_ENV:  # the child talks to no one; keep it that way
            env.pop(k, None)
        env.update(
            NO_PROXY="*",
            AWS_EC2_METADATA_DISABLED="true",
            AWS_ACCESS_KEY_ID=ACCESS_KEY,
            AWS_SECRET_ACCESS_KEY=SECRET_KEY,
            AWS_DEFAULT_REGION=REGION,
            PYTHONUNBUFFERED="1",
            PYTHONWARNINGS="ignore",
            E2F_MOTO_LATENCY_S=repr(self.latency),
        )
        env.pop("AWS_PROFILE", None)
        log = tempfile.TemporaryFile(prefix="moto-server-", suffix=".log")
        self.command = [sys.executable, "-c", _MOTO_LAUNCHER, "-H", self.host, "-p", str(port)]
        proc = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
        self._proc, self._log, self.port = proc, log, port
        self._finalizer = weakref.finalize(self, _stop_process, proc, log)
        deadline = time.monotonic() + timeout
        while True:
            rc = proc.poll()
            if rc is not None:
                text = self.log()
                self.stop()
                if "Address already in use" in text:
                    raise _PortTaken(text[-2000:])
                raise RuntimeError(
                    f"moto server exited with code {rc} before answering on {self.endpoint}.\n"
                    f"Is moto[server] installed (flask, flask-cors)?\n--- its output ---\n{text[-4000:]}"
                )
            if self._answers():
                return
            if time.monotonic() > deadline:
                text = self.log()
                self.stop()
                raise RuntimeError(
                    f"moto server did not answer on {self.endpoint} within {timeout:g} s\n"
                    f"--- its output ---\n{text[-4000:]}"
                )
            time.sleep(0.05)

    def _answers(self) -> bool:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=2)
        try:
            conn.request("GET", "/")
            conn.getresponse().read()
            return True
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def stop(self) -> None:
        """Terminate the server (SIGTERM, then SIGKILL after 5 s) and wait for it."""
        if self._finalizer is not None and self._finalizer.alive:
            if self._proc is not None and self._proc.poll() is None:
                self._proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self._proc.wait(timeout=5)
            self._final_log = self.log()
            self._finalizer()  # kills it if SIGTERM was not enough; closes the log

    close = stop

    def __enter__(self) -> MotoServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- info
    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def log(self) -> str:
        """What the server printed so far (werkzeug logs one line per request)."""
        if self._log is None or self._log.closed:
            return self._final_log
        self._log.flush()
        self._log.seek(0)
        return self._log.read().decode("utf-8", "replace")

    def reset(self) -> None:
        """Forget all buckets and objects (moto's ``POST /moto-api/reset``)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=10)
        try:
            conn.request("POST", "/moto-api/reset")
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"moto reset failed: HTTP {resp.status}")
        finally:
            conn.close()

    def __repr__(self) -> str:
        return f"MotoServer({self.endpoint}, pid={self.pid}, running={self.running})"


class _PortTaken(RuntimeError):
    pass


# ----------------------------------------------------------------------------- clients
_BOTO3_LOCK = threading.Lock()
_BOTO3_SESSION: list[Any] = []


def boto3_client(endpoint: str, **config: Any) -> Any:
    """A boto3 S3 client for the endpoint (path-style addressing, dummy credentials).

    `config`: ``botocore.config.Config`` arguments, replacing the defaults given here.
    """
    import boto3
    from botocore.config import Config

    # botocore's retries: "max_attempts" counts retries, "total_max_attempts" counts all tries.
    kw: dict[str, Any] = {"s3": {"addressing_style": "path"}, "retries": {"max_attempts": 3, "mode": "standard"}}
    kw.update(config)
    cfg = Config(**kw)
    with _BOTO3_LOCK:  # a Session is not thread-safe; reusing one makes a client ~10x cheaper
        if not _BOTO3_SESSION:
            _BOTO3_SESSION.append(boto3.session.Session())
        return _BOTO3_SESSION[0].client(
            "s3",
            endpoint_url=endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
            config=cfg,
        )


def create_bucket(endpoint: str, name: str | None = None) -> str:
    """Create a bucket (a fresh unique name if none is given); returns its name."""
    name = name or unique_bucket_name()
    client = boto3_client(endpoint)
    try:
        client.create_bucket(Bucket=name)  # us-east-1: no LocationConstraint
    finally:
        client.close()
    return name


def list_keys(endpoint: str, bucket: str, prefix: str = "") -> dict[str, int]:
    """{key: size} of every object under `prefix`."""
    client = boto3_client(endpoint)
    try:
        out: dict[str, int] = {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for obj in page.get("Contents", []):
                out[obj["Key"]] = obj["Size"]
        return out
    finally:
        client.close()


def delete_bucket(endpoint: str, bucket: str) -> None:
    """Delete every object in the bucket, then the bucket."""
    client = boto3_client(endpoint)
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
        client.delete_bucket(Bucket=bucket)
    finally:
        client.close()


def _s3fs_kwargs(endpoint: str, asynchronous: bool, **kwargs: Any) -> dict[str, Any]:
    kw: dict[str, Any] = dict(
        key=ACCESS_KEY,
        secret=SECRET_KEY,
        endpoint_url=endpoint,
        client_kwargs={"region_name": REGION},
        config_kwargs={"s3": {"addressing_style": "path"}},
        asynchronous=asynchronous,
        # fsspec caches instances by their arguments; an asynchronous one is tied
        # to the event loop it first ran on, so never hand out a shared one.
        skip_instance_cache=True,
    )
    kw.update(kwargs)
    return kw


def s3fs_filesystem(endpoint: str, asynchronous: bool = False, **kwargs: Any) -> Any:
    """An ``s3fs.S3FileSystem`` for the endpoint; paths are ``bucket/key``."""
    import s3fs

    return s3fs.S3FileSystem(**_s3fs_kwargs(endpoint, asynchronous, **kwargs))


def fs_factory(endpoint: str, asynchronous: bool = True, **kwargs: Any) -> functools.partial:
    """``functools.partial(s3fs.S3FileSystem, ...)``: an fsspec filesystem factory (Earth2Studio style)."""
    import s3fs

    return functools.partial(s3fs.S3FileSystem, **_s3fs_kwargs(endpoint, asynchronous, **kwargs))


def close_s3fs(fs: Any) -> None:
    """Close an ``S3FileSystem``'s aiohttp session on the event loop that opened it.

    s3fs only arranges this itself for synchronous instances; an asynchronous
    one used through ``zarr.storage.FsspecStore`` runs on zarr's loop, and left
    open it warns "Unclosed client session" when collected.
    """
    s3 = getattr(fs, "_s3", None)
    if s3 is None:
        return
    fs._s3 = None
    if getattr(fs, "asynchronous", False):
        from zarr.core.sync import sync

        sync(s3.close())
    else:
        from fsspec.asyn import sync as fsspec_sync

        fsspec_sync(fs.loop, s3.close)


def store_kwargs(endpoint: str, **extra: Any) -> dict[str, Any]:
    """What a user passes with a URL: ``obstore.store.from_url("s3://bucket/x.zarr", **store_kwargs(ep))``.

    Keys are obstore ``S3Config`` keys plus ``client_options`` (``allow_http``:
    the endpoint is plain HTTP). Path-style requests, as moto and most
    self-hosted S3 servers on an IP address need.
    """
    kw: dict[str, Any] = {
        "endpoint": endpoint,
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET_KEY,
        "region": REGION,
        "virtual_hosted_style_request": False,
        "client_options": {"allow_http": endpoint.startswith("http://")},
    }
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(kw.get(k), dict):
            kw[k] = {**kw[k], **v}
        else:
            kw[k] = v
    return kw


def obstore_store(
    endpoint: str,
    bucket: str,
    prefix: str | None = None,
    *,
    client_options: dict[str, Any] | None = None,
    retry_config: dict[str, Any] | None = None,
    **config: Any,
) -> Any:
    """An ``obstore.store.S3Store`` for `bucket` (optionally under `prefix`) at the endpoint."""
    from obstore.store import S3Store

    kw = store_kwargs(endpoint, client_options=client_options or {}, **config)
    return S3Store(bucket, prefix=prefix, retry_config=retry_config, **kw)


# ----------------------------------------------------------------------------- fault proxy
_SLOW_DOWN_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message>"
    "<RequestId>{rid}</RequestId><HostId>fault-proxy</HostId></Error>"
)
# Scripted answers (``FaultProxy(script=...)``): status line and S3 error code.
_SCRIPTED_ERRORS = {
    "fail_400": ("400 Bad Request", "InvalidArgument", "fault proxy: scripted bad request"),
    "fail_403": ("403 Forbidden", "AccessDenied", "fault proxy: scripted access denied"),
    "fail_404": ("404 Not Found", "NoSuchBucket", "fault proxy: scripted missing bucket"),
    "fail_429": ("429 Too Many Requests", "TooManyRequests", "fault proxy: scripted throttling"),
    "fail_500": ("500 Internal Server Error", "InternalError", "fault proxy: scripted internal error"),
    "fail_503": ("503 Slow Down", "SlowDown", "Please reduce your request rate."),
}
_SCRIPTED_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Error><Code>{code}</Code><Message>{msg}</Message><RequestId>{rid}</RequestId>"
    "<HostId>fault-proxy</HostId></Error>"
)
_BAD_GATEWAY_BODY = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Error><Code>BadGateway</Code><Message>fault proxy: upstream unreachable: {msg}</Message>"
    "<RequestId>{rid}</RequestId></Error>"
)
_NO_BODY_STATUS = {204, 304}
_COPY = 1 << 16


class _Head:
    """A parsed HTTP/1.x request or response head."""

    __slots__ = ("start", "headers")

    def __init__(self, raw: bytes) -> None:
        lines = raw[:-4].decode("latin-1").split("\r\n")
        self.start = lines[0].split(" ", 2)
        self.headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if not line:
                continue
            if line[0] in " \t" and self.headers:  # obsolete line folding
                n, v = self.headers[-1]
                self.headers[-1] = (n, v + " " + line.strip())
                continue
            name, _, value = line.partition(":")
            self.headers.append((name.strip(), value.strip()))

    def get(self, name: str, default: str = "") -> str:
        name = name.lower()
        vals = [v for n, v in self.headers if n.lower() == name]
        return ", ".join(vals) if vals else default

    def without(self, *names: str) -> list[tuple[str, str]]:
        drop = {n.lower() for n in names}
        return [(n, v) for n, v in self.headers if n.lower() not in drop]

    @property
    def chunked(self) -> bool:
        return "chunked" in self.get("transfer-encoding").lower()

    @property
    def content_length(self) -> int | None:
        v = self.get("content-length")
        return int(v.split(",")[0]) if v else None

    def wants_close(self, version: str) -> bool:
        conn = self.get("connection").lower()
        if "close" in conn:
            return True
        return version == "HTTP/1.0" and "keep-alive" not in conn


def _encode_head(start: str, headers: Iterable[tuple[str, str]]) -> bytes:
    return (start + "\r\n" + "".join(f"{n}: {v}\r\n" for n, v in headers) + "\r\n").encode("latin-1")


async def _read_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter | None = None) -> bytes:
    """Read one chunked body verbatim (framing and trailers included); relay it as it comes if `writer`."""
    out = bytearray()

    def emit(b: bytes) -> None:
        if writer is None:
            out.extend(b)
        else:
            writer.write(b)

    while True:
        line = await reader.readuntil(b"\r\n")
        emit(line)
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while True:  # trailers, up to the empty line
                t = await reader.readuntil(b"\r\n")
                emit(t)
                if t == b"\r\n":
                    return bytes(out)
        left = size + 2  # data + CRLF
        while left:
            b = await reader.readexactly(min(left, _COPY))
            emit(b)
            left -= len(b)
            if writer is not None:
                await writer.drain()


class _UpstreamGone(Exception):
    """The upstream connection failed before any response byte reached the client."""


class FaultProxy:
    """An HTTP/1.1-aware TCP proxy on 127.0.0.1 that injects S3-style faults.

    Each request on a (keep-alive) client connection is parsed (head; body by
    Content-Length or chunked; ``Expect: 100-continue`` answered by the proxy
    itself, which then forwards the request without it) and, if its method is
    in `methods` (None: all), one action is drawn from a seeded RNG:

    * ``fail_503`` fraction: answer ``503 Slow Down`` with an S3 ``SlowDown`` XML error;
    * ``drop`` fraction: close the client connection without answering
      (``drop_mode="reset"`` sends a TCP RST instead of a FIN);
    * ``delay`` fraction: sleep `delay_seconds`, then forward;
    * otherwise forward. Responses are relayed as they come.

    `script` makes faults deterministic instead: a sequence of actions taken,
    in order, by the first requests for each (method, path) in `methods`
    (query strings ignored); later requests for that path are forwarded, and
    the random fractions are not drawn for them. Actions: ``"fail_400"``,
    ``"fail_403"`` (AccessDenied), ``"fail_404"`` (NoSuchBucket), ``"fail_429"``,
    ``"fail_500"``, ``"fail_503"`` (S3-style XML errors), ``"drop"``,
    ``"reset"`` (drop with a TCP RST), ``"delay"`` (`delay_seconds`, then
    forward) and ``"forward"``. ``script=("fail_503",) * 2`` fails every
    object's first two PUTs. `requests_per_path` counts requests by (method, path).

    With `keep_alive` (default) the client connection stays open even when the
    upstream closes its own after each response (werkzeug, so moto, always
    does): clients pool connections as with real S3, and a pooled connection
    can go stale (`drop`, `stop_listening`). The upstream connection is reopened
    as needed. ``keep_alive=False`` relays ``Connection: close`` as is.

    The fractions, `delay_seconds`, `methods` and `drop_mode` are plain
    attributes: change them while it runs. `stats` counts requests, forwarded
    (delayed ones included), fail_503, failed (other scripted errors), dropped, delayed, upstream_errors (502
    sent: upstream unreachable) and expect_100 (100-continue answered);
    `events` lists ``(method, path, action)`` per request.

    A daemon thread runs the asyncio loop. `stop_listening()` closes the listener
    and every open connection (clients then get "connection refused"),
    `resume_listening()` listens on the same port again, `close()` ends it all.
    """

    def __init__(
        self,
        upstream: str,
        *,
        fail_503: float = 0.0,
        drop: float = 0.0,
        delay: float = 0.0,
        delay_seconds: float = 0.5,
        methods: Iterable[str] | None = ("PUT", "POST"),
        seed: int = 0,
        drop_mode: str = "close",
        keep_alive: bool = True,
        script: Iterable[str] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        u = urllib.parse.urlsplit(upstream)
        if u.scheme != "http" or not u.hostname:
            raise ValueError(f"upstream must be an http:// endpoint, got {upstream!r}")
        self.upstream = upstream
        self._up_host = u.hostname
        self._up_port = u.port or 80
        self.fail_503 = fail_503
        self.drop = drop
        self.delay = delay
        self.delay_seconds = delay_seconds
        self.methods: frozenset[str] | None = None
        self.set_methods(methods)
        self.drop_mode = drop_mode
        self.keep_alive = keep_alive
        self.rng = random.Random(seed)
        self.script: tuple[str, ...] | None = None if script is None else tuple(script)
        allowed = {*_SCRIPTED_ERRORS, "drop", "reset", "delay", "forward"}
        bad = [a for a in self.script or () if a not in allowed]
        if bad:
            raise ValueError(f"script: unknown action(s) {bad}; use some of {sorted(allowed)}")
        self.requests_per_path: collections.Counter[tuple[str, str]] = collections.Counter()
        self.stats: dict[str, int] = dict.fromkeys(
            ("requests", "forwarded", "fail_503", "failed", "dropped", "delayed", "upstream_errors", "expect_100"), 0
        )
        self.errors: list[str] = []  # unexpected exceptions in the proxy itself (should stay empty)
        self.events: collections.deque[tuple[str, str, str]] = collections.deque(maxlen=100_000)
        self.host = host
        self.port = port
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._closed = False
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=f"FaultProxy->{upstream}", daemon=True)
        self._thread.start()
        try:
            self._call(self._listen())
        except BaseException:
            self.close()
            raise

    # -- public API
    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def listening(self) -> bool:
        return self._server is not None

    def set_methods(self, methods: Iterable[str] | None) -> None:
        self.methods = None if methods is None else frozenset(m.upper() for m in methods)

    def set_faults(self, *, fail_503: float = 0.0, drop: float = 0.0, delay: float = 0.0) -> None:
        """Set all three fractions at once (unnamed ones to 0)."""
        self.fail_503, self.drop, self.delay = fail_503, drop, delay

    def reset_stats(self) -> None:
        for k in self.stats:
            self.stats[k] = 0
        self.events.clear()
        self.requests_per_path.clear()

    def stop_listening(self) -> None:
        """Close the listener and all connections: new connections are refused."""
        if not self._closed:
            self._call(self._stop())

    def resume_listening(self) -> None:
        """Listen again, on the same port."""
        if self._closed:
            raise RuntimeError("FaultProxy is closed")
        if self._server is None:
            self._call(self._listen())

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._loop.is_running():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        with contextlib.suppress(RuntimeError):  # loop already closed
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"FaultProxy({self.endpoint} -> {self.upstream}, fail_503={self.fail_503}, drop={self.drop}, "
                f"delay={self.delay}, stats={self.stats})")

    # -- loop plumbing
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_forever()
        finally:
            pending = [t for t in asyncio.all_tasks(self._loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                self._loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            self._loop.run_until_complete(self._loop.shutdown_asyncgens())
            self._loop.close()

    def _call(self, coro: Any, timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for w in list(self._writers):
            w.transport.abort()
        tasks = [t for t in self._tasks if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        if server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), 5)

    def _choose(self, method: str, target: str) -> str:
        if self.methods is not None and method.upper() not in self.methods:
            return "forward"
        if self.script is not None:
            path = (method.upper(), target.split("?", 1)[0])
            n = self.requests_per_path[path]
            self.requests_per_path[path] = n + 1
            return self.script[n] if n < len(self.script) else "forward"
        r = self.rng.random()
        for action, frac in (("fail_503", self.fail_503), ("drop", self.drop), ("delay", self.delay)):
            if r < frac:
                return action
            r -= frac
        return "forward"

    # -- per connection
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        up: list[Any] = [None, None]  # upstream (reader, writer), kept alive across requests
        try:
            if self._server is None:  # accepted just before stop_listening()
                writer.transport.abort()
                return
            while await self._one_request(reader, writer, up):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError, ValueError):
            writer.transport.abort()
        except Exception as err:  # a bug here: keep it visible without killing the loop
            self.errors.append(f"{type(err).__name__}: {err}")
            writer.transport.abort()
        except asyncio.CancelledError:
            # Ours (stop_listening/close). Not re-raised: on Python 3.11 asyncio's
            # start_server callback logs a cancelled connection task as an error.
            writer.transport.abort()
        finally:
            self._close_upstream(up)
            writer.close()
            self._writers.discard(writer)
            self._tasks.discard(task)

    def _close_upstream(self, up: list[Any]) -> None:
        if up[1] is not None:
            up[1].transport.abort()
        up[0] = up[1] = None

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, up: list[Any]) -> bool:
        """Handle one request; False when the client connection is to be closed."""
        try:
            raw = await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:
            return False  # client closed between requests
        req = _Head(raw)
        if len(req.start) != 3:
            raise ValueError(f"bad request line {req.start!r}")
        method, target, version = req.start
        headers = req.headers
        if "100-continue" in req.get("expect").lower():
            # Answer it ourselves (body is read before the fault is drawn); the
            # upstream gets the request without Expect (it is never signed).
            self.stats["expect_100"] += 1
            writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
            await writer.drain()
            headers = req.without("expect")
        if req.chunked:
            body = await _read_chunked(reader)
        else:
            n = req.content_length or 0
            body = await reader.readexactly(n) if n else b""
        close_after = req.wants_close(version)

        action = self._choose(method, target)
        self.stats["requests"] += 1
        self.events.append((method, target, action))
        if action in ("drop", "reset"):
            self.stats["dropped"] += 1
            if self.drop_mode == "reset" or action == "reset":
                with contextlib.suppress(OSError):
                    writer.get_extra_info("socket").setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return False
        if action == "fail_503":
            self.stats["fail_503"] += 1
            rid = uuid.uuid4().hex[:16].upper()
            await self._reply(writer, method, "503 Slow Down", _SLOW_DOWN_BODY.format(rid=rid), rid, close_after)
            return not close_after
        if action in _SCRIPTED_ERRORS:
            self.stats["failed"] += 1
            status, code, msg = _SCRIPTED_ERRORS[action]
            rid = uuid.uuid4().hex[:16].upper()
            await self._reply(writer, method, status, _SCRIPTED_BODY.format(code=code, msg=msg, rid=rid), rid,
                              close_after)
            return not close_after
        if action == "delay":
            self.stats["delayed"] += 1
            await asyncio.sleep(self.delay_seconds)

        head = _encode_head(f"{method} {target} {version}", headers)
        try:
            keep = await self._forward(up, method, head, body, writer)
        except _UpstreamGone as err:
            self.stats["upstream_errors"] += 1
            self.events[-1] = (method, target, "upstream_error")
            rid = uuid.uuid4().hex[:16].upper()
            msg = str(err).replace("<", "(").replace(">", ")").replace("&", "+")
            await self._reply(writer, method, "502 Bad Gateway", _BAD_GATEWAY_BODY.format(rid=rid, msg=msg), rid, True)
            return False
        return keep and not close_after

    async def _reply(self, writer: asyncio.StreamWriter, method: str, status: str, body: str, rid: str,
                     close: bool) -> None:
        data = body.encode()
        hdrs = [("Content-Type", "application/xml"), ("Content-Length", str(len(data))),
                ("x-amz-request-id", rid), ("Server", "FaultProxy"),
                ("Connection", "close" if close else "keep-alive")]
        writer.write(_encode_head(f"HTTP/1.1 {status}", hdrs) + (b"" if method == "HEAD" else data))
        await writer.drain()

    async def _forward(self, up: list[Any], method: str, head: bytes, body: bytes,
                       writer: asyncio.StreamWriter) -> bool:
        """Send the request upstream and relay the response; False if the client connection must close."""
        for attempt in range(2):
            reused = up[1] is not None
            try:
                if not reused:
                    up[0], up[1] = await asyncio.wait_for(
                        asyncio.open_connection(self._up_host, self._up_port), 10)
                ur, uw = up
                uw.write(head + body)
                await uw.drain()
                raw = await ur.readuntil(b"\r\n\r\n")
                resp = _Head(raw)
                while resp.start[1:2] and resp.start[1].startswith("1") and resp.start[1] != "101":
                    raw = await ur.readuntil(b"\r\n\r\n")  # interim responses: not for this client
                    resp = _Head(raw)
                break
            except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, OSError) as err:
                self._close_upstream(up)
                if reused and attempt == 0:
                    continue  # the kept-alive upstream connection had gone stale: once more, fresh
                raise _UpstreamGone(f"{type(err).__name__}: {err}") from None
        else:  # pragma: no cover
            raise _UpstreamGone("no response")

        self.stats["forwarded"] += 1  # before the client can see the response (tests read stats then)
        version, status = resp.start[0], int(resp.start[1])
        up_close = resp.wants_close(version)
        client_keep = "close" not in resp.get("connection").lower()
        no_body = method == "HEAD" or status in _NO_BODY_STATUS or 100 <= status < 200
        if not client_keep and self.keep_alive and (no_body or resp.chunked or resp.content_length is not None):
            # e.g. werkzeug (moto) closes after every response; keep the client's connection as S3 would
            raw = _encode_head(" ".join(resp.start), resp.without("connection"))
            client_keep = True
        writer.write(raw)
        if no_body:
            pass
        elif resp.chunked:
            await _read_chunked(ur, writer)
        elif resp.content_length is not None:
            left = resp.content_length
            while left:
                b = await ur.read(min(left, _COPY))
                if not b:
                    raise asyncio.IncompleteReadError(b"", left)
                writer.write(b)
                await writer.drain()
                left -= len(b)
        else:  # body delimited by the upstream closing
            while b := await ur.read(_COPY):
                writer.write(b)
                await writer.drain()
            up_close, client_keep = True, False
        await writer.drain()
        if up_close:
            self._close_upstream(up)
        return client_keep
