"""``XarrayBackend``: Earth2Studio's in-memory backend around an ``xarray.Dataset``."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from e2fastio._write import inputs
from e2fastio.errors import CoordinateError

if TYPE_CHECKING:
    import torch
    import xarray

logger = logging.getLogger(__name__)

CoordSystem = Mapping[str, np.ndarray]

# numpy kinds an xarray variable may hold here: float, int, uint, bool, complex.
_KINDS = "c"


def _xarray() -> Any:
    try:
        import xarray
    except ImportError as err:
        raise ImportError("e2fastio.XarrayBackend requires the optional 'xarray' package: pip install xarray") from err
    return xarray


def _torch_dtype(torch: Any, dtype: Any) -> Any:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype), None) if isinstance(dtype, str) else None
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"dtype={dtype!r} is not a torch dtype; pass e.g. torch.float32, 'float64' or None")
    return resolved


class XarrayBackend:
    """An in-memory backend holding an ``xarray.Dataset``, with Earth2Studio's ``XarrayBackend`` interface.

    The dataset is :attr:`root`; :attr:`coords` maps each dimension to its
    values. Data is kept in host memory (writes copy tensors from any device).
    Arrays created without data hold NaN (float64), as xarray fills them.

    Parameters
    ----------
    coords : CoordSystem, optional
        Coordinates to create the dataset with (the full set the arrays will
        use: the dataset is meant to keep them). Multidimensional coordinates
        (2-d ``lat``/``lon``) become data variables over index dimensions
        ``ilat``, ``ilon``.
    **xr_kwargs
        Passed to the ``xarray.Dataset`` constructor (``attrs``, ...).
    """

    def __init__(self, coords: CoordSystem = OrderedDict(), **xr_kwargs: Any) -> None:  # noqa: B006 - never mutated
        xr = _xarray()
        adjusted, mapping = inputs.convert_multidim_to_singledim(coords)
        data_vars = {k: (list(idims), np.asarray(coords[k])) for k, idims in mapping.items()}
        self.root: xarray.Dataset = xr.Dataset(data_vars=data_vars, coords=adjusted, **xr_kwargs)
        self.coords: OrderedDict[str, np.ndarray] = adjusted
        self._selector = inputs.Selector(self.coords, "xarray store", self._stored_shape)

    def _stored_shape(self, name: str) -> tuple[int, ...] | None:
        return tuple(self.root[name].shape) if name in self.root else None

    # ------------------------------------------------------------------ mapping protocol
    def __contains__(self, item: str) -> bool:
        """Whether `item` names a variable or coordinate of the dataset."""
        return item in self.root

    def __getitem__(self, item: str) -> xarray.DataArray:
        """The dataset's ``DataArray`` `item` (it shares the stored values)."""
        return self.root[item]

    def __len__(self) -> int:
        """Number of data variables plus number of coordinates."""
        return len(self.root) + len(self.coords)

    def __iter__(self) -> Iterator[str]:
        """Data variable names."""
        return cast("Iterator[str]", iter(self.root))  # names are str: every one was checked on the way in

    # ------------------------------------------------------------------ arrays
    def add_array(
        self,
        coords: CoordSystem,
        array_name: str | list[str],
        data: torch.Tensor | list[torch.Tensor] | None = None,
        **xr_kwargs: Any,
    ) -> None:
        """Add array(s), and any coordinates the dataset does not have yet.

        An array that exists is left as it is (with a warning). A coordinate
        that exists keeps its stored values.

        Parameters
        ----------
        coords : CoordSystem
            Ordered coordinates of the new array(s).
        array_name : str | list[str]
            Name(s) of the new array(s).
        data : torch.Tensor | numpy.ndarray | list, optional
            Initial values, one per name, copied to host memory in their own
            dtype. Without data an array holds NaN (float64). Data over a subset
            of the stored coordinate values is placed at those values (NaN
            elsewhere; integer data then becomes float64).
        **xr_kwargs
            Passed to the ``xarray.DataArray`` constructor (``attrs``, ...).
        """
        xr = _xarray()
        names = inputs.as_list(array_name, "array_name")
        for n in names:
            inputs.check_member_name(n)
        datas = [None] * len(names) if data is None else inputs.as_list(data, "data")
        if len(datas) != len(names):
            raise ValueError(
                f"The number of input tensors and array names must be the same but got {len(datas)} and {len(names)}."
            )
        hosts = [None if d is None else inputs.to_host_array(d, "data", extra_kinds=_KINDS) for d in datas]
        adjusted, mapping = inputs.convert_multidim_to_singledim(coords)
        known = {**{d: np.asarray(v) for d, v in adjusted.items()}, **self.coords}
        shape = tuple(len(known[d]) for d in adjusted)
        dims = list(adjusted)
        # Where each array's data goes, checked before anything changes.
        same = all(d not in self.coords or np.array_equal(self.coords[d], adjusted[d]) for d in adjusted)
        if same:
            index = [np.arange(n, dtype=np.int64) for n in shape]
        else:
            index = [inputs.CoordinateIndex(d, self.coords[d]).locate(v) if d in self.coords
                     else np.arange(len(v), dtype=np.int64) for d, v in adjusted.items()]
        for name, h in zip(names, hosts, strict=True):
            if h is not None and name not in self.root:
                inputs.check_shape(h, index, dims, name)

        for d in adjusted:
            if d not in self.coords:
                self.coords[d] = known[d]
        for k, idims in mapping.items():
            if k not in self.root:
                self.root[k] = xr.DataArray(data=np.asarray(coords[k]), dims=list(idims),
                                            coords={i: known[i] for i in idims}, **xr_kwargs)
        for name, h in zip(names, hosts, strict=True):
            if name in self.root:
                logger.warning("%s is already in xarray Dataset. Skipping add_array.", name)
                continue
            if h is None:
                values = np.full(shape, np.nan)
            elif same:
                values = np.array(h, copy=True)  # never share memory with the caller's tensor
            else:
                values = np.full(shape, np.nan, dtype=h.dtype if h.dtype.kind in "fc" else np.float64)
                values[inputs.orthogonal_key(index)] = h
            self.root[name] = xr.DataArray(data=values, coords={d: known[d] for d in dims}, dims=dims, **xr_kwargs)

    def write(
        self,
        x: torch.Tensor | list[torch.Tensor],
        coords: CoordSystem,
        array_name: str | list[str],
    ) -> None:
        """Write tensor(s) at `coords` into the named array(s), in host memory.

        Every input is checked before anything is written: on a bad input the
        dataset is unchanged. Values are placed by coordinate label. A missing
        array is created over the dataset's coordinates for these dimensions
        (NaN, float64) first.

        Parameters
        ----------
        x : torch.Tensor | numpy.ndarray | list of them
            Data, one per array name, on any device (copied to the host).
        coords : CoordSystem
            Coordinates of `x`, one entry per axis, in the array's order.
        array_name : str | list[str]
            Array(s) to write to.
        """
        xs, names = inputs.write_inputs(x, array_name, path_names=False)
        adjusted, index = self._selector.select(coords, "writing")
        dims = list(adjusted)
        planned = []
        for xi, name in zip(xs, names, strict=True):
            arr = inputs.to_host_array(xi, "x", extra_kinds=_KINDS)
            inputs.check_shape(arr, index, dims, name)
            if name in self.root:
                stored = self.root.variables[name]
                if list(stored.dims) != dims:
                    raise CoordinateError(
                        f"array {name!r} has dimensions {list(stored.dims)} but coords give {dims}; "
                        "pass coords (and data axes) in the array's order"
                    )
                inputs.check_cast(arr.dtype, stored.dtype, name)
            else:
                inputs.check_cast(arr.dtype, np.dtype(np.float64), name)
            planned.append((name, arr))
        missing = [name for name, _ in planned if name not in self.root]
        if missing:
            self.add_array(OrderedDict((d, self.coords[d]) for d in dims), missing)
        key = inputs.orthogonal_key(index, outer=True)
        for name, arr in planned:
            self.root.variables[name][key] = arr

    def read(
        self,
        coords: CoordSystem,
        array_name: str,
        device: str | torch.device = "cpu",
        dtype: torch.dtype | str | None = "float32",
    ) -> tuple[torch.Tensor, CoordSystem]:
        """Read `array_name` at `coords` as a torch tensor.

        Parameters
        ----------
        coords : CoordSystem
            Coordinates to read, in the array's order (leading dimensions may
            be given alone).
        array_name : str
            Array to read.
        device : str | torch.device, optional
            Where the returned tensor lives, by default ``"cpu"``.
        dtype : torch.dtype | str | None, optional
            dtype of the returned tensor, by default float32 (as Earth2Studio's
            ``torch.float32``); a name such as ``"complex64"`` works too;
            ``None`` keeps the stored dtype.

        Returns
        -------
        tuple[torch.Tensor, CoordSystem]
            A new tensor (never a view of the dataset) and `coords`.
        """
        import torch

        dtype = _torch_dtype(torch, dtype)
        if array_name not in self.root:
            raise KeyError(f"array_name={array_name!r} is not in the xarray store (it holds {list(self.root)})")
        adjusted, index = self._selector.select(coords, "reading")
        dims = list(adjusted)
        stored = self.root.variables[array_name]
        if list(stored.dims[: len(dims)]) != dims:
            raise CoordinateError(
                f"array {array_name!r} has dimensions {list(stored.dims)} but coords give {dims}; "
                "pass coords in the array's order"
            )
        view = stored.values[inputs.orthogonal_key(index)]
        x = torch.as_tensor(view, dtype=dtype, device=device)
        if x.device.type == "cpu" and view.size and x.data_ptr() == view.ctypes.data:
            x = x.clone()  # never hand out a view of the dataset
        return x, coords
