"""``NetCDF4Backend``: Earth2Studio's NetCDF4 backend, with chunks compressed on all cores.

The file and its NetCDF-4 metadata (dimension scales, coordinate variables,
attributes) are written with h5netcdf; each data chunk is gathered and, when
compressed, byte-shuffled and deflated (zlib, as HDF5's filters 2 and 1) by
the native pool, then stored with HDF5's direct chunk write from the caller's
thread (HDF5 is not thread-safe). Every NetCDF-4 reader opens the result
without plugins.

An adapter: Earth2Studio's surface, the file, its dimensions and coordinate
variables here; chunks go through :class:`e2fastio.netcdf.pipeline.NetCDFPipeline`,
the HDF5 side lives in :mod:`e2fastio.netcdf`.
"""

from __future__ import annotations

import errno
import gc
import logging
import os
import weakref
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import numpy as np

from e2fastio._write import inputs
from e2fastio._write.budget import engine_kwargs, split_buffer
from e2fastio._write.engine import EngineHandle
from e2fastio._write.lifecycle import Lifecycle, serialized
from e2fastio.errors import (
    ArrayNameError,
    ArrayNameTypeError,
    ArrayNotFoundError,
    ReadOnlyError,
)
from e2fastio.netcdf.files import (
    early_allocation,
    import_h5netcdf,
    open_h5py,
    open_options,
    per_rank_file_name,
)
from e2fastio.netcdf.pipeline import NetCDFPipeline
from e2fastio.netcdf.root import Dataset, Variable, netcdf_dtype

logger = logging.getLogger(__name__)

CoordSystem = Mapping[str, np.ndarray]

TIME_UNITS = "hours since 0001-01-01 00:00:00.0"
_EPOCH = np.datetime64("0001-01-01T00:00:00", "s")
_TD_UNITS = {"h": "hours", "m": "minutes", "s": "seconds", "D": "days"}
_REV_TD_UNITS = {v: k for k, v in _TD_UNITS.items()}


# Backends of this process with a file open (on disk or in memory), by id: a
# second backend that recreates (mode 'w') a file an earlier one still holds
# open deals with that one first (see _close_earlier_writers).
_open_files: weakref.WeakValueDictionary[int, NetCDF4Backend] = weakref.WeakValueDictionary()


def _close_earlier_writers(path: str, diskless: bool) -> None:
    """Deal with this process's backends that still hold `path` open, before mode 'w' recreates it.

    HDF5 refuses to create a file that is open in the same process under the
    same name ("unable to truncate a file which is already open"), in memory
    too. netCDF4's Dataset closes when its last reference goes; a backend is
    in reference cycles, so an unreferenced earlier backend is collected first
    (its file closes as netCDF4's would). One still referenced: a file on disk
    is closed, its writes stored first (re-running a notebook cell that opens
    the same file with mode 'w' met this every time, the previous backend still
    held by the variable about to be reassigned); if that fails, its error is
    raised and nothing is truncated. An in-memory file is never closed for
    another: its data exists nowhere else, so this is refused, as netCDF4 does.
    """
    real = os.path.realpath(path)

    def earlier() -> list[NetCDF4Backend]:
        return [b for b in list(_open_files.values()) if b._real_path == real and not b._closed]

    if not earlier():
        return
    gc.collect()
    for other in earlier():
        if other._diskless and not other._on_disk or diskless:
            raise PermissionError(
                errno.EACCES,
                f"{os.strerror(errno.EACCES)}: file_name {path!r} is open in another NetCDF4Backend of this process "
                f"(id {id(other):#x}, {'in memory' if other._diskless else 'on disk'}), and HDF5 holds one file per "
                "name; close that backend first (io.close()) or give this one another file_name", path)
        logger.warning("NetCDF4Backend: %s is still open by an earlier NetCDF4Backend (id %#x); closing it (its "
                       "writes are stored first) so that mode 'w' can recreate the file. Close a backend when "
                       "done with it: io.close(), or use it in a `with` block.", path, id(other))
        try:
            other.close()
        except Exception as err:
            raise RuntimeError(
                f"backend_kwargs mode 'w': {path} is still open by an earlier NetCDF4Backend (id {id(other):#x}) "
                f"and closing it failed ({type(err).__name__}: {err}); the file was not truncated. Handle that "
                "backend's error (call its close() again to see it) before recreating the file") from err


