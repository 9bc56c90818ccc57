"""Type stubs for e2fastio._core, the compiled module (csrc/bindings/*.cpp).

Drafted with pybind11-stubgen from the built module, then tidied by hand:
the dicts the core returns are TypedDicts naming their keys, request lists
and callbacks carry their element types. Keep it in step with the bindings.
"""

from collections.abc import Callable, Sequence
from typing import Any, ClassVar, SupportsIndex, SupportsInt, TypeAlias, TypedDict

import numpy as np
import numpy.typing as npt
from typing_extensions import Buffer

__version__: str

_Int: TypeAlias = SupportsInt | SupportsIndex
# Anything with the buffer protocol (numpy arrays are named: their stubs give
# them __buffer__ only from Python 3.12 on).
_Bytes: TypeAlias = Buffer | npt.NDArray[Any]

# ---------------------------------------------------------------- codec (register_codec.cpp)

class Shuffle:
    """Blosc shuffle: ``noshuffle``, ``shuffle`` (byte) or ``bitshuffle``."""

    __members__: ClassVar[dict[str, Shuffle]]
    noshuffle: ClassVar[Shuffle]
    shuffle: ClassVar[Shuffle]
    bitshuffle: ClassVar[Shuffle]
    def __init__(self, value: _Int) -> None: ...
    def __eq__(self, other: object) -> bool: ...
    def __ne__(self, other: object) -> bool: ...
    def __hash__(self) -> int: ...
    def __index__(self) -> int: ...
    def __int__(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def value(self) -> int: ...

class CodecSpec:
    """How one array's chunks are encoded (Blosc, or the NetCDF filters shuffle + deflate)."""

    big_endian: bool
    blosc: bool
    cname: str
    shuffle: Shuffle
    deflate: bool
    hdf5_shuffle: bool
    def __init__(self) -> None: ...
    @property
    def itemsize(self) -> int: ...
    @itemsize.setter
    def itemsize(self, value: _Int) -> None: ...
    @property
    def clevel(self) -> int: ...
    @clevel.setter
    def clevel(self, value: _Int) -> None: ...
    @property
    def typesize(self) -> int: ...
    @typesize.setter
    def typesize(self, value: _Int) -> None: ...
    @property
    def blocksize(self) -> int: ...
    @blocksize.setter
    def blocksize(self, value: _Int) -> None: ...
    @property
    def deflate_level(self) -> int: ...
    @deflate_level.setter
    def deflate_level(self, value: _Int) -> None: ...
    def validate(self) -> None: ...

class CudaInfo(TypedDict):
    available: bool
    runtime: str | None
    reason: str | None

def encode_chunk(spec: CodecSpec, data: _Bytes, threads: _Int = 1) -> bytes:
    """Encode one C-contiguous chunk exactly as the core stores it."""

def decode_chunk(spec: CodecSpec, encoded: bytes, nbytes: _Int) -> bytes: ...
def blosc_version() -> str: ...
def deflate_library() -> str: ...
def cuda_info() -> CudaInfo:
    """Whether a CUDA runtime was found (loaded at run time, never linked), and from where."""

# ---------------------------------------------------------------- sinks (register_sink.cpp)

class Sink:
    """Where encoded chunks go (an abstract base: use one of its subclasses)."""

    def describe(self) -> str: ...
    def write(self, key: str, data: _Bytes) -> None: ...

class DirectIO:
    """O_DIRECT for a directory sink: ``off``, ``on`` or ``automatic``."""

    __members__: ClassVar[dict[str, DirectIO]]
    off: ClassVar[DirectIO]
    on: ClassVar[DirectIO]
    automatic: ClassVar[DirectIO]
    def __init__(self, value: _Int) -> None: ...
    def __eq__(self, other: object) -> bool: ...
    def __ne__(self, other: object) -> bool: ...
    def __hash__(self) -> int: ...
    def __index__(self) -> int: ...
    def __int__(self) -> int: ...
    @property
    def name(self) -> str: ...
    @property
    def value(self) -> int: ...

def _temp_prefix() -> str: ...

class DirectorySink(Sink):
    def __init__(self, root: str, fsync: bool = False, direct_io: DirectIO = ...) -> None: ...
    @property
    def root(self) -> str: ...
    @property
    def direct_io_active(self) -> bool: ...

class FileRegionSink(Sink):
    def __init__(
        self,
        path: str,
        offset: _Int,
        array_path: str,
        shape: Sequence[_Int],
        chunks: Sequence[_Int],
        itemsize: _Int,
        direct_io: bool = True,
    ) -> None: ...
    @property
    def direct_io_active(self) -> bool: ...

class CollectStats(TypedDict):
    capacity: int
    held_bytes: int
    peak_held_bytes: int
    held_chunks: int
    chunks_collected: int
    chunks_popped: int
    bytes_collected: int
    writer_waits: int
    writer_wait_seconds: float

class CollectSink(Sink):
    """Encoded chunks held (up to `capacity_bytes`; writers wait for room) for the caller to store."""

    def __init__(self, capacity_bytes: _Int) -> None: ...
    @property
    def capacity(self) -> int: ...
    @property
    def held_bytes(self) -> int:
        """Bytes of encoded chunks admitted and not yet popped."""

    def pop(self) -> tuple[str, npt.NDArray[np.uint8]] | None:
        """(key, read-only uint8 array) of the oldest collected chunk, or None when none is ready."""

    def close(self) -> int:
        """No consumer any more: held chunks are dropped, waiting and later writers fail.
        Returns how many chunks it dropped."""

    def stats(self) -> CollectStats: ...

class UploadStats(TypedDict):
    objects_uploaded: int
    bytes_uploaded: int
    objects_failed: int
    objects_coalesced: int
    queued_bytes: int
    peak_queued_bytes: int
    queued_objects: int
    in_flight: int
    backpressure_wait_seconds: float

class UploadSink(Sink):
    def __init__(self, capacity_bytes: _Int, description: str) -> None: ...
    @property
    def capacity(self) -> int: ...
    def set_fetch(self, fetch: Callable[[str], _Bytes | None] | None) -> None:
        """fetch(key) -> bytes-like or None: reads an object that is neither queued nor uploading."""

    def next(self, timeout: float) -> tuple[int, str, npt.NDArray[np.uint8]] | None:
        """(id, key, uint8 array) of the next object to upload, or None on timeout/close."""

    def done(self, id: _Int, error: str = "") -> None: ...
    def wait_idle(self, timeout: float) -> bool: ...
    def take_errors(self) -> list[tuple[str, str]]: ...
    def close(self) -> None: ...
    def wake(self) -> None: ...  # the pending next() (or else the next one) returns None at once
    def stats(self) -> UploadStats: ...

class MemorySink(Sink):
    def __init__(self) -> None: ...
    def get(self, key: str) -> bytes | None: ...
    def erase(self, key: str) -> bool: ...
    def __contains__(self, key: str) -> bool: ...
    def __len__(self) -> int: ...
    def keys(self) -> list[str]: ...
    def nbytes(self) -> int: ...
    def clear(self) -> None: ...

# ---------------------------------------------------------------- sharding (register_shard.cpp)

def crc32c(data: _Bytes, crc: _Int = 0) -> int:
    """CRC-32C (Castagnoli) of a bytes-like object, continuing from `crc`."""

def _crc32c_portable(data: _Bytes, crc: _Int = 0) -> int: ...
def _crc32c_hardware(data: _Bytes, crc: _Int = 0) -> int | None:
    """The CPU instruction's result, or None where the CPU has none."""

def crc32c_implementation() -> str: ...

class ShardStats(TypedDict):
    capacity: int
    max_inflight: int
    held_bytes: int
    peak_held_bytes: int
    open_shards: int
    chunks_gathered: int
    shards_written: int
    shards_merged: int
    shards_spilled: int
    writer_waits: int
    writer_wait_seconds: float
    merged_by_array: dict[str, int]

class ShardSink(Sink):
    def __init__(self, inner: Sink, capacity_bytes: _Int, max_inflight: _Int) -> None: ...
    def add_array(
        self,
        path: str,
        shape: Sequence[_Int],
        chunks: Sequence[_Int],
        shards: Sequence[_Int],
        separator: str = "/",
        index_at_start: bool = False,
    ) -> None:
        """Register a sharded array: its inner chunk keys are gathered into shard objects."""

    def read(self, key: str) -> bytes | None:
        """The stored bytes of an (inner chunk) key, or None."""

    def flush(self, hold: Sequence[tuple[str, Sequence[int]]] = ...) -> None:
        """Write out every shard under assembly (merging with stored ones) but those in `hold` (array path,
        shard coordinates), and wait for shard writes in flight."""

    @property
    def inner(self) -> Sink: ...
    def stats(self) -> ShardStats: ...

# ---------------------------------------------------------------- engine (register_engine.cpp)

class ArraySpec:
    """One array as the core writes it: store path, shape, chunk shape, codec, fill value."""

    path: str
    codec: CodecSpec
    fill_value: bytes
    separator: str
    def __init__(self) -> None: ...
    @property
    def shape(self) -> list[int]: ...
    @shape.setter
    def shape(self, value: Sequence[_Int]) -> None: ...
    @property
    def chunks(self) -> list[int]: ...
    @chunks.setter
    def chunks(self, value: Sequence[_Int]) -> None: ...
    def validate(self) -> None: ...
    def chunk_nbytes(self) -> int: ...
    def chunk_key(self, chunk: Sequence[_Int]) -> str: ...
    def max_encoded_chunk_bytes(self) -> int:
        """The most bytes one encoded chunk of this array can take."""

# One request: the array, its sink, the data and, per dimension, the integer
# positions the data's axes land on. The data of a device request is
# (device pointer, shape, itemsize) of a C-contiguous buffer.
HostRequest: TypeAlias = tuple[ArraySpec, Sink, npt.NDArray[Any], Sequence[npt.ArrayLike]]
DeviceRequest: TypeAlias = tuple[ArraySpec, Sink, tuple[int, Sequence[int], int], Sequence[npt.ArrayLike]]

class EngineStats(TypedDict):
    chunks_written: int
    chunks_merged: int
    bytes_in: int
    bytes_out: int
    bytes_from_device: int

class DeviceLayout(TypedDict):
    ok: bool
    why: str
    nchunks: int
    chunk_nbytes: int
    blocksize: int
    typesize: int
    shuffle: bool

class DeviceEncodeStats(TypedDict):
    chunks: int
    blocks: int
    raw_blocks: int
    failed_blocks: int
    memcpyed_chunks: int
    bytes_in: int
    bytes_to_host: int

class BufferStats(TypedDict):
    capacity: int
    leased_bytes: int
    cached_bytes: int
    peak_bytes: int
    allocations: int
    reuses: int
    waits: int
    wait_seconds: float

class RingStats(TypedDict):
    capacity: int
    pinned: bool
    used_bytes: int
    peak_used_bytes: int
    prefaulted_bytes: int
    reservations: int
    waits: int
    wait_seconds: float

class Engine:
    """The chunk pipeline: encoder threads, encode buffers and (for non-blocking writes) a staging ring."""

    def __init__(self, threads: _Int, max_buffer_bytes: _Int, ring_bytes: _Int = 0, nice: _Int = 0,
                 idle_sched: bool = False, defer_busy_seconds: float = 0.0) -> None: ...
    @property
    def defer_busy_seconds(self) -> float:
        """How long encoders may leave queued chunks while the submitting thread computes (0: never)."""
    @property
    def busy_deferrals(self) -> int:
        """Times an encoder left a queued chunk because the submitting thread was busy."""
    @property
    def threads(self) -> int: ...
    @property
    def nice(self) -> int:
        """How much lower than their creator's the priority of the engine's threads is (nice value)."""
    @property
    def idle_sched_threads(self) -> int:
        """Engine threads (encoders and writers) running under SCHED_IDLE (Linux)."""
    @property
    def writer_threads(self) -> int:
        """Threads of the writer stage (storing chunks to local files); 0 until it started."""
    def staging_bytes_per_chunk(self, spec: ArraySpec) -> int: ...
    def write_batch(self, requests: list[HostRequest]) -> None:
        """Write [(ArraySpec, Sink, data, index), ...] as one batch; returns when every chunk is stored."""

    def submit(self, requests: list[HostRequest]) -> None:
        """Stage [(ArraySpec, Sink, data, index), ...] and return; chunks are stored in the background."""

    def submit_device(self, requests: list[DeviceRequest], stream: _Int, compress: bool = False) -> int:
        """Stage device data (C-contiguous, C pointers) through the pinned ring on the engine's copy stream;
        with compress=True, compress it on the device first (nvCOMP zstd into Blosc1 chunks)."""

    def device_layout(self, request: DeviceRequest) -> DeviceLayout:
        """Whether a device request can be compressed on the device, and how its chunks and blocks lie."""

    def device_encode_stats(self) -> DeviceEncodeStats: ...

    def copies_done(self) -> int:
        """Device submits whose copies completed (in order)."""

    @property
    def cuda_available(self) -> bool: ...
    def flush(self) -> None:
        """Wait until every submitted chunk is stored; raise the first background error."""

    def wait_idle(self, timeout: float, help: bool = False) -> bool:
        """Wait up to `timeout` seconds for every submitted chunk; False if some are still pending."""

    @property
    def finished_chunks(self) -> int:
        """Non-blocking chunks finished (stored or failed) so far."""

    def wait_progress(self, seen: _Int, timeout: float) -> int:
        """Wait until more than `seen` chunks finished, none is pending, or `timeout` s; returns finished_chunks."""

    def check(self) -> None:
        """Raise the first background error (once), if any."""

    @property
    def pending_chunks(self) -> int: ...
    @property
    def failed_chunks(self) -> int: ...
    @property
    def has_ring(self) -> bool: ...
    def ring_stats(self) -> RingStats: ...
    def stats(self) -> EngineStats: ...
    def buffer_stats(self) -> BufferStats: ...
    def trim(self) -> None: ...
    def shutdown(self) -> None: ...
    def abandon_after_fork(self) -> None: ...

class HostCacheStats(TypedDict):
    limit: int
    cached_bytes: int
    cached_blocks: int
    hits: int
    misses: int

class NvcompStatus(TypedDict):
    available: bool
    path: str
    version: str
    reason: str
    device_reason: str

def nvcomp_status(candidates: Sequence[str] = ...) -> NvcompStatus:
    """Load nvCOMP 6 (E2FASTIO_NVCOMP, then `candidates`, then libnvcomp.so.6) and say what was found."""

def host_cache_stats() -> HostCacheStats:
    """The process-wide cache of staging memory that destroyed engines left warm for the next ones."""

def empty_host_cache() -> int:
    """Free every cached staging block; returns the bytes freed."""

def set_host_cache_limit(nbytes: _Int) -> None:
    """Cache at most nbytes of unused staging memory (0: none)."""
