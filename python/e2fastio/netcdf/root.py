"""``NetCDF4Backend.root``: the parts of ``netCDF4.Dataset`` that Earth2Studio code uses, over h5netcdf.

Earth2Studio's ``NetCDF4Backend.root`` is a ``netCDF4.Dataset``. e2fastio's
file is written by HDF5 through h5py (direct chunk writes, in-place writes of
contiguous variables), and a second HDF5 library (the one inside netCDF4) must
never hold the same file open for writing, so ``root`` is an adapter with the
same surface instead: variables and dimensions by name, attributes, masked
reads, writes, ``sync``, ``close``, ``isopen``. ``isinstance(root,
netCDF4.Dataset)`` is false.

Size (over 500 lines): the surface above is what Earth2Studio code and its
users touch on ``root``; it stays in one module so that what differs from
``netCDF4.Dataset`` can be read in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from e2fastio.errors import UnsupportedDTypeError

# netCDF4.Dataset.createVariable arguments e2fastio does not implement, with netCDF4's defaults.
_CREATE_VARIABLE_UNSUPPORTED = {
    "least_significant_digit": None, "significant_digits": None, "quantize_mode": "BitGroom",
    "szip_coding": "nn", "szip_pixels_per_block": 8, "blosc_shuffle": 1, "chunk_cache": None,
}

# NetCDF's default fill values (netcdf.h NC_FILL_*), by numpy dtype string.
DEFAULT_FILL = {
    "i1": -127, "u1": 255, "i2": -32767, "u2": 65535, "i4": -2147483647, "u4": 4294967295,
    "i8": -9223372036854775806, "u8": 18446744073709551614,
    "f4": 9.969209968386869e36, "f8": 9.969209968386869e36,
}


def netcdf_dtype(dtype: Any, what: str, auto_complex: bool) -> np.dtype:
    """`dtype` if a NetCDF-4 file can hold it (as netCDF4-python allows), else a clear error."""
    dt: np.dtype[Any] = np.dtype(dtype)
    if dt.kind == "c":
        if dt.itemsize not in (8, 16):
            raise UnsupportedDTypeError(f"{what} has dtype {dt}; NetCDF stores complex64 and complex128 only")
        if not auto_complex:
            raise UnsupportedDTypeError(
                f"{what} has dtype {dt}: complex values need backend_kwargs={{'auto_complex': True, ...}}, "
                "as netCDF4-python does (they are stored as nc-complex compound types)"
            )
        return dt
    if dt.kind == "b":
        raise UnsupportedDTypeError(
            f"{what} has dtype bool, which NetCDF has no type for; convert it first, e.g. x.to(torch.int8)"
        )
    if dt.kind == "f" and dt.itemsize == 2:
        raise UnsupportedDTypeError(
            f"{what} has dtype float16, which NetCDF has no type for; convert it first, e.g. x.float()"
        )
    if dt.kind not in "fiu" or dt.itemsize not in (1, 2, 4, 8):
        raise UnsupportedDTypeError(f"{what} has dtype {dt}, which e2fastio does not store in NetCDF")
    return dt


class _Attributes:
    """netCDF4's attribute methods over an h5netcdf ``attrs`` mapping (shared by Dataset and Variable)."""

    _h5: Any

    def _attrs(self) -> Any:
        raise NotImplementedError

    def _writable_attrs(self, what: str) -> Any:
        raise NotImplementedError

    def ncattrs(self) -> list[str]:
        """Names of the NetCDF attributes."""
        return list(self._attrs())

    def getncattr(self, name: str) -> Any:
        """The value of attribute `name` (AttributeError when missing)."""
        try:
            return self._attrs()[name]
        except KeyError:
            raise AttributeError(f"NetCDF: attribute {name!r} not found") from None

    def setncattr(self, name: str, value: Any) -> None:
        """Set attribute `name` (also spelled ``obj.name = value``)."""
        self._writable_attrs(f"set attribute {name!r}")[name] = value

    def setncatts(self, attdict: Mapping[str, Any]) -> None:
        """Set several attributes at once."""
        attrs = self._writable_attrs("set attributes")
        for name, value in attdict.items():
            attrs[name] = value

    def delncattr(self, name: str) -> None:
        """Delete attribute `name` (also spelled ``del obj.name``)."""
        attrs = self._writable_attrs(f"delete attribute {name!r}")
        if name not in attrs:
            raise AttributeError(f"NetCDF: attribute {name!r} not found")
        del attrs[name]

    def __getattr__(self, name: str) -> Any:
        # Only reached when normal lookup fails: NetCDF attributes read as Python attributes.
        if name.startswith("_"):
            raise AttributeError(name)
        return self.getncattr(name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_") or hasattr(type(self), name):
            object.__setattr__(self, name, value)
        else:
            self.setncattr(name, value)

    def __delattr__(self, name: str) -> None:
        if name.startswith("_"):
            object.__delattr__(self, name)
        else:
            self.delncattr(name)


class Dimension:
    """A NetCDF dimension: ``name``, ``size``, ``len()``, ``isunlimited()``."""

    def __init__(self, dataset: Dataset, name: str) -> None:
        self._ds = dataset
        self.name = name

    @property
    def size(self) -> int:
        return int(self._ds._h5.dimensions[self.name].size)

    def __len__(self) -> int:
        return self.size

    def isunlimited(self) -> bool:
        return bool(self._ds._h5.dimensions[self.name].isunlimited())

    def group(self) -> Dataset:
        return self._ds

    def __repr__(self) -> str:
        return f"<e2fastio NetCDF dimension {self.name!r}, size {self.size}>"


class Variable(_Attributes):
    """A NetCDF variable as ``netCDF4.Variable`` presents it.

    Reads return masked arrays (values equal to ``_FillValue`` / ``missing_value``
    or outside ``valid_min``/``valid_max``/``valid_range`` masked, ``scale_factor``
    / ``add_offset`` applied), as netCDF4-python does by default; strings come
    back as ``str`` objects. Reads and writes first store every pending
    non-blocking write of the backend.
    """

    def __init__(self, dataset: Dataset, name: str) -> None:
        self._ds = dataset
        self._name = name
        self._mask = dataset._auto_mask
        self._scale = dataset._auto_scale
        self._always_mask = dataset._always_mask

    # ---------------------------------------------------------------- description
    @property
    def _h5(self) -> Any:
        self._ds._check_open("use a variable")
        return self._ds._h5.variables[self._name]

    def _attrs(self) -> Any:
        return self._h5.attrs

    def _writable_attrs(self, what: str) -> Any:
        self._ds._check_writable(f"{what} of variable {self._name!r}")
        return self._h5.attrs

    @property
    def name(self) -> str:
        return self._name

    @property
    def dimensions(self) -> tuple[str, ...]:
        return tuple(self._h5.dimensions)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self._h5.shape)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def __len__(self) -> int:
        if not self.shape:
            raise TypeError("len() of a scalar variable")
        return self.shape[0]

    def _is_str(self) -> bool:
        import h5py

        info = h5py.check_string_dtype(self._h5._h5ds.dtype)
        return info is not None and info.length is None

    @property
    def dtype(self) -> Any:
        """numpy dtype, or ``str`` for variable-length strings (as netCDF4-python)."""
        return str if self._is_str() else np.dtype(self._h5.dtype)

    datatype = dtype

    def get_dims(self) -> tuple[Dimension, ...]:
        return tuple(self._ds.dimensions[d] for d in self.dimensions)

    def group(self) -> Dataset:
        return self._ds

    def chunking(self) -> str | list[int]:
        """``"contiguous"`` or the chunk sizes."""
        chunks = self._h5._h5ds.chunks
        return "contiguous" if chunks is None else [int(c) for c in chunks]

    def filters(self) -> dict[str, Any]:
        """The filters in netCDF4-python's form."""
        ds = self._h5._h5ds
        zlib = ds.compression == "gzip"
        return {"zlib": zlib, "szip": False, "zstd": False, "bzip2": False, "blosc": False,
                "shuffle": bool(ds.shuffle), "complevel": int(ds.compression_opts or 0) if zlib else 0,
                "fletcher32": bool(ds.fletcher32)}

    def endian(self) -> str:
        order = np.dtype(self._h5._h5ds.dtype).byteorder
        return {"<": "little", ">": "big"}.get(order, "native")

    def _fill_value(self) -> Any:
        """The value that marks missing data, as netCDF4-python decides it (None: none)."""
        attrs = self._h5.attrs
        if "_FillValue" in attrs:
            return np.asarray(attrs["_FillValue"]).ravel()[0]
        dt = np.dtype(self._h5._h5ds.dtype)
        default = DEFAULT_FILL.get(dt.newbyteorder("=").str[1:])
        if default is None or dt.itemsize == 1:  # netCDF4-python never masks byte types by default
            return None
        # No _FillValue attribute: netCDF-C masks the library default only when the
        # variable's HDF5 fill value is that default (netCDF4-python's files);
        # e2fastio's variables (fill value 0, or never filled) have none.
        h5fill = self._h5._h5ds.fillvalue
        return default if h5fill is not None and h5fill == dt.type(default) else None

    def get_fill_value(self) -> Any:
        """The fill value reads are masked with, or None."""
        return self._fill_value()

    def set_auto_mask(self, flag: bool) -> None:
        self._mask = bool(flag)

    def set_auto_scale(self, flag: bool) -> None:
        self._scale = bool(flag)

    def set_auto_maskandscale(self, flag: bool) -> None:
        self._mask = self._scale = bool(flag)

    def set_always_mask(self, flag: bool) -> None:
        self._always_mask = bool(flag)

    # ---------------------------------------------------------------- data
    def __getitem__(self, key: Any) -> Any:
        self._ds._before_access()
        var = self._h5
        values = var[key]
        if self._is_str():
            return values
        values = np.asanyarray(values)
        if values.dtype.kind not in "fiuc":
            return values
        attrs = var.attrs
        mask = np.zeros(values.shape, bool)
        if self._mask and values.dtype.kind != "c":
            for mv in np.atleast_1d(attrs["missing_value"]) if "missing_value" in attrs else ():
                mask |= np.isnan(values) if np.isnan(mv) else values == mv
            fill = self._fill_value()
            if fill is not None:
                mask |= np.isnan(values) if np.isnan(fill) else values == fill
            lo = attrs["valid_range"][0] if "valid_range" in attrs else attrs.get("valid_min")
            hi = attrs["valid_range"][1] if "valid_range" in attrs else attrs.get("valid_max")
            if lo is not None:
                mask |= values < lo
            if hi is not None:
                mask |= values > hi
        if self._scale and ("scale_factor" in attrs or "add_offset" in attrs):
            values = values * attrs.get("scale_factor", 1.0) + attrs.get("add_offset", 0.0)
        if self._mask and (self._always_mask or mask.any()):
            return np.ma.MaskedArray(values, mask=mask)
        return values

    def __setitem__(self, key: Any, value: Any) -> None:
        self._ds._check_writable(f"write to variable {self._name!r}")
        self._ds._before_access()
        var = self._h5
        if self._is_str():
            var[key] = np.asarray(value, dtype=object)
            return
        dt = np.dtype(var.dtype)
        attrs = var.attrs
        if isinstance(value, np.ma.MaskedArray):
            fill = self._fill_value()
            value = value.filled(fill if fill is not None else DEFAULT_FILL.get(dt.str[1:], 0))
        value = np.asarray(value)
        if self._scale and ("scale_factor" in attrs or "add_offset" in attrs):
            value = (value - attrs.get("add_offset", 0.0)) / attrs.get("scale_factor", 1.0)
            if dt.kind in "iu":
                value = np.around(value)
        var[key] = value.astype(dt, copy=False)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        values = np.asarray(self[...])
        return values if dtype is None else values.astype(dtype)

    def __repr__(self) -> str:
        if not self._ds.isopen():
            return f"<e2fastio NetCDF variable {self._name!r} (file closed)>"
        return (f"<e2fastio NetCDF variable {self._name!r}: dimensions {self.dimensions}, shape {self.shape}, "
                f"dtype {self.dtype}, attributes {self.ncattrs()}>")


