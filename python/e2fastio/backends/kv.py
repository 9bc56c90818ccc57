"""``KVBackend``: Earth2Studio's in-memory key-value backend (a dict of torch tensors)."""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from e2fastio._write import inputs
from e2fastio.errors import CoordinateError, UnsupportedDTypeError

if TYPE_CHECKING:
    import torch
    import xarray

logger = logging.getLogger(__name__)

CoordSystem = Mapping[str, np.ndarray]


def _torch() -> Any:
    try:
        import torch
    except ImportError as err:
        raise ImportError(
            "e2fastio.KVBackend keeps its arrays as torch tensors and needs torch: install the build "
            "that matches your machine (https://pytorch.org)"
        ) from err
    return torch


def _xarray() -> Any:
    try:
        import xarray
    except ImportError as err:
        raise ImportError("KVBackend.to_xarray requires the optional 'xarray' package: pip install xarray") from err
    return xarray


class KVBackend:
    """An in-memory backend: a dict of torch tensors, with Earth2Studio's ``KVBackend`` interface.

    Arrays live in :attr:`root` (name -> tensor on `device`); coordinates in
    :attr:`coords` (dimension -> numpy array); :attr:`dims` names each array's
    dimensions. Multidimensional coordinates (2-d ``lat``/``lon`` grids) are
    kept in :attr:`root` as CPU tensors over index dimensions ``ilat``, ``ilon``.

    Parameters
    ----------
    device : str | torch.device, optional
        Where the array tensors live, by default ``"cpu"``. Writes move the
        data there.
    """

    def __init__(self, device: str | torch.device = "cpu") -> None:
        self._torch = _torch()
        self.device = device
        self.root: dict[str, torch.Tensor] = {}
        self.coords: OrderedDict[str, np.ndarray] = OrderedDict()
        self.dims: dict[str, list[str]] = {}
        self._selector = inputs.Selector(self.coords, "KV store", self._stored_shape)

    def _stored_shape(self, name: str) -> tuple[int, ...] | None:
        t = self.root.get(name)
        return None if t is None else tuple(t.shape)

    # ------------------------------------------------------------------ mapping protocol
    def __contains__(self, item: str) -> bool:
        """Whether `item` names an array or a coordinate."""
        return item in self.root or item in self.coords

    def __getitem__(self, item: str) -> torch.Tensor | np.ndarray:
        """The stored tensor of an array (not a copy), or a coordinate's values."""
        if item in self.coords:
            return self.coords[item]
        return self.root[item]

    def __len__(self) -> int:
        """Number of arrays plus number of coordinates."""
        return len(self.root) + len(self.coords)

    def __iter__(self) -> Iterator[str]:
        """Array names, then coordinate names."""
        return iter(self.root | self.coords)

    # ------------------------------------------------------------------ arrays
    def add_array(
        self,
        coords: CoordSystem,
        array_name: str | list[str],
        data: torch.Tensor | list[torch.Tensor] | None = None,
    ) -> None:
        """Add array(s), and any coordinates the store does not have yet.

        An array that exists is left as it is (with a warning). A coordinate
        that exists keeps its stored values.

        Parameters
        ----------
        coords : CoordSystem
            Ordered coordinates of the new array(s).
        array_name : str | list[str]
            Name(s) of the new array(s).
        data : torch.Tensor | numpy.ndarray | list, optional
            Initial values, one per name; stored as a copy on `device`, in their
            own dtype. Without data an array holds float32 zeros. Data over a
            subset of the stored coordinate values is placed at those values
            (zeros elsewhere).
        """
        names = inputs.as_list(array_name, "array_name")
        for n in names:
            inputs.check_member_name(n)
        datas = [None] * len(names) if data is None else inputs.as_list(data, "data")
        if len(datas) != len(names):
            raise ValueError(
                f"The number of input tensors and array names must be the same but got {len(datas)} and {len(names)}."
            )
        tensors = [None if d is None else self._as_tensor(d, "data") for d in datas]
        adjusted, mapping = inputs.convert_multidim_to_singledim(coords)
        known = {**{d: np.asarray(v) for d, v in adjusted.items()}, **self.coords}
        shape = tuple(len(known[d]) for d in adjusted)
        full = [np.arange(n, dtype=np.int64) for n in shape]
        # Where each array's data goes, checked before anything changes: over the
        # stored values in order, the data as it is; over other stored values, by label.
        same = all(d not in self.coords or np.array_equal(self.coords[d], adjusted[d]) for d in adjusted)
        index = full if same else self._index_for_new(adjusted, known)
        for name, t in zip(names, tensors, strict=True):
            if t is not None and name not in self.root:
                inputs.check_shape(t, index, list(adjusted), name)

        for d in adjusted:
            if d not in self.coords:
                self.coords[d] = known[d]
        for k, idims in mapping.items():
            if k not in self.root:
                self.dims[k] = list(idims)
                self.root[k] = self._multidim_values(coords[k])
        for name, t in zip(names, tensors, strict=True):
            if name in self.root:
                logger.warning("%s is already in KV Store. Skipping add_array.", name)
                continue
            if t is None:
                stored = self._torch.zeros(shape, dtype=self._torch.float32, device=self.device)
            elif same:
                stored = t.to(self.device, copy=True)
            else:
                stored = self._torch.zeros(shape, dtype=t.dtype, device=self.device)
                stored[inputs.orthogonal_key(index)] = t.to(self.device)
            self.root[name] = stored
            self.dims[name] = list(adjusted)

    def _index_for_new(self, adjusted: Mapping[str, np.ndarray], known: Mapping[str, np.ndarray]) -> list[np.ndarray]:
        """Positions of `coords` (some dimensions possibly new) inside the store-to-be."""
        index = []
        for d, v in adjusted.items():
            if d in self.coords:
                index.append(inputs.CoordinateIndex(d, self.coords[d]).locate(v))
            else:
                index.append(np.arange(len(known[d]), dtype=np.int64))
        return index

    def _multidim_values(self, values: Any) -> Any:
        arr = np.asarray(values)
        if arr.dtype.kind in "fiubc":
            return self._torch.as_tensor(arr, device="cpu")
        return arr  # e.g. datetimes: torch has no such dtype, keep numpy

    def _as_tensor(self, x: Any, argument: str) -> torch.Tensor:
        torch = self._torch
        if inputs.is_torch_tensor(x):
            return x.detach()
        if isinstance(x, np.ndarray):
            arr = np.ascontiguousarray(x)
            if not arr.dtype.isnative:
                arr = arr.astype(arr.dtype.newbyteorder("="))
            elif not arr.flags.writeable:
                arr = arr.copy()  # torch tensors are always writable
            try:
                return torch.from_numpy(arr)
            except TypeError as err:
                raise UnsupportedDTypeError(
                    f"{argument} has dtype {x.dtype}, which torch cannot hold; KVBackend keeps torch tensors"
                ) from err
        raise UnsupportedDTypeError(f"{argument} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")

    def write(
        self,
        x: torch.Tensor | list[torch.Tensor],
        coords: CoordSystem,
        array_name: str | list[str],
    ) -> None:
        """Write tensor(s) at `coords` into the named array(s), on `device`.

        Every input is checked before anything is written: on a bad input the
        store is unchanged. Values are placed by coordinate label. A missing
        array is created over the store's coordinates for these dimensions
        (float32 zeros) first.

        Parameters
        ----------
        x : torch.Tensor | numpy.ndarray | list of them
            Data, one per array name, on any device.
        coords : CoordSystem
            Coordinates of `x`, one entry per axis, in the array's order.
        array_name : str | list[str]
            Array(s) to write to.
        """
        torch = self._torch
        xs, names = inputs.write_inputs(x, array_name, path_names=False)
        adjusted, index = self._selector.select(coords, "writing")
        dims = list(adjusted)
        planned = []
        for xi, name in zip(xs, names, strict=True):
            t = self._as_tensor(xi, "x")
            inputs.check_shape(t, index, dims, name)
            if name in self.root:
                if self.dims[name] != dims:
                    raise CoordinateError(
                        f"array {name!r} has dimensions {self.dims[name]} but coords give {dims}; "
                        "pass coords (and data axes) in the array's order"
                    )
                dtype = self.root[name].dtype
            else:
                dtype = torch.float32
            if not torch.can_cast(t.dtype, dtype):
                hint = "cast it first" if name in self.root else "create it with add_array(..., data=x) first"
                raise UnsupportedDTypeError(
                    f"x for array {name!r} has dtype {t.dtype} but the array stores {dtype}; {hint}"
                )
            planned.append((name, t))
        missing = [name for name, _ in planned if name not in self.root]
        if missing:
            self.add_array(OrderedDict((d, self.coords[d]) for d in dims), missing)
        key = inputs.orthogonal_key(index)
        for name, t in planned:
            target = self.root[name]
            target[key] = t.to(device=target.device, dtype=target.dtype)

    def read(
        self, coords: CoordSystem, array_name: str, device: str | torch.device = "cpu"
    ) -> tuple[torch.Tensor, CoordSystem]:
        """Read `array_name` at `coords`.

        Parameters
        ----------
        coords : CoordSystem
            Coordinates to read, in the array's order (leading dimensions may
            be given alone).
        array_name : str
            Array to read.
        device : str | torch.device, optional
            Where the returned tensor lives, by default ``"cpu"``.

        Returns
        -------
        tuple[torch.Tensor, CoordSystem]
            A new tensor (never a view of the store) and `coords`.
        """
        if array_name not in self.root:
            raise KeyError(f"array_name={array_name!r} is not in the KV store (it holds {list(self.root)})")
        adjusted, index = self._selector.select(coords, "reading")
        dims = list(adjusted)
        stored_dims = self.dims[array_name]
        if stored_dims[: len(dims)] != dims:
            raise CoordinateError(
                f"array {array_name!r} has dimensions {stored_dims} but coords give {dims}; "
                "pass coords in the array's order"
            )
        key = inputs.orthogonal_key(index)
        view = self.root[array_name][key]
        x = view.to(device)
        if x is view and all(isinstance(k, slice) for k in key):
            x = x.clone()  # never hand out a view of the store
        return x, coords

    def to_xarray(self, **xr_kwargs: Any) -> xarray.Dataset:
        """The arrays and coordinates as an ``xarray.Dataset`` (copied to host memory).

        Parameters
        ----------
        **xr_kwargs
            Passed to the ``xarray.Dataset`` constructor (``attrs``, ...).

        Returns
        -------
        xarray.Dataset
        """
        xr = _xarray()

        def host(v: Any) -> np.ndarray:
            if inputs.is_torch_tensor(v):
                v = v.detach().cpu()
                arr: np.ndarray = v.resolve_conj().numpy() if v.is_conj() else v.numpy()
                return arr
            return np.asarray(v)

        ds: xarray.Dataset = xr.Dataset(
            data_vars={name: (self.dims[name], host(values)) for name, values in self.root.items()},
            coords={name: ([name], values) for name, values in self.coords.items()},
            **xr_kwargs,
        )
        return ds
