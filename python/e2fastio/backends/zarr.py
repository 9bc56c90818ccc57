"""``ZarrBackend``: Earth2Studio's Zarr IO backend, with chunks written by native threads."""

from __future__ import annotations

import asyncio
import errno
import inspect
import logging
import os
from collections import OrderedDict, deque
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import zarr

from e2fastio import _core
from e2fastio._write import inputs, ranks
from e2fastio._write.budget import NONBLOCKING_SPLIT, engine_kwargs, split_buffer
from e2fastio._write.engine import EngineHandle
from e2fastio._write.lifecycle import Lifecycle, serialized
from e2fastio._write.zarr_arrays import ShardGeometry, array_spec, dimension_names, get_array, shard_geometry
from e2fastio.errors import CoordinateError
from e2fastio.stores.remote import Location, RemoteOptions, resolve

if TYPE_CHECKING:
    from obstore.store import ObjectStore
    from zarr.abc.store import Store

logger = logging.getLogger(__name__)

CoordSystem = Mapping[str, np.ndarray]

_DEFAULT_CHUNKS = {"ensemble": 1, "time": 1, "lead_time": 1, "variable": 1}
_COMPLEX = "c"  # Zarr v3 stores complex64/complex128 (Earth2Studio writes what torch gives it)

def _check_group_kwargs(backend_kwargs: Any) -> None:
    """``backend_kwargs`` as ``zarr.group`` takes them, checked before anything is created."""
    if not isinstance(backend_kwargs, Mapping):
        raise TypeError(f"backend_kwargs must be a dict of zarr.group keyword arguments (e.g. {{'overwrite': True}}), "
                        f"got {type(backend_kwargs).__name__}")
    try:
        inspect.signature(zarr.group).bind(None, **backend_kwargs)
    except TypeError as err:
        raise TypeError(f"backend_kwargs: {err} (they are passed to zarr.group)") from None


def _open_root(store: Any, backend_kwargs: dict[str, Any]) -> tuple[zarr.Group, bool]:
    """The root group, and whether it was created here in an empty store.

    An empty location (one listing) gets a new group straight away; otherwise
    ``zarr.group`` opens what is there (probing Zarr v2 and v3 metadata, several
    requests one after another on an object store).
    """
    # Overwriting nothing is creating; a store that cannot list takes zarr's way.
    if set(backend_kwargs) <= {"overwrite"} and getattr(store, "supports_listing", False):
        async def empty() -> bool:
            async for _ in store.list_dir(""):
                return False
            return True

        try:
            is_empty = _sync(empty())
        except FileNotFoundError:
            is_empty = True
        if is_empty:
            try:
                return zarr.create_group(store), True
            except (zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError):
                pass  # created meanwhile by another writer: open it
    return zarr.group(store, **backend_kwargs), False


def _as_slices(index: Sequence[np.ndarray]) -> tuple[Any, ...]:
    """An orthogonal selection with each run of consecutive indices as a slice.

    zarr-python writes slices of sharded arrays correctly where integer arrays
    fail (3.1: a shape mismatch inside the sharding codec); slices are also
    faster, as in Earth2Studio 0.19's ZarrBackend.
    """
    out: list[Any] = []
    for idx in index:
        i = np.asarray(idx)
        if i.size and i.ndim == 1 and np.array_equal(i, np.arange(int(i[0]), int(i[0]) + i.size)):
            out.append(slice(int(i[0]), int(i[0]) + i.size))
        else:
            out.append(i)
    return tuple(out)


def _sync(coro: Any) -> Any:
    """Run a coroutine on zarr-python's own event loop (where its stores live)."""
    from zarr.core.sync import sync

    return sync(coro)


def _read_whole(root: zarr.Group, items: Sequence[str | zarr.Array[Any]]) -> list[np.ndarray]:
    """Whole contents of several arrays of `root` (by name, or opened), in one
    concurrent round of requests rather than one after another."""
    group = root._async_group

    async def one(item: str | zarr.Array[Any]) -> np.ndarray:
        node = item._async_array if isinstance(item, zarr.Array) else await group.getitem(item)
        arr = cast("zarr.AsyncArray[Any]", node)  # the names given are arrays'
        return np.asarray(await arr.getitem(Ellipsis))

    async def every() -> list[np.ndarray]:
        return list(await asyncio.gather(*(one(i) for i in items)))

    return _sync(every()) if items else []


