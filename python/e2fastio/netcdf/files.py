"""Opening NetCDF-4 files as netCDF4.Dataset would, and HDF5's own writes of what the core does not encode.

``backend_kwargs`` are read with ``netCDF4.Dataset``'s meaning
(:func:`open_options`); the file is opened through h5py with our file-access
properties (no sieve buffer, aligned large objects, no file lock:
:func:`open_h5py`); :func:`per_rank_file_name` gives each rank its own file.
:func:`write_box` is the single-threaded HDF5 write of what the core leaves
to HDF5 (partial chunks, complex data, filters it does not reproduce).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

DEFAULT_BACKEND_KWARGS = {"mode": "r+", "diskless": False}


def import_h5netcdf() -> Any:
    try:
        import h5netcdf
    except ImportError as err:  # pragma: no cover - h5netcdf is a test dependency
        raise ImportError(
            "e2fastio.NetCDF4Backend requires the optional 'h5netcdf' package: pip install h5netcdf"
        ) from err
    return h5netcdf


@dataclass(frozen=True)
class OpenOptions:
    """``backend_kwargs`` read with netCDF4.Dataset's meaning."""

    mode: str  # "r", "w", "x" (create, never overwrite) or "a" ("r+" too: append, create when missing)
    diskless: bool
    persist: bool
    auto_complex: bool


def open_options(backend_kwargs: Mapping[str, Any] | None, path: str) -> OpenOptions:
    """Check `backend_kwargs` as netCDF4.Dataset would take them; refuse what cannot be honoured."""
    if backend_kwargs is None:
        backend_kwargs = DEFAULT_BACKEND_KWARGS
    if not isinstance(backend_kwargs, Mapping):
        raise TypeError(f"backend_kwargs must be a dict of netCDF4.Dataset arguments, got {type(backend_kwargs)}")
    kw = dict(backend_kwargs)
    mode = kw.pop("mode", "r")  # netCDF4.Dataset's default
    # A trailing "s" asks for unbuffered shared access, which netCDF4 ignores for NETCDF4 files.
    base = mode[:-1] if isinstance(mode, str) and mode.endswith("s") and mode[:-1] in ("r", "w", "a", "r+") else mode
    if base not in ("r", "w", "x", "a", "r+"):
        raise ValueError(f"backend_kwargs['mode'] must be 'r', 'w', 'x', 'a' or 'r+' (netCDF4.Dataset's modes), "
                         f"got {mode!r}")
    if base == "r+":
        base = "a"
    if base == "w" and not kw.pop("clobber", True):
        base = "x"
    kw.pop("clobber", None)
    fmt = kw.pop("format", "NETCDF4")
    if fmt != "NETCDF4":
        raise ValueError(
            f"backend_kwargs['format']={fmt!r}: e2fastio writes NETCDF4 (HDF5) files only, as Earth2Studio does "
            "(it replaces any format with 'NETCDF4'); drop the argument or pass format='NETCDF4'"
        )
    diskless = bool(kw.pop("diskless", False))
    persist = bool(kw.pop("persist", False)) and diskless  # netCDF4: persist only means something when diskless
    auto_complex = bool(kw.pop("auto_complex", False))
    kw.pop("keepweakref", None)  # only how netCDF4's Python objects refer to each other; nothing to do here
    if kw.pop("memory", None) is not None:
        raise ValueError("backend_kwargs['memory'] (netCDF4's in-memory buffer) is not supported by e2fastio; "
                         "use backend_kwargs={'mode': 'w', 'diskless': True} for a file kept in memory")
    encoding = kw.pop("encoding", None)
    if encoding is not None:
        try:
            same = path.encode(encoding) == os.fsencode(path)
        except (LookupError, UnicodeError) as err:
            raise ValueError(f"backend_kwargs['encoding']={encoding!r} cannot encode file_name {path!r}") from err
        if not same:
            raise ValueError(f"backend_kwargs['encoding']={encoding!r} names file_name with other bytes than the "
                             "file system's encoding; e2fastio opens files by the file system's encoding only")
    if kw.pop("parallel", False):
        raise ValueError("backend_kwargs['parallel']=True (MPI-parallel HDF5) is not supported; in a multi-rank run "
                         "give each rank its own file with '{rank}' in file_name")
    for name in ("comm", "info"):
        if kw.pop(name, None) is not None:
            raise ValueError(f"backend_kwargs[{name!r}] is an MPI argument of parallel access, which e2fastio "
                             "does not support")
    if kw:
        raise TypeError(f"backend_kwargs has argument(s) {sorted(kw)} that e2fastio's NetCDF4Backend does not take; "
                        "it takes netCDF4.Dataset's mode, clobber, format, diskless, persist, keepweakref, "
                        "encoding and auto_complex (see the class docstring)")
    return OpenOptions(mode=base, diskless=diskless, persist=persist, auto_complex=auto_complex)


def open_h5py(path: str, mode: str, align: bool) -> tuple[Any, bool]:
    """An h5py File as h5netcdf would open it, with our file-access properties, and whether it was created.

    `mode`: "r" (read only), "w" (create or truncate), "x" (create, never
    overwrite) or "a" (open for writing, create when missing).
    """
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
    if mode in ("r", "a") and os.path.exists(path):
        access = h5py.h5f.ACC_RDONLY if mode == "r" else h5py.h5f.ACC_RDWR
        return h5py.File(h5py.h5f.open(path_b, access, fapl=fapl)), False
    fcpl = h5py.h5p.create(h5py.h5p.FILE_CREATE)  # h5netcdf's track_order=True
    order = h5py.h5p.CRT_ORDER_TRACKED | h5py.h5p.CRT_ORDER_INDEXED
    fcpl.set_link_creation_order(order)
    fcpl.set_attr_creation_order(order)
    flags = h5py.h5f.ACC_EXCL if mode == "x" else h5py.h5f.ACC_TRUNC
    return h5py.File(h5py.h5f.create(path_b, flags, fapl=fapl, fcpl=fcpl)), True


def early_allocation() -> Any:
    import h5py

    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    return dcpl


def write_box(var: Any, index: list[np.ndarray], arr: np.ndarray) -> None:
    """Orthogonal write through HDF5: a box directly, else read the bounding box, merge, write back."""
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in index)
    contiguous = (len(i) == b.stop - b.start and (len(i) < 2 or bool(np.all(np.diff(i) == 1)))
                  for i, b in zip(index, box, strict=True))
    if all(contiguous):
        write_c_pieces(var._h5ds, box, arr)
        return
    block = np.asarray(var[box])
    block[np.ix_(*[i - i.min() for i in index])] = arr
    var[box] = block


def write_c_pieces(ds: Any, box: tuple[slice, ...], arr: np.ndarray) -> None:
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


def per_rank_file_name(file_name: str | os.PathLike[str], process_group: Any) -> str | os.PathLike[str]:
    """`file_name` with ``{rank}``/``{world_size}`` filled in; with a group, a name per rank or a clear error.

    HDF5 files cannot be written by several processes at once without an
    MPI-enabled HDF5 (parallel HDF5 is not what netCDF4/h5py wheels ship), so
    ranks never share a NetCDF file. ``"forecast_{rank:03d}.nc"`` gives each rank
    its own complete NetCDF-4 file (open them together with
    ``xarray.open_mfdataset``); ``ZarrBackend`` writes one shared store instead.
    Without a group (the default) a name without ``{rank}`` is the caller's
    business, as in Earth2Studio.
    """
    from e2fastio._write.ranks import rank_and_size, resolve_group

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
