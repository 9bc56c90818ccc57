"""Turning user inputs (torch tensors, numpy arrays, coordinates) into what the core takes.

The first stage of every write: :func:`plan_write` checks a write's inputs
once, in order (names, coordinates, data types and shapes, each array's
dimensions and dtype), and returns a :class:`WritePlan` that the write
pipeline turns into engine requests without checking them again.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from e2fastio.errors import ArrayNameError, ArrayNameTypeError, CoordinateError, UnsupportedDTypeError
from e2fastio.errors import DataShapeError as DataShapeError  # also raised by the backends as inputs.DataShapeError

# dtypes the chunk pipeline stores (everything numpy can view with itemsize 1/2/4/8).
_SUPPORTED_KINDS = {"f", "i", "u", "b"}
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-+]*$")


def is_torch_tensor(x: Any) -> bool:
    mod = type(x).__module__
    return mod.startswith("torch") and hasattr(x, "detach") and hasattr(x, "device")


def as_list(x: Any, what: str) -> list[Any]:
    if isinstance(x, (list, tuple)):
        return list(x)
    if what == "array_name" and isinstance(x, np.ndarray):
        # Earth2Studio's split_coords hands names over as a numpy array of str.
        return [str(v) for v in x.ravel()]
    return [x]


def write_inputs(x: Any, array_name: Any, path_names: bool = True,
                 check_name: Callable[[Any], str] | None = None) -> tuple[list[Any], list[str]]:
    """The (data, name) pairs of a write, checked: equal counts, safe and distinct names.

    `path_names=False` (in-memory backends) only requires each name to be a
    non-empty str: it never becomes a key inside a store. `check_name`
    replaces both (a format's own naming rules: NetCDF's).
    """
    xs = as_list(x, "x")
    names = as_list(array_name, "array_name")
    if len(xs) != len(names):
        raise ValueError(
            f"The number of input tensors and array names must be the same but got {len(xs)} and {len(names)}."
        )
    check = check_name or (check_array_name if path_names else check_member_name)
    for n in names:
        check(n)
    if len(set(names)) != len(names):
        raise ValueError(f"array_name lists an array twice ({names}); write each array once per call")
    return xs, names


def add_array_inputs(array_name: Any, data: Any, extra_kinds: str = "") -> tuple[list[str], list[np.ndarray | None]]:
    """The names of an add_array call and their optional initial data (host arrays), checked."""
    names = as_list(array_name, "array_name")
    for n in names:
        check_array_name(n)
    datas = [None] * len(names) if data is None else as_list(data, "data")
    if len(datas) != len(names):
        raise ValueError(
            f"The number of input tensors and array names must be the same but got {len(datas)} and {len(names)}."
        )
    return names, [None if d is None else to_host_array(d, "data", extra_kinds) for d in datas]


def check_array_name(name: Any, argument: str = "array_name") -> str:
    """Array names are paths inside the store: '/'-separated safe components, never '..' or hidden names.

    ``"t2m"`` or, nested in groups, ``"surface/t2m"``; nothing that could leave
    the store or shadow its metadata.
    """
    if not isinstance(name, str):
        raise ArrayNameTypeError(f"{argument} must be a str, got {type(name).__name__}")
    parts = name.split("/")
    for part in parts:
        if part in ("", ".", "..") or not _NAME_RE.match(part) or part.startswith("__") or part == "zarr.json":
            raise ArrayNameError(
                f"{argument}={name!r} is not a safe array name: use letters, digits, '_', '-', '.', '+' "
                "(not starting with '.', '-' or '__'), and '/' only between such parts (a nested array "
                "such as 'surface/t2m'), never '..', '\\' or a leading or trailing '/'"
            )
    return name


def check_member_name(name: Any, argument: str = "array_name") -> str:
    """A name of an in-memory backend's member: any non-empty str."""
    if not isinstance(name, str):
        raise ArrayNameTypeError(f"{argument} must be a non-empty str, got {type(name).__name__}")
    if not name:
        raise ArrayNameError(f"{argument} must be a non-empty str, got {name!r}")
    return name


