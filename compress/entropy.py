"""Entropy coding of a checkpoint's byte streams: zstd frames of byte-shuffled arrays.

A stream is the raw bits of a 1-D numpy array of 1-, 2-, 4- or 8-byte items, "byte-shuffled" (all
first bytes of the little-endian items, then all second bytes, ...) and compressed as one zstd frame
that records its decoded size and an xxHash-64 checksum of its content. Shuffling puts the sign and
exponent bytes of floats together, where zstd's Huffman stage finds their low entropy; the mantissa
bytes are nearly random and zstd stores them as raw blocks (a copy at decode). One-byte items (packed
bitmasks, int8 values) are not reordered.

Decoding is bounded by the caller's expectation: a frame whose declared size differs from the size the
tensor's shape implies is refused before any output is allocated, and a frame with trailing bytes, a
bad checksum or damaged content raises CheckpointError, never zstd's own error type.
"""
from __future__ import annotations

import threading

import numpy as np
import zstandard

from zoo.errors import CheckpointError

# Level 3 (zstd's default), chosen by measurement (benchmarks/bench_checkpoint_size.py --levels 1,3,9,19):
# on a 90 %-sparse ResNet-50 the coded parts are 0.3 % of the dense bytes larger than at level 19 but the
# whole state dict encodes in ~3 s instead of ~30 s; levels 1-9 are within 0.05 % of each other, and the
# decode takes the same time at every level (Huffman decoding of the exponent bytes dominates).
ZSTD_LEVEL = 3

_local = threading.local()  # zstd contexts are not thread-safe: one set per thread


def _compressor() -> zstandard.ZstdCompressor:
    """This thread's compressor at the current ZSTD_LEVEL (a benchmark may change the level)."""
    by_level = _local.__dict__.setdefault("cctx", {})
    if ZSTD_LEVEL not in by_level:
        by_level[ZSTD_LEVEL] = zstandard.ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True, write_content_size=True)
    return by_level[ZSTD_LEVEL]


def _decompressor() -> zstandard.ZstdDecompressor:
    if not hasattr(_local, "dctx"):
        _local.dctx = zstandard.ZstdDecompressor()
    return _local.dctx


def encode(items: np.ndarray) -> np.ndarray:
    """A 1-D array of 1/2/4/8-byte items as a zstd frame of its shuffled bytes (a uint8 array)."""
    if items.ndim != 1 or items.dtype.itemsize not in (1, 2, 4, 8):
        raise CheckpointError(f"cannot entropy-code an array of shape {items.shape} and dtype {items.dtype}")
    raw = np.ascontiguousarray(items).view(np.uint8)
    if items.dtype.itemsize > 1:
        raw = raw.reshape(-1, items.dtype.itemsize).T.copy()
    return np.frombuffer(bytearray(_compressor().compress(raw.tobytes())), dtype=np.uint8)


def decode(key: str, frame: np.ndarray, count: int, dtype: np.dtype) -> np.ndarray:
    """The `count` items of `dtype` coded in `frame` (a uint8 array); CheckpointError naming `key` if the
    frame is damaged or does not hold exactly `count * dtype.itemsize` bytes. One-byte items come back
    as a read-only view of the decoded bytes (copy them to own them); wider items in a new array."""
    dtype = np.dtype(dtype)
    expected = count * dtype.itemsize
    data = memoryview(np.ascontiguousarray(frame)).cast("B")
    try:
        declared = zstandard.frame_content_size(data)
    except zstandard.ZstdError as err:
        raise CheckpointError(f"stored tensor {key!r} is not a zstd frame: {err}") from None
    if declared != expected:
        shown = "no size" if declared < 0 else f"{declared} bytes"
        raise CheckpointError(
            f"stored tensor {key!r} declares {shown} decoded, its meta implies {expected} ({count} x {dtype})"
        )
    try:  # the checks above bound the output: zstd allocates exactly `expected` bytes
        raw = _decompressor().decompress(data, max_output_size=expected, allow_extra_data=False)
    except zstandard.ZstdError as err:
        raise CheckpointError(f"stored tensor {key!r}: damaged zstd frame ({err})") from None
    if len(raw) != expected:
        raise CheckpointError(f"stored tensor {key!r}: zstd frame decoded to {len(raw)} bytes, expected {expected}")
    flat = np.frombuffer(raw, dtype=np.uint8)
    if dtype.itemsize == 1:
        return flat.view(dtype)
    planes = flat.reshape(dtype.itemsize, count)
    out = np.empty((count, dtype.itemsize), dtype=np.uint8)
    for j in range(dtype.itemsize):  # one strided copy per byte plane: ~4x faster than planes.T.copy()
        out[:, j] = planes[j]
    return out.view(dtype).reshape(count)
