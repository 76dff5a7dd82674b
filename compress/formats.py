"""Tensor encodings of a compressed checkpoint: a state dict becomes a smaller state dict and back.

Every tensor is stored in one of twelve encodings (compressed-tensors style), or for a low-bit weight
one of the packed encodings below; six plain ones:

- ``dense``: the tensor as is, under its own name.
- ``bitmask``: ``name.bitmask`` (uint8, one bit per element, packed in little bit order) and
  ``name.values`` (the non-zero elements, 1-D, original dtype). Chosen for a floating tensor when it is
  smaller than dense, i.e. below a density of about 31/32 for float32.
- ``int8``: ``name.values`` (int8, original shape) for a weight whose values lie exactly on the int8
  grid of its sibling ``name + "_scale"`` tensor (``X.weight`` -> ``X.weight_scale``):
  ``weight == q.float() * scale.view(-1, 1, ...)`` with q in [-127, 127].
- ``bitmask-int8``: both: ``name.bitmask`` plus the non-zero int8 values in ``name.values``.
- ``nm`` (format version 3): N:M structured sparsity, for a tensor of at least two dimensions in which
  every group of M consecutive elements along dim 1 holds at most N non-zeros. A group is M consecutive
  input channels (features) at one (output, kernel position): the tensor in "group order" is
  ``tensor.permute(0, 2, ..., ndim - 1, 1)`` (input axis last), split into rows of M (see `nm_groups`).
  ``name.values`` holds the N kept elements of every group, 1-D, groups in group order and each group's
  elements by ascending position (a group with fewer non-zeros keeps its lowest-positioned zeros, as
  +0.0); ``name.indices`` (uint8) their positions within the group, ceil(log2 M) bits each, packed in
  the same order into a little-bit-order stream whose padding bits are zero. The meta records
  ``"nm": [N, M]`` (1 <= N < M <= 256, M dividing shape[1]).
- ``nm-int8``: both: ``name.indices`` plus the kept int8 grid indices in ``name.values``.

and their entropy-coded forms ``dense-zstd``, ``bitmask-zstd``, ``int8-zstd``, ``bitmask-int8-zstd``
(format version 2), ``nm-zstd`` and ``nm-int8-zstd`` (version 3): the same parts, each a 1-D uint8
tensor holding one zstd frame of the part's byte-shuffled items (zoo.compress.entropy): ``name.values``
(the flattened tensor for ``dense-zstd``) and, for the sparse ones, ``name.bitmask`` or
``name.indices``. An entropy-coded encoding replaces the best plain one when it is the smallest and
saves at least ``ENTROPY_MIN_SAVING`` of the plain one's bytes (see there).

Packed low-bit weights (format version 4). The contract a quantizer (e.g. QAT) produces, per layer X:

- ``X.weight_bits``: an integer tensor of one element, 4 or 2: marks ``X.weight`` as low-bit.
- ``X.weight_scale``: floating, finite, >= 0: shape [] or [1] (per tensor), [out] (per output channel)
  or [out, k] (per group: k groups of row // k consecutive elements of each row of
  ``weight.reshape(out, -1)``, i.e. along (in, *kernel) in that order). Scale row r covers the
  elements of row r of ``weight.reshape(scale.numel(), -1)``.
- ``X.weight_zero_point`` (affine grids only): integers (any integer dtype) of the scale's shape, in
  [0, 2**bits - 1]; codes q in [0, 2**bits - 1]. Without it the grid is symmetric: q in
  [-2**(bits-1), 2**(bits-1) - 1] ([-8, 7] at 4 bits, [-2, 1] at 2 bits; binary {-1, 1} and ternary
  {-1, 0, 1} weights fit the 2-bit one).
- ``X.weight``: the floating weight exactly on its grid,
  ``weight == ((q - zero_point).to(scale.dtype) * scale_row).to(weight.dtype)`` (int8 weights instead
  carry no bits tensor, as above). An off-grid weight or a code out of range raises CheckpointError.

The codes are stored as ``name.values``: a uint8 stream of fields of `bits` bits (the code's two's
complement low bits for signed codes, the code itself for unsigned ones), 8 // bits per byte in little
bit order (element i in bits (i % k) * bits and up of byte i // k, k = 8 // bits: the first element in
the least significant bits), the last byte's unused bits zero. Encodings: ``int4`` / ``int2`` (signed,
symmetric) and ``uint4`` / ``uint2`` (unsigned, affine), of every element; ``bitmask-int4`` etc.: the
codes of the non-zero weights (code != zero point) behind a bitmask; ``nm-int4`` etc.: those of the N
kept elements of every group, with their indices as for ``nm``; and each with ``-zstd`` (the packed
stream and the bitmask or indices as zstd frames of bytes). The layouts are chosen by bytes as below,
counting `bits` bits per value: a 2:4 tensor at 2 bits costs as much in the N:M layout as dense, and
stays dense. Unstored elements decode as +0.0; the scale, zero point and bits are stored as their own
tensors (in their own encodings) and their consistency with the encoding checked at decode.

Layout choice: a maskable tensor is stored dense, or behind a bitmask when that is smaller; a tensor
whose non-zeros form an N:M pattern for one of ``NM_GROUP_SIZES`` (N the most non-zeros of any group)
is stored N:M instead when that is no larger than dense and at most ``NM_PREFERENCE`` larger than the
bitmask (the two cost the same at 2:4, 1 bit per element each, and the N:M layout is what N:M kernels
read). Of the group sizes, the one with the fewest bytes is used (a 1:4 tensor is also 2:8 and 4:16).
An N:M tensor keeps its layout when entropy coding is tried: ``nm-zstd`` or plain ``nm``.

Signed zeros: the bitmask and the N:M layout keep the elements that compare unequal to zero, so -0.0
is stored as a zero and decodes as +0.0 (pruning by ``w * mask`` makes -0.0 for every negative pruned
weight; keeping them would make those tensors dense); likewise an int8 index of 0 decodes as +0.0.
Dense tensors keep -0.0.
Decoding is otherwise bit for bit: same dtype, shape and bits, NaNs and infinities included.

Decoding is on the hot path of loading a model, so it uses only vectorized numpy/torch/zstd calls,
which release the GIL, and decodes large tensors on a thread pool (ResNet-50's 25.6M parameters at
90 % sparsity decode in a few tens of milliseconds).
"""
from __future__ import annotations

import enum
import itertools
import json
import os
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from zoo.compress import entropy

from zoo.errors import CheckpointError
from zoo.parsing import load_json
from zoo.registry import Registry

VALUES_SUFFIX = ".values"
BITMASK_SUFFIX = ".bitmask"
INDICES_SUFFIX = ".indices"  # the packed in-group positions of an N:M tensor
SCALE_SUFFIX = "_scale"  # `X.weight` -> `X.weight_scale`
ZERO_POINT_SUFFIX = "_zero_point"  # `X.weight` -> `X.weight_zero_point` (affine low-bit grids)
BITS_SUFFIX = "_bits"  # `X.weight` -> `X.weight_bits` (marks a low-bit weight: 4 or 2)
INT8_MAX = 127
LOW_BITS = (4, 2)  # the packed code widths

# Each extra stored tensor costs about this many bytes of safetensors header (name, dtype, shape,
# offsets) and meta JSON; a bitmask must beat dense by more than that to be worth a second tensor.
TENSOR_OVERHEAD_BYTES = 96

# The fraction of its plain encoding's bytes an entropy-coded encoding must save, by whether the plain
# encoding is a bitmask. A tensor stored plain dense (or int8) is read in place, zero-copy from the file:
# coding it turns a free read into a decode (~1-2 GB/s) on every load, for the ~10-15 % zstd saves on
# weights with random-looking mantissas, so it must save a fifth. A tensor stored plain as a bitmask is
# decoded (scattered) either way, and zstd adds little to that: any real saving pays there.
ENTROPY_MIN_SAVING = {False: 0.2, True: 0.02}  # plain encoding sparse? -> fraction
# Tensors smaller than this are never entropy-coded (a zstd frame costs ~20 bytes; not worth trying).
ENTROPY_MIN_BYTES = 1024
# Tensors with at least this many elements are decoded on the thread pool, smaller ones inline.
PARALLEL_MIN_NUMEL = 1 << 16
# The group sizes M the encoder tries for the N:M layout (the decoder reads any 2 <= M <= NM_MAX_M):
# powers of two, whose ceil(log2 M)-bit indices waste no code points.
NM_GROUP_SIZES = (2, 4, 8, 16)
NM_MAX_M = 256  # in-group positions fit a byte
# How much larger than the bitmask an N:M layout may be and still be chosen: at 2:4 both cost 1 bit
# per element, and a kept weight that is exactly zero (an int8 index rounded to 0) would otherwise
# flip the tensor to the bitmask, which N:M kernels cannot read directly.
NM_PREFERENCE = 0.02