async def _create_arrays(
    root: zarr.Group,
    nodes: dict[str, dict[str, Any]],
    values: dict[str, np.ndarray],
    replace: list[tuple[str, dict[str, Any]]],
) -> dict[str, zarr.Array[Any]]:
    """Store new arrays' metadata, coordinate values and replaced arrays, all at once.

    `nodes`: ``create_array`` keywords of arrays the store does not hold; their
    metadata is built in memory (a scratch group) and stored with one PUT each,
    no parent group rewrites; `values`: what to write into some of them;
    `replace`: ``create_array(name, overwrite=True, **kw)`` for arrays that
    exist. One round on zarr-python's event loop: every request is awaited
    before the first error is raised, so none is left running.
    """
    group = root._async_group

    async def new_arrays() -> list[tuple[str, Any]]:
        if not nodes:
            return []
        scratch = await zarr.api.asynchronous.group(store=zarr.storage.MemoryStore(),
                                                    zarr_format=root.metadata.zarr_format)
        made_scratch = await asyncio.gather(*(scratch.create_array(name, **kw) for name, kw in nodes.items()))
        metadata = {name: a.metadata for name, a in zip(nodes, made_scratch, strict=True)}
        made = [(path, node) async for path, node in group.create_hierarchy(metadata, overwrite=False)]
        await asyncio.gather(*(cast("zarr.AsyncArray[Any]", node).setitem(Ellipsis, values[path])
                               for path, node in made if path in values))  # `values` has arrays' paths only
        return made

    async def replaced(name: str, kw: dict[str, Any]) -> tuple[str, Any]:
        return name, await group.create_array(name, overwrite=True, **kw)

    results = await asyncio.gather(new_arrays(), *(replaced(n, kw) for n, kw in replace), return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    made = list(results[0]) + list(results[1:])
    return {path: zarr.Array(node) for path, node in made}


class _Target:
    """What a write needs to know about one stored data array (cached)."""

    __slots__ = ("array", "dims", "dtype", "path", "shard", "spec")

    def __init__(self, array: zarr.Array[Any]) -> None:
        self.array = array
        self.dims = dimension_names(array)
        self.dtype = np.dtype(array.dtype)
        self.spec, reason = array_spec(array)
        self.shard: ShardGeometry | None = shard_geometry(array) if self.spec is not None else None
        if self.spec is None:
            self.path = f"zarr-python ({reason})"
        elif self.shard is not None:
            self.path = f"native, sharded: shards {self.shard.shards} of inner chunks {self.shard.chunks}"
        else:
            self.path = "native"
        if self.spec is None:
            logger.info("array %r is written through zarr-python (%s)", array.path, reason)


def _fsync_path(path: str, *, directory: bool = False, missing_ok: bool = False) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    except FileNotFoundError:
        if missing_ok:
            return
        raise
    try:
        os.fsync(fd)
    except OSError as err:
        if not directory or err.errno not in (errno.EINVAL, errno.EROFS):  # some file systems cannot sync a directory
            raise
    finally:
        os.close(fd)


class ZarrBackend(Lifecycle):
    """A Zarr v3 backend with Earth2Studio's ``ZarrBackend`` interface.

    Chunks are cut, encoded (Blosc via c-blosc 1.x, exactly as zarr-python's
    ``BloscCodec`` would) and stored by a pool of native threads with the GIL
    released; metadata and coordinates are written with zarr-python, so the
    store is an ordinary Zarr v3 store.

    Parameters
    ----------
    file_name : str | zarr Store | obstore store, optional
        Where to write: a local directory (or ``file://`` URL); ``None`` or
        ``"memory://"`` keeps the store in memory (a ``zarr.storage.MemoryStore``
        whose mapping lives in native memory); an object-store URL such as
        ``"s3://bucket/forecast.zarr"`` (opened with ``obstore.store.from_url``
        and `store_kwargs`); an obstore store; or any writable zarr ``Store``.
        Chunks for object stores are uploaded by :class:`e2fastio.stores.remote.Uploader`
        with bounded concurrency and retries.
    chunks : dict[str, int], optional
        Chunk size per dimension; dimensions not listed get one chunk.
    backend_kwargs : dict, optional
        Keyword arguments of ``zarr.group`` for the root group, by default
        ``{"overwrite": False}``.
    zarr_codecs : zarr codec(s), optional
        Compressor(s) for new arrays (``compressors=`` of ``create_array``);
        ``None`` stores chunks uncompressed.
    threads : int, optional
        Native encoder threads (default: the cores this process may use).
    max_buffer_bytes : int, optional
        Bound on host staging memory (default 1 GiB); a write waits when
        chunks in flight would exceed it.
    fsync : bool, optional
        Local stores: fsync each chunk file before it is renamed into place,
        then its directory, and each directory of the store the first time it
        is used (with its parent), so that a chunk survives a crash once its
        write is reported (a blocking ``write`` or a ``flush`` returned).
        The metadata and coordinate arrays zarr-python writes are fsynced
        too: the root group when the store is opened, each new array (its
        ``zarr.json`` and, for coordinates, its data) before ``add_array``
        returns, consolidated metadata at ``close``.
    direct_io : bool, optional
        Write large chunks (>= 1 MiB) with O_DIRECT, bypassing the page cache
        (local stores). ``None`` (default) uses it where the file system
        accepts it; ``False`` always writes through the page cache. Either
        way chunks are written by the engine's writer threads, so the
        encoder threads never wait for the disk.
    blocking : bool, optional
        ``True`` (default, Earth2Studio's semantics): ``write`` returns when the
        data is stored. ``False``: ``write`` copies the data into a staging
        ring (3/4 of ``max_buffer_bytes``) and returns; chunks are encoded and
        stored in the background, by threads that run below the caller's
        priority (nice 19) so that they slow the caller's own work as little
        as possible. The caller may reuse its tensor at once.
        Errors surface at the next ``write``, ``flush`` or ``close``.
    store_kwargs : dict, optional
        Options of ``obstore.store.from_url`` for a URL `file_name`
        (``endpoint``, ``region``, credentials, ``client_options``, ...).
    upload_concurrency, upload_retries, upload_timeout : optional
        Object stores: uploads in flight at once (default 16), further
        attempts of a failed upload with exponential backoff (default 6), and
        seconds one attempt may take (default 60). A chunk that still fails is
        reported (key and reason, never credentials) as ``UploadError``;
        permanent errors (denied, missing bucket, bad request) are not
        retried. For a URL these are the only retries of a chunk upload
        (obstore's own are off for chunk PUTs; metadata requests are retried
        `upload_retries` times by obstore). An obstore or zarr store passed in
        keeps its own client's retries, which run inside each of our attempts.
    process_group : None | "world" | torch.distributed ProcessGroup, optional
        Opt-in: several ranks writing one store. ``None`` (default, also
        ``False``): no coordination, even under ``torchrun``; each process
        writes exactly what it is given (one store per rank needs nothing
        more). ``"world"``: the default ``torch.distributed`` group; or a
        ``ProcessGroup``. Then construction is collective, rank 0 creates the
        group and the arrays (``add_array`` is collective and checks that every
        rank passes the same coordinates); each rank writes only whole chunks
        of its own part; ``close`` is collective. See ``e2fastio._write.ranks``.
    distributed_timeout : float, optional
        Seconds a collective step waits for the other ranks (default 600);
        a rank that never arrives is named in the error.
    consolidate_metadata : bool, optional
        At ``close``, write consolidated metadata (only rank 0 when ranks
        coordinate through `process_group`).
    """

    def __init__(
        self,
        file_name: str | os.PathLike[str] | Store | ObjectStore | Location | None = None,
        chunks: dict[str, int] = _DEFAULT_CHUNKS,
        backend_kwargs: dict[str, Any] = {"overwrite": False},  # noqa: B006 - Earth2Studio's signature
        zarr_codecs: Any = None,
        *,
        threads: int | None = None,
        max_buffer_bytes: int | None = None,
        fsync: bool = False,
        direct_io: bool | None = None,
        blocking: bool = True,
        store_kwargs: dict[str, Any] | None = None,
        upload_concurrency: int = 16,
        upload_retries: int = 6,
        upload_timeout: float = 60.0,
        process_group: Any = None,
        distributed_timeout: float = 600.0,
        consolidate_metadata: bool = False,
    ) -> None:
        if not isinstance(chunks, Mapping):
            raise TypeError(f"chunks must be a dict of dimension name to chunk size, got {type(chunks).__name__}")
        for dim, size in chunks.items():
            if not isinstance(size, (int, np.integer)) or isinstance(size, bool) or size < 1:
                raise ValueError(f"chunks[{dim!r}] must be a positive int, got {size!r}")
        if not isinstance(blocking, bool):
            raise TypeError(f"blocking must be True or False, got {blocking!r}")
        if not isinstance(fsync, bool):
            raise TypeError(f"fsync must be True or False, got {fsync!r}")
        _check_group_kwargs(backend_kwargs)
        # Checked before the store is opened (a local one is created): a bad value leaves nothing behind.
        group = ranks.resolve_group(process_group)
        self.blocking = blocking
        self.flush_timeout = 600.0  # seconds flush()/close() wait for pending chunks
        ekw = engine_kwargs(threads, max_buffer_bytes)
        ring = 0
        if not blocking:
            ring = split_buffer(ekw["max_buffer_bytes"], "a non-blocking ZarrBackend",
                                NONBLOCKING_SPLIT)["the staging ring"]
        self._engine = EngineHandle(**ekw, ring_bytes=ring, background=not blocking)
        if isinstance(file_name, Location):  # resolved by AsyncZarrBackend
            loc = file_name
        else:
            options = RemoteOptions(concurrency=upload_concurrency, retries=upload_retries, timeout=upload_timeout)
            loc = resolve(file_name, store_kwargs=store_kwargs, fsync=fsync, direct_io=direct_io, options=options)
        self.location = loc.description
        self.store = loc.store
        self._sink = loc.sink
        self._uploader = loc.uploader
        self.consolidate_metadata = bool(consolidate_metadata)
        self._durable_root = loc.local_path if fsync else None  # metadata fsynced here too
        try:
            self._coord = ranks.Coordinator(group, distributed_timeout) if group is not None else None
            created = False
            if self._coord is None:
                self.root, created = _open_root(self.store, dict(backend_kwargs))
            else:  # rank 0 creates (or overwrites) the root group; the others open it after
                root = self._coord.on_root(lambda: zarr.group(self.store, **dict(backend_kwargs)), "creating the store")
                self.root = root if root is not None else zarr.open_group(self.store, mode="r+")
        except BaseException:
            if self._uploader is not None:
                self._uploader.close()
            raise
        self.zarr_codecs = zarr_codecs
        self._sync_metadata([""])
        # Closed at exit when still open (collective steps of an opted-in multi-rank run are not
        # attempted at exit for blocking backends: the other ranks may be gone); finished by a
        # finalizer if collected while open.
        self._start_lifecycle(where=self.location, engine=self._engine, uploader=self._uploader,
                              nonblocking=not blocking)
        if blocking and self._coord is not None:
            self._end_exit_registration()
        if not blocking:
            self._engine.get()  # start now: the staging ring faults its pages in while the model runs
        self._targets: dict[str, _Target] = {}
        # Sharded arrays (``shards=`` of add_array, or AsyncZarrBackend's shard_coords).
        self.max_inflight_shards = 4  # shard objects written at once
        self._shard_sink: _core.ShardSink | None = None
        self._shard_pid = os.getpid()  # the process that gathers shards (set again when the sink is made)
        self._shard_capacity: int | None = None  # None: a quarter of max_buffer_bytes
        # False (zarr-python's way): a blocking write's shards are in the store when it returns.
        # True (Earth2Studio's AsyncZarrBackend): shards gather until complete, merges are warned about.
        self._gather_shards = False
        self._merge_warned: set[str] = set()
        # Multi-rank: the shards this rank wrote, per array (dims, shard shape, shard positions, index ranges).
        self._shards_written: dict[str, tuple[list[str], list[int], set[tuple[int, ...]], list[tuple[int, int]]]] = {}
        self._device_refs: deque[tuple[int, list[Any]]] = deque()

        # Rebuild coordinates and chunks of an existing store (as Earth2Studio does).
        self.coords: OrderedDict[str, np.ndarray] = OrderedDict()
        self._selector = inputs.Selector(self.coords, "zarr store",
                                        lambda k: get_array(self.root, k).shape if k in self._members else None)
        self.chunks: dict[str, int] = dict(chunks)
        # What the store holds, listed once; kept up to date by add_array, so that
        # membership tests cost no requests (the store changes only through us,
        # as Earth2Studio's backends assume; zarr still refuses to create over
        # an array that appeared meanwhile).
        listed = {} if created else dict(self.root.members(max_depth=None))  # nested arrays as "group/name"
        self._members: set[str] = set(listed)
        members = dict(sorted((k, v) for k, v in listed.items() if isinstance(v, zarr.Array)))
        # Data arrays first, so coords follow their dimension order.
        ordered = sorted(members.items(), key=lambda kv: dimension_names(kv[1]) == (kv[0],))
        dims = [d for _, arr in ordered for d in dimension_names(arr) if d in members]
        dims = list(dict.fromkeys(dims))
        self.coords.update(zip(dims, _read_whole(self.root, [members[d] for d in dims]), strict=True))
        for name, arr in members.items():
            if name in self.coords:
                continue
            for c, d in zip(arr.chunks, dimension_names(arr), strict=False):
                self.chunks[d] = int(c)

    # ------------------------------------------------------------------ mapping protocol
    def __contains__(self, item: str) -> bool:
        # Known members: asking the store is a round trip per call on an object
        # store (AsyncZarrBackend asks on every write).
        return item in self._members

    def __getitem__(self, item: str) -> zarr.Array[Any] | zarr.Group:
        if not self.blocking and not self._closed:
            self.flush()  # what readers get must include every write so far
        return self.root[item]

    def __len__(self) -> int:
        return len(self.root)

    def __iter__(self) -> Iterator[str]:
        return iter(self.root)

    # ------------------------------------------------------------------ lifecycle
    def _close_with(self, caller_error: Exception | None) -> None:
        with self._calls():
            self._close(caller_error)  # a multi-rank close reports the caller's error to the other ranks

    @serialized
    def flush(self) -> None:
        """Wait until every write so far is stored; raise a background error if one occurred."""
        self._check_open("flush")
        self._drain()

    def _drain(self, hold: Mapping[str, Sequence[tuple[int, ...]]] | None = None) -> None:
        """Store everything pending; shards in `hold` (array name -> shard positions) stay under assembly."""
        if self.blocking or not self._engine.started:
            if self._shard_sink is not None:  # incomplete shards of blocking writes
                self._flush_shards(hold)
                if self._uploader is not None:
                    self._wait_uploads()
                    self._uploader.raise_failures()
            return
        engine = self._engine.get()
        if not engine.wait_idle(self.flush_timeout):
            raise TimeoutError(
                f"{engine.pending_chunks} chunk(s) were still pending after {self.flush_timeout:g} s; "
                "the store may be slow or unreachable (flush again to keep waiting)"
            )
        self._device_refs.clear()
        shard_error: Exception | None = None
        if self._shard_sink is not None:  # every chunk is gathered: write out the incomplete shards
            try:
                self._flush_shards(hold)
            except Exception as err:
                shard_error = err
        self._wait_uploads()
        self._mark_flushed()  # stored, or failed and raised just below: either way the user learns it now
        self._background(engine.check)
        if self._uploader is not None:
            self._background(self._uploader.raise_failures)
        if shard_error is not None:
            raise shard_error

    def _wait_uploads(self) -> None:
        if self._uploader is not None and not self._uploader.wait(self.flush_timeout):
            st = self._uploader.stats()
            raise TimeoutError(
                f"{st['queued_objects'] + st['in_flight']} chunk(s) were still uploading to {self.location} after "
                f"{self.flush_timeout:g} s (flush again to keep waiting)"
            )

    @serialized
    def _suspend(self) -> None:
        """Store what is pending, then stop every thread of ours; the backend stays usable.

        The encoder threads and the upload thread start again at the next write
        (staging memory goes to the process-wide cache meanwhile, so the restart
        is cheap). Raises the first background error, after everything else was stored.
        """
        self._check_open("close")
        try:
            self._drain()
        finally:
            if self._uploader is not None:
                self._uploader.stop()
            self._engine.close()

    def _idle(self) -> bool:
        """No thread of ours is running (nothing pending): a suspended or never-used backend."""
        return not self._engine.started and (self._uploader is None or not self._uploader.running)

    @serialized
    def close(self) -> None:
        """Store what is pending, stop the encoder threads, release staging memory. Idempotent.

        Raises the first background error (after every other chunk was stored).
        """
        self._close(None)

    def _close(self, caller_error: Exception | None) -> None:
        if not self._end_lifecycle():
            return
        if self._uploader is not None and self._uploader.pid != os.getpid():
            return  # a forked child's copy: the parent stores its own pending chunks
        local_error: Exception | None = None
        shared: dict[str, list[tuple[int, ...]]] = {}
        if self._coord is not None and self._shards_written is not None:
            try:  # collective, before incomplete shards are written
                every = self._coord.gather(self._shards_written, "close (shard owners)")
                shared = ranks.shard_clashes(every)
                if shared:
                    local_error = ranks.shard_owner_error(self._coord.rank, every, shared, merged=True)
            except Exception as err:
                local_error = err
        try:
            self._drain(hold=shared)
        except Exception as err:
            local_error = local_error or err
        try:
            if shared:  # every rank holds part of these: merged into the store one rank at a time
                local_error = self._merge_in_turns(shared) or local_error
        finally:
            try:
                if self._uploader is not None:
                    self._uploader.close()
            finally:
                self._engine.close()
        if self._coord is not None:  # collective: drain, barrier, outcomes, consolidate
            failures = self._coord.outcomes(local_error or caller_error)
            if not failures:
                if self._coord.is_root and self.consolidate_metadata:
                    zarr.consolidate_metadata(self.store)
                    self._sync_metadata([""])
                self._coord.barrier("close (after consolidation)")
            if local_error is None and caller_error is None:
                self._coord.raise_for_others(failures)
        elif self.consolidate_metadata and local_error is None and caller_error is None:
            zarr.consolidate_metadata(self.store)
            self._sync_metadata([""])
        if local_error is not None:
            raise local_error

    def _merge_in_turns(self, shared: Mapping[str, Sequence[tuple[int, ...]]]) -> Exception | None:
        """Write the shards several ranks hold part of, rank after rank (collective).

        Each rank's write merges with what the ranks before it stored
        (read-modify-write), so no rank's part is lost. Every rank takes part in
        every turn; an error of this rank's turn is returned, not raised, so
        the others are not left waiting.
        """
        assert self._coord is not None
        error: Exception | None = None
        for turn in range(self._coord.size):
            self._coord.barrier(f"close (shared shards, rank {turn}'s turn)")
            if turn != self._coord.rank or self._shard_sink is None:
                continue
            try:
                self._flush_shards()
                self._wait_uploads()
                if self._uploader is not None:
                    self._uploader.raise_failures()
            except Exception as err:
                error = err
        self._coord.barrier("close (shared shards merged)")
        return error

    def _sync_metadata(self, nodes: list[str], whole: Sequence[str] = ()) -> None:
        """With ``fsync=True`` on a local store: make what zarr-python wrote for `nodes` durable.

        Each node's ``zarr.json``, those of the groups on its way from the root
        and the directories holding their entries;
        for the nodes in `whole` (coordinate arrays, written by zarr-python)
        every file under them. Data chunks are made durable by the native sink.
        """
        if self._durable_root is None:
            return
        root = os.path.abspath(self._durable_root)
        dirs = {os.path.dirname(root), root}
        for node in nodes:
            path = os.path.join(root, node) if node else root
            if node in whole:
                for d, _, files in os.walk(path):
                    dirs.add(d)
                    for f in files:
                        _fsync_path(os.path.join(d, f))
            while True:  # the node and the groups its name implies
                _fsync_path(os.path.join(path, "zarr.json"), missing_ok=True)
                if path == root:
                    break
                dirs.add(path)
                path = os.path.dirname(path)
        for d in sorted(dirs, key=len, reverse=True):  # a directory's entry is in its parent: innermost first
            _fsync_path(d, directory=True)

    def _failed_so_far(self) -> int:
        failed = int(self._engine.stats().get("failed_chunks", 0))
        if self._uploader is not None:
            failed += int(self._uploader.stats()["objects_failed"])
        return failed

    def stats(self) -> dict[str, object]:
        """Counters of the native pipeline (chunks, bytes, staging memory).

        ``write_paths`` says how each array written so far is stored:
        ``"native"``, ``"native, sharded: ..."`` (shards assembled by the core,
        counted under ``shards``) or ``"zarr-python (<reason>)"``.
        """
        out = self._engine.stats()
        if self._uploader is not None:
            out["uploads"] = self._uploader.stats()
        if self._shard_sink is not None:
            out["shards"] = self._shard_sink.stats()
        out["write_paths"] = {name: t.path if self._sink is not None else "zarr-python (store without a native sink)"
                              for name, t in self._targets.items()}
        return out

    def _check_open(self, what: str) -> None:
        super()._check_open(what)
        if self._uploader is not None:
            self._uploader.check_process(what)

    # ------------------------------------------------------------------ arrays
    @serialized
    def add_array(
        self,
        coords: CoordSystem,
        array_name: str | list[str],
        data: Any = None,
        **kwargs: Any,
    ) -> None:
        """Add data array(s) (and any new coordinate arrays) to the store.

        Parameters
        ----------
        coords : CoordSystem
            Ordered coordinates of the new array(s).
        array_name : str | list[str]
            Name(s) of the array(s) to create.
        data : torch.Tensor | numpy.ndarray | list, optional
            Initial values, one per array name.
        **kwargs
            Passed to ``zarr.Group.create_array`` (``overwrite=True`` replaces
            an existing array; ``fill_value``, ``compressors``, ...).
        """
        self._check_open("add_array")
        names, host = inputs.add_array_inputs(array_name, data, _COMPLEX)
        if self._coord is None:
            self._add_array(coords, names, host, kwargs)
            return
        c = self._coord
        c.agree_on_arrays(coords, names, kwargs.get("dtype", host[0].dtype if host and host[0] is not None else None))
        c.on_root(lambda: self._add_array(coords, names, host, kwargs), f"add_array({names})")
        if not c.is_root:  # adopt what rank 0 created
            adjusted, mapping = inputs.convert_multidim_to_singledim(coords)
            self._members.update(adjusted, mapping, names)
            new_dims = [d for d in adjusted if d not in self.coords]
            for dim, values in zip(new_dims, _read_whole(self.root, new_dims), strict=True):
                self.coords[dim] = values
                self._selector.forget(dim)
            for name in names:
                self._targets.pop(name, None)

    def _add_array(self, coords: CoordSystem, names: list[str], host: list[Any], kwargs: dict[str, Any]) -> None:
        dtype_kw = kwargs.pop("dtype", None)
        kwargs.setdefault("fill_value", None)
        kwargs.setdefault("compressors", self.zarr_codecs)
        overwrite = bool(kwargs.get("overwrite", False))
        adjusted, mapping = inputs.convert_multidim_to_singledim(coords)
        known = {**self.coords, **{d: np.asarray(v) for d, v in adjusted.items() if d not in self.coords}}
        shape = tuple(len(known[d]) for d in adjusted)
        for h, n in zip(host, names, strict=True):
            if h is not None and h.shape != shape:
                raise inputs.DataShapeError(
                    f"data for array {n!r} has shape {h.shape} but coords give {shape}"
                )

        # Every metadata request of this call runs concurrently: against an object
        # store each is a round trip, and one at a time they cost more than the
        # first forecast step's chunks.
        new_dims = [d for d in adjusted if d not in self.coords]
        present = frozenset(self._members)  # what the store holds before this call
        create_kwargs = {k: v for k, v in kwargs.items() if k != "overwrite"}
        # Coordinate arrays are one chunk each: the data arrays' shard shape is not theirs.
        coord_kwargs = {k: v for k, v in create_kwargs.items() if k != "shards"}
        coord_specs = [(d, known[d], [d]) for d in new_dims if d not in present]
        coord_specs += [(k, np.asarray(coords[k]), list(dims)) for k, dims in mapping.items() if k not in present]
        chunks = tuple(min(int(self.chunks.get(d, len(known[d]))), max(1, len(known[d]))) for d in adjusted)
        data_specs: list[tuple[str, Any, dict[str, Any]]] = []
        for name, h in zip(names, host, strict=True):
            if name in present and not overwrite:
                logger.warning("%s is already in Zarr Store. Skipping add_array.", name)
                continue
            dtype = h.dtype if h is not None else np.dtype(dtype_kw if dtype_kw is not None else "float32")
            data_specs.append((name, h, dict(shape=shape, chunks=chunks, dtype=dtype,
                                             dimension_names=list(adjusted), **create_kwargs)))
        if not self.blocking and any(name in present for name, _, _ in data_specs):
            self.flush()  # pending chunks of the old array must not land in the new one

        # Metadata of new arrays is built in memory and stored, all in one round.
        nodes: dict[str, dict[str, Any]] = {}
        values: dict[str, np.ndarray] = {}
        for name, vals, dims in coord_specs:
            nodes[name] = dict(shape=vals.shape, chunks=vals.shape, dtype=vals.dtype, dimension_names=dims,
                               **coord_kwargs)
            values[name] = vals
        replace = []
        for name, _, kw in data_specs:
            if name in present:
                replace.append((name, kw))
            else:
                nodes[name] = kw
        arrays = _sync(_create_arrays(self.root, nodes, values, replace))
        self._members.update(nodes)
        for name in nodes:  # the groups a nested name implies
            self._members.update("/".join(name.split("/")[:i]) for i in range(1, name.count("/") + 1))
        self._sync_metadata(list(nodes), whole=list(values))
        for d in new_dims:
            self.coords[d] = known[d]
            self._selector.forget(d)
        for name, h, _ in data_specs:
            self._targets[name] = self._make_target(arrays[name])
            if h is not None:
                self._write_arrays([(name, h, [np.arange(s, dtype=np.int64) for s in shape])])

    def _make_target(self, array: zarr.Array[Any]) -> _Target:
        """Describe a stored array for writes; a sharded one is registered with the shard sink."""
        t = _Target(array)
        if t.spec is not None and t.shard is not None and self._sink is not None:
            self._shards().add_array(t.spec.path, list(t.spec.shape), list(t.shard.chunks), list(t.shard.shards),
                                     t.spec.separator, t.shard.index_at_start)
        return t

    def _shards(self) -> _core.ShardSink:
        """The sink that gathers inner chunks into shards (made with the first sharded array)."""
        if self._shard_sink is not None and self._shard_pid != os.getpid():
            # Its lock pairs with a condition variable: a parent's thread may have held it at the fork.
            raise RuntimeError(
                f"this backend's sharded arrays were opened in process {self._shard_pid}, and shards under "
                "assembly stay with it: create a new backend in the forked child to write sharded arrays"
            )
        if self._shard_sink is None:
            assert self._sink is not None
            capacity = self._shard_capacity
            if capacity is None:
                # A quarter of max_buffer_bytes, taken from the engine's share while it has not started.
                capacity = max(1, self._engine.max_buffer_bytes // 4)
                if not self._engine.started:
                    self._engine.max_buffer_bytes -= capacity
            self._shard_sink = _core.ShardSink(self._sink, capacity, self.max_inflight_shards)
            self._shard_pid = os.getpid()
        return self._shard_sink

    def _gather_shards_until_complete(self, max_inflight: int, capacity: int | None) -> None:
        """Earth2Studio's AsyncZarrBackend semantics for sharded arrays (see ``_gather_shards``)."""
        self._gather_shards = True
        self.max_inflight_shards = max_inflight
        self._shard_capacity = capacity

    def _flush_shards(self, hold: Mapping[str, Sequence[tuple[int, ...]]] | None = None) -> None:
        """Write out every shard still incomplete (merging with what is stored), but those in `hold`
        (array name -> shard positions); warn about merges if asked."""
        if self._shard_sink is None or self._shard_pid != os.getpid():
            return  # in a forked child, the parent's incomplete shards are the parent's to write
        held = []
        for name, shards in (hold or {}).items():
            t = self._target(name)
            if t.spec is not None and t.shard is not None:  # gathered by the sink (else stored by zarr-python)
                held += [(t.spec.path, list(shard)) for shard in shards]
        try:
            self._shard_sink.flush(held)
        finally:
            self._warn_merges()

    def _warn_merges(self) -> None:
        if not self._gather_shards or self._shard_sink is None:
            return
        for name in self._shard_sink.stats()["merged_by_array"]:
            if name not in self._merge_warned:
                self._merge_warned.add(name)
                logger.warning(
                    "Writing into shards of array '%s' that are already present in the store, these writes fall "
                    "back to a read-modify-write of the entire shard. This happens when `close()` / `flush()` is "
                    "called mid run or when restarting into an existing store with shards left incomplete.", name)

    def _note_shards(self, name: str, t: _Target, index: Sequence[np.ndarray]) -> None:
        shards = tuple(int(s) for s in (t.array.shards or ()))
        entry = self._shards_written.setdefault(name, (list(t.dims), list(shards), set(), []))
        entry[2].update(ranks.shards_touched(index, shards))
        ranges = [(int(np.min(i)), int(np.max(i))) for i in index]
        entry[3][:] = ranges if not entry[3] else [(min(a[0], b[0]), max(a[1], b[1]))
                                                   for a, b in zip(entry[3], ranges, strict=True)]

    def _target(self, name: str) -> _Target:
        t = self._targets.get(name)
        if t is None:
            t = self._targets[name] = self._make_target(get_array(self.root, name))
        return t

    @serialized
    def write(self, x: Any, coords: CoordSystem, array_name: str | list[str]) -> None:
        """Write tensor(s) at `coords` into the named array(s).

        All inputs are checked before anything is stored: on a bad input the
        store is unchanged. When this returns, the data is in the store.

        Parameters
        ----------
        x : torch.Tensor | numpy.ndarray | list of them
            Data, one per array name; any device, any strides.
        coords : CoordSystem
            Coordinates of `x`, one entry per axis, in the array's order.
        array_name : str | list[str]
            Array(s) to write; missing ones are created from `coords`.
        """
        self._check_open("write")
        xs, names = inputs.write_inputs(x, array_name)
        adjusted, index = self._selector.select(coords, "writing")
        dims = tuple(adjusted)
        planned = []
        device_ok = not self.blocking and self._engine.get().cuda_available
        for xi, name in zip(xs, names, strict=True):
            arr = inputs.to_input(xi, device_ok, "x", _COMPLEX)
            inputs.check_shape(arr, index, dims, name)
            if name in self._members:
                t = self._target(name)
                if t.dims != dims:
                    raise CoordinateError(
                        f"array {name!r} has dimensions {list(t.dims)} but coords give {list(dims)}; "
                        "pass coords (and data axes) in the array's order"
                    )
                arr = inputs.cast_for_array(arr, t.dtype, name)
            planned.append((name, arr))
        for name, _ in planned:
            if name not in self._members:
                if self._coord is not None:
                    raise ranks.DistributedError(
                        f"rank {self._coord.rank}: array {name!r} does not exist; in a multi-rank run create "
                        "arrays with add_array (called on every rank) before writing"
                    )
                self.add_array(adjusted, name)
        if self._coord is not None:  # before any data moves
            for name, _ in planned:
                t = self._target(name)
                ranks.check_whole_chunks(self._coord.rank, name, t.dims, t.array.shape, t.array.chunks, index)
            for name, _ in planned:  # shards: which ranks wrote which is compared at close
                t = self._target(name)
                if t.array.shards is not None:
                    self._note_shards(name, t, index)
        self._write_arrays([(name, arr, index) for name, arr in planned])

    def _write_arrays(self, items: list[tuple[str, Any, list[np.ndarray]]]) -> None:
        """Store several arrays' data; native ones as one batch (chunks of all arrays in parallel)."""
        batch: list[_core.HostRequest] = []
        device_batch: list[_core.DeviceRequest] = []
        device_tensors: list[Any] = []
        sharded = False
        for name, arr, index in items:
            t = self._target(name)
            arr = inputs.cast_for_array(arr, t.dtype, name)
            sink: _core.Sink | None = self._sink
            if sink is not None and t.shard is not None and t.spec is not None:
                sink = self._shards()
                sharded = True
            spec = t.spec if sink is not None else None  # None: written through zarr-python
            if isinstance(arr, inputs.DeviceTensor):
                if spec is not None and sink is not None:
                    dt = arr.tensor.contiguous()  # on the device, ordered on the current stream
                    device_tensors.append(dt)
                    device_batch.append((spec, sink, (dt.data_ptr(), list(dt.shape), dt.element_size()), index))
                    continue
                arr = arr.tensor.cpu().numpy()
            if spec is not None and sink is not None:
                batch.append((spec, sink, arr, index))
            else:
                t.array.set_orthogonal_selection(_as_slices(index), arr)
        if not batch and not device_batch:
            return
        if self._uploader is not None:
            self._uploader.start()  # after a suspend (AsyncZarrBackend.close) the thread starts again
        engine = self._engine.get()
        if self.blocking:
            try:
                engine.write_batch(batch)
            finally:
                if sharded and not self._gather_shards:
                    self._flush_shards()  # as zarr-python: this write's shards are stored when it returns
            if sharded:
                self._warn_merges()
            if self._uploader is not None:
                self._wait_uploads()
                self._uploader.raise_failures()
            return
        # An earlier write's failure surfaces here, once this write is staged (it lands).
        checks = [engine.check] if self._uploader is None else [engine.check, self._uploader.raise_failures]
        with self._staging(*checks):
            if batch:
                engine.submit(batch)
                self._mark_written()  # only once staged: a refused batch leaves nothing pending
            if device_batch:
                self._submit_device(engine, device_batch, device_tensors)
                self._mark_written()

    def _submit_device(self, engine: Any, requests: list[Any], tensors: list[Any]) -> None:
        import torch

        devices = {t.device for t in tensors}
        if len(devices) != 1:
            raise ValueError(f"x: all tensors of one write must be on one device, got {sorted(map(str, devices))}")
        (device,) = devices
        with torch.cuda.device(device):
            stream = torch.cuda.current_stream(device).cuda_stream
            seq = engine.submit_device(requests, stream)
        # The producer stream already waits for the copy; holding the tensors
        # until it completed also covers memory freed to other streams.
        self._device_refs.append((seq, tensors))
        done = engine.copies_done()
        while self._device_refs and self._device_refs[0][0] <= done:
            self._device_refs.popleft()

    @serialized
    def read(self, coords: CoordSystem, array_name: str, device: Any = "cpu") -> tuple[Any, CoordSystem]:
        """Read the values of `array_name` at `coords` as a torch tensor on `device`."""
        self._check_open("read")
        if not self.blocking:
            self.flush()
        _, index = self._selector.select(coords, "reading")
        values = get_array(self.root, array_name).get_orthogonal_selection(tuple(index))
        import torch

        return torch.as_tensor(values, device=device), coords