class DeviceTensor:
    """A CUDA tensor kept on its device, for the non-blocking device-to-host path."""

    __slots__ = ("dtype", "shape", "tensor")

    def __init__(self, tensor: Any, extra_kinds: str = "") -> None:
        import torch

        self.tensor = tensor
        self.shape = tuple(tensor.shape)
        try:
            self.dtype = np.dtype(torch.empty((), dtype=tensor.dtype).numpy().dtype)
        except TypeError as err:
            raise UnsupportedDTypeError(
                f"x has dtype {tensor.dtype}, which numpy (and zarr) cannot store; convert it first, e.g. x.float()"
            ) from err
        if self.dtype.kind in extra_kinds:
            return
        if self.dtype.kind not in _SUPPORTED_KINDS or self.dtype.itemsize not in (1, 2, 4, 8):
            raise UnsupportedDTypeError(f"x has dtype {tensor.dtype}, which e2fastio does not store")

    def cast(self, dtype: np.dtype, name: str) -> DeviceTensor:
        if dtype == self.dtype:
            return self
        if not np.can_cast(self.dtype, dtype, casting="same_kind"):
            raise UnsupportedDTypeError(
                f"x for array {name!r} has dtype {self.dtype} but the array stores {dtype}; cast it first"
            )
        import torch

        return DeviceTensor(self.tensor.to(torch.from_numpy(np.zeros((), dtype)).dtype), dtype.kind)


def to_input(x: Any, device_ok: bool, argument: str = "x", extra_kinds: str = "") -> np.ndarray | DeviceTensor:
    """A host view of `x`, or (when `device_ok`) a CUDA tensor left on its device."""
    if device_ok and is_torch_tensor(x) and x.device.type == "cuda":
        return DeviceTensor(x.detach(), extra_kinds)
    return to_host_array(x, argument, extra_kinds)


def to_host_array(x: Any, argument: str = "x", extra_kinds: str = "") -> np.ndarray:
    """A numpy view (no copy when possible) of a tensor or array on the host.

    `extra_kinds`: numpy dtype kinds accepted besides float, int, uint and bool
    (``"c"`` for backends that hold complex data).
    """
    arr: np.ndarray
    if is_torch_tensor(x):
        t = x.detach()
        if t.device.type != "cpu":
            t = t.to("cpu")
        if t.is_conj():
            t = t.resolve_conj()
        try:
            arr = t.numpy()
        except TypeError as err:  # e.g. bfloat16
            raise UnsupportedDTypeError(
                f"{argument} has dtype {t.dtype}, which numpy (and zarr) cannot store; "
                "convert it first, e.g. x.float()"
            ) from err
    elif isinstance(x, np.ndarray):
        arr = x
    elif isinstance(x, (np.generic, int, float, bool)):
        arr = np.asarray(x)
    else:
        raise UnsupportedDTypeError(
            f"{argument} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}"
        )
    if arr.dtype.kind in extra_kinds:
        return arr
    if arr.dtype.kind not in _SUPPORTED_KINDS or arr.dtype.itemsize not in (1, 2, 4, 8):
        raise UnsupportedDTypeError(
            f"{argument} has dtype {arr.dtype}, which e2fastio does not store; "
            "use a float, int, uint or bool dtype"
        )
    return arr


def cast_for_array(arr: Any, dtype: np.dtype, name: str) -> Any:
    """Cast to the stored dtype when it is safe (same kind); native byte order."""
    if isinstance(arr, DeviceTensor):
        return arr.cast(dtype, name)
    if arr.dtype == dtype and arr.dtype.isnative:
        return arr
    check_cast(arr.dtype, dtype, name)
    return arr.astype(dtype.newbyteorder("="), copy=True)


def check_cast(src: np.dtype, dtype: np.dtype, name: str) -> None:
    """Refuse a cast that changes the kind of value (complex -> real, float -> int)."""
    if not np.can_cast(src, dtype, casting="same_kind"):
        raise UnsupportedDTypeError(
            f"x for array {name!r} has dtype {src} but the array stores {dtype}; "
            f"cast it first (e.g. x.astype({str(dtype)!r}))"
        )


def convert_multidim_to_singledim(
    coords: Mapping[str, np.ndarray],
) -> tuple[OrderedDict[str, np.ndarray], dict[str, list[str]]]:
    """Replace n-dimensional coordinates by index coordinates, as Earth2Studio does.

    An n-d coordinate ``lat`` followed by n-1 coordinates of the same shape
    (``lon``) becomes index dimensions ``ilat``, ``ilon``; the returned mapping
    sends each multidimensional name to its index dimensions.
    """
    adjusted: OrderedDict[str, np.ndarray] = OrderedDict()
    mapping: dict[str, list[str]] = {}
    items = [(k, np.asarray(v)) for k, v in coords.items()]
    i = 0
    while i < len(items):
        k, v = items[i]
        if k.startswith("_"):
            i += 1
            continue
        if v.ndim < 2:
            adjusted[k] = v
            i += 1
            continue
        mapping[k] = []
        for j in range(v.ndim):
            if i + j >= len(items) or items[i + j][1].shape != v.shape:
                raise ValueError(
                    "Assumed that if an n-dimensional coordinate exists, "
                    "then there will be exactly n coordinates with the same shape."
                )
            kj = items[i + j][0]
            adjusted["i" + kj] = np.arange(v.shape[j])
            mapping[k].append("i" + kj)
            mapping[kj] = mapping[k]
        i += v.ndim
    return adjusted, mapping


