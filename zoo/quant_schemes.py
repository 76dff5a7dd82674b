"""Quantization schemes by name: the `quant` of a variant (`zoo.load(name, quant="w4a8")`, the name suffix
`..._w4a8`). Torch-free, so the registry and the command line answer without importing torch.

- ``int8``: post-training int8 (`zoo.compress.quantization`): per-channel symmetric int8 weights,
  calibrated uint8 activations.
- ``w<W>[a<A>][g<G>][_asym][_ptq][_<proxy>][_bcgd]``: low-bit weights (`zoo.compress.lowbit`):
  W in 8, 4, 2, ``b`` (binary) or ``t`` (ternary) bits; ``a<A>`` quantizes every quantized layer's input
  to A in 8, 4 or 2 bits (none: float inputs); ``g<G>`` one scale per group of G input channels (none:
  one per output channel); ``_asym`` an affine grid (a zero point per scale); ``_ptq`` post-training
  quantization (GPTQ rounding on calibration data, `zoo.compress.lowbit_ptq`), else quantization-aware
  training from the base; QAT's activation STE proxy, named when not the default clipped ReLU
  (``_relu``, ``_id``; ``_clip`` may be written, the canonical name leaves it out); ``_bcgd``: BCGD
  weight updates (rho = `BCGD_RHO`) instead of plain STE.

`w8a8`, `w4`, `w4a8`, `w2a2_id`, `w4g32_ptq`, `wb_bcgd`, `wta4`, ... Which QAT or PTQ a base gets when
its user does not say: QAT where the zoo has its training data (`default_quant`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from zoo.errors import InvalidArgumentError

INT8 = "int8"
WEIGHT_BITS_CODES = {"8": 8, "4": 4, "2": 2, "b": 1, "t": "ternary"}
ACT_BITS = (8, 4, 2)
PROXY_CODES = {"clipped_relu": "clip", "relu": "relu", "identity": "id"}
DEFAULT_PROXY = "clipped_relu"
BCGD_RHO = 1e-5  # Yin et al. 2018's relaxation for the default _bcgd variants
PATTERN = (r"int8|w(?P<w>[842bt])(?:a(?P<a>[842]))?(?:g(?P<g>[1-9]\d*))?(?P<asym>_asym)?(?P<ptq>_ptq)?"
           r"(?:_(?P<proxy>clip|relu|id))?(?P<bcgd>_bcgd)?")
_RE = re.compile(PATTERN)


@dataclass(frozen=True)
class QuantScheme:
    """A low-bit scheme (see the module docstring); `weight_bits` 1 is binary."""

    weight_bits: int | str
    act_bits: int = 32
    group_size: int = 0
    symmetric: bool = True
    ptq: bool = False
    proxy: str = DEFAULT_PROXY
    bcgd: bool = False

    def __post_init__(self) -> None:
        if self.weight_bits not in WEIGHT_BITS_CODES.values():
            raise InvalidArgumentError(f"weight bits must be 8, 4, 2, 1 (binary) or 'ternary', got {self.weight_bits!r}")
        if self.act_bits not in (*ACT_BITS, 32):
            raise InvalidArgumentError(f"activation bits must be 8, 4, 2 or 32 (float), got {self.act_bits!r}")
        if self.proxy not in PROXY_CODES:
            raise InvalidArgumentError(f"unknown STE proxy {self.proxy!r}; supported: {', '.join(PROXY_CODES)}")
        if self.ptq and (self.bcgd or self.proxy != DEFAULT_PROXY):
            raise InvalidArgumentError("STE proxies and BCGD are training settings: post-training (_ptq) has neither")
        if self.proxy != DEFAULT_PROXY and self.act_bits == 32:
            raise InvalidArgumentError("an STE proxy is for quantized activations: name activation bits (a8, a4, a2)")
        if self.weight_bits in (1, "ternary") and not self.symmetric:
            raise InvalidArgumentError("binary and ternary grids are symmetric: no _asym")
        if self.weight_bits == 8 and (self.group_size or not self.symmetric):
            raise InvalidArgumentError("8-bit weights are stored per channel, symmetric (the int8 format and kernels)")
        if self.ptq and self.weight_bits in (1, "ternary"):
            raise InvalidArgumentError("binary and ternary weights are trained (QAT), not rounded after training")

    @property
    def granularity(self) -> str:
        return "group" if self.group_size else "channel"

    def describe(self) -> str:
        """In words, e.g. "4-bit weights (per channel, symmetric), 8-bit inputs, quantization-aware training
        (clipped-ReLU STE)"."""
        weights = {1: "binary", "ternary": "ternary"}.get(self.weight_bits, f"{self.weight_bits}-bit")
        grid = f"per group of {self.group_size}" if self.group_size else "per channel"
        inputs = "float inputs" if self.act_bits == 32 else f"{self.act_bits}-bit inputs"
        if self.ptq:
            how = "post-training (GPTQ rounding)"
        else:
            update = "BCGD" if self.bcgd else "STE"
            proxy = f", {self.proxy.replace('_', ' ')} STE for inputs" if self.act_bits != 32 else ""
            how = f"quantization-aware training ({update} weights{proxy})"
        return f"{weights} weights ({grid}, {'symmetric' if self.symmetric else 'affine'}), {inputs}, {how}"

    @property
    def name(self) -> str:
        code = {v: k for k, v in WEIGHT_BITS_CODES.items()}[self.weight_bits]
        parts = [f"w{code}" + (f"a{self.act_bits}" if self.act_bits != 32 else "")
                 + (f"g{self.group_size}" if self.group_size else "")]
        if not self.symmetric:
            parts.append("asym")
        if self.ptq:
            parts.append("ptq")
        if self.proxy != DEFAULT_PROXY:
            parts.append(PROXY_CODES[self.proxy])
        if self.bcgd:
            parts.append("bcgd")
        return "_".join(parts)