class _Live(Mapping[str, Any]):
    """A read-only live mapping (name -> wrapper) over one of h5netcdf's containers."""

    def __init__(self, names: Callable[[], Any], make: Callable[[str], Any]) -> None:
        self._names = names
        self._make = make

    def __getitem__(self, name: str) -> Any:
        if name not in self._names():
            raise KeyError(name)
        return self._make(name)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._names()))

    def __len__(self) -> int:
        return len(self._names())

    def __contains__(self, name: object) -> bool:
        return name in self._names()

    def __repr__(self) -> str:
        return repr(dict(self))


class Dataset(_Attributes):
    """``netCDF4.Dataset``'s surface over the backend's h5netcdf file.

    Parameters
    ----------
    h5 : h5netcdf.File
        The open file.
    filepath : str
        The file's path (``filepath()``).
    hooks : object
        The backend: ``_drain()`` (store pending non-blocking writes),
        ``_sync()``, ``close()``, ``closed``, ``_check_writable(what)``,
        and ``_auto_complex``.
    """

    data_model = "NETCDF4"
    file_format = "NETCDF4"
    disk_format = "HDF5"
    path = "/"
    name = "/"
    parent = None

    def __init__(self, h5: Any, filepath: str, hooks: Any) -> None:
        self._h5_file = h5
        self._filepath = filepath
        self._hooks = hooks
        self._auto_mask = True
        self._auto_scale = True
        self._always_mask = True
        self._vars: dict[str, Variable] = {}

    # ---------------------------------------------------------------- plumbing
    @property
    def _h5(self) -> Any:
        self._check_open("use the dataset")
        return self._h5_file

    def _check_open(self, what: str) -> None:
        if self._hooks.closed:
            from e2fastio.errors import BackendClosedError

            raise BackendClosedError(f"cannot {what}: the NetCDF4Backend (and its root) was closed")

    def _check_writable(self, what: str) -> None:
        self._check_open(what)
        self._hooks._check_writable(what)

    def _before_access(self) -> None:
        self._check_open("read or write data")
        self._hooks._drain()

    def _attrs(self) -> Any:
        return self._h5.attrs

    def _writable_attrs(self, what: str) -> Any:
        self._check_writable(what)
        return self._h5.attrs

    def _variable(self, name: str) -> Variable:
        var = self._vars.get(name)
        if var is None:
            var = self._vars[name] = Variable(self, name)
        return var

    # ---------------------------------------------------------------- netCDF4.Dataset surface
    @property
    def variables(self) -> Mapping[str, Variable]:
        """Variables by name (a live, read-only mapping)."""
        return _Live(lambda: self._h5.variables, self._variable)

    @property
    def dimensions(self) -> Mapping[str, Dimension]:
        """Dimensions by name (a live, read-only mapping)."""
        return _Live(lambda: self._h5.dimensions, lambda n: Dimension(self, n))

    @property
    def groups(self) -> dict[str, Any]:
        names = list(self._h5.groups)
        if names:
            raise NotImplementedError(f"the file has groups {names}; e2fastio's root exposes the root group only "
                                      "(open the file with netCDF4.Dataset to read groups)")
        return {}

    def __getitem__(self, name: str) -> Variable:
        if name not in self._h5.variables:
            raise IndexError(f"{name} not found in /")
        return self._variable(name)

    def createDimension(self, dimname: str, size: int | None = None) -> Dimension:  # noqa: N802 - netCDF4's name
        """Create a dimension (``size=None``: unlimited)."""
        self._check_writable(f"create dimension {dimname!r}")
        self._h5.dimensions[dimname] = size
        return Dimension(self, dimname)

    def createVariable(  # noqa: N802 - netCDF4's name
        self,
        varname: str,
        datatype: Any,
        dimensions: str | tuple[str, ...] | list[str] = (),
        compression: str | None = None,
        zlib: bool = False,
        complevel: int = 4,
        shuffle: bool = True,
        fletcher32: bool = False,
        contiguous: bool = False,
        chunksizes: Any = None,
        endian: str = "native",
        fill_value: Any = None,
        **unsupported: Any,
    ) -> Variable:
        """Create a variable with netCDF4-python's arguments (zlib/shuffle compression, chunks, fill value).

        Other netCDF4 arguments (``least_significant_digit``, ``szip``,
        ``blosc``, ...) raise ``TypeError`` naming them.
        """
        self._check_writable(f"create variable {varname!r}")
        unknown = sorted(set(unsupported) - set(_CREATE_VARIABLE_UNSUPPORTED))
        if unknown:
            raise TypeError(f"createVariable() got unexpected keyword argument(s) {unknown}")
        used = sorted(k for k, v in unsupported.items() if v != _CREATE_VARIABLE_UNSUPPORTED[k])
        if used:
            raise TypeError(f"createVariable: e2fastio does not support {used}; "
                            "supported: compression='zlib'/zlib, complevel, shuffle, fletcher32, contiguous, "
                            "chunksizes, endian, fill_value")
        if compression not in (None, "zlib"):
            raise ValueError(f"createVariable: compression={compression!r}; only 'zlib' is supported")
        if "/" in varname:
            raise ValueError(f"createVariable: varname={varname!r}; groups are not supported, use a flat name")
        if isinstance(dimensions, str):
            dimensions = (dimensions,)
        if datatype is str or np.dtype(datatype).kind == "U":
            import h5py

            dtype: Any = h5py.string_dtype()
        else:
            dtype = netcdf_dtype(datatype, f"createVariable({varname!r}) datatype", self._hooks._auto_complex)
            if endian in ("little", "big"):
                dtype = dtype.newbyteorder("<" if endian == "little" else ">")
            elif endian != "native":
                raise ValueError(f"createVariable: endian must be 'native', 'little' or 'big', got {endian!r}")
        kw: dict[str, Any] = {}
        if zlib or compression == "zlib":
            kw.update(compression="gzip", compression_opts=int(complevel), shuffle=bool(shuffle))
        if fletcher32:
            kw["fletcher32"] = True
        if chunksizes is not None and not contiguous:
            kw["chunks"] = tuple(int(c) for c in chunksizes)
        if fill_value is False:
            kw["fill_time"] = "never"
        elif fill_value is not None:
            kw["fillvalue"] = fill_value
        self._h5.create_variable(varname, tuple(dimensions), dtype=dtype, **kw)
        return self._variable(varname)

    def set_auto_mask(self, flag: bool) -> None:
        self._auto_mask = bool(flag)
        for v in self._vars.values():
            v.set_auto_mask(flag)

    def set_auto_scale(self, flag: bool) -> None:
        self._auto_scale = bool(flag)
        for v in self._vars.values():
            v.set_auto_scale(flag)

    def set_auto_maskandscale(self, flag: bool) -> None:
        self.set_auto_mask(flag)
        self.set_auto_scale(flag)

    def set_always_mask(self, flag: bool) -> None:
        self._always_mask = bool(flag)
        for v in self._vars.values():
            v.set_always_mask(flag)

    def filepath(self, encoding: str | None = None) -> str:
        return self._filepath

    def isopen(self) -> bool:
        return not self._hooks.closed

    def sync(self) -> None:
        """Store pending writes, hand HDF5's buffers to the OS and fsync the file (see NetCDF4Backend)."""
        self._check_open("sync")
        self._hooks._sync()

    def close(self) -> None:
        """Close the backend (the same as ``NetCDF4Backend.close()``)."""
        self._hooks.close()

    def __enter__(self) -> Dataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        if not self.isopen():
            return f"<e2fastio NetCDF dataset {self._filepath!r} (closed)>"
        return (f"<e2fastio NetCDF dataset {self._filepath!r}: dimensions {dict(self.dimensions.items())}, "
                f"variables {list(self.variables)}>")
