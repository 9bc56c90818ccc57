"""The store's nodes through zarr-python: the root group, new arrays' metadata, whole coordinate arrays.

Everything here is metadata and coordinates, written and read by
zarr-python on its own event loop, where its stores live; chunks of data
arrays never pass through here (they go through the write pipeline,
:mod:`e2fastio._write.pipeline`). Requests that can run together run in one
round: against an object store each one is a round trip.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Mapping, Sequence
from typing import Any, cast

import numpy as np
import zarr


def check_group_kwargs(backend_kwargs: Any) -> None:
    """``backend_kwargs`` as ``zarr.group`` takes them, checked before anything is created."""
    if not isinstance(backend_kwargs, Mapping):
        raise TypeError(f"backend_kwargs must be a dict of zarr.group keyword arguments (e.g. {{'overwrite': True}}), "
                        f"got {type(backend_kwargs).__name__}")
    try:
        inspect.signature(zarr.group).bind(None, **backend_kwargs)
    except TypeError as err:
        raise TypeError(f"backend_kwargs: {err} (they are passed to zarr.group)") from None


def open_root(store: Any, backend_kwargs: dict[str, Any]) -> tuple[zarr.Group, bool]:
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
            is_empty = sync(empty())
        except FileNotFoundError:
            is_empty = True
        if is_empty:
            try:
                return zarr.create_group(store), True
            except (zarr.errors.ContainsGroupError, zarr.errors.ContainsArrayError):
                pass  # created meanwhile by another writer: open it
    return zarr.group(store, **backend_kwargs), False


def as_slices(index: Sequence[np.ndarray]) -> tuple[Any, ...]:
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


def sync(coro: Any) -> Any:
    """Run a coroutine on zarr-python's own event loop (where its stores live)."""
    from zarr.core.sync import sync as run

    return run(coro)


def read_whole(root: zarr.Group, items: Sequence[str | zarr.Array[Any]]) -> list[np.ndarray]:
    """Whole contents of several arrays of `root` (by name, or opened), in one
    concurrent round of requests rather than one after another."""
    group = root._async_group

    async def one(item: str | zarr.Array[Any]) -> np.ndarray:
        node = item._async_array if isinstance(item, zarr.Array) else await group.getitem(item)
        arr = cast("zarr.AsyncArray[Any]", node)  # the names given are arrays'
        return np.asarray(await arr.getitem(Ellipsis))

    async def every() -> list[np.ndarray]:
        return list(await asyncio.gather(*(one(i) for i in items)))

    return sync(every()) if items else []


async def create_arrays(
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
