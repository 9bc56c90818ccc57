"""Where a backend writes: local directories, native memory, and object stores.

Local directories and the native in-memory store get a native sink (encoder
threads store chunks themselves). Every other store (S3 and anything obstore
reaches, fsspec filesystems, any zarr ``Store``) gets an ``UploadSink``: the
encoder threads queue encoded chunks in it (bounded, so memory stays bounded),
and an :class:`~e2fastio.stores.uploads.Uploader` sends them with bounded concurrency and retries from
zarr-python's own event loop thread, the loop every zarr store is bound to.

Retries: one policy per kind of store, never two stacked.

* A URL (``s3://...``): we build two obstore clients from it. Chunk uploads go
  through one whose own retries are off (``max_retries=0``), so the
  Uploader's loop is the only one: ``upload_retries`` further attempts, with
  exponential backoff and jitter, each bounded by ``upload_timeout``. N
  transient faults on a chunk cost N + 1 PUTs. Metadata requests (``zarr.json``,
  coordinates, partial-chunk reads) go through zarr-python, which does not
  retry, so the other client retries them itself, ``upload_retries`` times
  (a ``retry_config`` in ``store_kwargs`` replaces that for metadata only).
* An obstore store or a zarr ``Store`` passed in: its client is configured
  by its owner and is left as it is, retries included (obstore retries 10
  times by default; s3fs and botocore retry too). The Uploader's attempts wrap
  it: ``upload_retries`` counts our attempts only, and ``upload_timeout``
  bounds each of ours, their retries included. Configure one of the two
  layers to retry (for instance ``retry_config={"max_retries": 0}`` on the
  obstore store, or ``upload_retries=0``).

Errors another attempt cannot fix are never retried (`e2fastio.stores.uploads._permanent`).
"""

from __future__ import annotations

import logging
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zarr
import zarr.storage
from zarr.abc.store import Store

from e2fastio import _core
from e2fastio.stores.native import NativeMemoryMapping, make_store, sink_for
from e2fastio.stores.uploads import Redactor, Uploader
from e2fastio.stores.uploads import RemoteOptions as RemoteOptions  # what backends configure uploads with

logger = logging.getLogger(__name__)


@dataclass
class Location:
    """A resolved output location."""

    store: Store
    sink: _core.Sink | None  # None: chunks go through zarr-python
    description: str  # safe to show: never contains credentials
    uploader: Uploader | None = None
    local_path: str | None = None
    # The backend class the user made, when another one writes for it (AsyncZarrBackend's
    # ZarrBackend): what messages to the user name.
    owner: str | None = None


# ---------------------------------------------------------------------------- redaction
_SECRET_NAME = re.compile(r"secret|token|password|passwd|credential|session|private|sas|key", re.I)


def _secret_values(options: Any) -> list[str]:
    """String values of options whose names look secret (nested dicts included)."""
    out: list[str] = []
    if isinstance(options, dict):
        for k, v in options.items():
            if isinstance(v, dict):
                out += _secret_values(v)
            elif isinstance(v, str) and _SECRET_NAME.search(str(k)) and not re.search(r"id$", str(k), re.I):
                out.append(v)
    return out


def _url_without_userinfo(url: str) -> str:
    return re.sub(r"(//)[^/@\s]+@", r"\1", url)


# ---------------------------------------------------------------------------- resolution
def _is_obstore_store(obj: Any) -> bool:
    return type(obj).__module__.split(".")[0] == "obstore"


def _obstore_defaults(options: RemoteOptions, url: str, given: dict[str, Any]) -> dict[str, Any]:
    """Client options for the metadata client of a store we build from a URL.

    Bounded time per request, and obstore's own retries (``options.retries``
    of them, the same backoff as the Uploader's): zarr-python does not retry
    the metadata requests it sends, so the client does.
    """
    from datetime import timedelta

    defaults: dict[str, Any] = {
        "client_options": {"timeout": f"{options.timeout:g}s", "connect_timeout": f"{min(options.timeout, 10):g}s"},
        "retry_config": {
            "max_retries": options.retries,
            "backoff": {
                "init_backoff": timedelta(seconds=options.backoff),
                "max_backoff": timedelta(seconds=options.max_backoff),
                "base": 2.0,
            },
            "retry_timeout": timedelta(seconds=max(options.timeout, 1.0)),
        },
    }
    endpoints = [url] + [str(v) for k, v in given.items() if "endpoint" in str(k).lower()]
    if any(e.startswith("http://") for e in endpoints):  # a plain-HTTP endpoint was asked for explicitly
        defaults["client_options"]["allow_http"] = True
    return defaults


