"""``NetCDF4Backend``: Earth2Studio's NetCDF4 backend, with chunks compressed on all cores.

The file and its NetCDF-4 metadata (dimension scales, coordinate variables,
attributes) are written with h5netcdf; each data chunk is gathered and, when
compressed, byte-shuffled and deflated (zlib, as HDF5's filters 2 and 1) by
the native pool, then stored with HDF5's direct chunk write from the caller's
thread (HDF5 is not thread-safe). Every NetCDF-4 reader opens the result
without plugins.
"""

from __future__ import annotations

import logging
import os
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from e2fastio import _core, _data
from e2fastio._engine import EngineHandle
from e2fastio._zarr_native import engine_kwargs
from e2fastio.errors import BackendClosedError, CoordinateError, surface_background_error
from e2fastio.zarr_backend import _open_lock, _open_nonblocking

logger = logging.getLogger(__name__)

CoordSystem = Mapping[str, np.ndarray]

TIME_UNITS = "hours since 0001-01-01 00:00:00.0"
_EPOCH = np.datetime64("0001-01-01T00:00:00", "s")
_TD_UNITS = {"h": "hours", "m": "minutes", "s": "seconds", "D": "days"}
_REV_TD_UNITS = {v: k for k, v in _TD_UNITS.items()}


def _import_h5netcdf() -> Any:
    try:
        import h5netcdf
    except ImportError as err:  # pragma: no cover - h5netcdf is a test dependency
        raise ImportError(
            "e2fastio.NetCDF4Backend requires the optional 'h5netcdf' package: pip install h5netcdf"
        ) from err
    return h5netcdf