# Decoding allocates what the metas declare: at most this many bytes for one state dict (the sum of every
# tensor's numel x item size), checked before anything is allocated, so that a small hostile file (a huge
# all-zero bitmask, a zstd frame of zeros, a shape of 2**70) cannot ask for more. 4 GiB holds every zoo
# entry (a float32 ResNet-50 is 0.1 GiB); $ZOO_MAX_DECODED_BYTES raises it for larger models.
MAX_DECODED_BYTES = 4 << 30
MAX_DIMS = 32  # torch's own limit on a tensor's dimensions is 64; no weight has more than 5
# the floating dtypes a quantization scale may have (float8 has no arithmetic on CPU)
SCALE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# dtypes a checkpoint may hold, by the name written in TensorMeta.dtype (the torch name less "torch.").
_DTYPE_NAMES = (
    "bool", "uint8", "int8", "int16", "int32", "int64", "uint16", "uint32", "uint64",
    "float16", "bfloat16", "float32", "float64", "float8_e4m3fn", "float8_e5m2",
)
DTYPES: dict[str, torch.dtype] = {n: getattr(torch, n) for n in _DTYPE_NAMES if hasattr(torch, n)}
_BITS_DTYPES = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


class Encoding(str, enum.Enum):
    """How one tensor is stored."""

    DENSE = "dense"
    BITMASK = "bitmask"
    INT8 = "int8"
    BITMASK_INT8 = "bitmask-int8"
    DENSE_ZSTD = "dense-zstd"
    BITMASK_ZSTD = "bitmask-zstd"
    INT8_ZSTD = "int8-zstd"
    BITMASK_INT8_ZSTD = "bitmask-int8-zstd"
    NM = "nm"
    NM_INT8 = "nm-int8"
    NM_ZSTD = "nm-zstd"
    NM_INT8_ZSTD = "nm-int8-zstd"
    # packed low-bit codes (format version 4): signed `intB` (symmetric grids), unsigned `uintB` (affine)
    INT4 = "int4"
    BITMASK_INT4 = "bitmask-int4"
    NM_INT4 = "nm-int4"
    INT4_ZSTD = "int4-zstd"
    BITMASK_INT4_ZSTD = "bitmask-int4-zstd"
    NM_INT4_ZSTD = "nm-int4-zstd"
    UINT4 = "uint4"
    BITMASK_UINT4 = "bitmask-uint4"
    NM_UINT4 = "nm-uint4"
    UINT4_ZSTD = "uint4-zstd"
    BITMASK_UINT4_ZSTD = "bitmask-uint4-zstd"
    NM_UINT4_ZSTD = "nm-uint4-zstd"
    INT2 = "int2"
    BITMASK_INT2 = "bitmask-int2"
    NM_INT2 = "nm-int2"
    INT2_ZSTD = "int2-zstd"
    BITMASK_INT2_ZSTD = "bitmask-int2-zstd"
    NM_INT2_ZSTD = "nm-int2-zstd"
    UINT2 = "uint2"
    BITMASK_UINT2 = "bitmask-uint2"
    NM_UINT2 = "nm-uint2"
    UINT2_ZSTD = "uint2-zstd"
    BITMASK_UINT2_ZSTD = "bitmask-uint2-zstd"
    NM_UINT2_ZSTD = "nm-uint2-zstd"


class Layout(str, enum.Enum):
    """Which elements an encoding stores: all, the non-zeros behind a bitmask, or N of every M."""

    DENSE = "dense"
    BITMASK = "bitmask"
    NM = "nm"


@dataclass(frozen=True)
class Codec:
    """What an encoding does: keep every element, only the non-zeros behind a bitmask, or the N kept
    elements of every group of M (`layout`); store grid codes instead of the values (`quantized`), of
    `bits` bits each (8: int8 indices, one per byte; 4 or 2: packed, `signed` for a symmetric grid,
    unsigned codes with a zero point for an affine one); `entropy`: every stored part is a zstd frame
    of its shuffled bytes; `since`: the first checkpoint format version that may hold it."""

    encoding: Encoding
    layout: Layout
    quantized: bool
    entropy: bool = False
    since: int = 1
    bits: int = 8
    signed: bool = True

    @property
    def packed(self) -> bool:
        """Whether the stored values are low-bit codes packed several to a byte (see `pack_codes`)."""
        return self.quantized and self.bits < 8

    @property
    def sparse(self) -> bool:
        """Whether only some elements are stored (and the others decode as +0.0)."""
        return self.layout is not Layout.DENSE


ENCODINGS: Registry[Codec] = Registry("tensor encoding")
for _codec in (
    Codec(Encoding.DENSE, Layout.DENSE, quantized=False),
    Codec(Encoding.BITMASK, Layout.BITMASK, quantized=False),
    Codec(Encoding.INT8, Layout.DENSE, quantized=True),
    Codec(Encoding.BITMASK_INT8, Layout.BITMASK, quantized=True),
    Codec(Encoding.DENSE_ZSTD, Layout.DENSE, quantized=False, entropy=True, since=2),
    Codec(Encoding.BITMASK_ZSTD, Layout.BITMASK, quantized=False, entropy=True, since=2),
    Codec(Encoding.INT8_ZSTD, Layout.DENSE, quantized=True, entropy=True, since=2),
    Codec(Encoding.BITMASK_INT8_ZSTD, Layout.BITMASK, quantized=True, entropy=True, since=2),
    Codec(Encoding.NM, Layout.NM, quantized=False, since=3),
    Codec(Encoding.NM_INT8, Layout.NM, quantized=True, since=3),
    Codec(Encoding.NM_ZSTD, Layout.NM, quantized=False, entropy=True, since=3),
    Codec(Encoding.NM_INT8_ZSTD, Layout.NM, quantized=True, entropy=True, since=3),
):
    ENCODINGS.register(_codec.encoding.value, _codec)
for _bits, _signed, _layout, _entropy in itertools.product(
    LOW_BITS, (True, False), (Layout.DENSE, Layout.BITMASK, Layout.NM), (False, True),
):
    _name = f"{'' if _signed else 'u'}int{_bits}"
    _name = (_name if _layout is Layout.DENSE else f"{_layout.value}-{_name}") + ("-zstd" if _entropy else "")
    ENCODINGS.register(_name, Codec(Encoding(_name), _layout, quantized=True, entropy=_entropy, since=4,
                                    bits=_bits, signed=_signed))
# (layout, code bits (0: not quantized), signed, entropy) -> encoding
_BY_FLAGS = {(c.layout, c.bits if c.quantized else 0, c.signed, c.entropy): c.encoding for _, c in ENCODINGS.items()}


@dataclass(frozen=True)
class TensorMeta:
    """The encoding of one tensor and what it decodes to (shape and dtype name, e.g. "float32");
    `nm` = (N, M) exactly for the N:M encodings, checked against the shape."""

    encoding: Encoding
    shape: tuple[int, ...]
    dtype: str
    nm: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.codec.layout is not Layout.NM:
            if self.nm is not None:
                raise CheckpointError(f"encoding {self.encoding.value} takes no N:M pattern, got nm={self.nm!r}")
            return
        check_nm_layout(self.shape, self.nm)

    @property
    def codec(self) -> Codec:
        return ENCODINGS.get(self.encoding.value)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"encoding": self.encoding.value, "shape": list(self.shape), "dtype": self.dtype}
        if self.nm is not None:
            data["nm"] = list(self.nm)
        return data

    @classmethod
    def from_json(cls, name: str, data: Any) -> TensorMeta:
        """Rebuilds a meta read from a checkpoint; an unknown encoding raises UnknownNameError."""
        keys = {"encoding", "shape", "dtype"}
        if not isinstance(data, dict) or not keys <= set(data) or not set(data) <= keys | {"nm"}:
            raise CheckpointError(f"tensor {name!r}: meta must have encoding, shape and dtype (and nm), got {data!r}")
        encoding = ENCODINGS.get(str(data["encoding"])).encoding
        shape = data["shape"]
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape) or len(shape) > MAX_DIMS:
            raise CheckpointError(f"tensor {name!r}: shape must be a list of at most {MAX_DIMS} sizes, got {shape!r}")
        if not isinstance(data["dtype"], str) or data["dtype"] not in DTYPES:
            raise CheckpointError(f"tensor {name!r}: unsupported dtype {data['dtype']!r}; supported: {sorted(DTYPES)}")
        nm = data.get("nm")
        if nm is not None and not isinstance(nm, list):
            raise CheckpointError(f"tensor {name!r}: nm must be a list [N, M], got {nm!r}")
        try:
            return cls(encoding, tuple(shape), data["dtype"], tuple(nm) if isinstance(nm, list) else nm)
        except CheckpointError as err:
            raise CheckpointError(f"tensor {name!r}: {err}") from None