def _chunk_client_kwargs(metadata_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The chunk-upload client's options: the metadata client's, with obstore's retries off.

    The Uploader retries each chunk itself (``upload_retries``), so a PUT that
    fails is sent again by exactly one layer.
    """
    return {**metadata_kwargs, "retry_config": {"max_retries": 0}}


def _merge(defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    out = dict(defaults)
    for k, v in given.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = {**out[k], **v}
        else:
            out[k] = v
    return out


def resolve(
    location: Any,
    *,
    store_kwargs: dict[str, Any] | None = None,
    fs_factory: Callable[..., Any] | None = None,
    fsync: bool = False,
    direct_io: bool | None = None,
    options: RemoteOptions | None = None,
    what: str = "file_name",
) -> Location:
    """Turn a user's output location into a zarr store plus the sink for its chunks.

    `location` is None (native in-memory store), a local path or ``file://``
    URL, ``memory://``, an object-store URL (``s3://bucket/path.zarr``,
    ``gs://``, ``az://``, ``http(s)://``; opened with ``obstore.store.from_url``
    and `store_kwargs`), an obstore store, or a zarr ``Store``. With
    `fs_factory` (an fsspec filesystem factory, deprecated) `location` is the
    path inside that filesystem.
    """
    options = options or RemoteOptions()
    if store_kwargs is not None and not isinstance(store_kwargs, dict):
        raise TypeError(f"store_kwargs must be a dict, got {type(store_kwargs).__name__}")
    store_kwargs = dict(store_kwargs or {})
    redact = Redactor(_secret_values(store_kwargs))

    if fs_factory is not None:
        if not callable(fs_factory):
            raise TypeError("fs_factory must be a callable that returns an fsspec filesystem")
        if not isinstance(location, (str, os.PathLike)):
            raise ValueError(f"{what}: with fs_factory, pass the path inside the filesystem (a str)")
        redact = Redactor(redact.secrets + _secret_values(getattr(fs_factory, "keywords", None) or {}))
        fs = fs_factory()
        import fsspec

        if not isinstance(fs, fsspec.AbstractFileSystem):
            raise TypeError(f"fs_factory must return an fsspec filesystem, it returned {type(fs).__name__}")
        protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
        path = os.fspath(location)
        if "file" in protocols or "local" in protocols:
            return resolve(path, fsync=fsync, direct_io=direct_io, options=options, what=what)
        if "memory" in protocols:
            return resolve(None, options=options, what=what)
        if not getattr(fs, "asynchronous", False):
            raise TypeError(
                f"fs_factory returned a synchronous {type(fs).__name__}; pass asynchronous=True "
                "(for example functools.partial(s3fs.S3FileSystem, asynchronous=True, ...)), or use store="
            )
        zstore = zarr.storage.FsspecStore(fs, path=path, read_only=False)
        return _remote(zstore, f"{protocols[0]}://{path.lstrip('/')}", options, redact)

    if location is None:
        store, sink = make_store(None)
        return Location(store, sink, "memory")
    if isinstance(location, (str, os.PathLike)):
        s = os.fspath(location)
        if s.startswith("file://"):
            s = s[len("file://"):]
        elif s.rstrip("/") in ("memory:", "memory:/", "memory://") or s == "memory:///":
            if store_kwargs:
                raise ValueError("store_kwargs: the in-memory store takes no options; leave it empty")
            return resolve(None, options=options, what=what)
        if "://" not in s:
            if store_kwargs:
                raise ValueError(f"store_kwargs only applies to remote store URLs; {what}={s!r} is a local path")
            if not s:
                raise ValueError(f"{what} must not be empty: pass a directory, a URL, or None for memory")
            store, _ = make_store(s)
            return Location(store, sink_for(store, None, fsync, direct_io), s, local_path=s)
        safe = _url_without_userinfo(s)
        try:
            import obstore.store
        except ImportError:
            raise ImportError(
                f"{what}={safe!r}: object-store URLs need the 'obstore' package: pip install 'e2fastio[remote]'"
            ) from None
        kwargs = _merge(_obstore_defaults(options, s, store_kwargs), store_kwargs)
        try:
            obs = obstore.store.from_url(s, **kwargs)
            chunk_client = obstore.store.from_url(s, **_chunk_client_kwargs(kwargs))
        except Exception as err:
            raise ValueError(
                f"{what}={safe!r}: obstore could not open this URL with the given store_kwargs: "
                f"{redact(str(err))}"
            ) from None
        return _remote(zarr.storage.ObjectStore(obs, read_only=False), safe, options, redact, chunk_client)
    if store_kwargs:
        raise ValueError(
            "store_kwargs only applies when the store is a URL string; configure the store instance directly"
        )
    if _is_obstore_store(location):
        store = zarr.storage.ObjectStore(location, read_only=False)
        return _remote(store, _describe_obstore(location), options, redact)
    if isinstance(location, Store):
        if location.read_only:
            raise ValueError(f"{what}: the zarr store is read-only; the backend needs a writable store")
        if isinstance(location, zarr.storage.LocalStore):
            return Location(location, sink_for(location, None, fsync, direct_io), str(location.root),
                            local_path=str(location.root))
        if isinstance(location, zarr.storage.MemoryStore) and isinstance(location._store_dict, NativeMemoryMapping):
            return Location(location, location._store_dict.sink, "memory")
        return _remote(location, f"{type(location).__name__}", options, redact)
    raise TypeError(
        f"{what}={location!r}: expected a local path, a URL (s3://..., memory://, file://...), "
        "an obstore store or a zarr Store"
    )


def _describe_obstore(store: Any) -> str:
    for attr in ("url",):
        v = getattr(store, attr, None)
        if isinstance(v, str):
            return _url_without_userinfo(v)
    prefix = getattr(store, "prefix", None)
    return f"{type(store).__name__}" + (f" {prefix}" if prefix else "")


def session_location(store: Store, description: str, options: RemoteOptions) -> Location:
    """Chunks for a store the backend opened itself (an Icechunk session's store), through an Uploader.

    `description` names the target in messages; it must hold no credentials.
    """
    if store.read_only:
        raise ValueError(f"{description}: the store is read-only; the backend needs a writable session")
    return _remote(store, description, options, Redactor())


def _remote(store: Store, description: str, options: RemoteOptions, redact: Redactor,
            chunk_client: Any = None) -> Location:
    sink = _core.UploadSink(options.queue_bytes, description)
    uploader = Uploader(store, sink, options, redact, description, chunk_client=chunk_client)
    uploader.start()
    return Location(store, sink, description, uploader=uploader)


def deprecated_fs_factory(stacklevel: int = 3) -> None:
    warnings.warn(
        "fs_factory is deprecated: pass the output location as store= (a path, an s3:// URL with "
        "store_kwargs, an obstore store or a zarr store)",
        FutureWarning,
        stacklevel=stacklevel,
    )
