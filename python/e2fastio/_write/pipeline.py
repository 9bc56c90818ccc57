"""The write pipeline of the Zarr backends: a checked plan in, chunks to the engine, errors out in one place.

Every Zarr backend (``ZarrBackend``, ``AsyncZarrBackend`` through its
``ZarrBackend``, ``IceChunkBackend``) writes through one :class:`ZarrPipeline`.
A write flows one way:

1. plan (the backend's call, :func:`e2fastio._write.inputs.plan_write`):
   names, coordinates, dtypes and shapes checked once; data cast to the
   stored dtype;
2. requests (:meth:`ZarrPipeline.write`): per array its target (the stored
   spec, chunk and shard geometry, :class:`Target`), its sink (the store's, or
   the shard sink), rank ownership checks of a multi-rank run;
3. engine: one batch of every array's chunks (host data), or device batches
   (CUDA tensors copied on the engine's stream, or compressed on the device
   first where ``device_compression`` allows: :mod:`e2fastio._write.device_encode`);
   a blocking write waits for it, a non-blocking one returns once it is staged;
4. outcomes: a background failure is raised at the next write, flush or
   close (:class:`e2fastio._write.lifecycle.Outcomes`), after everything
   else was stored.

The pipeline owns the engine handle, the upload thread (object stores), the
shard sink and the targets; the backend owns the store's nodes (metadata,
coordinates) and Earth2Studio's surface.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import zarr

from e2fastio import _core
from e2fastio._write import device_encode, inputs, ranks
from e2fastio._write.engine import EngineHandle
from e2fastio._write.lifecycle import Outcomes
from e2fastio._write.shards import Shards
from e2fastio._write.zarr_arrays import ShardGeometry, array_spec, dimension_names, get_array, shard_geometry
from e2fastio._write.zarr_nodes import as_slices
from e2fastio.stores.remote import Location

logger = logging.getLogger(__name__)


class Target:
    """What a write needs to know about one stored data array (cached)."""

    __slots__ = ("array", "dims", "dtype", "path", "shard", "spec")

    def __init__(self, array: zarr.Array[Any]) -> None:
        self.array = array
        self.dims = dimension_names(array)
        self.dtype = np.dtype(array.dtype)
        self.spec, reason = array_spec(array)
        self.shard: ShardGeometry | None = shard_geometry(array) if self.spec is not None else None
        if self.spec is None:
            self.path = f"zarr-python ({reason})"
        elif self.shard is not None:
            self.path = f"native, sharded: shards {self.shard.shards} of inner chunks {self.shard.chunks}"
        else:
            self.path = "native"
        if self.spec is None:
            logger.info("array %r is written through zarr-python (%s)", array.path, reason)


class ZarrPipeline:
    """Targets, engine, uploads and shards of one Zarr backend; see the module's docstring.

    `root`: the store's root group (replaced by :meth:`retarget`); `location`:
    the resolved store and its native sink (None: chunks go through
    zarr-python); `coord`: the coordinator of an opted-in multi-rank run.
    """

    def __init__(self, root: zarr.Group, location: Location, engine: EngineHandle, *, blocking: bool,
                 coord: ranks.Coordinator | None, device_compression: bool | str = "auto") -> None:
        self.root = root
        self.engine = engine
        self.sink = location.sink
        self.uploader = location.uploader
        self.where = location.description
        self.blocking = blocking
        self.coord = coord
        self.flush_timeout = 600.0  # seconds flush()/close() wait for pending chunks
        self.shards = Shards(self.sink, engine)
        self.outcomes = Outcomes(self.failed_so_far)
        self._targets: dict[str, Target] = {}
        self._device_refs: deque[tuple[int, list[Any]]] = deque()
        self.device_compression = device_compression
        self._host_reasons: dict[str, int] = {}  # why device writes were compressed on the host, and how often

    # ------------------------------------------------------------------ targets
    def target(self, name: str) -> Target:
        """The target of array `name` (opened and described on first use)."""
        t = self._targets.get(name)
        if t is None:
            t = self.adopt(name, get_array(self.root, name))
        return t

    def adopt(self, name: str, array: zarr.Array[Any]) -> Target:
        """Describe stored array `name` for writes; a sharded one is registered with the shard sink."""
        t = Target(array)
        if t.spec is not None and t.shard is not None and self.sink is not None:
            self.shards.register(t.spec, t.shard.chunks, t.shard.shards, t.shard.index_at_start)
        self._targets[name] = t
        return t

    def forget(self, name: str) -> None:
        """Array `name` was replaced or created by another rank: describe it again on next use."""
        self._targets.pop(name, None)

    def retarget(self, root: zarr.Group, store: Any, *, uploads: bool = True) -> None:
        """Write into another root (an Icechunk backend's new session): targets are described anew;
        with `uploads`, later chunks are uploaded to `store` (the pipeline must be idle)."""
        self.root = root
        self._targets.clear()
        if self.uploader is not None and uploads:
            self.uploader.retarget(store)

    # ------------------------------------------------------------------ writes
    def write(self, plan: inputs.WritePlan, *, rank_checks: bool = True) -> None:
        """Turn a checked plan into engine requests and hand them over (see the module's docstring).

        `rank_checks=False`: an array's initial data, written by rank 0 for every rank.
        """
        index = plan.index
        if self.coord is not None and rank_checks:  # before any data moves
            for name in plan.names:
                t = self.target(name)
                ranks.check_whole_chunks(self.coord.rank, name, t.dims, t.array.shape, t.array.chunks, index)
                if t.array.shards is not None:  # which ranks wrote which shards is compared at close
                    self.shards.note(name, t.dims, [int(s) for s in t.array.shards], index)
        batch: list[_core.HostRequest] = []
        device_batch: list[_core.DeviceRequest] = []
        device_tensors: list[Any] = []
        sharded = False
        for name, arr in plan.items:
            t = self.target(name)
            sink: _core.Sink | None = self.sink
            if sink is not None and t.shard is not None and t.spec is not None:
                sink = self.shards.sink()
                sharded = True
            spec = t.spec if sink is not None else None  # None: written through zarr-python
            if isinstance(arr, inputs.DeviceTensor):
                if spec is not None and sink is not None:
                    dt = arr.tensor.contiguous()  # on the device, ordered on the current stream
                    device_tensors.append(dt)
                    device_batch.append((spec, sink, (dt.data_ptr(), list(dt.shape), dt.element_size()), index))
                    continue
                arr = arr.tensor.cpu().numpy()
            if spec is not None and sink is not None:
                batch.append((spec, sink, arr, index))
            else:
                t.array.set_orthogonal_selection(as_slices(index), arr)
        if not batch and not device_batch:
            return
        if self.uploader is not None:
            self.uploader.start()  # after a suspend (AsyncZarrBackend.close) the thread starts again
        engine = self.engine.get()
        if self.blocking:
            self._write_blocking(engine, batch, sharded)
            return
        # An earlier write's failure surfaces here, once this write is staged (it lands).
        checks = [engine.check] if self.uploader is None else [engine.check, self.uploader.raise_failures]
        with self.outcomes.staging(*checks):
            if batch:
                engine.submit(batch)
                self.outcomes.written()  # only once staged: a refused batch leaves nothing pending
            if device_batch:
                self._submit_device(engine, device_batch, device_tensors)
                self.outcomes.written()

    def _write_blocking(self, engine: _core.Engine, batch: list[_core.HostRequest], sharded: bool) -> None:
        try:
            engine.write_batch(batch)
        finally:
            if sharded and not self.shards.gather:
                self.shards.flush()  # as zarr-python: this write's shards are stored when it returns
        if sharded:
            self.shards.warn_merges()
        if self.uploader is not None:
            self.wait_uploads()
            self.uploader.raise_failures()

    def _submit_device(self, engine: _core.Engine, requests: list[_core.DeviceRequest], tensors: list[Any]) -> None:
        import torch

        devices = {t.device for t in tensors}
        if len(devices) != 1:
            raise ValueError(f"x: all tensors of one write must be on one device, got {sorted(map(str, devices))}")
        (device,) = devices
        keep = list(tensors)
        plain: list[_core.DeviceRequest] = []
        compressed: list[_core.DeviceRequest] = []
        with torch.cuda.device(device):
            for request, tensor in zip(requests, tensors, strict=True):
                layout = self._device_layout(engine, request)
                if layout is None:
                    plain.append(request)
                    continue
                if layout["shuffle"] and layout["typesize"] > 1:
                    buf = device_encode.shuffle_blocks(tensor, layout["nchunks"], layout["chunk_nbytes"],
                                                       layout["blocksize"], layout["typesize"])
                else:
                    buf = tensor.clone()  # private: the device encoder reads it after this call returns
                keep.append(buf)
                spec, sink, _, index = request
                compressed.append((spec, sink, (buf.data_ptr(), list(tensor.shape), tensor.element_size()), index))
            stream = torch.cuda.current_stream(device).cuda_stream
            seq = 0
            if plain:
                seq = engine.submit_device(plain, stream)
            if compressed:
                seq = engine.submit_device(compressed, stream, compress=True)
        # The producer stream already waits for plain copies; holding the tensors
        # (and the shuffled buffers the device encoder reads) until their copies
        # completed also covers memory freed to other streams.
        self._device_refs.append((seq, keep))
        done = engine.copies_done()
        while self._device_refs and self._device_refs[0][0] <= done:
            self._device_refs.popleft()

    def _device_layout(self, engine: _core.Engine, request: _core.DeviceRequest) -> _core.DeviceLayout | None:
        """How a device write is compressed on the device, or None (noting why) to go the host way."""
        if self.device_compression is False:
            return None
        status = device_encode.nvcomp_info()
        if not status["available"] or status["device_reason"]:
            why = status["reason"] or status["device_reason"]
        else:
            layout = engine.device_layout(request)
            if layout["ok"]:
                return layout
            why = layout["why"]
        if why not in self._host_reasons:
            logger.info("device writes compressed on the host: %s", why)
        self._host_reasons[why] = self._host_reasons.get(why, 0) + 1
        return None

    # ------------------------------------------------------------------ waiting, errors, stopping
    def drain(self, hold: Mapping[str, Sequence[tuple[int, ...]]] | None = None) -> None:
        """Store everything pending and raise the first background error; shards in `hold`
        (array name -> shard positions) stay under assembly."""
        if self.blocking or not self.engine.started:
            if self.shards.active:  # incomplete shards of blocking writes
                self._flush_shards(hold)
                if self.uploader is not None:
                    self.wait_uploads()
                    self.uploader.raise_failures()
            return
        engine = self.engine.get()
        if not engine.wait_idle(self.flush_timeout, help=True):  # this thread encodes and stores too
            raise TimeoutError(
                f"{engine.pending_chunks} chunk(s) were still pending after {self.flush_timeout:g} s; "
                "the store may be slow or unreachable (flush again to keep waiting)"
            )
        self._device_refs.clear()
        shard_error: Exception | None = None
        if self.shards.active:  # every chunk is gathered: write out the incomplete shards
            try:
                self._flush_shards(hold)
            except Exception as err:
                shard_error = err
        self.wait_uploads()
        self.outcomes.flushed()  # stored, or failed and raised just below: either way the user learns it now
        self.outcomes.raise_background(engine.check)
        if self.uploader is not None:
            self.outcomes.raise_background(self.uploader.raise_failures)
        if shard_error is not None:
            raise shard_error

    def _flush_shards(self, hold: Mapping[str, Sequence[tuple[int, ...]]] | None = None) -> None:
        held = []
        for name, positions in (hold or {}).items():
            t = self.target(name)
            if t.spec is not None and t.shard is not None:  # gathered by the sink (else stored by zarr-python)
                held += [(t.spec.path, list(p)) for p in positions]
        self.shards.flush(held)

    def wait_uploads(self) -> None:
        if self.uploader is not None and not self.uploader.wait(self.flush_timeout):
            st = self.uploader.stats()
            raise TimeoutError(
                f"{st['queued_objects'] + st['in_flight']} chunk(s) were still uploading to {self.where} after "
                f"{self.flush_timeout:g} s (flush again to keep waiting)"
            )

    def check_process(self, what: str) -> None:
        """Refuse use from a forked child of an object-store pipeline (its upload thread is the parent's)."""
        if self.uploader is not None:
            self.uploader.check_process(what)

    def forked_copy(self) -> bool:
        """This is a forked child's copy of an object-store pipeline (the parent stores its chunks)."""
        return self.uploader is not None and self.uploader.pid != os.getpid()

    def suspend(self) -> None:
        """Store what is pending, then stop every thread of ours; the pipeline stays usable.

        The encoder threads and the upload thread start again at the next write
        (staging memory goes to the process-wide cache meanwhile, so the restart
        is cheap). Raises the first background error, after everything else was stored.
        """
        self.check_process("close")
        try:
            self.drain()
        finally:
            if self.uploader is not None:
                self.uploader.stop()
            self.engine.close()

    def idle(self) -> bool:
        """No thread of ours is running (nothing pending): a suspended or never-used pipeline."""
        return not self.engine.started and (self.uploader is None or not self.uploader.running)

    def progress(self) -> tuple[int, int]:
        """(chunks finished, chunks pending) of the engine (started)."""
        e = self.engine.get()
        return int(e.finished_chunks), int(e.pending_chunks)

    def finish(self) -> Exception | None:
        """Store everything and stop (a backend's close); the error to raise, if any.

        In a multi-rank run this is collective: shards that several ranks hold
        part of are merged into the store one rank at a time
        (:func:`e2fastio._write.ranks.merge_in_turns`).
        """
        error: Exception | None = None
        shared: dict[str, list[tuple[int, ...]]] = {}
        if self.coord is not None:
            try:  # collective, before incomplete shards are written
                every = self.coord.gather(self.shards.notes, "close (shard owners)")
                shared = ranks.shard_clashes(every)
                if shared:
                    error = ranks.shard_owner_error(self.coord.rank, every, shared, merged=True)
            except Exception as err:
                error = err
        try:
            self.drain(hold=shared)
        except Exception as err:
            error = error or err
        try:
            if shared:  # every rank holds part of these
                assert self.coord is not None
                error = ranks.merge_in_turns(self.coord, self._store_held_shards) or error
        finally:
            try:
                if self.uploader is not None:
                    self.uploader.close()
            finally:
                self.engine.close()
        return error

    def _store_held_shards(self) -> None:
        if self.shards.active:
            self._flush_shards()
            self.wait_uploads()
            if self.uploader is not None:
                self.uploader.raise_failures()

    def failed_so_far(self) -> int:
        failed = int(self.engine.stats().get("failed_chunks", 0))
        if self.uploader is not None:
            failed += int(self.uploader.stats()["objects_failed"])
        return failed

    def stats(self) -> dict[str, object]:
        out = self.engine.stats()
        enc: dict[str, Any] = dict(out.get("device_encode", {}))
        # Chunks stored so far that were compressed on the host (every chunk of host data among them).
        enc["host_chunks"] = int(out.get("chunks_written", 0)) - int(enc.get("chunks", 0))
        out["device_encode"] = {**enc, "mode": self.device_compression, "host_reasons": dict(self._host_reasons)}
        if self.uploader is not None:
            out["uploads"] = self.uploader.stats()
        shard_stats = self.shards.stats()
        if shard_stats is not None:
            out["shards"] = shard_stats
        out["write_paths"] = {name: t.path if self.sink is not None else "zarr-python (store without a native sink)"
                              for name, t in self._targets.items()}
        return out