def check_nm_layout(shape: tuple[int, ...], nm: Any) -> tuple[int, int]:
    """`nm` as (N, M), checked: integers with 1 <= N < M <= NM_MAX_M, M dividing shape[1]."""
    if (not isinstance(nm, tuple) or len(nm) != 2 or any(type(v) is not int for v in nm)
            or not 1 <= nm[0] < nm[1] <= NM_MAX_M):
        raise CheckpointError(f"an N:M encoding needs nm = (N, M) with 1 <= N < M <= {NM_MAX_M}, got {nm!r}")
    if len(shape) < 2 or shape[1] % nm[1]:
        raise CheckpointError(f"{nm[0]}:{nm[1]} groups dim 1 by {nm[1]}: shape {list(shape)} does not split so")
    return nm


def dtype_name(dtype: torch.dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise CheckpointError(f"dtype {name} cannot be stored; supported: {sorted(DTYPES)}")
    return name


def metas_to_json(metas: Mapping[str, TensorMeta]) -> str:
    return json.dumps({name: meta.to_json() for name, meta in metas.items()}, separators=(",", ":"))


def metas_from_json(text: str | bytes) -> dict[str, TensorMeta]:
    """The tensor metas of a weight file's header (JSON within `zoo.parsing`'s size and depth bounds)."""
    data = load_json(text, what="the tensor metas", error=CheckpointError, max_bytes=64 << 20)
    if not isinstance(data, dict):
        raise CheckpointError("tensor metas must be a JSON object mapping names to metas")
    return {name: TensorMeta.from_json(name, meta) for name, meta in data.items()}


# Compression -------------------------------------------------------------------------------------

def compress_state_dict(
    state_dict: Mapping[str, torch.Tensor], *, entropy_coding: bool = True, nm_coding: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, TensorMeta]]:
    """Encodes every tensor in its smallest exact encoding (an N:M tensor in its N:M layout, see the
    module docstring); returns (stored tensors, metas by name).

    With `entropy_coding=False` no entropy-coded encoding is used, with `nm_coding=False` no N:M one;
    with both False only the four plain format-version-1 encodings.
    A weight with a ``*_scale`` sibling must lie exactly on its int8 grid, or with a ``*_bits`` sibling
    too on its low-bit grid (see `quantize_lowbit_exact`), else CheckpointError.
    """
    stored: dict[str, torch.Tensor] = {}
    metas: dict[str, TensorMeta] = {}
    for name, tensor in state_dict.items():
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{name!r} is a {type(tensor).__name__}, not a tensor")
        tensor = tensor.detach().cpu()
        siblings = {suffix: state_dict.get(name + suffix) if _is_weight(name) else None
                    for suffix in (SCALE_SUFFIX, BITS_SUFFIX, ZERO_POINT_SUFFIX)}
        scale, bits, zero_point = (None if t is None else t.detach().cpu() for t in siblings.values())
        if scale is None and (bits is not None or zero_point is not None):
            raise CheckpointError(f"{name!r} has a {BITS_SUFFIX!r} or {ZERO_POINT_SUFFIX!r} sibling but no "
                                  f"{name + SCALE_SUFFIX!r}")
        if bits is None and zero_point is not None:
            raise CheckpointError(f"{name + ZERO_POINT_SUFFIX!r}: affine grids are stored for low-bit weights only; "
                                  f"{name + BITS_SUFFIX!r} (4 or 2) is missing")
        code_bits, signed = 0, True
        if scale is None:
            payload = tensor
        elif bits is None:
            payload, code_bits = quantize_exact(name, tensor, scale), 8
        else:
            code_bits, signed = stored_bits(name, bits), zero_point is None
            payload = quantize_lowbit_exact(name, tensor, scale, code_bits, zero_point)
        encoding, parts, nm = _smallest_encoding(
            name, payload, bits=code_bits, signed=signed, zero_point=zero_point,
            entropy_coding=entropy_coding, nm_coding=nm_coding,
        )
        for key, part in parts.items():
            if key in stored or (key != name and key in state_dict):
                raise CheckpointError(f"cannot store {name!r}: its part {key!r} collides with another tensor's name")
            stored[key] = part.contiguous()
        metas[name] = TensorMeta(encoding, tuple(tensor.shape), dtype_name(tensor.dtype), nm)
    return unshared(stored), metas


def _smallest_encoding(
    name: str, payload: torch.Tensor, *, bits: int, signed: bool = True, zero_point: torch.Tensor | None = None,
    entropy_coding: bool, nm_coding: bool = True,
) -> tuple[Encoding, dict[str, torch.Tensor], tuple[int, int] | None]:
    """The encoding of `payload` (the tensor, or its grid codes of `bits` bits: 0 for none, 8, 4 or 2;
    low-bit codes `signed` or with `zero_point`), its stored parts by name, and its (N, M) for an N:M
    encoding (else None)."""
    quantized = bits > 0
    # which elements are zero: a low-bit code is a zero weight where it equals its zero point
    zeros_of = payload if bits not in LOW_BITS else centered_codes(name, payload, zero_point, bits)
    value_bits = bits if bits in LOW_BITS else payload.element_size() * 8
    maskable = payload.is_floating_point() or quantized
    sparse = maskable and _bitmask_pays(zeros_of, value_bits)
    nm = nm_pattern(zeros_of, value_bits=value_bits) if maskable and nm_coding else None
    if nm is not None:
        limit = _ceil_bytes(payload.numel() * value_bits) + TENSOR_OVERHEAD_BYTES  # dense
        if sparse:
            limit = min(limit, _bitmask_bytes(zeros_of, value_bits) * (1 + NM_PREFERENCE))
        if _nm_bytes(payload.numel(), *nm, value_bits) > limit:
            nm = None
    layout = Layout.NM if nm is not None else Layout.BITMASK if sparse else Layout.DENSE
    plain_encoding = _BY_FLAGS[(layout, bits, signed, False)]
    best = plain_encoding, encode_tensor(name, payload, plain_encoding, nm=nm, zero_point=zero_point)
    if not entropy_coding or _ceil_bytes(payload.numel() * value_bits) < ENTROPY_MIN_BYTES:
        return (*best, nm)
    limit = (1 - ENTROPY_MIN_SAVING[layout is not Layout.DENSE]) * _stored_bytes(best[1])
    best_size: int | None = None
    if layout is Layout.NM:  # an N:M tensor keeps its layout, coded or not
        layouts: tuple[Layout, ...] = (Layout.NM,)
    else:
        # both layouts are tried: a half-dense tensor's bitmask may pay only once its values are coded
        # (not for a tensor without zeros: its bitmask would only add to the same values)
        has_zeros = maskable and (sparse or int(torch.count_nonzero(zeros_of)) < payload.numel())
        layouts = (Layout.DENSE, Layout.BITMASK) if has_zeros else (Layout.DENSE,)
    for each in layouts:
        encoding = _BY_FLAGS[(each, bits, signed, True)]
        parts = encode_tensor(name, payload, encoding, nm=nm, zero_point=zero_point)
        size = _stored_bytes(parts)
        if size <= limit and (best_size is None or size < best_size):
            best, best_size = (encoding, parts), size
    return (*best, nm)


