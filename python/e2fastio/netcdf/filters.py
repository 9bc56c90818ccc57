"""The HDF5 filter pipeline of a NetCDF variable, and whether the core encodes it exactly.

The core writes chunks with no filter, deflate, or shuffle then deflate
(netCDF-C's order); every other pipeline is left to HDF5.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

H5Z_FILTER_DEFLATE = 1


H5Z_FILTER_SHUFFLE = 2


@dataclass(frozen=True)
class Filter:
    """One HDF5 filter of a dataset's pipeline."""

    code: int  # HDF5 filter id (1 deflate, 2 shuffle, 3 fletcher32, 32001 blosc, ...)
    name: str
    values: tuple[int, ...]  # client data (deflate: the level)
    optional: bool  # H5Z_FLAG_OPTIONAL: HDF5 skips it where it cannot apply it


def filter_pipeline(ds: Any) -> list[Filter]:
    """A chunked h5py dataset's HDF5 filters, in the order they are applied when writing.

    Read from the dataset creation property list: h5py's ``_filters`` dict
    loses the order, and turns deflate level 0 into its default.
    """
    import h5py

    dcpl = ds.id.get_create_plist()
    out = []
    for i in range(dcpl.get_nfilters()):
        code, flags, values, name = dcpl.get_filter(i)
        label = name.decode("ascii", "replace") if isinstance(name, bytes) else str(name)
        out.append(Filter(int(code), label, tuple(int(v) for v in values), bool(flags & h5py.h5z.FLAG_OPTIONAL)))
    return out


def native_filters(pipeline: list[Filter]) -> tuple[bool, int, bool] | None:
    """(deflate, deflate level, shuffle) for a pipeline the core encodes exactly, else None.

    The core writes none, deflate, or shuffle then deflate (netCDF-C's order);
    anything else (shuffle alone, deflate then shuffle, other filters) is
    left to HDF5.
    """
    codes = [f.code for f in pipeline]
    if not codes:
        return False, 0, False
    if codes not in ([H5Z_FILTER_DEFLATE], [H5Z_FILTER_SHUFFLE, H5Z_FILTER_DEFLATE]):
        return None
    level = pipeline[-1].values[:1]
    if not level or not 0 <= level[0] <= 9:
        return None
    return True, level[0], len(codes) == 2


def check_filters_available(name: str, pipeline: list[Filter]) -> None:
    """Refuse a variable with a required filter this process's HDF5 cannot apply, naming it."""
    import h5py

    missing = [f"{f.name} (HDF5 filter {f.code})" for f in pipeline
               if not f.optional and not h5py.h5z.filter_avail(f.code)]
    if missing:
        raise ValueError(f"variable {name!r} uses HDF5 filter(s) {missing} that this process's HDF5 cannot apply; "
                         "load the plugin (for instance `import hdf5plugin`) before writing to it")
