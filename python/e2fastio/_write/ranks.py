"""Many ranks, one store: coordination over ``torch.distributed``.

Coordination is opt-in: a backend coordinates only when it is given
``process_group="world"`` (the default group) or a ``ProcessGroup``. By default
(``process_group=None``) every process writes exactly what it is given, as
Earth2Studio's backends do, even under ``torchrun``: one store per rank needs no
coordination, and a backend must not wait for ranks that never construct one.

e2fastio adds no launcher: it uses the process group the job already has
(torchrun, SLURM, ``torch.multiprocessing``). All coordination is metadata
only (a few small pickled objects per ``add_array``/``close``); data never
leaves the rank that produced it.

- Rank 0 creates the group, coordinate arrays and array metadata; the others
  wait on a barrier and then open the store.
- ``add_array`` is collective: every rank's coordinates are compared with rank
  0's first, and a mismatch is raised on every rank, naming rank and coordinate.
- Writes are local. A rank may only write whole chunks: a write that covers
  part of a chunk would need a read-modify-write that races with any other
  rank writing the rest of it, so it is refused before any data moves, with
  the chunk size that fixes it.
- ``close`` is collective: drain, a barrier that names ranks that never
  arrive (a crashed rank gives an error within ``timeout``, not a hang), an
  exchange of each rank's outcome (a rank that failed is named on all the
  others), then rank 0 consolidates metadata when asked.
"""

from __future__ import annotations

import datetime
import hashlib
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from e2fastio._write.inputs import first_partial_chunk
from e2fastio.errors import CoordinateError, E2FastIOError


class DistributedError(E2FastIOError, RuntimeError):
    """Another rank failed, disagreed, or did not arrive in time."""


class ChunkOwnershipError(E2FastIOError, ValueError):
    """A write would make ranks share a chunk (refused before any data moved)."""


# The word that opts a backend into coordination over the default process group.
WORLD = "world"


def resolve_group(process_group: Any) -> Any:
    """The group a backend coordinates over, or None when each rank works alone.

    Coordination is opt-in. ``None`` (default) or ``False``: none at all, even
    under ``torchrun``: each process writes exactly what it is given to its own
    store, as Earth2Studio's backends do (no barrier, no collective call).
    ``"world"``: the default group of ``torch.distributed``; a
    ``torch.distributed.ProcessGroup``: that group. An opted-in group of one
    rank needs no coordination either (None).
    """
    if process_group is None or process_group is False:
        return None
    if isinstance(process_group, str):
        if process_group != WORLD:
            raise ValueError(
                f"process_group={process_group!r} is not a known group name; pass process_group={WORLD!r} for the "
                "default torch.distributed group, a torch.distributed.ProcessGroup, or None (the default: no "
                "coordination, each rank writes its own store)"
            )
    elif process_group is True:
        raise TypeError(f"process_group=True is ambiguous; pass process_group={WORLD!r} for the default "
                        "torch.distributed group, a torch.distributed.ProcessGroup, or None (no coordination)")
    try:
        import torch.distributed as dist
    except ImportError:  # no torch (or one without distributed): nothing can be a ProcessGroup
        if not isinstance(process_group, str):
            raise TypeError(
                f"process_group must be None, {WORLD!r} or a torch.distributed.ProcessGroup, got "
                f"{type(process_group).__name__}"
            ) from None
        raise ValueError(f"process_group={process_group!r} needs torch.distributed, which cannot be imported here "
                         "(is torch installed?)") from None
    if not dist.is_available():  # pragma: no cover - torch built without distributed
        raise ValueError(f"process_group={process_group!r}: torch.distributed is not available in this torch build")
    if not isinstance(process_group, (str, dist.ProcessGroup)):
        raise TypeError(
            f"process_group must be None, {WORLD!r} or a torch.distributed.ProcessGroup, got "
            f"{type(process_group).__name__}"
        )
    if not dist.is_initialized():
        raise ValueError(f"process_group={process_group!r} needs torch.distributed to be initialised; call "
                         "torch.distributed.init_process_group first (or leave process_group=None: no coordination)")
    group = dist.group.WORLD if isinstance(process_group, str) else process_group
    if dist.get_world_size(group) <= 1:
        return None
    return group


def rank_and_size(process_group: Any) -> tuple[int, int]:
    """This process's rank and the number of ranks, local queries only (no communication).

    In the group `process_group` names (validated as by :func:`resolve_group`),
    else in the default group when ``torch.distributed`` is initialised, else
    ``(0, 1)``.
    """
    if process_group is not None and process_group is not False:
        import torch.distributed as dist

        resolve_group(process_group)  # validates it
        group = dist.group.WORLD if isinstance(process_group, str) else process_group
        return dist.get_rank(group), dist.get_world_size(group)
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch without distributed
        return 0, 1
    if not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


