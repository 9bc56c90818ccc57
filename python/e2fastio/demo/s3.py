"""Where the demo's S3 case writes: a given bucket, or a local S3 server it starts (moto)."""

from __future__ import annotations

import contextlib
import http.client
import importlib.util
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from typing import IO, Any

logger = logging.getLogger(__name__)

# Dummy credentials for the local server (it accepts any).
_LOCAL_KEY, _LOCAL_SECRET, _LOCAL_REGION = "e2fastio-demo", "e2fastio-demo-secret", "us-east-1"
_PROXY_ENV = ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


@dataclass(frozen=True)
class S3Target:
    """Where the S3 case writes: ``<url>/<name>.zarr``.

    Parameters
    ----------
    url : str
        ``s3://bucket/prefix``.
    endpoint : str | None
        An S3-compatible endpoint (``http://host:port``); ``None`` is AWS.
    credentials : dict[str, str]
        obstore ``S3Config`` credential keys; empty: obstore reads the AWS_*
        environment variables.
    """

    url: str
    endpoint: str | None = None
    credentials: dict[str, str] = field(default_factory=dict)

    def store_kwargs(self) -> dict[str, Any]:
        """What ``obstore.store.from_url(location, **kwargs)`` needs (also the backends' `store_kwargs`)."""
        kw: dict[str, Any] = dict(self.credentials)
        if self.endpoint:
            kw["endpoint"] = self.endpoint
            kw["virtual_hosted_style_request"] = False
            if self.endpoint.startswith("http://"):
                kw["client_options"] = {"allow_http": True}
        return kw

    def location(self, name: str) -> str:
        return f"{self.url.rstrip('/')}/{name}.zarr"

    def obstore(self, name: str) -> Any:
        """An obstore store rooted at :meth:`location` of `name`."""
        import obstore.store

        return obstore.store.from_url(self.location(name), **self.store_kwargs())


def local_server_unavailable() -> str | None:
    """Why a local S3 server cannot be started here (``None`` when it can)."""
    missing = [m for m in ("moto.server", "flask", "flask_cors", "obstore") if importlib.util.find_spec(m) is None]
    if missing:
        return (f"no --s3 URL given and {', '.join(missing)} not installed, so no local S3 server "
                "(pip install 'e2fastio[bench]' for one, or pass --s3 s3://bucket/prefix)")
    return None


class LocalS3Server:
    """moto's S3 server in a child process on 127.0.0.1, with one bucket; :meth:`stop` ends it.

    The child shares no interpreter (and no GIL) with the demo; its request log
    goes to a temporary file, quoted in the error if it fails to start.
    """

    def __init__(self, timeout: float = 60.0) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        env = {k: v for k, v in os.environ.items() if k not in _PROXY_ENV}
        env.update(NO_PROXY="*", AWS_EC2_METADATA_DISABLED="true", AWS_ACCESS_KEY_ID=_LOCAL_KEY,
                   AWS_SECRET_ACCESS_KEY=_LOCAL_SECRET, AWS_DEFAULT_REGION=_LOCAL_REGION, PYTHONWARNINGS="ignore")
        self._log: IO[bytes] = tempfile.TemporaryFile(prefix="e2fastio-demo-s3-", suffix=".log")
        self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while not self._request("GET", "/"):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                text = self._read_log()
                self.stop()
                raise RuntimeError(f"the local S3 server (moto) did not start on {self.endpoint}:\n{text[-2000:]}")
            time.sleep(0.05)
        self.bucket = f"e2fastio-demo-{uuid.uuid4().hex[:8]}"
        if not self._request("PUT", f"/{self.bucket}"):
            text = self._read_log()
            self.stop()
            raise RuntimeError(f"the local S3 server did not create bucket {self.bucket}:\n{text[-2000:]}")
        logger.info("local S3 server (moto, pid %s) on %s", self._proc.pid, self.endpoint)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def target(self) -> S3Target:
        """The demo's S3 target in this server's bucket."""
        return S3Target(f"s3://{self.bucket}/demo", self.endpoint,
                        {"access_key_id": _LOCAL_KEY, "secret_access_key": _LOCAL_SECRET, "region": _LOCAL_REGION})

    def _request(self, method: str, path: str) -> bool:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            resp.read()
            return resp.status < 300
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def _read_log(self) -> str:
        with contextlib.suppress(ValueError, OSError):
            self._log.flush()
            self._log.seek(0)
            return self._log.read().decode("utf-8", "replace")
        return ""

    def stop(self) -> None:
        """End the server (SIGTERM, then SIGKILL after 5 s); its objects go with it."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        with contextlib.suppress(OSError):
            self._log.close()

    def __enter__(self) -> LocalS3Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