class CoordinateIndex:
    """Maps coordinate values to their positions along one stored dimension."""

    def __init__(self, dim: str, values: np.ndarray) -> None:
        self.dim = dim
        self.values = np.asarray(values)
        self._sorter = np.argsort(self.values, kind="stable")
        self._sorted = self.values[self._sorter]

    def locate(self, value: Any) -> np.ndarray:
        v = np.atleast_1d(np.asarray(value))
        if v.ndim != 1:
            raise CoordinateError(f"coords[{self.dim!r}] must be one-dimensional, got shape {v.shape}")
        # The common case (lat, lon, ensemble passed whole, in the stored order): no search.
        # Exact comparison, as below; microseconds where the search costs about a millisecond
        # per write on 721 + 1440 grid values.
        if v is self.values or (len(v) == len(self.values) and v.dtype == self.values.dtype
                                and np.array_equal(v, self.values)):
            return np.arange(len(v), dtype=np.int64)  # a new array: callers may keep or change it
        stored = self._sorted
        probe = v
        if stored.dtype.kind in "mM" and v.dtype.kind == stored.dtype.kind:
            # Search in the stored unit; `found` compares the values as given, so a
            # finer value (06:00 against whole days) is not rounded onto a stored one.
            probe = v.astype(stored.dtype)
        try:
            pos = np.searchsorted(stored, probe)
        except TypeError as err:
            raise CoordinateError(
                f"coords[{self.dim!r}] has dtype {v.dtype}, not comparable with the stored {stored.dtype}"
            ) from err
        pos_c = np.minimum(pos, max(len(stored) - 1, 0))
        found = (pos < len(stored)) & (stored[pos_c] == v) if len(stored) else np.zeros(len(v), bool)
        if not np.all(found):
            missing = v[~found][:5]
            raise CoordinateError(
                f"coords[{self.dim!r}] has values not in the store: {missing.tolist()}"
                f"{' ...' if (~found).sum() > 5 else ''}; add them with add_array first "
                f"(the store holds {len(stored)} values)"
            )
        idx = self._sorter[pos].astype(np.int64)
        if len(np.unique(idx)) != len(idx):
            raise CoordinateError(f"coords[{self.dim!r}] repeats a value; each position may be written once")
        return idx


class Selector:
    """Turns a write's or read's coordinates into one int64 index per stored dimension.

    Shared by every backend: `coords` is the backend's own (live) mapping of
    dimension -> values; `stored_shape(name)` gives the shape of a stored
    multidimensional coordinate, or None when the store lacks it.
    """

    def __init__(self, coords: Mapping[str, np.ndarray], store: str,
                 stored_shape: Any) -> None:
        self.coords = coords
        self.store = store
        self.stored_shape = stored_shape
        self._indexes: dict[str, CoordinateIndex] = {}

    def forget(self, dim: str) -> None:
        """The values of `dim` changed: rebuild its index on next use."""
        self._indexes.pop(dim, None)

    def select(self, coords: Mapping[str, np.ndarray], verb: str = "writing"
               ) -> tuple[OrderedDict[str, np.ndarray], list[np.ndarray]]:
        from e2fastio.errors import UnknownDimensionError

        adjusted, mapping = convert_multidim_to_singledim(coords)
        for dim in adjusted:
            if dim not in self.coords:
                raise UnknownDimensionError(
                    f"Coordinate dimension {dim} not in {self.store}; "
                    f"create it first with add_array (the store has {list(self.coords)})."
                )
        for key in mapping:
            shape = self.stored_shape(key)
            if shape is None:
                raise UnknownDimensionError(f"Multidimension coordinate {key} not in {self.store}.")
            if np.shape(coords[key]) != tuple(shape):
                raise CoordinateError(
                    f"Currently {verb} data with multidimension arrays is only supported when "
                    f"the multidimension coordinates are passed in full ({key})."
                )
        index = []
        for d, v in adjusted.items():
            ix = self._indexes.get(d)
            if ix is None or ix.values is not self.coords[d]:  # new, or replaced by the user
                ix = self._indexes[d] = CoordinateIndex(d, self.coords[d])
            index.append(ix.locate(v))
        return adjusted, index