class Coordinator:
    """Collective steps of one backend over a process group (gloo for metadata)."""

    def __init__(self, group: Any, timeout: float) -> None:
        import torch.distributed as dist

        if not isinstance(timeout, (int, float)) or not timeout > 0:
            raise ValueError(f"distributed_timeout must be a positive number of seconds, got {timeout!r}")
        self.dist = dist
        self.timeout = float(timeout)
        self.rank: int = dist.get_rank(group)
        self.size: int = dist.get_world_size(group)
        # Metadata exchanges run on CPU: over gloo. A NCCL group gets a gloo twin
        # (created collectively here, as every rank constructs the backend).
        if dist.get_backend(group) == "gloo":
            self.group = group
        else:
            ranks = dist.get_process_group_ranks(group)
            self.group = dist.new_group(ranks=ranks, backend="gloo",
                                        timeout=datetime.timedelta(seconds=self.timeout))

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def barrier(self, what: str) -> None:
        """A barrier that names the ranks that do not arrive within the timeout."""
        try:
            self.dist.monitored_barrier(self.group, timeout=datetime.timedelta(seconds=self.timeout),
                                        wait_all_ranks=True)
        except RuntimeError as err:
            raise DistributedError(
                f"rank {self.rank}: {what}: not every rank arrived within {self.timeout:g} s "
                f"(a rank crashed, hangs, or did not call it): {err}"
            ) from err

    def gather(self, obj: Any, what: str) -> list[Any]:
        """Every rank's `obj` (after a monitored barrier, so a dead rank cannot hang us)."""
        self.barrier(what)
        out: list[Any] = [None] * self.size
        self.dist.all_gather_object(out, obj, group=self.group)
        return out

    def on_root(self, fn: Any, what: str) -> Any:
        """Run `fn` on rank 0 only and return its result there (None elsewhere).

        Every rank raises if it failed (rank 0 its own error).
        """
        failure = result = None
        if self.is_root:
            try:
                result = fn()
            except Exception as err:
                failure = err
        self.barrier(what)
        box = [None if failure is None else f"{type(failure).__name__}: {failure}"]
        self.dist.broadcast_object_list(box, src=self.dist.get_global_rank(self.group, 0), group=self.group)
        if failure is not None:
            raise failure
        if box[0] is not None:
            raise DistributedError(f"rank {self.rank}: {what} failed on rank 0: {box[0]}")
        return result

    # ------------------------------------------------------------------ add_array
    def agree_on_arrays(self, coords: Mapping[str, Any], names: Sequence[str], dtype: Any) -> None:
        """Raise on every rank unless all ranks pass the same coordinates, names and dtype."""
        mine = {"names": list(names), "dtype": str(np.dtype(dtype)) if dtype is not None else None,
                "dims": list(coords), "coords": {k: _digest(v) for k, v in coords.items()}}
        every = self.gather(mine, "add_array")
        ref = every[0]
        for r, other in enumerate(every):
            if other == ref:
                continue
            if other["names"] != ref["names"]:
                problem = f"array names {other['names']} (rank 0: {ref['names']})"
            elif other["dims"] != ref["dims"]:
                problem = f"dimensions {other['dims']} (rank 0: {ref['dims']})"
            elif other["dtype"] != ref["dtype"]:
                problem = f"dtype {other['dtype']} (rank 0: {ref['dtype']})"
            else:
                bad = next(k for k in ref["coords"] if other["coords"][k] != ref["coords"][k])
                problem = (f"coordinate {bad!r}: {other['coords'][bad][0]} values, digest "
                           f"{other['coords'][bad][1][:12]} (rank 0: {ref['coords'][bad][0]} values, "
                           f"{ref['coords'][bad][1][:12]})")
            raise CoordinateError(
                f"add_array({ref['names']}) must be called with the same arguments on every rank, but rank {r} "
                f"passed different {problem}; pass the full coordinates on every rank and write each rank's "
                "part with write()"
            )

    # ------------------------------------------------------------------ close
    def outcomes(self, local_error: BaseException | None) -> list[tuple[int, str]]:
        """Collective: (rank, error) of every rank that failed; the same list on every rank."""
        mine = None if local_error is None else f"{type(local_error).__name__}: {local_error}"
        every = self.gather(mine, "close")
        return [(r, e) for r, e in enumerate(every) if e is not None]

    def raise_for_others(self, failures: list[tuple[int, str]]) -> None:
        others = [(r, e) for r, e in failures if r != self.rank]
        if others:
            shown = "; ".join(f"rank {r}: {e}" for r, e in others[:4])
            raise DistributedError(f"rank {self.rank}: the store is incomplete because other rank(s) failed: {shown}")


def _digest(values: Any) -> tuple[int, str]:
    a = np.ascontiguousarray(np.asarray(values))
    h = hashlib.sha1(str(a.dtype).encode())
    h.update(a.tobytes() if a.dtype.kind != "O" else repr(a.tolist()).encode())
    return int(a.size), h.hexdigest()


