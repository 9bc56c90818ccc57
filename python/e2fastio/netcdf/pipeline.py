"""The write pipeline of NetCDF4Backend: a checked plan in, chunks through the engine, into HDF5.

The same plan as every backend's (:func:`e2fastio._write.inputs.plan_write`)
becomes requests per variable:

* a chunked variable whose filters the core reproduces (none, deflate,
  shuffle + deflate: :mod:`e2fastio.netcdf.filters`): whole chunks are
  encoded on the pool and wait in the collector (:mod:`e2fastio.netcdf.collector`)
  until the caller's thread hands them to HDF5 as direct chunk writes (HDF5
  is not thread-safe): :meth:`NetCDFPipeline.hand_over`;
* a contiguous variable of a file we opened: written in place at its file
  offset by the pool (``FileRegionSink``), no HDF5 call;
* everything else (partial chunks, complex data, other filters, diskless or
  big-endian contiguous data): HDF5 itself, after every pending chunk
  (:func:`e2fastio.netcdf.files.write_box`).

Background failures come back through :class:`~e2fastio._write.lifecycle.Outcomes`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from e2fastio import _core
from e2fastio._write import inputs
from e2fastio._write.engine import EngineHandle
from e2fastio._write.lifecycle import Outcomes
from e2fastio.netcdf.collector import Collector
from e2fastio.netcdf.files import write_box
from e2fastio.netcdf.filters import check_filters_available, filter_pipeline, native_filters

logger = logging.getLogger(__name__)


def _idle(engine: _core.Engine) -> bool:
    return engine.pending_chunks == 0


class NetCDFPipeline:
    """Engine, collector and per-variable specs of one NetCDF4Backend; see the module's docstring.

    `nc`: the backend's h5netcdf file; `in_place`: the file is ours (opened
    through h5py), so contiguous variables can be written at their offsets.
    """

    def __init__(self, nc: Any, file_name: str, engine: EngineHandle, collector_bytes: int, *, blocking: bool,
                 in_place: bool) -> None:
        self._nc = nc
        self.file_name = file_name
        self.engine = engine
        self.collector = Collector(collector_bytes)
        self.blocking = blocking
        self.in_place = in_place
        self.flush_timeout = 600.0
        self.outcomes = Outcomes(lambda: int(engine.stats().get("failed_chunks", 0)))
        self._specs: dict[str, _core.ArraySpec | None] = {}  # None: HDF5 filters the variable's chunks
        self._regions: dict[str, tuple[_core.ArraySpec, _core.FileRegionSink] | None] = {}
        self._max_encoded = 0  # the largest encoded chunk any variable written natively can give

    def spec(self, name: str) -> _core.ArraySpec | None:
        """The core's description of a chunked variable, or None when HDF5 must filter its chunks itself."""
        if name in self._specs:
            return self._specs[name]
        var = self._nc.variables[name]
        ds = var._h5ds
        dtype = np.dtype(ds.dtype)
        pipeline = filter_pipeline(ds)
        native = native_filters(pipeline)
        if native is None:
            check_filters_available(name, pipeline)
            logger.info("variable %r: HDF5 filter pipeline %s is written through HDF5 (single-threaded); "
                        "the native encoder writes shuffle + deflate, deflate, or none",
                        name, [f"{f.name}{list(f.values)}" for f in pipeline])
            self._specs[name] = None
            return None
        codec = _core.CodecSpec()
        codec.itemsize = dtype.itemsize
        codec.big_endian = dtype.byteorder == ">"
        codec.deflate, codec.deflate_level, codec.hdf5_shuffle = native
        spec = _core.ArraySpec()
        spec.path = name
        spec.shape = list(ds.shape)
        spec.chunks = list(ds.chunks)
        spec.codec = codec
        fill = ds.fillvalue if ds.fillvalue is not None else 0
        spec.fill_value = np.asarray(fill, dtype=dtype.newbyteorder("=")).tobytes()
        spec.validate()
        self._specs[name] = spec
        self._max_encoded = max(self._max_encoded, spec.max_encoded_chunk_bytes())
        return spec

    def write(self, plan: inputs.WritePlan) -> None:
        batch: list[_core.HostRequest] = []
        index = plan.index
        for name, arr in plan.items:
            var = self._nc.variables[name]
            assert isinstance(arr, np.ndarray)  # planned with device_ok=False
            if arr.dtype.kind == "c":
                self.drain()
                write_box(var, index, arr)  # complex (nc-complex compound type): through HDF5
                continue
            if var._h5ds.chunks is None:
                region = self.region(name)
                if region is None or 0 in var.shape:
                    self.drain()
                    write_box(var, index, arr)  # contiguous layout HDF5 writes (diskless, big-endian)
                else:
                    batch.append((region[0], region[1], arr, index))
                continue
            spec = self.spec(name)
            if spec is None:  # a filter pipeline the core does not reproduce: HDF5 applies it
                self.drain()
                write_box(var, index, arr)
            elif inputs.first_partial_chunk(index, spec.shape, spec.chunks) is None:
                batch.append((spec, self.collector.sink, arr, index))
            else:
                self.drain()  # HDF5 merges partial chunks: pending writes of them first
                write_box(var, index, arr)  # partial chunks: HDF5 merges (single-threaded)
        if not batch:
            return
        engine = self.engine.get()
        if self.blocking and all(isinstance(sink, _core.FileRegionSink) for _, sink, _, _ in batch):
            engine.write_batch(batch)  # in place, straight from the caller's data: no staging copy
            return
        # Staging waits while the ring is full, and ring space comes back only as chunks finish, which
        # encoders waiting for room in the collector cannot: first make sure that every chunk still
        # pending fits into the collector (storing chunks meanwhile), so staging never waits for us.
        self.hand_over(until=self._room_to_stage)
        if self.blocking:
            engine.submit(batch)  # staged: the caller's data may change from here on
            self.hand_over(until=_idle)
            engine.check()
            return
        with self.outcomes.staging(engine.check):  # an earlier write's failure, raised once this one is staged
            engine.submit(batch)
            self.hand_over()  # what is ready; the rest at the next call

    def _room_to_stage(self, engine: _core.Engine) -> bool:
        """Whether every pending chunk fits into the collector as it stands (or none is pending)."""
        pending = engine.pending_chunks
        sink = self.collector.sink
        return pending == 0 or sink.held_bytes + pending * self._max_encoded <= sink.capacity

    def hand_over(self, until: Callable[[_core.Engine], bool] | None = None) -> None:
        """Store encoded chunks with HDF5 from this (the caller's) thread: HDF5 is not thread-safe.

        Without `until`, store the chunks that are ready and return. With it,
        store chunks as they finish until ``until(engine)`` holds: between
        them the thread sleeps in the engine (GIL released) until a chunk
        finishes or none is pending, never polling. Encoders waiting for room
        in the collector go on as chunks are taken out, so waiting here never
        deadlocks. Every chunk is stored even if another failed; then the
        first failure is raised as an ``OSError`` naming its chunk key (HDF5's
        own message names only the file).
        """
        if not self.engine.started:
            return
        engine = self.engine.get()
        sink = self.collector.sink
        deadline = time.monotonic() + self.flush_timeout
        failure: OSError | None = None
        while True:
            seen = engine.finished_chunks
            failure = self._store_ready(sink, failure)
            if until is None:
                break
            if until(engine):
                failure = self._store_ready(sink, failure)  # collected before the condition held
                break
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"{engine.pending_chunks} chunk(s) still pending after {self.flush_timeout:g} s "
                                   f"({self.file_name})") from failure
            engine.wait_progress(seen, left)
        if failure is not None:
            raise failure

    def _store_ready(self, sink: _core.CollectSink, failure: OSError | None) -> OSError | None:
        """Store every chunk the collector holds now, oldest first; returns the first failure so far."""
        while (item := sink.pop()) is not None:
            key, data = item  # data: a read-only view of the encoded bytes, handed to HDF5 as they are
            name, _, *cc = key.split("/")
            spec = self._specs[name]
            assert spec is not None  # only variables with a spec have chunks encoded
            offsets = tuple(int(c) * ch for c, ch in zip(cc, spec.chunks, strict=True))
            try:
                self._nc.variables[name]._h5ds.id.write_direct_chunk(offsets, data, filter_mask=0)
            except OSError as err:  # e.g. ENOSPC: the other chunks are still tried
                if failure is None:
                    failure = OSError(err.errno, f"writing chunk {key!r} to {self.file_name}: {err.strerror or err}")
                    failure.__cause__ = err
        return failure

    def drain(self) -> None:
        """Non-blocking: store everything pending; raise a background error (once)."""
        if self.blocking or not self.engine.started:
            return
        self.hand_over(until=_idle)
        self.outcomes.raise_background(self.engine.get().check)

    def region(self, name: str) -> tuple[_core.ArraySpec, _core.FileRegionSink] | None:
        """(spec, sink) writing a contiguous variable in place, or None (HDF5 writes it then).

        The variable's bytes sit at a fixed file offset in C order; the core
        cuts writes into one-field "chunks" (each a contiguous byte range) and
        writes them there on the pool (O_DIRECT interior, pwrite edges); partial
        fields are merged with what the file holds (pread). HDF5 holds no raw
        data of it (no sieve buffer), so nothing it caches goes stale.
        """
        if name in self._regions:
            return self._regions[name]
        region = None
        ds = self._nc.variables[name]._h5ds
        dtype = np.dtype(ds.dtype)
        offset = ds.id.get_offset() if self.in_place else None
        if offset is not None and dtype.byteorder != ">" and dtype.kind in "fiub" and ds.ndim >= 1:
            shape = list(ds.shape)
            chunks = [1] * max(len(shape) - 2, 0) + shape[-2:]
            codec = _core.CodecSpec()
            codec.itemsize = dtype.itemsize
            spec = _core.ArraySpec()
            spec.path = name
            spec.shape = shape
            spec.chunks = [max(c, 1) for c in chunks]
            spec.codec = codec
            spec.fill_value = bytes(dtype.itemsize)
            spec.validate()
            sink = _core.FileRegionSink(self.file_name, int(offset), name, spec.shape, spec.chunks, dtype.itemsize)
            region = (spec, sink)
        self._regions[name] = region
        return region

    def pending(self) -> int:
        """Chunks not in the file yet: being encoded, or encoded and waiting for HDF5 (the caller's thread)."""
        return int(self.engine.stats().get("pending_chunks", 0)) + int(self.collector.stats().get("held_chunks", 0))

    def close(self) -> None:
        """Stop: encoders still waiting for room in the collector (after an error) give up; the pool stops."""
        try:
            self.collector.close()
        finally:
            self.engine.close()

    def stats(self) -> dict[str, object]:
        return {**self.engine.stats(), "collector": self.collector.stats()}