def check_shape(arr: np.ndarray | DeviceTensor, index: Sequence[np.ndarray], dims: Sequence[str], name: str) -> None:
    expected = tuple(len(i) for i in index)
    if arr.shape != expected:
        raise DataShapeError(
            f"x for array {name!r} has shape {tuple(arr.shape)} but coords {list(dims)} "
            f"give {expected}; the data must have one axis per coordinate, in order"
        )


def orthogonal_key(index: Sequence[np.ndarray], outer: bool = False) -> tuple[Any, ...]:
    """A key selecting the outer product of `index` from a numpy array or torch tensor.

    Runs of consecutive positions become slices (a view, no gather or scatter);
    otherwise the key is ``np.ix_`` of the positions, or with `outer` (for
    xarray's ``Variable``, which indexes orthogonally) one slice or 1-d array
    per dimension. Reading through slices gives a view: copy it before handing
    it out.
    """
    key: list[Any] = []
    for idx in index:
        n = len(idx)
        if n == 0 or (idx[0] >= 0 and np.array_equal(idx, np.arange(idx[0], idx[0] + n))):
            start = int(idx[0]) if n else 0
            key.append(slice(start, start + n))
        elif outer:
            key.append(np.asarray(idx))
        else:
            return np.ix_(*index)
    return tuple(key)


def first_partial_chunk(index: Sequence[np.ndarray], shape: Sequence[int], chunks: Sequence[int]) -> int | None:
    """The first dimension along which the selection covers only part of a chunk it touches, or None.

    `index[d]` holds the (unique) target indices along dimension d; the last
    chunk of a dimension may be short.
    """
    for d, (idx, n, c) in enumerate(zip(index, shape, chunks, strict=True)):
        if c <= 1 or len(idx) == 0:
            continue
        touched = np.unique(np.asarray(idx) // c)
        if len(idx) != sum(min(c, n - k * c) for k in touched):
            return d
    return None


# ---------------------------------------------------------------------------- the plan of a write
@dataclass(frozen=True, slots=True)
class WritePlan:
    """A write's inputs, checked: what goes where.

    `items`: (array name, data) with the data already in the stored dtype (a
    host array, or a CUDA tensor left on its device); `coords`: the write's
    coordinates with n-d ones replaced by index dimensions; `index`: one int64
    position array per dimension; `missing`: names the store does not hold yet
    (the backend creates them before the plan is written).
    """

    items: list[tuple[str, np.ndarray | DeviceTensor]]
    coords: OrderedDict[str, np.ndarray]
    index: list[np.ndarray]
    missing: list[str]

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.items]


# An array the store holds: (its dimension names, its dtype); a missing one: (None, the dtype it will get).
StoredArray = Callable[[str], "tuple[tuple[str, ...] | None, np.dtype[Any]]"]


def plan_write(x: Any, coords: Mapping[str, np.ndarray], array_name: Any, selector: Selector,
               stored: StoredArray, *, device_ok: bool, extra_kinds: str = "",
               check_name: Callable[[Any], str] | None = None) -> WritePlan:
    """Check a write's inputs once and plan it (nothing is stored; a bad input raises here).

    `stored(name)` describes each target array; `device_ok`: CUDA tensors may
    stay on their device (non-blocking backends with the CUDA runtime);
    `extra_kinds` and `check_name`: what the format stores besides real
    numbers, and its naming rules (see :func:`write_inputs`).
    """
    xs, names = write_inputs(x, array_name, check_name=check_name)
    adjusted, index = selector.select(coords, "writing")
    dims = tuple(adjusted)
    items: list[tuple[str, np.ndarray | DeviceTensor]] = []
    missing: list[str] = []
    for xi, name in zip(xs, names, strict=True):
        arr = to_input(xi, device_ok, "x", extra_kinds)
        check_shape(arr, index, dims, name)
        array_dims, dtype = stored(name)
        if array_dims is None:
            missing.append(name)
        elif array_dims != dims:
            raise CoordinateError(
                f"array {name!r} has dimensions {list(array_dims)} but coords give {list(dims)}; "
                "pass coords (and data axes) in the array's order"
            )
        items.append((name, cast_for_array(arr, dtype, name)))
    return WritePlan(items, adjusted, index, missing)