def check_whole_chunks(
    rank: int, array: str, dims: Sequence[str], shape: Sequence[int], chunks: Sequence[int],
    index: Sequence[np.ndarray],
) -> None:
    """Refuse a write that covers only part of a chunk (another rank may own the rest)."""
    d = first_partial_chunk(index, shape, chunks)
    if d is None:
        return
    dim, c, idx = dims[d], chunks[d], np.asarray(index[d])
    lo, hi = int(idx.min()), int(idx.max())
    suggest = math.gcd(lo, hi - lo + 1) if len(idx) == hi - lo + 1 else 1
    raise ChunkOwnershipError(
        f"rank {rank}: writing {array!r} at {dim} indices {lo}..{hi} covers only part of chunk {lo // c} of "
        f"{dim!r} (chunk size {c}); in a multi-rank run another rank may write the rest of that chunk and one of "
        f"the two would be lost. Use chunks={{{dim!r}: {suggest}}} (a size that divides every rank's block along "
        f"{dim!r}) so that each rank writes whole chunks. Nothing was written."
    )


def shards_touched(index: Sequence[np.ndarray], shards: Sequence[int]) -> set[tuple[int, ...]]:
    """The shard grid positions a write at orthogonal selection `index` touches."""
    import itertools

    per_dim = [sorted({int(i) // int(s) for i in np.asarray(idx).ravel()})
               for idx, s in zip(index, shards, strict=True)]
    return set(itertools.product(*per_dim))


def shard_clashes(every: Sequence[Mapping[str, Any]]) -> dict[str, list[tuple[int, ...]]]:
    """The shards (by array) that more than one rank wrote to, from every rank's
    ``{array: (dims, shards, touched, ranges)}``; the same answer on every rank."""
    out: dict[str, list[tuple[int, ...]]] = {}
    for name in sorted({name for mine in every for name in mine}):
        writers: dict[tuple[int, ...], set[int]] = {}
        for r, mine in enumerate(every):
            for shard in mine.get(name, (None, None, ()))[2]:
                writers.setdefault(tuple(int(i) for i in shard), set()).add(r)
        shared = sorted(s for s, ranks in writers.items() if len(ranks) > 1)
        if shared:
            out[name] = shared
    return out


def shard_owner_error(rank: int, every: Sequence[Mapping[str, Any]],
                      clashes: Mapping[str, Sequence[tuple[int, ...]]], merged: bool) -> ChunkOwnershipError:
    """The error for the first clash: the array, the shard, two of its ranks, and a
    shard size that divides every rank's block along the dimension where their
    blocks differ. `merged`: the shards held at close were merged one rank at a time."""
    name = next(iter(clashes))
    shard = clashes[name][0]
    ranks = [r for r, mine in enumerate(every) if name in mine and shard in {tuple(s) for s in mine[name][2]}]
    first, other = ranks[0], ranks[1]
    dims, shards = every[other][name][0], every[other][name][1]
    ranges = {q: m[name][3] for q, m in enumerate(every) if name in m}
    d = next((k for k in range(len(dims)) if ranges[first][k] != ranges[other][k]), 0)
    bounds = [b for lo, hi in (rg[d] for rg in ranges.values()) for b in (lo, hi + 1)]
    suggest = math.gcd(*bounds) or 1
    n = sum(len(v) for v in clashes.values())
    what = (f"{n} shard(s) held at close were merged into the store one rank at a time, so their data is whole, "
            "but a shard written before close (a blocking write's, or one spilled when max_buffer_bytes was "
            "reached) may have lost one rank's part"
            if merged else "a shard is one object, so one rank's part of it was lost")
    return ChunkOwnershipError(
        f"rank {rank}: ranks {first} and {other} both wrote shard {shard} of {name!r} (shard size "
        f"{shards[d]} along {dims[d]!r}); {what}. "
        f"Use a shard size along {dims[d]!r} that divides every rank's block, e.g. "
        f"shard_coords={{{dims[d]!r}: {suggest}}} (or shards with {suggest} along {dims[d]!r}), or shard "
        "along a coordinate that each rank writes whole."
    )


def merge_in_turns(coord: Coordinator, store_turn: Callable[[], None]) -> Exception | None:
    """Write the shards several ranks hold part of, rank after rank (collective).

    Each rank's `store_turn` merges with what the ranks before it stored
    (read-modify-write), so no rank's part is lost. Every rank takes part in
    every turn; an error of this rank's turn is returned, not raised, so the
    others are not left waiting.
    """
    error: Exception | None = None
    for turn in range(coord.size):
        coord.barrier(f"close (shared shards, rank {turn}'s turn)")
        if turn != coord.rank:
            continue
        try:
            store_turn()
        except Exception as err:
            error = err
    coord.barrier("close (shared shards merged)")
    return error
