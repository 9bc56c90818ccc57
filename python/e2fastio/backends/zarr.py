"""``ZarrBackend``: Earth2Studio's Zarr IO backend, with chunks written by native threads.

An adapter: Earth2Studio's surface and the store's nodes (root group,
members, coordinates, ``add_array``) here; every chunk goes through
:class:`e2fastio._write.pipeline.ZarrPipeline`. Size: the class is about 340
lines besides its docstring; a third of it is ``add_array``, whose metadata
requests must all run in one round (one round trip on an object store).
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from e2fastio._write import device_encode, inputs, ranks
from e2fastio._write.budget import NONBLOCKING_SPLIT, engine_kwargs, split_buffer
from e2fastio._write.engine import EngineHandle
from e2fastio._write.lifecycle import Lifecycle, serialized
from e2fastio._write.pipeline import ZarrPipeline
from e2fastio._write.zarr_arrays import dimension_names, get_array
from e2fastio._write.zarr_nodes import check_group_kwargs, create_arrays, open_root, read_whole, sync
from e2fastio.stores.durable import MetadataSync
from e2fastio.stores.remote import Location, RemoteOptions, resolve

if TYPE_CHECKING:
    from obstore.store import ObjectStore
    from zarr.abc.store import Store

logger = logging.getLogger(__name__)

CoordSystem = Mapping[str, np.ndarray]

DEFAULT_CHUNKS = {"ensemble": 1, "time": 1, "lead_time": 1, "variable": 1}
_COMPLEX = "c"  # Zarr v3 stores complex64/complex128 (Earth2Studio writes what torch gives it)
_NEW_ARRAY_DTYPE = np.dtype("float32")  # what write() creates a missing array with, as Earth2Studio


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
        Chunks for object stores are uploaded by :class:`e2fastio.stores.uploads.Uploader`
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
    device_compression : {"auto", True, False}, optional
        Non-blocking writes of CUDA tensors to arrays stored as Blosc zstd
        (byte shuffle or none): compress on the GPU with nvCOMP 6 (the
        ``gpu`` extra) so that only compressed bytes cross PCIe, into
        standard Blosc1 chunks. ``"auto"`` (default) does so where it can and
        compresses on the host otherwise (other codecs, bitshuffle, a write
        that covers chunks in part, no nvCOMP); ``True`` also raises at once
        when nvCOMP does not load; ``False`` always compresses on the host.
        ``stats()["device_encode"]`` counts each way and says why.
    """

    _pipeline: ZarrPipeline

    def __init__(
        self,
        file_name: str | os.PathLike[str] | Store | ObjectStore | Location | None = None,
        chunks: dict[str, int] = DEFAULT_CHUNKS,
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
        device_compression: bool | str = "auto",
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
        check_group_kwargs(backend_kwargs)
        device_encode.check_choice(device_compression)
        # Checked before the store is opened (a local one is created): a bad value leaves nothing behind.
        group = ranks.resolve_group(process_group)
        self.blocking = blocking
        ekw = engine_kwargs(threads, max_buffer_bytes)
        ring = 0
        if not blocking:
            ring = split_buffer(ekw["max_buffer_bytes"], "a non-blocking ZarrBackend",
                                NONBLOCKING_SPLIT)["the staging ring"]
        engine = EngineHandle(**ekw, ring_bytes=ring, background=not blocking)
        if isinstance(file_name, Location):  # resolved by AsyncZarrBackend or IceChunkBackend
            loc = file_name
        else:
            options = RemoteOptions(concurrency=upload_concurrency, retries=upload_retries, timeout=upload_timeout)
            loc = resolve(file_name, store_kwargs=store_kwargs, fsync=fsync, direct_io=direct_io, options=options)
        self.location = loc.description
        self.store = loc.store
        self.consolidate_metadata = bool(consolidate_metadata)
        self._metadata = MetadataSync(loc.local_path if fsync else None)  # what zarr-python writes, fsynced too
        try:
            coord = ranks.Coordinator(group, distributed_timeout) if group is not None else None
            created = False
            if coord is None:
                self.root, created = open_root(self.store, dict(backend_kwargs))
            else:  # rank 0 creates (or overwrites) the root group; the others open it after
                root = coord.on_root(lambda: zarr.group(self.store, **dict(backend_kwargs)), "creating the store")
                self.root = root if root is not None else zarr.open_group(self.store, mode="r+")
        except BaseException:
            if loc.uploader is not None:
                loc.uploader.close()
            raise
        self.zarr_codecs = zarr_codecs
        self._pipeline = ZarrPipeline(self.root, loc, engine, blocking=blocking, coord=coord,
                                      device_compression=device_compression)
        self._metadata.sync([""])
        # Closed at exit when still open (collective steps of an opted-in multi-rank run are not
        # attempted at exit for blocking backends: the other ranks may be gone); finished by a
        # finalizer if collected while open.
        self._start_lifecycle(where=self.location, engine=engine, uploader=loc.uploader, nonblocking=not blocking,
                              outcomes=self._pipeline.outcomes)
        if loc.owner is not None:
            self._kind = loc.owner  # what the user is told at exit names the class they made
        if blocking and coord is not None:
            self._end_exit_registration()
        if not blocking:
            engine.get()  # start now: the staging ring faults its pages in while the model runs

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
        self.coords.update(zip(dims, read_whole(self.root, [members[d] for d in dims]), strict=True))
        for name, arr in members.items():
            if name in self.coords:
                continue
            for c, d in zip(arr.chunks, dimension_names(arr), strict=False):
                self.chunks[d] = int(c)

    @property
    def pipeline(self) -> ZarrPipeline:
        """The write pipeline underneath (engine, uploads, shards): for AsyncZarrBackend, IceChunkBackend
        and diagnostics; see ``e2fastio._write.pipeline``."""
        return self._pipeline

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
        self._pipeline.drain()

    def _idle(self) -> bool:
        return self._pipeline.idle()

    @serialized
    def close(self) -> None:
        """Store what is pending, stop the encoder threads, release staging memory. Idempotent.

        Raises the first background error (after every other chunk was stored).
        """
        self._close(None)

    def _close(self, caller_error: Exception | None) -> None:
        if not self._end_lifecycle() or self._pipeline.forked_copy():
            return  # closed already, or a forked child's copy (the parent stores its own pending chunks)
        local_error = self._pipeline.finish()
        coord = self._pipeline.coord
        if coord is not None:  # collective: drain, barrier, outcomes, consolidate
            failures = coord.outcomes(local_error or caller_error)
            if not failures:
                if coord.is_root and self.consolidate_metadata:
                    zarr.consolidate_metadata(self.store)
                    self._metadata.sync([""])
                coord.barrier("close (after consolidation)")
            if local_error is None and caller_error is None:
                coord.raise_for_others(failures)
        elif self.consolidate_metadata and local_error is None and caller_error is None:
            zarr.consolidate_metadata(self.store)
            self._metadata.sync([""])
        if local_error is not None:
            raise local_error

    def stats(self) -> dict[str, object]:
        """Counters of the native pipeline (chunks, bytes, staging memory).

        ``write_paths`` says how each array written so far is stored:
        ``"native"``, ``"native, sharded: ..."`` (shards assembled by the core,
        counted under ``shards``) or ``"zarr-python (<reason>)"``.
        """
        return self._pipeline.stats()

    def _check_open(self, what: str) -> None:
        super()._check_open(what)
        self._pipeline.check_process(what)

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
        c = self._pipeline.coord
        if c is None:
            self._add_array(coords, names, host, kwargs)
            return
        c.agree_on_arrays(coords, names, kwargs.get("dtype", host[0].dtype if host and host[0] is not None else None))
        c.on_root(lambda: self._add_array(coords, names, host, kwargs), f"add_array({names})")
        if not c.is_root:  # adopt what rank 0 created
            adjusted, mapping = inputs.convert_multidim_to_singledim(coords)
            self._members.update(adjusted, mapping, names)
            new_dims = [d for d in adjusted if d not in self.coords]
            for dim, values in zip(new_dims, read_whole(self.root, new_dims), strict=True):
                self.coords[dim] = values
                self._selector.forget(dim)
            for name in names:
                self._pipeline.forget(name)

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
            dtype = h.dtype if h is not None else np.dtype(dtype_kw if dtype_kw is not None else _NEW_ARRAY_DTYPE)
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
        arrays = sync(create_arrays(self.root, nodes, values, replace))
        self._members.update(nodes)
        for name in nodes:  # the groups a nested name implies
            self._members.update("/".join(name.split("/")[:i]) for i in range(1, name.count("/") + 1))
        self._metadata.sync(list(nodes), whole=list(values))
        for d in new_dims:
            self.coords[d] = known[d]
            self._selector.forget(d)
        for name, h, _ in data_specs:
            t = self._pipeline.adopt(name, arrays[name])
            if h is not None:
                whole = [np.arange(s, dtype=np.int64) for s in shape]
                plan = inputs.WritePlan([(name, inputs.cast_for_array(h, t.dtype, name))], adjusted, whole, [])
                self._pipeline.write(plan, rank_checks=False)  # rank 0 alone, for every rank

    def _stored(self, name: str) -> tuple[tuple[str, ...] | None, np.dtype[Any]]:
        """The dimensions and dtype of array `name`; (None, the dtype write() creates it with) if missing."""
        if name not in self._members:
            return None, _NEW_ARRAY_DTYPE
        t = self._pipeline.target(name)
        return t.dims, t.dtype

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
        device_ok = not self.blocking and self._pipeline.engine.get().cuda_available
        plan = inputs.plan_write(x, coords, array_name, self._selector, self._stored, device_ok=device_ok,
                                 extra_kinds=_COMPLEX)
        coord = self._pipeline.coord
        if plan.missing and coord is not None:
            raise ranks.DistributedError(
                f"rank {coord.rank}: array {plan.missing[0]!r} does not exist; in a multi-rank run create "
                "arrays with add_array (called on every rank) before writing"
            )
        for name in plan.missing:
            self.add_array(plan.coords, name)
        self._pipeline.write(plan)

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