def encode_tensor(
    name: str, payload: torch.Tensor, encoding: Encoding | str, *, nm: tuple[int, int] | None = None,
    zero_point: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """The stored parts of `payload` in `encoding`, by name: the tensor itself, or for the int8
    encodings its int8 grid indices (`quantize_exact`), or for the low-bit ones its int8 tensor of
    codes (`quantize_lowbit_exact`; the unsigned ones take the `zero_point` tensor, shaped like the
    scale), whose scale (zero point, bits) are stored as their own tensors.
    The N:M encodings take `nm` = (N, M); a payload with more than N non-zeros in a group is refused
    (a low-bit code is a zero where it equals its zero point)."""
    codec = ENCODINGS.get(encoding.value if isinstance(encoding, Encoding) else str(encoding))
    if codec.packed:
        return _encode_packed(name, payload, codec, nm, zero_point)
    if zero_point is not None:
        raise CheckpointError(f"{name!r}: encoding {codec.encoding.value} takes no zero point")
    # int8 payloads are grid indices, but for a plain int8 tensor (an integer buffer) stored as it is, densely
    if codec.quantized != (payload.dtype == torch.int8) and (codec.quantized or codec.layout is not Layout.DENSE):
        raise CheckpointError(
            f"{name!r}: encoding {codec.encoding.value} stores {'int8 grid indices' if codec.quantized else 'the tensor'}, "
            f"got a {payload.dtype} payload"
        )
    if (codec.layout is Layout.NM) != (nm is not None):
        raise CheckpointError(f"{name!r}: nm = (N, M) is given exactly for the N:M encodings, got {nm!r} for "
                              f"{codec.encoding.value}")
    if codec.layout is Layout.NM:
        n, m = check_nm_layout(tuple(payload.shape), nm)
        parts = _pack_nm(name, payload, n, m)
    elif codec.layout is Layout.BITMASK:
        parts = _pack_bitmask(name, payload)
    else:
        parts = {name + VALUES_SUFFIX if (codec.quantized or codec.entropy) else name: payload}
    if codec.entropy:
        parts = {key: torch.from_numpy(entropy.encode(_bits(part.reshape(-1)))) for key, part in parts.items()}
    return parts


def _encode_packed(
    name: str, codes: torch.Tensor, codec: Codec, nm: tuple[int, int] | None, zero_point: torch.Tensor | None,
) -> dict[str, torch.Tensor]:
    """`encode_tensor` for the low-bit encodings: the layout (which elements are stored) is chosen on
    the codes less their zero point, the stored values are the codes themselves, packed."""
    if codes.dtype != torch.int8:
        raise CheckpointError(f"{name!r}: encoding {codec.encoding.value} stores int8 codes, got a {codes.dtype} payload")
    if codec.signed != (zero_point is None):
        raise CheckpointError(f"{name!r}: encoding {codec.encoding.value} takes "
                              f"{'no zero point' if codec.signed else 'a zero point'}")
    if (codec.layout is Layout.NM) != (nm is not None):
        raise CheckpointError(f"{name!r}: nm = (N, M) is given exactly for the N:M encodings, got {nm!r} for "
                              f"{codec.encoding.value}")
    centered = centered_codes(name, codes, zero_point, codec.bits)
    fields = codes.view(torch.uint8) & ((1 << codec.bits) - 1)  # two's complement low bits / unsigned code
    if codec.layout is Layout.NM:
        n, m = check_nm_layout(tuple(codes.shape), nm)
        parts = _pack_nm(name, centered, n, m, fields=fields)
    elif codec.layout is Layout.BITMASK:
        parts = _pack_bitmask(name, centered, fields=fields)
    else:
        parts = {name + VALUES_SUFFIX: fields.reshape(-1)}
    parts[name + VALUES_SUFFIX] = torch.from_numpy(pack_codes(parts[name + VALUES_SUFFIX].numpy(), codec.bits))
    if codec.entropy:
        parts = {key: torch.from_numpy(entropy.encode(part.reshape(-1).numpy())) for key, part in parts.items()}
    return parts


def _ceil_bytes(bits: int) -> int:
    return (bits + 7) // 8


def _stored_bytes(parts: Mapping[str, torch.Tensor]) -> int:
    return sum(p.numel() * p.element_size() + TENSOR_OVERHEAD_BYTES for p in parts.values())


def quantize_exact(name: str, weight: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The int8 grid indices q of `weight`, checked to dequantize back to exactly `weight`."""
    if not weight.is_floating_point():
        raise CheckpointError(
            f"{name!r} has a scale sibling {name + SCALE_SUFFIX!r} but is {weight.dtype}, not floating"
        )
    if not scale.is_floating_point():
        raise CheckpointError(f"{name + SCALE_SUFFIX!r} must be floating, got {scale.dtype}")
    check_scale(name, scale)
    scale_b = _broadcast_scale(name, scale, tuple(weight.shape))
    q = torch.where(scale_b == 0, 0.0, torch.round(weight.to(scale.dtype) / scale_b))
    if not bool(torch.isfinite(q).all()) or bool((q.abs() > INT8_MAX).any()):
        raise CheckpointError(
            f"{name!r} is not on the int8 grid of {name + SCALE_SUFFIX!r}: indices outside [-127, 127]"
        )
    q = q.to(torch.int8)
    if not torch.equal(dequantize(q, scale_b, weight.dtype), weight):
        raise CheckpointError(
            f"{name!r} is not exactly on the int8 grid of {name + SCALE_SUFFIX!r} "
            "(weight != q * scale); quantize it with the zoo's quantization before saving"
        )
    return q


def stored_bits(name: str, bits: torch.Tensor) -> int:
    """The code width a `*_bits` tensor gives (an integer tensor of one element: 4 or 2)."""
    if bits.is_floating_point() or bits.is_complex() or bits.dtype == torch.bool or bits.numel() != 1:
        raise CheckpointError(f"{name + BITS_SUFFIX!r} must be one integer (4 or 2), got {bits.dtype} "
                              f"of shape {list(bits.shape)}")
    value = int(bits.reshape(()))
    if value not in LOW_BITS:
        raise CheckpointError(f"{name + BITS_SUFFIX!r} is {value}; packed low-bit weights have {' or '.join(map(str, LOW_BITS))} "
                              "bits (int8 weights carry no bits tensor)")
    return value


def code_range(bits: int, signed: bool) -> tuple[int, int]:
    """The codes of a grid: [-2**(bits-1), 2**(bits-1) - 1] signed, [0, 2**bits - 1] unsigned."""
    return (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)


def grid_rows(name: str, scale_shape: tuple[int, ...], shape: tuple[int, ...]) -> int:
    """How many scales a low-bit weight of `shape` has (each covering that many consecutive elements of
    the flattened weight), checked: [] or [1] per tensor, [out] per output channel, [out, k] per group of
    row // k consecutive elements of each row of ``weight.reshape(out, -1)``."""
    numel = 1
    for d in shape:
        numel *= d
    out = shape[0] if shape else 1
    rows = 1
    for d in scale_shape:
        rows *= d
    ok = (rows == 1 and len(scale_shape) <= 1) or (len(scale_shape) == 1 and rows == out and len(shape) >= 1) or (
        len(scale_shape) == 2 and len(shape) >= 1 and scale_shape[0] == out and scale_shape[1] >= 1
        and (numel // max(out, 1)) % scale_shape[1] == 0)
    if not ok:
        raise CheckpointError(
            f"{name + SCALE_SUFFIX!r} has shape {list(scale_shape)}; a low-bit weight of shape {list(shape)} takes "
            f"[] or [1] (per tensor), [{out}] (per output channel) or [{out}, k] with k dividing "
            f"{numel // max(out, 1)} (per group)"
        )
    return rows


def _check_low_bit_grid(name: str, shape: tuple[int, ...], scale: torch.Tensor, zero_point: torch.Tensor | None,
                        bits: int) -> int:
    """Checks a low-bit weight's scale and zero point (see `quantize_lowbit_exact`); returns its rows."""
    if not scale.is_floating_point():
        raise CheckpointError(f"{name + SCALE_SUFFIX!r} must be floating, got {scale.dtype}")
    check_scale(name, scale)
    rows = grid_rows(name, tuple(scale.shape), shape)
    if zero_point is not None:
        if zero_point.is_floating_point() or zero_point.is_complex() or zero_point.dtype == torch.bool:
            raise CheckpointError(f"{name + ZERO_POINT_SUFFIX!r} must hold integers, got {zero_point.dtype}")
        if tuple(zero_point.shape) != tuple(scale.shape):
            raise CheckpointError(f"{name + ZERO_POINT_SUFFIX!r} has shape {list(zero_point.shape)}, its scale "
                                  f"{list(scale.shape)}: one zero point per scale")
        low, high = code_range(bits, signed=False)
        if zero_point.numel() and (int(zero_point.min()) < low or int(zero_point.max()) > high):
            raise CheckpointError(f"{name + ZERO_POINT_SUFFIX!r} must lie in [{low}, {high}] for {bits}-bit codes")
    return rows


def quantize_lowbit_exact(
    name: str, weight: torch.Tensor, scale: torch.Tensor, bits: int, zero_point: torch.Tensor | None = None,
) -> torch.Tensor:
    """The codes q (int8) of a low-bit `weight`, checked to dequantize back to exactly `weight`:
    ``weight == ((q - zero_point).to(scale.dtype) * scale).to(weight.dtype)``, one scale (and zero
    point) per row of ``weight.reshape(scale.numel(), -1)`` (see `grid_rows`); q in [-2**(bits-1),
    2**(bits-1) - 1] without a zero point (symmetric), in [0, 2**bits - 1] with one (affine)."""
    if not weight.is_floating_point():
        raise CheckpointError(f"{name!r} has a scale sibling {name + SCALE_SUFFIX!r} but is {weight.dtype}, not floating")
    rows = _check_low_bit_grid(name, tuple(weight.shape), scale, zero_point, bits)
    low, high = code_range(bits, signed=zero_point is None)
    scale_r = scale.reshape(rows, 1)
    zero = torch.zeros((), dtype=torch.int64) if zero_point is None else zero_point.reshape(rows, 1).to(torch.int64)
    w = weight.reshape(rows, -1)
    centered = torch.where(scale_r == 0, 0.0, torch.round(w.to(scale.dtype) / scale_r))
    if not bool(torch.isfinite(centered).all()):
        raise CheckpointError(f"{name!r} is not on the {bits}-bit grid of {name + SCALE_SUFFIX!r}: non-finite values")
    q = centered.to(torch.int64) + zero
    if q.numel() and (int(q.min()) < low or int(q.max()) > high):
        raise CheckpointError(f"{name!r} is not on the {bits}-bit grid of {name + SCALE_SUFFIX!r}: codes outside "
                              f"[{low}, {high}]")
    if not torch.equal(dequantize((q - zero).to(torch.int8), scale_r, weight.dtype), w):
        raise CheckpointError(
            f"{name!r} is not exactly on the {bits}-bit grid of {name + SCALE_SUFFIX!r} "
            "(weight != (q - zero_point) * scale); quantize it with the zoo's quantization before saving"
        )
    return q.to(torch.int8).reshape(weight.shape)


def centered_codes(name: str, codes: torch.Tensor, zero_point: torch.Tensor | None, bits: int) -> torch.Tensor:
    """The codes less their zero point (int8, zero exactly where the weight is), checked to lie in the
    `bits`-bit code range (signed without a zero point, unsigned with one)."""
    low, high = code_range(bits, signed=zero_point is None)
    if codes.dtype != torch.int8:
        raise CheckpointError(f"{name!r}: low-bit codes must be int8, got {codes.dtype}")
    if codes.numel() and (int(codes.min()) < low or int(codes.max()) > high):
        raise CheckpointError(f"{name!r}: {bits}-bit codes must lie in [{low}, {high}]")
    if zero_point is None:
        return codes
    rows = zero_point.numel()
    if rows == 0 or codes.numel() % rows:
        raise CheckpointError(f"{name!r}: {rows} zero points do not split {codes.numel()} codes into rows")
    return (codes.reshape(rows, -1) - zero_point.reshape(rows, 1).to(torch.int8)).reshape(codes.shape)


def dequantize(q: torch.Tensor, scale_b: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """q * scale computed in the scale's dtype (the convention `q.float() * scale.view(-1, 1, ...)`).

    numpy does the float32/float64 multiply: it is single-threaded, where each torch op on a large
    tensor opens an OpenMP region that can wait a whole scheduler slice on a busy machine.
    """
    if scale_b.dtype in (torch.float32, torch.float64):
        out = torch.from_numpy(np.multiply(q.numpy(), scale_b.numpy()))  # int8 * f32 -> f32, as in torch
    else:
        out = torch.mul(q, scale_b)
    return out if out.dtype == dtype else out.to(dtype)


def _is_weight(name: str) -> bool:
    """Only `X.weight` (or a top-level `weight`) is quantized, with its scale in `X.weight_scale`."""
    return name.rsplit(".", 1)[-1] == "weight"


def _broadcast_scale(name: str, scale: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A per-output-channel scale [out] viewed as [out, 1, 1, ...]; a one-element scale as a scalar."""
    if scale.numel() == 1:
        return scale.reshape(())
    if len(shape) >= 1 and scale.dim() == 1 and scale.numel() == shape[0]:
        return scale.view(-1, *([1] * (len(shape) - 1)))
    raise CheckpointError(
        f"{name + SCALE_SUFFIX!r} has shape {list(scale.shape)}; expected [{shape[0] if shape else 1}] "
        f"(one scale per output channel of {name!r}, shape {list(shape)})"
    )


def _bitmask_pays(payload: torch.Tensor, value_bits: int) -> bool:
    n = payload.numel()
    if n == 0:
        return False
    nnz = int(torch.count_nonzero(payload))
    return (n + 7) // 8 + _ceil_bytes(nnz * value_bits) + TENSOR_OVERHEAD_BYTES < _ceil_bytes(n * value_bits)


def _bitmask_bytes(payload: torch.Tensor, value_bits: int) -> int:
    """Stored bytes of the plain bitmask layout (as `_stored_bytes` counts them), values of `value_bits`."""
    n = payload.numel()
    return (n + 7) // 8 + _ceil_bytes(int(torch.count_nonzero(payload)) * value_bits) + 2 * TENSOR_OVERHEAD_BYTES


# N:M layout --------------------------------------------------------------------------------------

def nm_index_bits(m: int) -> int:
    """Bits of one in-group position: ceil(log2 M) (one bit for M = 2)."""
    return max(1, (m - 1).bit_length())


def _nm_bytes(numel: int, n: int, m: int, value_bits: int) -> int:
    """Stored bytes of the plain N:M layout (as `_stored_bytes` counts them), values of `value_bits`."""
    kept = numel // m * n
    return _ceil_bytes(kept * value_bits) + _ceil_bytes(kept * nm_index_bits(m)) + 2 * TENSOR_OVERHEAD_BYTES


def _group_axes(ndim: int) -> tuple[int, ...]:
    """Axes of a tensor in group order: (0, 2, ..., ndim - 1, 1), the input axis last."""
    return (0, *range(2, ndim), 1)


def nm_groups(tensor: torch.Tensor, m: int) -> torch.Tensor:
    """`tensor` (at least 2-D, shape[1] divisible by `m`) as [numel // m, m]: its groups of M consecutive
    elements along dim 1 (input channels/features), in group order (the output axis outermost, then
    the kernel positions, then the groups along the input axis). A 2-D [out, in] weight is split row by
    row; a conv weight [out, in, kh, kw] is read as [out, kh, kw, in], the channels-last order of the
    reduction dimension that N:M sparse kernels (sparse tensor cores through cuSPARSELt, NVIDIA's ASP)
    group."""
    if tensor.dim() < 2 or m < 1 or tensor.shape[1] % m:
        raise CheckpointError(f"a tensor of shape {list(tensor.shape)} does not split into groups of {m} along dim 1")
    return tensor.permute(_group_axes(tensor.dim())).reshape(-1, m)


def nm_ungroup(groups: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The inverse of `nm_groups`: [numel // m, m] back to `shape` (contiguous)."""
    grouped = groups.reshape(shape[0], *shape[2:], shape[1])
    return grouped.permute(0, len(shape) - 1, *range(1, len(shape) - 1)).contiguous()


def nm_pattern(payload: torch.Tensor, *, value_bits: int | None = None) -> tuple[int, int] | None:
    """The (N, M) with M in NM_GROUP_SIZES (dividing shape[1]) and N = the most non-zeros of any group
    (1 <= N < M) that stores `payload` in the fewest bytes, its values `value_bits` bits each (default:
    its element size); None when no group size qualifies."""
    if payload.dim() < 2 or payload.numel() == 0:
        return None
    nonzero: np.ndarray | None = None
    best: tuple[int, tuple[int, int]] | None = None
    for m in NM_GROUP_SIZES:
        if payload.shape[1] % m:
            continue
        if nonzero is None:
            nonzero = nm_groups(payload != 0, 1).numpy().reshape(-1)
        n = int(nonzero.reshape(-1, m).sum(axis=1, dtype=np.int32).max())
        if not 1 <= n < m:
            continue
        size = _nm_bytes(payload.numel(), n, m, value_bits or payload.element_size() * 8)
        if best is None or size < best[0]:
            best = size, (n, m)
    return None if best is None else best[1]


def _pack_nm(
    name: str, payload: torch.Tensor, n: int, m: int, *, fields: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """`name.values`: the N kept elements of each group (its non-zeros, filled up with its first
    zeros, as +0.0), `name.indices`: their packed in-group positions; see the module docstring.
    With `fields` (a tensor shaped like `payload`), its elements at the kept positions are the values."""
    positions, keep, nonzero = _nm_keep(name, payload, n, m)
    if fields is not None:
        values_t = torch.from_numpy(np.ascontiguousarray(nm_groups(fields, m).numpy()[keep]))
    else:
        carrier = nm_groups(payload.view(_BITS_DTYPES[payload.element_size()]), m).numpy()  # raw bits
        values = np.where(nonzero[keep], carrier[keep], carrier.dtype.type(0))  # a kept zero (or -0.0) -> +0.0
        values_t = torch.from_numpy(np.ascontiguousarray(values)).view(payload.dtype)
    return {name + INDICES_SUFFIX: torch.from_numpy(_pack_indices(positions, nm_index_bits(m))),
            name + VALUES_SUFFIX: values_t}


# the indices packed in one byte, for index widths that divide a byte: _INDEX_TABLES[bits][byte]
_INDEX_TABLES = {
    bits: (np.arange(256, dtype=np.uint8)[:, None] >> np.arange(0, 8, bits, dtype=np.uint8)) & np.uint8((1 << bits) - 1)
    for bits in (1, 2, 4, 8)
}
_MASK_GROUP_SIZES = (2, 4, 8, 16)  # group masks that pack whole into bytes (the fast decode path)


def _pack_indices(positions: np.ndarray, bits: int) -> np.ndarray:
    """Positions (uint8, each < 2**bits) as a little-bit-order stream of `bits` bits each, zero-padded."""
    stream = (positions[:, None] >> np.arange(bits, dtype=np.uint8)) & 1
    return np.packbits(stream.reshape(-1), bitorder="little")


def _unpack_indices(key: str, packed: np.ndarray, count: int, bits: int) -> np.ndarray:
    """The `count` positions of `_pack_indices`; CheckpointError if the padding bits are not zero."""
    if bits in _INDEX_TABLES:  # whole indices per byte: one table look-up per byte
        positions = _INDEX_TABLES[bits][packed].reshape(-1)
        if positions[count:].any():
            raise CheckpointError(f"stored tensor {key!r}: non-zero padding bits after {count} indices")
        return positions[:count]
    stream = np.unpackbits(packed, bitorder="little")
    if stream[count * bits:].any():
        raise CheckpointError(f"stored tensor {key!r}: non-zero padding bits after {count} indices")
    digits = stream[: count * bits].reshape(count, bits)
    positions = np.zeros(count, dtype=np.uint8)
    for j in range(bits):
        positions |= digits[:, j] << np.uint8(j)
    return positions


def _nm_keep(name: str, payload: torch.Tensor, n: int, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(in-group positions (uint8), [groups, m] keep mask, [groups, m] non-zero mask): every group keeps
    its non-zeros and, where it has fewer than N, its lowest-positioned zeros."""
    nonzero = nm_groups(payload != 0, m).numpy()
    count = nonzero.sum(axis=1, dtype=np.int32)
    if count.size and int(count.max()) > n:
        raise CheckpointError(f"{name!r} is not {n}:{m} sparse: a group along dim 1 holds {int(count.max())} non-zeros")
    keep = nonzero | (np.cumsum(~nonzero, axis=1, dtype=np.int32) <= (n - count)[:, None])
    return np.nonzero(keep)[1].astype(np.uint8), keep, nonzero  # row-major: groups in order, ascending in each


def _pack_bitmask(name: str, payload: torch.Tensor, *, fields: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """`name.bitmask` of the non-zeros of `payload`, `name.values` those elements (of `fields` if given)."""
    flat = payload.reshape(-1)
    mask = flat != 0
    bits = np.packbits(mask.numpy(), bitorder="little")
    values = flat if fields is None else fields.reshape(-1)
    return {name + BITMASK_SUFFIX: torch.from_numpy(bits), name + VALUES_SUFFIX: values[mask]}


def pack_codes(fields: np.ndarray, bits: int) -> np.ndarray:
    """Low-bit fields (uint8, each < 2**bits, bits dividing 8) packed 8 // bits to a byte in little bit
    order: element i in bits [(i % k) * bits, (i % k + 1) * bits) of byte i // k (k = 8 // bits), the
    first element of a byte in its least significant bits; the last byte's unused bits are zero."""
    per_byte = 8 // bits
    grouped = np.pad(fields.astype(np.uint8, copy=False), (0, -fields.size % per_byte)).reshape(-1, per_byte)
    out = grouped[:, 0].copy()
    for j in range(1, per_byte):
        out |= grouped[:, j] << np.uint8(j * bits)
    return out


# the codes packed in one byte: _CODE_TABLES[(bits, signed)][byte] (signed: the fields sign-extended)
_CODE_TABLES = {
    (bits, signed): ((table.astype(np.int16) ^ (1 << (bits - 1))) - (1 << (bits - 1))).astype(np.int8)
    if signed else table.astype(np.int8)
    for bits in LOW_BITS for signed in (True, False)
    for table in [(np.arange(256, dtype=np.uint8)[:, None] >> np.arange(0, 8, bits, dtype=np.uint8))
                  & np.uint8((1 << bits) - 1)]
}


def unpack_codes(key: str, packed: np.ndarray, count: int, bits: int, signed: bool) -> np.ndarray:
    """The `count` codes (int8) of `pack_codes`, sign-extended if `signed`; CheckpointError if the
    padding bits are not zero."""
    codes = _CODE_TABLES[(bits, signed)][packed].reshape(-1)
    if codes[count:].any():
        raise CheckpointError(f"stored tensor {key!r}: non-zero padding bits after {count} codes")
    return codes[:count]


def unshared(tensors: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The tensors, each with its own memory: safetensors refuses tensors that share memory (tied
    weights, views of one buffer), so a tensor whose storage was seen before is copied."""
    seen: set[int] = set()
    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        ptr = tensor.untyped_storage().data_ptr()
        out[name] = tensor.clone() if tensor.numel() and ptr in seen else tensor
        seen.add(ptr)
    return out


# Decompression -----------------------------------------------------------------------------------

def max_decoded_bytes() -> int:
    """The most bytes one state dict may decode to: $ZOO_MAX_DECODED_BYTES, else MAX_DECODED_BYTES."""
    text = os.environ.get("ZOO_MAX_DECODED_BYTES")
    if text is None:
        return MAX_DECODED_BYTES
    if not text.isdigit() or int(text) < 1:
        raise CheckpointError(f"ZOO_MAX_DECODED_BYTES must be a positive number of bytes, got {text!r}")
    return int(text)


def check_decoded_size(metas: Mapping[str, TensorMeta], limit: int | None = None) -> int:
    """The bytes `metas` decode to, checked against `limit` (default `max_decoded_bytes()`)."""
    limit = max_decoded_bytes() if limit is None else limit
    total = 0
    for name, meta in metas.items():
        total += meta.numel * meta.torch_dtype.itemsize
        if total > limit:
            raise CheckpointError(
                f"the tensors decode to more than {limit} bytes (at {name!r}, shape {list(meta.shape)[:8]}, "
                f"{meta.dtype}): refused before allocating; set ZOO_MAX_DECODED_BYTES to allow larger models"
            )
    return total


def decompress_state_dict(
    tensors: Mapping[str, torch.Tensor], metas: Mapping[str, TensorMeta], *, threads: int | None = None,
    max_bytes: int | None = None,
) -> dict[str, torch.Tensor]:
    """Restores the original state dict (same names, order, dtypes, shapes and bits; -0.0 -> +0.0).

    The metas' decoded size is checked first (`check_decoded_size`: at most `max_bytes`, default
    `max_decoded_bytes()`). Tensors of at least PARALLEL_MIN_NUMEL elements are decoded on `threads`
    threads (default: torch's intra-op thread count), the others on the calling thread meanwhile; the
    first error in the metas' order is raised.
    """
    check_decoded_size(metas, max_bytes)
    used: set[str] = set()  # set.add is atomic: the pool's threads share it
    decoded: dict[str, torch.Tensor] = {}
    quantized = {name: meta for name, meta in metas.items() if meta.codec.quantized}
    plain = {name: meta for name, meta in metas.items() if name not in quantized}
    workers = max(1, torch.get_num_threads() if threads is None else threads)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        decoded.update(_decode_all(pool, plain, lambda name: None, tensors, used))
        decoded.update(_decode_all(pool, quantized, lambda name: _stored_grid(name, metas[name], decoded), tensors, used))
    extra = set(tensors) - used
    if extra:
        raise CheckpointError(f"stored tensors without a meta: {sorted(extra)[:10]}")
    return {name: decoded[name] for name in metas}


def _decode_all(
    pool: ThreadPoolExecutor, metas: Mapping[str, TensorMeta], scale_of: Callable[[str], Grid | None],
    tensors: Mapping[str, torch.Tensor], used: set[str],
) -> dict[str, torch.Tensor]:
    """Decodes `metas`: the large tensors on `pool` (largest first), the small ones here meanwhile; the
    first CheckpointError in the order of `metas` is raised once all are done."""

    def task(name: str) -> torch.Tensor:
        return _decode(name, metas[name], scale_of(name), tensors, used)

    large = sorted((n for n, m in metas.items() if m.numel >= PARALLEL_MIN_NUMEL), key=lambda n: -metas[n].numel)
    futures = {name: pool.submit(task, name) for name in large}
    out: dict[str, torch.Tensor] = {}
    errors: dict[str, CheckpointError] = {}
    for name in [n for n in metas if n not in futures] + large:  # the small ones while the pool works
        try:
            out[name] = futures[name].result() if name in futures else task(name)
        except CheckpointError as error:
            errors[name] = error
    if errors:
        raise errors[next(name for name in metas if name in errors)]
    return out


@dataclass(frozen=True)
class Grid:
    """The decoded grid of a quantized weight: its scale, and for the low-bit encodings the number of
    scale rows (see `grid_rows`) and the zero points (int8, one per row; None for symmetric grids)."""

    scale: torch.Tensor
    rows: int = 0
    zero_point: np.ndarray | None = None


def _stored_grid(name: str, meta: TensorMeta, decoded: Mapping[str, torch.Tensor]) -> Grid:
    """The decoded `*_scale` (and for low-bit codes `*_bits`, `*_zero_point`) of a quantized weight,
    checked like at compression; the bits must be the encoding's, a zero point present exactly for the
    unsigned (affine) encodings."""
    if not _is_weight(name) or not meta.torch_dtype.is_floating_point:
        raise CheckpointError(
            f"{name!r} ({meta.dtype}) is {meta.encoding.value}, but only a floating '*.weight' can be quantized"
        )
    scale = decoded.get(name + SCALE_SUFFIX)
    if scale is None:
        raise CheckpointError(f"{name!r} is {meta.encoding.value} but {name + SCALE_SUFFIX!r} is missing")
    codec = meta.codec
    bits, zero_point = decoded.get(name + BITS_SUFFIX), decoded.get(name + ZERO_POINT_SUFFIX)
    if not codec.packed:
        if bits is not None or zero_point is not None:
            raise CheckpointError(f"{name!r} is {meta.encoding.value} (8-bit, symmetric) but has a "
                                  f"{BITS_SUFFIX!r} or {ZERO_POINT_SUFFIX!r} sibling")
        return Grid(_stored_scale(name, meta, scale))
    if bits is None:
        raise CheckpointError(f"{name!r} is {meta.encoding.value} but {name + BITS_SUFFIX!r} is missing")
    if stored_bits(name, bits) != codec.bits:
        raise CheckpointError(f"{name!r} is {meta.encoding.value} but {name + BITS_SUFFIX!r} is {int(bits.reshape(()))}")
    if codec.signed != (zero_point is None):
        raise CheckpointError(
            f"{name!r} is {meta.encoding.value}: "
            + (f"a symmetric grid has no {name + ZERO_POINT_SUFFIX!r}" if codec.signed
               else f"an affine grid needs {name + ZERO_POINT_SUFFIX!r}, which is missing")
        )
    rows = _check_low_bit_grid(name, meta.shape, scale, zero_point, codec.bits)
    zp = None if zero_point is None else zero_point.reshape(-1).numpy().astype(np.int8)
    return Grid(scale, rows, zp)


def _stored_scale(name: str, meta: TensorMeta, scale: torch.Tensor) -> torch.Tensor:
    """The decoded `*_scale` of an int8 weight, checked like at compression."""
    check_scale(name, scale)
    _broadcast_scale(name, scale, meta.shape)  # checks the shape
    return scale


def check_scale(name: str, scale: torch.Tensor) -> None:
    """A weight's `*_scale`: of a dtype in SCALE_DTYPES, finite and >= 0 (a negative scale would decode
    the zeros of q as -0.0: scales are absmax / 127 >= 0; an infinite one makes NaN weights)."""
    if scale.dtype not in SCALE_DTYPES:
        raise CheckpointError(f"{name + SCALE_SUFFIX!r} must be one of "
                              f"{', '.join(dtype_name(d) for d in SCALE_DTYPES)}, got {scale.dtype}")
    if not bool(torch.isfinite(scale).all()) or bool((scale < 0).any()):
        raise CheckpointError(f"{name + SCALE_SUFFIX!r} must be finite and >= 0")


def _decode(
    name: str, meta: TensorMeta, grid: Grid | None,
    tensors: Mapping[str, torch.Tensor], used: set[str],
) -> torch.Tensor:
    """One tensor from its stored parts; `grid` is given exactly for quantized encodings."""
    codec = meta.codec
    if codec.packed:
        assert grid is not None  # _decode_all passes a grid for every quantized encoding
        return _decode_packed(name, meta, grid, tensors, used)
    scale = None if grid is None else grid.scale
    item = torch.int8 if codec.quantized else meta.torch_dtype
    values_key = name + VALUES_SUFFIX if (codec.sparse or codec.quantized or codec.entropy) else name
    values = _take(tensors, values_key, used)
    _check_dtype(values_key, values, torch.uint8 if codec.entropy else item)
    if codec.entropy and values.dim() != 1:
        raise CheckpointError(f"{values_key!r} must be a 1-D zstd frame, has shape {list(values.shape)}")
    if codec.quantized and not codec.entropy:
        _check_int8_codes(values_key, values.numpy())
    if not codec.sparse:
        if codec.entropy:
            bits = entropy.decode(values_key, values.numpy(), meta.numel, _np_bits(item))
            if codec.quantized:
                _check_int8_codes(values_key, bits)
            values = torch.from_numpy(_writable(bits)).view(item).view(meta.shape)
        elif tuple(values.shape) != meta.shape:
            raise CheckpointError(f"{values_key!r} has shape {list(values.shape)}, meta says {list(meta.shape)}")
        if scale is None:
            return values
        return dequantize(values, _broadcast_scale(name, scale, meta.shape), meta.torch_dtype)
    if codec.layout is Layout.NM:
        index, marker = _unpack_nm(name, meta, tensors, used), "N:M indices mark {} values"
    else:
        index, marker = _unpack_bitmask(name, meta, tensors, used), "bitmask marks {} non-zeros"
    if codec.entropy:
        bits = entropy.decode(values_key, values.numpy(), index.size, _np_bits(item))
        if codec.quantized:
            _check_int8_codes(values_key, bits)
        values = torch.from_numpy(_writable(bits)).view(item)
    elif values.dim() != 1 or values.numel() != index.size:
        raise CheckpointError(
            f"{name!r}: {marker.format(index.size)}, {values.numel()} stored (shape {list(values.shape)})"
        )
    if scale is not None:
        # dequantize only the non-zeros: one multiply per stored value instead of one per element
        if scale.numel() == 1:
            per_value = scale.reshape(())
        else:
            channel = index // max(1, meta.numel // max(1, meta.shape[0]))
            per_value = torch.from_numpy(_bits(scale)[channel]).view(scale.dtype)
        values = dequantize(values, per_value, meta.torch_dtype)
    bits = _bits(values)
    out = np.zeros(meta.numel, dtype=bits.dtype)  # calloc: the kernel hands out zeroed pages, no memset
    out[index] = bits  # numpy's fancy-index put beats torch's boolean index_put by ~2x here
    if codec.layout is Layout.NM and meta.numel > meta.shape[0] * meta.shape[1]:  # a kernel axis: from group
        shape = meta.shape  # order [out, *kernel, in] back to [out, in, *kernel]
        out = np.ascontiguousarray(np.moveaxis(out.reshape(shape[0], *shape[2:], shape[1]), -1, 1))
    return torch.from_numpy(out).view(meta.torch_dtype).view(meta.shape)


def _decode_packed(
    name: str, meta: TensorMeta, grid: Grid, tensors: Mapping[str, torch.Tensor], used: set[str],
) -> torch.Tensor:
    """A low-bit weight: its packed codes (of every element, or of those its bitmask or N:M indices
    mark, the others being its zero point's code) dequantized row by row with `grid`."""
    codec = meta.codec
    key = name + VALUES_SUFFIX
    packed = _take(tensors, key, used)
    _check_dtype(key, packed, torch.uint8)
    if packed.dim() != 1:
        raise CheckpointError(f"{key!r} must be 1-D, has shape {list(packed.shape)}")
    index: np.ndarray | None = None
    if codec.layout is Layout.NM:
        index = _unpack_nm(name, meta, tensors, used)
    elif codec.layout is Layout.BITMASK:
        index = _unpack_bitmask(name, meta, tensors, used)
    count = meta.numel if index is None else index.size
    size = _ceil_bytes(count * codec.bits)
    if codec.entropy:
        raw = entropy.decode(key, packed.numpy(), size, np.dtype(np.uint8))
    elif packed.numel() != size:
        raise CheckpointError(f"{key!r}: {packed.numel()} bytes of {codec.bits}-bit codes, {size} expected for "
                              f"{count} codes")
    else:
        raw = packed.numpy()
    if meta.numel == 0:  # its parts checked above; nothing to unpack
        return torch.zeros(meta.shape, dtype=meta.torch_dtype)
    rows = grid.rows
    per_byte, row_size = 8 // codec.bits, meta.numel // max(rows, 1)
    if index is None and rows and row_size % per_byte == 0 and row_size >= 256 * per_byte:
        return _dequantize_by_table(raw, meta, grid, codec)
    codes = unpack_codes(key, raw, count, codec.bits, codec.signed)
    if index is not None:
        # unstored elements: code 0 (signed) or -1, a code no unsigned grid has, set to the zero point below
        full = np.zeros(meta.numel, dtype=np.int8) if codec.signed else np.full(meta.numel, -1, dtype=np.int8)
        full[index] = codes
        if codec.layout is Layout.NM and meta.numel > meta.shape[0] * meta.shape[1]:  # group order -> original
            shape = meta.shape
            full = np.ascontiguousarray(np.moveaxis(full.reshape(shape[0], *shape[2:], shape[1]), -1, 1))
        codes = full.reshape(rows, -1)
        if grid.zero_point is not None:
            codes = np.where(codes < 0, grid.zero_point[:, None], codes)
    codes = codes.reshape(rows, -1)
    if grid.zero_point is not None:
        codes = codes - grid.zero_point[:, None]  # in [-15, 15]: int8
    out = dequantize(torch.from_numpy(codes), grid.scale.reshape(rows, 1), meta.torch_dtype)
    return out.reshape(meta.shape)


def _dequantize_by_table(raw: np.ndarray, meta: TensorMeta, grid: Grid, codec: Codec) -> torch.Tensor:
    """Dense packed codes whose scale rows start on byte boundaries and are longer than a table: each
    row's 256 possible bytes dequantized once (by `dequantize`, so bit for bit as element by element),
    then one gather per row of its bytes' values (~4x faster than unpacking, then multiplying)."""
    per_byte = 8 // codec.bits
    codes = _CODE_TABLES[(codec.bits, codec.signed)][None]  # [1, 256, per_byte]
    if grid.zero_point is not None:
        codes = codes - grid.zero_point[:, None, None]  # [rows, 256, per_byte], in [-15, 15]
    table = _bits(dequantize(torch.from_numpy(np.ascontiguousarray(codes)), grid.scale.reshape(-1, 1, 1),
                             meta.torch_dtype).contiguous())
    table = np.broadcast_to(table, (grid.rows, 256, per_byte))
    packed_rows = raw.reshape(grid.rows, -1)
    out = np.empty((grid.rows, packed_rows.shape[1], per_byte), dtype=table.dtype)
    for r in range(grid.rows):
        np.take(table[r], packed_rows[r], axis=0, out=out[r])
    return torch.from_numpy(out).view(meta.torch_dtype).view(meta.shape)


def _unpack_bitmask(name: str, meta: TensorMeta, tensors: Mapping[str, torch.Tensor], used: set[str]) -> np.ndarray:
    """Flat positions of the stored values, from the packed (or zstd-coded packed) bitmask."""
    bitmask_key = name + BITMASK_SUFFIX
    packed = _take(tensors, bitmask_key, used)
    _check_dtype(bitmask_key, packed, torch.uint8)
    n = meta.numel
    if packed.dim() != 1:
        raise CheckpointError(f"{bitmask_key!r} must be 1-D, has shape {list(packed.shape)}")
    if meta.codec.entropy:
        bits = entropy.decode(bitmask_key, packed.numpy(), (n + 7) // 8, np.dtype(np.uint8))
    elif packed.numel() != (n + 7) // 8:
        raise CheckpointError(f"{name!r}: bitmask of {packed.numel()} bytes does not fit {n} elements")
    else:
        bits = packed.numpy()
    mask = np.unpackbits(bits, count=n, bitorder="little").view(np.bool_)
    return np.flatnonzero(mask)  # numpy's nonzero is fastest on a bool array


def _unpack_nm(name: str, meta: TensorMeta, tensors: Mapping[str, torch.Tensor], used: set[str]) -> np.ndarray:
    """Flat positions in the tensor's group order (see `nm_groups`) of the stored values, from the packed
    (or zstd-coded packed) in-group indices, each checked to be < M and ascending within its group."""
    n, m = check_nm_layout(meta.shape, meta.nm)
    key = name + INDICES_SUFFIX
    packed = _take(tensors, key, used)
    _check_dtype(key, packed, torch.uint8)
    if packed.dim() != 1:
        raise CheckpointError(f"{key!r} must be 1-D, has shape {list(packed.shape)}")
    groups = meta.numel // m
    bits = nm_index_bits(m)
    size = (groups * n * bits + 7) // 8
    if meta.codec.entropy:
        raw = entropy.decode(key, packed.numpy(), size, np.dtype(np.uint8))
    elif packed.numel() != size:
        raise CheckpointError(f"{key!r}: {packed.numel()} bytes of {n}:{m} indices, {size} expected for "
                              f"shape {list(meta.shape)}")
    else:
        raw = packed.numpy()
    positions = _unpack_indices(key, raw, groups * n, bits).reshape(groups, n)
    if positions.size and int(positions.max()) >= m:
        raise CheckpointError(f"{key!r}: an in-group index is {int(positions.max())}, not below M = {m}")
    if n > 1 and not bool((positions[:, 1:] > positions[:, :-1]).all()):
        raise CheckpointError(f"{key!r}: the indices of a group must be distinct and ascending")
    if m in _MASK_GROUP_SIZES:
        # the groups' masks packed like a bitmask: numpy's flatnonzero of it beats adding group offsets
        wide = np.uint16 if m == 16 else np.uint8
        code = np.zeros(groups, dtype=wide)
        for j in range(n):
            code |= np.left_shift(wide(1), positions[:, j].astype(wide))
        if m < 8:
            per_byte = 8 // m
            code = np.pad(code, (0, -groups % per_byte)).reshape(-1, per_byte)
            packed_mask = code[:, 0].copy()
            for t in range(1, per_byte):
                packed_mask |= code[:, t] << np.uint8(t * m)
        else:
            packed_mask = code.astype("<u2", copy=False).view(np.uint8) if m == 16 else code
        return np.flatnonzero(np.unpackbits(packed_mask, count=meta.numel, bitorder="little").view(np.bool_))
    offsets = np.arange(0, groups * m, m, dtype=np.int64)
    return (positions + offsets[:, None]).reshape(-1)


def _check_int8_codes(key: str, codes: np.ndarray) -> None:
    """int8 grid indices lie in [-127, 127]: the grid is symmetric, -128 is no code of it."""
    if codes.size and int(codes.view(np.int8).min()) < -INT8_MAX:
        raise CheckpointError(f"stored tensor {key!r}: an int8 code is -128, outside the symmetric grid [-127, 127]")


def _np_bits(dtype: torch.dtype) -> np.dtype:
    """The numpy carrier of a torch dtype's raw bits (as `_bits` views them)."""
    return np.dtype({1: np.uint8, 2: np.int16, 4: np.int32, 8: np.int64}[dtype.itemsize])


def _writable(array: np.ndarray) -> np.ndarray:
    """`array`, copied if read-only (a view of decoded bytes): torch warns on read-only arrays."""
    return array if array.flags.writeable else array.copy()


def _bits(tensor: torch.Tensor) -> np.ndarray:
    """A zero-copy numpy view of a tensor's raw bits (numpy has no bfloat16 or float8)."""
    return tensor.view(_BITS_DTYPES[tensor.element_size()]).numpy()


def _take(tensors: Mapping[str, torch.Tensor], key: str, used: set[str]) -> torch.Tensor:
    try:
        tensor = tensors[key]
    except KeyError:
        raise CheckpointError(f"stored tensor {key!r} is missing") from None
    used.add(key)
    return tensor


def _check_dtype(key: str, tensor: torch.Tensor, dtype: torch.dtype) -> None:
    if tensor.dtype != dtype:
        raise CheckpointError(f"stored tensor {key!r} is {tensor.dtype}, expected {dtype}")