def parse_quant(text: str) -> QuantScheme | None:
    """None for "int8", the QuantScheme of a low-bit name; InvalidArgumentError for anything else."""
    match = _RE.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        raise InvalidArgumentError(f"unknown quant scheme {text!r}: 'int8', or w<bits>[a<bits>][g<group>][_asym][_ptq]"
                                   "[_clip|_relu|_id][_bcgd] with weight bits 8, 4, 2, b (binary) or t (ternary), "
                                   "e.g. 'w4a8', 'w2a2_id', 'w4g32_ptq'")
    if text == INT8:
        return None
    proxy = {v: k for k, v in PROXY_CODES.items()}[match["proxy"] or "clip"]
    return QuantScheme(WEIGHT_BITS_CODES[match["w"]], int(match["a"] or 32), int(match["g"] or 0),
                       symmetric=not match["asym"], ptq=bool(match["ptq"]), proxy=proxy, bcgd=bool(match["bcgd"]))


def describe_quant(text: str) -> str:
    """A quant scheme in words."""
    scheme = parse_quant(text)
    return "int8 post-training: per-channel int8 weights, calibrated uint8 inputs" if scheme is None else scheme.describe()


def canonical_quant(text: str | None) -> str | None:
    """The canonical spelling of a quant scheme (None stays None); raises for an unknown one."""
    if text is None:
        return None
    scheme = parse_quant(text)
    return INT8 if scheme is None else scheme.name


def default_quant(text: str | None, trains: bool) -> str | None:
    """`text` as a base that trains (`trains`) or not gets it by default: a low-bit scheme that names no
    method becomes post-training (`_ptq`) where the zoo has no training data."""
    scheme = None if text is None else parse_quant(text)
    if scheme is None or trains or scheme.ptq or scheme.bcgd or scheme.proxy != DEFAULT_PROXY:
        return canonical_quant(text)
    return QuantScheme(scheme.weight_bits, scheme.act_bits, scheme.group_size, scheme.symmetric, ptq=True).name
