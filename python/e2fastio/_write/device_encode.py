"""Compression on the GPU: which writes go there, nvCOMP's whereabouts, and the byte shuffle.

A non-blocking write of CUDA tensors to an array stored as Blosc zstd (byte
shuffle or none) is compressed on the device when ``device_compression``
allows it and nvCOMP 6 loads: the tensor's chunks are byte-shuffled per Blosc
block here, with torch on the producer's stream, into a private buffer; the
engine then runs nvCOMP's batched zstd over every block on its own stream and
copies only the compressed bytes into the pinned ring, where each chunk
becomes a standard Blosc1 chunk (csrc/src/stage/device_encode.cpp). Anything
else (other codecs, bitshuffle, a write covering chunks in part, no nvCOMP)
goes the host way, and the backend's ``stats()["device_encode"]`` and
``e2fastio.info()["nvcomp"]`` say what happened and why.

nvCOMP is never bundled (its licence allows redistribution only inside an
application): it is loaded at run time from the user's ``nvidia-libnvcomp-cu12``
or ``-cu13`` wheel (``pip install e2fastio[gpu]``), or from ``E2FASTIO_NVCOMP``.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any

from e2fastio import _core

#: Accepted values of the backends' ``device_compression`` argument.
CHOICES = ("auto", True, False)


def check_choice(value: object) -> None:
    """Validate a backend's ``device_compression`` argument; True also needs nvCOMP now."""
    if value is not True and value is not False and not (isinstance(value, str) and value == "auto"):
        raise ValueError(f"device_compression must be 'auto', True or False, got {value!r}")
    if value is True:
        status = nvcomp_info()
        if not status["available"]:
            raise RuntimeError(
                "device_compression=True needs nvCOMP 6, which did not load: " + status["reason"]
                + ". Install it with `pip install e2fastio[gpu]` (nvidia-libnvcomp-cu12 or -cu13), or pass "
                "device_compression='auto' to compress on the host when it is missing."
            )


def nvcomp_candidates() -> list[str]:
    """Paths of libnvcomp.so.6 inside installed nvidia-libnvcomp wheels (cu13 first, then cu12)."""
    out: list[str] = []
    try:
        spec = importlib.util.find_spec("nvidia.libnvcomp")
    except (ImportError, ValueError):
        spec = None
    for root in (spec.submodule_search_locations or []) if spec is not None else []:
        lib = os.path.join(root, "lib64", "libnvcomp.so.6")
        if os.path.isfile(lib):
            out.append(lib)
    return out


@functools.lru_cache(maxsize=1)
def nvcomp_info() -> dict[str, Any]:
    """Whether nvCOMP loaded (once per process), from where, its version, or why not."""
    return dict(_core.nvcomp_status(nvcomp_candidates()))


def shuffle_blocks(tensor: Any, nchunks: int, chunk_nbytes: int, blocksize: int, typesize: int) -> Any:
    """A new uint8 tensor holding `tensor`'s bytes with each chunk's Blosc blocks byte-shuffled.

    As c-blosc does per block: byte k of every whole element goes to plane k;
    the last, shorter block is shuffled over its own length, and its trailing
    ``len % typesize`` bytes are copied as they are. Runs where the tensor
    lives (torch ops on the current stream); works on CPU tensors alike.
    """
    import torch

    raw = tensor.reshape(-1).view(torch.uint8).view(nchunks, chunk_nbytes)
    out = torch.empty_like(raw)
    nfull, tail = divmod(chunk_nbytes, blocksize)
    if nfull:
        n = blocksize // typesize
        body = raw[:, : nfull * blocksize].view(nchunks, nfull, n, typesize)
        out[:, : nfull * blocksize].view(nchunks, nfull, typesize, n).copy_(body.transpose(2, 3))
    if tail:
        start = nfull * blocksize
        m = tail // typesize
        if m:
            src = raw[:, start : start + m * typesize].view(nchunks, m, typesize)
            out[:, start : start + m * typesize].view(nchunks, typesize, m).copy_(src.transpose(1, 2))
        if tail % typesize:
            out[:, start + m * typesize :] = raw[:, start + m * typesize :]
    return out