class NetCDF4Backend(Lifecycle):
    """A NetCDF-4 backend with Earth2Studio's ``NetCDF4Backend`` interface.

    Parameters
    ----------
    file_name : str
        Path of the ``.nc`` file.
    backend_kwargs : dict, optional
        ``netCDF4.Dataset``'s arguments, with their meaning there (default
        ``{"mode": "r+", "diskless": False}``, as Earth2Studio):

        * ``mode``: ``"r"`` read only (the file must exist); ``"w"`` create or
          overwrite; ``"x"`` create, fail if the file exists; ``"a"`` / ``"r+"``
          append, creating the file when missing. A trailing ``"s"`` (shared
          access) is accepted and, as in netCDF4 for NETCDF4 files, ignored.
          Without ``mode`` the file is opened read only, as ``netCDF4.Dataset``.
        * ``clobber`` (default True): ``False`` makes ``"w"`` fail on an
          existing file.
        * ``format``: ``"NETCDF4"`` only (Earth2Studio forces it too); other
          formats raise ``ValueError``.
        * ``diskless``: keep the file in memory; ``persist=True`` writes it to
          `file_name` at ``sync()`` / ``close()``.
        * ``auto_complex``: store complex64/complex128 (nc-complex compound
          types, read by netCDF4 with ``auto_complex=True``, h5netcdf, xarray).
        * ``keepweakref`` is accepted (it only concerns netCDF4's own objects);
          ``encoding`` when it names the file as the file system does.
        * ``memory``, ``parallel``, ``comm``, ``info`` and any other argument
          raise an error naming it.
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
        As for :class:`e2fastio.ZarrBackend`. `max_buffer_bytes` bounds the
        staging ring (5/8), the encode buffers (1/4) and the encoded chunks of
        compressed variables waiting for HDF5 (1/8; at least one chunk).
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

    Notes
    -----
    ``root`` is not a ``netCDF4.Dataset``: HDF5 writes the file through h5py
    (direct chunk writes, and the core writes contiguous variables in place),
    and the HDF5 library inside netCDF4 must not hold the same file open for
    writing at the same time. ``root`` is an adapter with the surface
    Earth2Studio code uses: ``variables`` and ``dimensions`` by name (variables
    with ``shape``, ``dtype``, ``dimensions``, attributes, masked reads and
    writes by slicing, ``chunking()``, ``filters()``), ``root[name]``, global
    attributes (``ncattrs``, ``getncattr``, ``setncattr``, ``delncattr``,
    attribute access), ``createDimension``, ``createVariable``, ``sync()``,
    ``close()``, ``isopen()``, ``filepath()``.

    Durability. Earth2Studio 0.19 calls ``root.sync()`` (netCDF's ``nc_sync``:
    HDF5's buffers handed to the operating system, no fsync) after
    ``add_array`` and every ``write``. Here, when ``add_array`` or a blocking
    ``write`` returns, the data and HDF5's metadata are handed to the
    operating system in the same way: another process opening the file (with
    ``HDF5_USE_FILE_LOCKING=FALSE``) reads everything written, and the file is
    complete if this process dies. Non-blocking writes get there at
    ``flush()``, ``root.sync()`` or ``close()``. ``flush()`` stores pending
    writes and hands everything to the operating system; ``root.sync()`` does
    the same and then fsyncs the file, so it survives a power loss;
    ``close()`` is ``flush()`` and closes the file (no fsync, as
    netCDF4-python). Diskless files stay in memory until ``sync()`` /
    ``close()`` (``persist=True``) or are dropped at ``close()``. A backend
    never closed (Earth2Studio's workflows do not close theirs) is closed at
    interpreter exit.
    """

    _pipeline: NetCDFPipeline

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
        h5netcdf = import_h5netcdf()
        file_name = per_rank_file_name(file_name, process_group)
        path = os.fspath(file_name)
        opts = open_options(backend_kwargs, path)
        if compression not in (None, "zlib"):
            raise ValueError(f"compression must be None or 'zlib', got {compression!r}")
        if not isinstance(complevel, int) or not 1 <= complevel <= 9:
            raise ValueError(f"complevel must be an int in 1..9, got {complevel!r}")
        for dim, size in (chunks or {}).items():
            if not isinstance(size, (int, np.integer)) or size < 1:
                raise ValueError(f"chunks[{dim!r}] must be a positive int, got {size!r}")
        if not isinstance(blocking, bool):
            raise TypeError(f"blocking must be True or False, got {blocking!r}")
        # Every argument is checked before the file is opened (mode 'w' would truncate it).
        ekw = engine_kwargs(threads, max_buffer_bytes)
        # max_buffer_bytes bounds it all: 5/8 the staging ring (HDF5 stores finished chunks while others
        # are still encoding), 1/4 encode buffers, 1/8 encoded chunks waiting for HDF5 (the collector).
        budget = split_buffer(ekw["max_buffer_bytes"], "NetCDF4Backend",
                              {"the staging ring": (5, 8), "encode buffers": (1, 4), "chunks waiting for HDF5": (1, 8)})
        exists = os.path.exists(path)
        if opts.mode == "r" and not exists:
            raise FileNotFoundError(errno.ENOENT, f"{os.strerror(errno.ENOENT)} (backend_kwargs['mode'] is 'r': "
                                    "read only; use 'w' or 'a' to create the file)", path)
        if opts.mode == "x" and exists:
            raise FileExistsError(errno.EEXIST, f"{os.strerror(errno.EEXIST)} (mode 'x', or 'w' with clobber=False, "
                                  "never overwrites; use mode 'w' to replace it or 'a' to append)", path)
        self.file_name = path
        self._real_path = os.path.realpath(path)
        self._diskless = opts.diskless
        self._on_disk = not opts.diskless or opts.persist
        if opts.mode == "w":
            _close_earlier_writers(path, opts.diskless)
        self._writable = opts.mode != "r"
        self._auto_complex = opts.auto_complex
        self._closed = False
        self._h5file = None
        if opts.diskless:
            h5mode = {"x": "w-"}.get(opts.mode, opts.mode)
            self._nc = h5netcdf.File(path, h5mode, driver="core", backing_store=opts.persist, locking=False,
                                     decode_vlen_strings=True)
        else:
            # Our own HDF5 file access: no raw-data sieve buffer (contiguous data is
            # written in place by the core, HDF5 must never serve stale bytes of it),
            # 4 KiB-aligned large allocations (O_DIRECT), no file lock.
            self._h5file, created = open_h5py(path, opts.mode, align=compression is None)
            ncmode = "w" if created else ("r" if opts.mode == "r" else "a")
            self._nc = h5netcdf.File(self._h5file, ncmode, decode_vlen_strings=True)
        _open_files[id(self)] = self
        self.root = Dataset(self._nc, path, self)
        self.compression = compression
        self.complevel = complevel
        self.shuffle = shuffle
        self.chunks = dict(chunks or {})
        ring = budget["the staging ring"]
        engine = EngineHandle(ekw["threads"], ring + budget["encode buffers"], ring_bytes=ring,
                              background=not blocking)
        self.blocking = blocking
        self._pipeline = NetCDFPipeline(self._nc, path, engine, budget["chunks waiting for HDF5"],
                                        blocking=blocking, in_place=self._h5file is not None)
        # Closed at exit when still open (Earth2Studio's workflows never close their backend, and
        # h5netcdf's own close at interpreter teardown fails once h5py is gone). A non-blocking one
        # is kept alive until then: its encoded chunks reach HDF5 through this object only.
        self._start_lifecycle(where=str(self.file_name), engine=engine, nonblocking=not blocking,
                              keep_alive=not blocking, release=self._pipeline.collector.close,
                              outcomes=self._pipeline.outcomes)
        self.coords: OrderedDict[str, np.ndarray] = OrderedDict()
        self._selector = inputs.Selector(
            self.coords, "NetCDF store", lambda k: self._nc.variables[k].shape if k in self._nc.variables else None)
        for dim in self._nc.dimensions:
            if dim in self._nc.variables:
                self.coords[dim] = self._decode_coord(self._nc.variables[dim])

    @property
    def pipeline(self) -> NetCDFPipeline:
        """The write pipeline underneath (engine, collector, per-variable specs); see ``e2fastio.netcdf.pipeline``."""
        return self._pipeline

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

    @serialized
    def add_dimension(self, name: str, shape: tuple[int, ...] | list[int], data: np.ndarray) -> None:
        """Add a dimension and its coordinate variable (Earth2Studio's encoding)."""
        import h5py

        self._check_open("add_dimension")
        self._check_writable("add_dimension")
        if len(shape) != 1:
            raise ValueError("Error, only 1-dimension coordinates are supported.")
        data = np.asarray(data)
        self._nc.dimensions[name] = shape[0]
        if np.issubdtype(data.dtype, np.datetime64):
            var = self._nc.create_variable(name, (name,), dtype="f8")
            var.attrs["units"] = TIME_UNITS
            var.attrs["calendar"] = "proleptic_gregorian"
            var[...] = (data.astype("datetime64[s]") - _EPOCH) / np.timedelta64(1, "h")
        elif np.issubdtype(data.dtype, np.timedelta64):
            steps: tuple[Literal["h", "m", "s"], ...] = ("h", "m", "s")  # the units NetCDF gets, coarsest first
            unit = next((u for u in steps if np.all(data % np.timedelta64(1, u) == np.timedelta64(0, u))), steps[-1])
            var = self._nc.create_variable(name, (name,), dtype="i8")
            var.attrs["units"] = _TD_UNITS[unit]
            var.attrs["calendar"] = "gregorian"
            var.attrs["dtype"] = "timedelta64[ns]"  # xarray's target dtype
            var[...] = (data / np.timedelta64(1, unit)).astype("i8")
        elif data.dtype.kind in "US":
            var = self._nc.create_variable(name, (name,), dtype=h5py.string_dtype())
            var[...] = data.astype(object)
        else:
            var = self._nc.create_variable(name, (name,), dtype=data.dtype)
            var[...] = data

    # ------------------------------------------------------------------ mapping protocol
    def __contains__(self, item: str) -> bool:
        return item in self._nc.variables

    def __getitem__(self, item: str) -> Variable:
        """The variable `item` as ``root.variables[item]`` (reads include every write so far)."""
        self._check_open(f"get {item!r}")
        return self.root.variables[item]

    def __len__(self) -> int:
        return len(self._nc.variables)

    def __iter__(self) -> Iterator[str]:
        return iter(self._nc.variables)


    def _check_writable(self, what: str) -> None:
        if not self._writable:
            raise ReadOnlyError(f"cannot {what}: {self.file_name} was opened with backend_kwargs['mode']='r' "
                                "(read only); open it with mode 'a' (or 'r+') to append")

    def _publish(self) -> None:
        """Hand HDF5's buffers to the OS, as Earth2Studio's ``root.sync()`` after each call does.

        Diskless files stay in memory (a persisted one is written whole at
        ``sync()`` / ``close()``).
        """
        if not self._diskless:
            self._nc._h5file.flush()

    @serialized
    def flush(self) -> None:
        """Store pending writes and hand HDF5's buffers to the OS: another process then reads everything."""
        self._check_open("flush")
        self._pipeline.drain()
        if self._writable:
            self._nc.flush()  # h5netcdf's metadata (_NCProperties)
            self._nc._h5file.flush()  # h5netcdf does not flush HDF5's caches itself

    def _sync(self) -> None:
        """``root.sync()``: ``flush()``, then fsync the file so that it survives a power loss."""
        self.flush()
        if self._writable and self._on_disk:
            fd = os.open(self.file_name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    @serialized
    def close(self) -> None:
        """Close the file and stop the encoder threads. Idempotent."""
        if not self._end_lifecycle():
            return
        _open_files.pop(id(self), None)
        pending_error: Exception | None = None
        try:
            self._pipeline.drain()
        except Exception as err:  # raised after the file is closed
            pending_error = err
        try:
            try:
                self._nc.close()
            finally:
                if self._h5file is not None and self._h5file.id.valid:
                    self._h5file.close()
        finally:
            self._pipeline.close()  # encoders still waiting for room (after an error) give up
        if pending_error is not None:
            raise pending_error

    def stats(self) -> dict[str, object]:
        """The engine's figures, and the collector's (encoded chunks waiting for HDF5) under ``"collector"``."""
        return self._pipeline.stats()

    # ------------------------------------------------------------------ arrays
    @serialized
    def add_array(self, coords: CoordSystem, array_name: str | list[str], data: Any = None) -> None:
        """Add data variable(s) (and any new dimensions) to the file."""
        self._check_open("add_array")
        self._check_writable("add_array")
        names, host = _add_array_inputs(array_name, data)
        adjusted, mapping = inputs.convert_multidim_to_singledim(coords)
        for dim in [*adjusted, *mapping]:
            if dim not in self._nc.variables and dim not in self._nc.dimensions:
                _check_name(dim, "coords key")
        shape = tuple(len(self.coords[d]) if d in self.coords else len(v) for d, v in adjusted.items())
        for h, n in zip(host, names, strict=True):
            if h is not None and h.shape != shape:
                raise inputs.DataShapeError(f"data for array {n!r} has shape {h.shape} but coords give {shape}")
            if h is not None and n not in self._nc.variables:
                netcdf_dtype(h.dtype, f"data for array {n!r}", self._auto_complex)
        for dim, values in adjusted.items():
            if dim not in self.coords:
                self.add_dimension(dim, np.shape(values), values)
                self.coords[dim] = np.asarray(values)
                self._selector.forget(dim)
        for key, key_dims in mapping.items():
            if key not in self._nc.variables:
                values = np.asarray(coords[key])
                self._nc.create_variable(key, tuple(key_dims), data=values)
        dims = tuple(adjusted)
        for name, h in zip(names, host, strict=True):
            if name in self._nc.variables:
                logger.warning("%s is already in NetCDF Store. Skipping add_array.", name)
                continue
            dtype = h.dtype if h is not None else np.dtype("float32")
            if self.compression == "zlib":
                comp = dict(compression="gzip", compression_opts=self.complevel, shuffle=self.shuffle)
                self._nc.create_variable(name, dims, dtype=dtype, chunks=self._chunk_shape(dims, shape), **comp)
            elif self.chunks:
                self._nc.create_variable(name, dims, dtype=dtype, chunks=self._chunk_shape(dims, shape))
            else:
                # Uncompressed, no chunks asked for: contiguous, as netCDF4-python lays it out;
                # HDF5 writes straight from the data (one copy), nothing to parallelise.
                # fill_time "never": HDF5 would otherwise write fill values over the whole
                # variable at its first write (writing every byte twice); unwritten parts
                # read back as 0 (file holes).
                # Storage allocated at creation: its place in the file is known, so
                # writes go there directly (NetCDFPipeline.region).
                kw = {"dcpl": early_allocation()} if self._h5file is not None else {}
                self._nc.create_variable(name, dims, dtype=dtype, fill_time="never", **kw)
            if h is not None:
                whole = [np.arange(s, dtype=np.int64) for s in shape]
                h = inputs.cast_for_array(h, np.dtype(self._nc.variables[name].dtype), name)
                self._pipeline.write(inputs.WritePlan([(name, h)], OrderedDict(), whole, []))
        self._nc.flush()  # h5netcdf's file properties (_NCProperties) in a new file
        self._publish()

    def _chunk_shape(self, dims: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
        default = [1] * max(len(shape) - 2, 0) + list(shape[-2:])
        out = tuple(min(int(self.chunks.get(d, default[i])), max(shape[i], 1)) for i, d in enumerate(dims))
        return tuple(max(c, 1) for c in out)

    @serialized
    def write(self, x: Any, coords: CoordSystem, array_name: str | list[str]) -> None:
        """Write tensor(s) at `coords`; every input is checked before anything is stored."""
        self._check_open("write")
        self._check_writable("write")
        plan = inputs.plan_write(x, coords, array_name, self._selector, self._stored, device_ok=False,
                                 extra_kinds="c", check_name=_check_name)
        for name in plan.missing:
            self.add_array(plan.coords, name)
        self._pipeline.write(plan)
        if self.blocking:
            self._publish()

    def _stored(self, name: str) -> tuple[tuple[str, ...] | None, np.dtype[Any]]:
        """Variable `name`'s dimensions and dtype; (None, float32) if missing (created so, as Earth2Studio)."""
        var = self._nc.variables.get(name)
        if var is None:
            return None, np.dtype("float32")
        return tuple(var.dimensions), np.dtype(var.dtype)

    def _pending(self) -> int:
        return self._pipeline.pending()

    def _drain(self) -> None:
        """Store every pending non-blocking write (``root``'s hook before it reads or writes data)."""
        self._pipeline.drain()

    @serialized
    def read(self, coords: CoordSystem, array_name: str, device: Any = "cpu") -> tuple[Any, CoordSystem]:
        """Read `array_name` at `coords` as a torch tensor on `device`."""
        self._check_open("read")
        self._pipeline.drain()
        _, index = self._selector.select(coords, "reading")
        if array_name not in self._nc.variables:
            raise ArrayNotFoundError(f"array_name={array_name!r} is not a variable of {self.file_name} "
                                     f"(it has {sorted(self._nc.variables)})")
        var = self._nc.variables[array_name]
        box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in index)
        values = np.asarray(var[box])[np.ix_(*[i - i.min() for i in index])]
        import torch

        return torch.as_tensor(values, device=device), coords


def _check_name(name: Any, argument: str = "array_name") -> str:
    """A NetCDF variable name in the root group (netCDF-C's rules), or ArrayNameError."""
    if not isinstance(name, str):
        raise ArrayNameTypeError(f"{argument} must be a str, got {type(name).__name__}")
    if "/" in name:
        raise ArrayNameError(
            f"{argument}={name!r} contains '/', which NetCDF reads as a group path (netCDF4-python would create "
            f"group {name.split('/')[0]!r}, where {name!r} is then never found again); this backend writes the root "
            f"group only: use a flat name such as {name.replace('/', '_')!r}"
        )
    first_ok = bool(name) and (name[0].isalnum() or name[0] == "_" or ord(name[0]) > 127)
    if not first_ok or name != name.rstrip() or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise ArrayNameError(
            f"{argument}={name!r} is not a NetCDF name: it must start with a letter, digit or '_', "
            "and have no control characters and no trailing white space"
        )
    return name


def _host_array(x: Any, argument: str) -> np.ndarray:
    """A host numpy view of `x`, complex values included (NetCDF stores them with auto_complex)."""
    if inputs.is_torch_tensor(x) and x.is_complex():
        arr: np.ndarray = x.detach().cpu().resolve_conj().numpy()
        return arr
    if isinstance(x, np.ndarray) and x.dtype.kind == "c":
        return x
    return inputs.to_host_array(x, argument)


def _add_array_inputs(array_name: Any, data: Any) -> tuple[list[str], list[np.ndarray | None]]:
    names = [_check_name(n) for n in inputs.as_list(array_name, "array_name")]
    datas = [None] * len(names) if data is None else inputs.as_list(data, "data")
    if len(datas) != len(names):
        raise ValueError(
            f"The number of input tensors and array names must be the same but got {len(datas)} and {len(names)}."
        )
    return names, [None if d is None else _host_array(d, "data") for d in datas]