class NetCDF4Backend:
    """A NetCDF-4 backend with Earth2Studio's ``NetCDF4Backend`` interface.

    Parameters
    ----------
    file_name : str
        Path of the ``.nc`` file.
    backend_kwargs : dict, optional
        ``mode``: ``"w"`` (create or overwrite), ``"r+"``/``"a"`` (append to an
        existing file; ``"a"`` creates it when missing); ``diskless``: keep the
        file in memory only. By default ``{"mode": "r+", "diskless": False}``.
    compression : None or "zlib", keyword-only
        Compress data variables with shuffle + deflate (NetCDF-4's standard).
    complevel : int, keyword-only
        zlib level 1-9 (default 4).
    shuffle : bool, keyword-only
        Byte shuffle before deflate (default True).
    chunks : dict[str, int], keyword-only
        Chunk sizes per dimension; by default one chunk per field (1 along
        every dimension but the last two).
    threads, max_buffer_bytes : keyword-only
        As for :class:`e2fastio.ZarrBackend`.
    blocking : bool, keyword-only
        ``True`` (default): ``write`` returns when the data is in the file.
        ``False``: ``write`` stages the data (the caller may reuse its tensor at
        once) and returns; native threads encode and write in place, and the
        encoded chunks of compressed variables are handed to HDF5 (from the
        caller's thread, at the next call: HDF5 is not thread-safe). ``flush``,
        ``read``, ``[]`` and ``close`` store everything first; background errors
        are raised at the next ``write``/``flush``/``close``.
    process_group : None | "world" | torch.distributed ProcessGroup, keyword-only
        ``{rank}`` and ``{world_size}`` in `file_name` are replaced by this
        process's rank and the number of ranks (in the group given here, else
        in the default ``torch.distributed`` group when it is initialised, else
        0 and 1), so one name gives one file per rank. ``None`` (default, also
        ``False``): nothing more; a name without them (e.g. ``f"out_{rank}.nc"``
        formatted by the caller) is used as given. Opt-in, ``"world"`` (the
        default group) or a ``ProcessGroup`` of more than one rank: `file_name`
        must contain ``{rank}``, because ranks cannot share one HDF5 file
        without MPI.
    """

    def __init__(
        self,
        file_name: str | os.PathLike[str],
        backend_kwargs: dict[str, Any] = {"mode": "r+", "diskless": False},  # noqa: B006 - Earth2Studio's signature
        *,
        compression: str | None = None,
        complevel: int = 4,
        shuffle: bool = True,
        chunks: Mapping[str, int] | None = None,
        threads: int | None = None,
        max_buffer_bytes: int | None = None,
        process_group: Any = None,
        blocking: bool = True,
    ) -> None:
        h5netcdf = _import_h5netcdf()
        file_name = _per_rank_file_name(file_name, process_group)
        kw = dict(backend_kwargs)
        mode = kw.pop("mode", "r+")
        diskless = bool(kw.pop("diskless", False))
        kw.pop("format", None)
        if mode not in ("w", "r+", "a"):
            raise ValueError(f"backend_kwargs['mode'] must be 'w', 'r+' or 'a' for writing, got {mode!r}")
        if compression not in (None, "zlib"):
            raise ValueError(f"compression must be None or 'zlib', got {compression!r}")
        if not isinstance(complevel, int) or not 1 <= complevel <= 9:
            raise ValueError(f"complevel must be an int in 1..9, got {complevel!r}")
        for dim, size in (chunks or {}).items():
            if not isinstance(size, (int, np.integer)) or size < 1:
                raise ValueError(f"chunks[{dim!r}] must be a positive int, got {size!r}")
        path = os.fspath(file_name)
        if mode == "r+" and not diskless and not os.path.exists(path):
            raise FileNotFoundError(f"{path}: mode 'r+' appends to an existing file; use mode 'w' to create one")
        # No HDF5 file lock: after flush(), other processes may open the file to
        # read what was written so far (HDF5 would otherwise refuse them).
        h5kw: dict[str, Any] = {"locking": False, **kw}
        if diskless:
            h5kw.update(driver="core", backing_store=False)
            mode = "w" if mode == "r+" and not os.path.exists(path) else mode
        self.file_name = path
        h5mode = "a" if mode in ("r+", "a") else "w"
        self._h5file = None
        if not diskless and not kw:
            # Our own HDF5 file access: no raw-data sieve buffer (contiguous data is
            # written in place by the core, HDF5 must never serve stale bytes of it),
            # 4 KiB-aligned large allocations (O_DIRECT), no file lock.
            self._h5file = _open_h5py(path, h5mode, align=compression is None)
            self.root = h5netcdf.File(self._h5file, h5mode)
        else:
            self.root = h5netcdf.File(path, h5mode, **h5kw)
        self.compression = compression
        self.complevel = complevel
        self.shuffle = shuffle
        self.chunks = dict(chunks or {})
        ekw = engine_kwargs(threads, max_buffer_bytes)
        # A staging ring lets HDF5 store finished chunks while others are still encoding.
        self._engine = EngineHandle(**ekw, ring_bytes=ekw["max_buffer_bytes"] * 3 // 4)
        if not isinstance(blocking, bool):
            raise TypeError(f"blocking must be True or False, got {blocking!r}")
        self.blocking = blocking
        self.flush_timeout = 600.0
        self._sink = _core.CollectSink()
        self._closed = False
        self._regions: dict[str, tuple[_core.ArraySpec, Any] | None] = {}
        if not blocking:
            with _open_lock:
                _open_nonblocking.add(self)  # drained (with a warning) at exit if never closed
        self._specs: dict[str, _core.ArraySpec] = {}
        self.coords: OrderedDict[str, np.ndarray] = OrderedDict()
        self._selector = _data.Selector(
            self.coords, "NetCDF store", lambda k: self.root.variables[k].shape if k in self.root.variables else None)
        for dim in self.root.dimensions:
            if dim in self.root.variables:
                self.coords[dim] = self._decode_coord(self.root.variables[dim])

    # ------------------------------------------------------------------ coordinates
    @staticmethod
    def _decode_coord(var: Any) -> np.ndarray:
        values = var[...]
        units = var.attrs.get("units", "")
        if units == TIME_UNITS:
            return _EPOCH + np.round(np.asarray(values) * 3600).astype("timedelta64[s]")
        if var.attrs.get("dtype", "") == "timedelta64[ns]" and units in _REV_TD_UNITS:
            return np.asarray(values).astype(f"timedelta64[{_REV_TD_UNITS[units]}]")
        values = np.asarray(values)
        if values.dtype == object:
            values = values.astype(str)
        return values

    def add_dimension(self, name: str, shape: tuple | list, data: np.ndarray) -> None:
        """Add a dimension and its coordinate variable (Earth2Studio's encoding)."""
        import h5py

        if len(shape) != 1:
            raise ValueError("Error, only 1-dimension coordinates are supported.")
        data = np.asarray(data)
        self.root.dimensions[name] = shape[0]
        if np.issubdtype(data.dtype, np.datetime64):
            var = self.root.create_variable(name, (name,), dtype="f8")
            var.attrs["units"] = TIME_UNITS
            var.attrs["calendar"] = "proleptic_gregorian"
            var[...] = (data.astype("datetime64[s]") - _EPOCH) / np.timedelta64(1, "h")
        elif np.issubdtype(data.dtype, np.timedelta64):
            unit = next((u for u in ("h", "m", "s") if np.all(data % np.timedelta64(1, u) == np.timedelta64(0))), "s")
            var = self.root.create_variable(name, (name,), dtype="i8")
            var.attrs["units"] = _TD_UNITS[unit]
            var.attrs["calendar"] = "gregorian"
            var.attrs["dtype"] = "timedelta64[ns]"  # xarray's target dtype
            var[...] = (data / np.timedelta64(1, unit)).astype("i8")
        elif data.dtype.kind in "US":
            var = self.root.create_variable(name, (name,), dtype=h5py.string_dtype())
            var[...] = data.astype(object)
        else:
            var = self.root.create_variable(name, (name,), dtype=data.dtype)
            var[...] = data

    # ------------------------------------------------------------------ mapping protocol
    def __contains__(self, item: str) -> bool:
        return item in self.root.variables

    def __getitem__(self, item: str) -> Any:
        if not self._closed:
            self._drain()  # what readers get must include every write so far
        return self.root.variables[item]

    def __len__(self) -> int:
        return len(self.root.variables)

    def __iter__(self) -> Iterator[str]:
        return iter(self.root.variables)

    def __enter__(self) -> NetCDF4Backend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_open(self, what: str) -> None:
        if self._closed:
            raise BackendClosedError(f"cannot {what}: this NetCDF4Backend was closed; create a new one")

    def flush(self) -> None:
        """Flush HDF5's buffers: another process can then read everything written so far."""
        self._check_open("flush")
        self._drain()
        self.root.flush()  # h5netcdf's metadata (_NCProperties, dimension ids)
        self.root._h5file.flush()  # h5netcdf does not flush HDF5's caches itself

    def close(self) -> None:
        """Close the file and stop the encoder threads. Idempotent."""
        if self._closed:
            return
        self._closed = True
        with _open_lock:
            _open_nonblocking.discard(self)
        pending_error: Exception | None = None
        try:
            self._drain()
        except Exception as err:  # raised after the file is closed
            pending_error = err
        try:
            try:
                self.root.close()
            finally:
                if self._h5file is not None and self._h5file.id.valid:
                    self._h5file.close()
        finally:
            self._engine.close()
        if pending_error is not None:
            raise pending_error

    @property
    def closed(self) -> bool:
        return self._closed

    def stats(self) -> dict[str, object]:
        return self._engine.stats()

    # ------------------------------------------------------------------ arrays
    def add_array(self, coords: CoordSystem, array_name: str | list[str], data: Any = None) -> None:
        """Add data variable(s) (and any new dimensions) to the file."""
        self._check_open("add_array")
        names, host = _data.add_array_inputs(array_name, data)
        adjusted, mapping = _data.convert_multidim_to_singledim(coords)
        shape = tuple(len(self.coords[d]) if d in self.coords else len(v) for d, v in adjusted.items())
        for h, n in zip(host, names, strict=True):
            if h is not None and h.shape != shape:
                raise _data.DataShapeError(f"data for array {n!r} has shape {h.shape} but coords give {shape}")
        for dim, values in adjusted.items():
            if dim not in self.coords:
                self.add_dimension(dim, np.shape(values), values)
                self.coords[dim] = np.asarray(values)
                self._selector.forget(dim)
        for key, dims in mapping.items():
            if key not in self.root.variables:
                values = np.asarray(coords[key])
                self.root.create_variable(key, tuple(dims), data=values)
        dims = tuple(adjusted)
        for name, h in zip(names, host, strict=True):
            if name in self.root.variables:
                logger.warning("%s is already in NetCDF Store. Skipping add_array.", name)
                continue
            dtype = h.dtype if h is not None else np.dtype("float32")
            if self.compression == "zlib":
                comp = dict(compression="gzip", compression_opts=self.complevel, shuffle=self.shuffle)
                self.root.create_variable(name, dims, dtype=dtype, chunks=self._chunk_shape(dims, shape), **comp)
            elif self.chunks:
                self.root.create_variable(name, dims, dtype=dtype, chunks=self._chunk_shape(dims, shape))
            else:
                # Uncompressed, no chunks asked for: contiguous, as netCDF4-python lays it out;
                # HDF5 writes straight from the data (one copy), nothing to parallelise.
                # fill_time "never": HDF5 would otherwise write fill values over the whole
                # variable at its first write (writing every byte twice); unwritten parts
                # read back as 0 (file holes).
                # Storage allocated at creation: its place in the file is known, so
                # writes go there directly (see _write_in_place).
                kw = {"dcpl": _early_allocation()} if self._h5file is not None else {}
                self.root.create_variable(name, dims, dtype=dtype, fill_time="never", **kw)
            if h is not None:
                self._store([(name, h, [np.arange(s, dtype=np.int64) for s in shape])])

    def _chunk_shape(self, dims: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
        default = [1] * max(len(shape) - 2, 0) + list(shape[-2:])
        out = tuple(min(int(self.chunks.get(d, default[i])), max(shape[i], 1)) for i, d in enumerate(dims))
        return tuple(max(c, 1) for c in out)

    def _spec(self, name: str) -> _core.ArraySpec:
        spec = self._specs.get(name)
        if spec is None:
            var = self.root.variables[name]
            ds = var._h5ds
            codec = _core.CodecSpec()
            dtype = np.dtype(ds.dtype)
            codec.itemsize = dtype.itemsize
            codec.big_endian = dtype.byteorder == ">"
            filters = ds._filters
            codec.deflate = "gzip" in filters
            codec.deflate_level = int(filters.get("gzip", 4) or 4)
            codec.hdf5_shuffle = "shuffle" in filters
            if set(filters) - {"gzip", "shuffle"}:
                raise ValueError(f"variable {name!r} uses HDF5 filters {sorted(filters)}; "
                                 "only shuffle + zlib are written natively")
            spec = _core.ArraySpec()
            spec.path = name
            spec.shape = list(ds.shape)
            spec.chunks = list(ds.chunks)
            spec.codec = codec
            fill = ds.fillvalue if ds.fillvalue is not None else 0
            spec.fill_value = np.asarray(fill, dtype=dtype.newbyteorder("=")).tobytes()
            spec.validate()
            self._specs[name] = spec
        return spec

    def write(self, x: Any, coords: CoordSystem, array_name: str | list[str]) -> None:
        """Write tensor(s) at `coords`; every input is checked before anything is stored."""
        self._check_open("write")
        xs, names = _data.write_inputs(x, array_name)
        adjusted, index = self._selector.select(coords)
        dims = tuple(adjusted)
        planned = []
        for xi, name in zip(xs, names, strict=True):
            arr = _data.to_host_array(xi, "x")
            _data.check_shape(arr, index, dims, name)
            if name in self.root.variables:
                var = self.root.variables[name]
                if tuple(var.dimensions) != dims:
                    raise CoordinateError(
                        f"array {name!r} has dimensions {list(var.dimensions)} but coords give {list(dims)}; "
                        "pass coords (and data axes) in the array's order"
                    )
                arr = _data.cast_for_array(arr, np.dtype(var.dtype), name)
            planned.append((name, arr))
        for name, _ in planned:
            if name not in self.root.variables:
                self.add_array(adjusted, name)
        self._store([(name, arr, index) for name, arr in planned])

    def _store(self, items: list[tuple[str, np.ndarray, list[np.ndarray]]]) -> None:
        batch = []
        for name, arr, index in items:
            var = self.root.variables[name]
            arr = _data.cast_for_array(arr, np.dtype(var.dtype), name)
            if var._h5ds.chunks is None:
                region = self._region(name)
                if region is None or 0 in var.shape:
                    self._drain()
                    _write_box(var, index, arr)  # contiguous layout HDF5 writes (diskless, big-endian)
                else:
                    batch.append((region[0], region[1], arr, index))
                continue
            spec = self._spec(name)
            if _data.first_partial_chunk(index, spec.shape, spec.chunks) is None:
                batch.append((spec, self._sink, arr, index))
            else:
                self._drain()  # HDF5 merges partial chunks: pending writes of them first
                _write_box(var, index, arr)  # partial chunks: HDF5 merges (single-threaded)
        if not batch:
            return
        engine = self._engine.get()
        if self.blocking and all(isinstance(sink, _core.FileRegionSink) for _, sink, _, _ in batch):
            engine.write_batch(batch)  # in place, straight from the caller's data: no staging copy
            return
        engine.submit(batch)  # staged: the caller's data may change from here on
        if self.blocking:
            self._hand_over(wait=True)
            engine.check()
            return
        self._hand_over(wait=False)  # what is ready; the rest at the next call
        self._background(engine.check)  # an earlier failure; this write is staged and lands

    def _hand_over(self, wait: bool) -> None:
        """Hand encoded chunks to HDF5 from this (the caller's) thread: HDF5 is not thread-safe.

        With `wait`, keep handing them over as they finish until nothing is
        pending (the pool encodes the rest meanwhile). Every encoded chunk is
        stored even if another failed.
        """
        if not self._engine.started:
            return
        engine = self._engine.get()
        deadline = time.monotonic() + self.flush_timeout
        while True:
            idle = engine.wait_idle(0.002) if wait else engine.pending_chunks == 0
            for key, data in self._sink.take():
                name, _, *cc = key.split("/")
                spec = self._specs[name]
                offsets = tuple(int(c) * ch for c, ch in zip(cc, spec.chunks, strict=True))
                self.root.variables[name]._h5ds.id.write_direct_chunk(offsets, data, filter_mask=0)
            if idle or not wait:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{engine.pending_chunks} chunk(s) still pending after {self.flush_timeout:g} s")

    def _drain(self) -> None:
        """Non-blocking: store everything pending; raise a background error (once)."""
        if self.blocking or not self._engine.started:
            return
        self._hand_over(wait=True)
        self._background(self._engine.get().check)

    def _background(self, fn: Any) -> None:
        surface_background_error(fn, lambda: self._engine.stats().get("failed_chunks", 0))

    def _region(self, name: str) -> tuple[_core.ArraySpec, Any] | None:
        """(spec, sink) writing a contiguous variable in place, or None (HDF5 writes it then).

        The variable's bytes sit at a fixed file offset in C order; the core
        cuts writes into one-field "chunks" (each a contiguous byte range) and
        writes them there on the pool (O_DIRECT interior, pwrite edges); partial
        fields are merged with what the file holds (pread). HDF5 holds no raw
        data of it (no sieve buffer), so nothing it caches goes stale.
        """
        if name in self._regions:
            return self._regions[name]
        region = None
        ds = self.root.variables[name]._h5ds
        dtype = np.dtype(ds.dtype)
        offset = ds.id.get_offset() if self._h5file is not None else None
        if offset is not None and dtype.byteorder != ">" and dtype.kind in "fiub" and ds.ndim >= 1:
            shape = list(ds.shape)
            chunks = [1] * max(len(shape) - 2, 0) + shape[-2:]
            codec = _core.CodecSpec()
            codec.itemsize = dtype.itemsize
            spec = _core.ArraySpec()
            spec.path = name
            spec.shape = shape
            spec.chunks = [max(c, 1) for c in chunks]
            spec.codec = codec
            spec.fill_value = bytes(dtype.itemsize)
            spec.validate()
            sink = _core.FileRegionSink(self.file_name, int(offset), name, spec.shape, spec.chunks, dtype.itemsize)
            region = (spec, sink)
        self._regions[name] = region
        return region

    def read(self, coords: CoordSystem, array_name: str, device: Any = "cpu") -> tuple[Any, CoordSystem]:
        """Read `array_name` at `coords` as a torch tensor on `device`."""
        self._check_open("read")
        self._drain()
        _, index = self._selector.select(coords, "reading")
        var = self.root.variables[array_name]
        box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in index)
        values = np.asarray(var[box])[np.ix_(*[i - i.min() for i in index])]
        import torch

        return torch.as_tensor(values, device=device), coords


def _open_h5py(path: str, mode: str, align: bool) -> Any:
    """An h5py File as h5netcdf would open it, with our file-access properties."""
    import h5py

    fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
    fapl.set_fclose_degree(h5py.h5f.CLOSE_STRONG)
    fapl.set_sieve_buf_size(0)
    if align:
        fapl.set_alignment(1 << 20, 4096)  # large objects (variable data) on 4 KiB boundaries
    try:
        fapl.set_file_locking(False, True)
    except AttributeError:  # pragma: no cover - HDF5 < 1.12.1: locking is the environment's business
        pass
    path_b = os.fsencode(path)
    if mode == "a" and os.path.exists(path):
        fid = h5py.h5f.open(path_b, h5py.h5f.ACC_RDWR, fapl=fapl)
    else:
        fcpl = h5py.h5p.create(h5py.h5p.FILE_CREATE)  # h5netcdf's track_order=True
        order = h5py.h5p.CRT_ORDER_TRACKED | h5py.h5p.CRT_ORDER_INDEXED
        fcpl.set_link_creation_order(order)
        fcpl.set_attr_creation_order(order)
        fid = h5py.h5f.create(path_b, h5py.h5f.ACC_TRUNC, fapl=fapl, fcpl=fcpl)
    return h5py.File(fid)


def _early_allocation() -> Any:
    import h5py

    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return dcpl


def _write_box(var: Any, index: list[np.ndarray], arr: np.ndarray) -> None:
    """Orthogonal write through HDF5: a box directly, else read the bounding box, merge, write back."""
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in index)
    contiguous = (len(i) == b.stop - b.start and (len(i) < 2 or bool(np.all(np.diff(i) == 1)))
                  for i, b in zip(index, box, strict=True))
    if all(contiguous):
        _write_c_pieces(var._h5ds, box, arr)
        return
    block = np.asarray(var[box])
    block[np.ix_(*[i - i.min() for i in index])] = arr
    var[box] = block


def _write_c_pieces(ds: Any, box: tuple[slice, ...], arr: np.ndarray) -> None:
    """Write `arr` into `box` as its largest C-contiguous pieces.

    h5py copies a strided source element by element, and a contiguous copy
    would fault in fresh pages every write; the pieces of a split_coords view
    (one member's field, say) are contiguous already and go to HDF5 as they are.
    """
    lead = 0
    while lead < arr.ndim and not arr[(0,) * lead].flags.c_contiguous:
        lead += 1
    if lead == arr.ndim:  # no contiguous piece larger than one element
        ds[box] = np.ascontiguousarray(arr)
        return
    for idx in np.ndindex(*arr.shape[:lead]):
        sub = tuple(slice(b.start + i, b.start + i + 1) for b, i in zip(box[:lead], idx, strict=True)) + box[lead:]
        ds[sub] = arr[idx].reshape((1,) * lead + arr.shape[lead:])


def _per_rank_file_name(file_name: str | os.PathLike[str], process_group: Any) -> str | os.PathLike[str]:
    """`file_name` with ``{rank}``/``{world_size}`` filled in; with a group, a name per rank or a clear error.

    HDF5 files cannot be written by several processes at once without an
    MPI-enabled HDF5 (parallel HDF5 is not what netCDF4/h5py wheels ship), so
    ranks never share a NetCDF file. ``"forecast_{rank:03d}.nc"`` gives each rank
    its own complete NetCDF-4 file (open them together with
    ``xarray.open_mfdataset``); ``ZarrBackend`` writes one shared store instead.
    Without a group (the default) a name without ``{rank}`` is the caller's
    business, as in Earth2Studio.
    """
    from e2fastio._distributed import rank_and_size, resolve_group

    group = resolve_group(process_group)
    name = os.fspath(file_name)
    if group is None and "{rank" not in name and "{world_size" not in name:
        return file_name
    rank, size = rank_and_size(process_group)
    if group is not None and "{rank" not in name:
        raise ValueError(
            f"file_name={name!r}: {size} ranks cannot write one NetCDF4 file (HDF5 needs MPI for that); put "
            "'{rank}' in file_name for one file per rank (e.g. 'forecast_{rank:03d}.nc'), use ZarrBackend for "
            "one shared store, or leave process_group=None if each rank already writes its own file"
        )
    try:
        return name.format(rank=rank, world_size=size)
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(
            f"file_name={name!r}: only {{rank}} and {{world_size}} are replaced in a file name; write other braces "
            f"twice ('{{{{' and '}}}}') ({type(err).__name__}: {err})"
        ) from None
