"""Writing a variant of a transformers-family model in the compressed-tensors layout, which transformers
(with the `compressed-tensors` package installed) loads with `AutoModelForSequenceClassification.from_pretrained`.

What is written (`export_compressed_tensors(model, entry, out)`): `config.json` (the repo's config with a
`quantization_config`: quant_method "compressed-tensors", one config group per distinct scheme whose
`targets` are the layers' names, the `format`), `model.safetensors` in that layout, and the repo's
tokenizer files. compressed-tensors' own compressor classes quantize and pack each layer's weight from
the zoo's dequantized weight and its scales (`BaseCompressor.get_value_from_registry(format).compress`):
the zoo's weights lie exactly on their grid, so the codes come back exactly.

How the zoo's quantized layers map (`FORMATS` names the formats):

- low-bit weights (QAT / GPTQ layers with `weight_bits` 4 or 2, inputs not quantized), symmetric:
  `pack-quantized` (int32 words `weight_packed`, `weight_scale` [out, 1] per channel or
  [out, in / group] per group, `weight_shape`). Affine grids: `naive-quantized` (one int8 code per
  weight, with `weight_zero_point`), because transformers 5.24 with compressed-tensors 0.20.1 cannot load
  an affine `pack-quantized` checkpoint (it expects the zero points unpacked, the compressor packs them).
  The zoo's affine codes [0, 2^b - 1] and zero points become compressed-tensors' signed ones (both minus
  2^(b-1)): (code - zero point) is unchanged.
- 8-bit weights without input quantization (`w8_ptq`, weights per channel or tensor): `naive-quantized`.
- int8 PTQ (`int8`: int8 weights per channel, inputs uint8 per tensor with a calibrated scale and zero
  point): `int-quantized` with static per-tensor asymmetric `input_activations` (`input_scale`,
  `input_zero_point` minus 128).
- everything else stays as it is (dense; plain floats). Pruned weights keep their zeros in every format;
  `quantization_config.sparsity_config` records the measured sparsity as metadata (format "dense":
  compressed-tensors 0.20 and transformers 5.24 dropped the sparse compressors, the zeros are stored).

Binary and ternary weights (stored by the zoo as 2-bit codes) are written as 2-bit codes with their scales.
Refused with `CompressedTensorsExportError`: a model that is not of the transformers family; QAT layers
whose inputs are quantized (the zoo's activation grid [0, alpha] / [-alpha, alpha] is not one the export
is tested on); quantized conv layers; an `out` that exists and is not an empty folder.

Tested (tests/test_compressed_tensors.py, transformers 5.24, compressed-tensors 0.20.1): weight-only w4,
w2 per group, w4 affine per group and w8 give the zoo's logits bit for bit; int8 with its inputs to 1e-5.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.entry import ModelEntry
from zoo.errors import ZooError

QUANT_METHOD = "compressed-tensors"
FORMATS = ("pack-quantized", "naive-quantized", "int-quantized", "dense")
CONFIG_FILE, WEIGHTS_FILE = "config.json", "model.safetensors"
NO_ACT_QUANT = 32


class CompressedTensorsExportError(ZooError):
    """A variant the compressed-tensors export cannot write (a family, layer or scheme it does not map)."""


@dataclass(frozen=True)
class LayerScheme:
    """One quantized layer's scheme in compressed-tensors' terms (hashable: layers sharing one share a group)."""

    bits: int
    symmetric: bool
    strategy: str  # "tensor", "channel" or "group"
    group_size: int | None
    format: str
    input_activations: bool  # static per-tensor asymmetric 8-bit inputs (the zoo's int8 PTQ)

    def to_ct(self, targets: list[str]):
        from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

        weights = QuantizationArgs(num_bits=self.bits, type="int", symmetric=self.symmetric, strategy=self.strategy,
                                   group_size=self.group_size)
        inputs = (QuantizationArgs(num_bits=8, type="int", symmetric=False, strategy="tensor", dynamic=False)
                  if self.input_activations else None)
        return QuantizationScheme(targets=targets, weights=weights, input_activations=inputs, format=self.format)


def _layer_scheme(name: str, module: nn.Module) -> tuple[LayerScheme, dict[str, torch.Tensor]] | None:
    """The scheme of a zoo-quantized layer and its local state dict in compressed-tensors' terms
    (weight, weight_scale, weight_zero_point, input_scale, input_zero_point); None for a float layer."""
    from zoo.compress.lowbit import QATConv1d, QATConv2d, QATLinear
    from zoo.compress.quantization import QuantConv1d, QuantConv2d, QuantLinear

    if isinstance(module, (QATConv1d, QATConv2d, QuantConv1d, QuantConv2d)):
        raise CompressedTensorsExportError(f"layer {name!r} is a quantized convolution; the export writes linear layers")
    if isinstance(module, QuantLinear):
        local = {"weight": module.weight.detach(), "weight_scale": module.weight_scale.detach().reshape(-1, 1),
                 "input_scale": module.input_scale.detach().reshape(1),
                 "input_zero_point": (module.input_zero_point.detach().reshape(1) - 128).to(torch.int8)}
        return LayerScheme(8, True, "channel", None, "int-quantized", True), local
    if not isinstance(module, QATLinear):
        return None
    if int(module.act_bits) != NO_ACT_QUANT:
        raise CompressedTensorsExportError(
            f"layer {name!r} quantizes its inputs to {int(module.act_bits)} bits; the compressed-tensors export "
            "writes weight-only low-bit schemes (w4, w8, w2; _ptq or QAT) and int8 PTQ")
    scale = module.weight_scale.detach()
    bits = int(module.weight_bits) if hasattr(module, "weight_bits") else 8
    zero = getattr(module, "weight_zero_point", None)
    symmetric = zero is None
    out, inputs = module.weight.shape
    if scale.ndim == 0:
        strategy, group, ct_scale = "tensor", None, scale.reshape(1)
    elif scale.ndim == 1:
        strategy, group, ct_scale = "channel", None, scale.reshape(out, 1)
    else:
        strategy, group, ct_scale = "group", inputs // scale.shape[1], scale
    local = {"weight": module.weight.detach(), "weight_scale": ct_scale}
    if not symmetric:
        local["weight_zero_point"] = (zero.detach().reshape(ct_scale.shape) - 2 ** (bits - 1)).to(torch.int8)
    fmt = "pack-quantized" if symmetric and bits < 8 else "naive-quantized"
    return LayerScheme(bits, symmetric, strategy, group, fmt, False), local


def compress_state_dict(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[LayerScheme, list[str]]]:
    """The model's state dict in the compressed-tensors layout, and the layers of each scheme. Each
    quantized layer's tensors are made by compressed-tensors' compressor of its format; the zoo's own
    quantization buffers (`act_bits`, `weight_bits`, ...) are not written."""
    from compressed_tensors.compressors.base import BaseCompressor

    state: dict[str, torch.Tensor] = {}
    groups: dict[LayerScheme, list[str]] = {}
    for name, module in model.named_modules():
        found = _layer_scheme(name, module)
        if found is None:
            for key, tensor in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
                if key in module._non_persistent_buffers_set:
                    continue
                state[f"{name}.{key}" if name else key] = tensor.detach()
            continue
        scheme, local = found
        compressor = BaseCompressor.get_value_from_registry(scheme.format)
        compressed = compressor.compress(local, scheme.to_ct([name]))
        if module.bias is not None:
            compressed["bias"] = module.bias.detach()
        for key, tensor in compressed.items():
            state[f"{name}.{key}"] = tensor
        groups.setdefault(scheme, []).append(name)
    return {k: v.contiguous().clone() for k, v in state.items()}, groups


def sparsity_metadata(model: nn.Module, keep_dense: tuple[str, ...]) -> dict[str, Any]:
    """compressed-tensors' `sparsity_config` block, as metadata (format "dense": the zeros are stored):
    the fraction of zeros over the prunable weights (`prunable_weights`, the entry's `keep_dense` left out)."""
    from zoo.compress.pruning import prunable_weights

    weights = prunable_weights(model, keep_dense=keep_dense)
    total = sum(w.numel() for w in weights.values())
    zeros = sum(int((w == 0).sum()) for w in weights.values())
    return {"format": "dense", "global_sparsity": zeros / total if total else 0.0, "sparsity_structure": "unstructured",
            "targets": sorted(name.rpartition(".")[0] for name in weights), "ignore": [],
            "registry_requires_subclass": False}


def quantization_config(groups: dict[LayerScheme, list[str]], sparsity: dict[str, Any] | None) -> dict[str, Any]:
    """The `quantization_config` block of config.json for these groups (compressed-tensors' own model)."""
    import compressed_tensors
    from compressed_tensors.quantization import QuantizationConfig, QuantizationStatus

    schemes = {f"group_{i}": scheme.to_ct(names) for i, (scheme, names) in enumerate(groups.items())}
    formats = {scheme.format for scheme in groups}
    fmt = formats.pop() if len(formats) == 1 else "mixed-precision"
    config = QuantizationConfig(config_groups=schemes, format=fmt, quantization_status=QuantizationStatus.COMPRESSED)
    block = {"quant_method": QUANT_METHOD, "version": compressed_tensors.__version__,
             **config.model_dump(exclude=["quant_method"])}
    if sparsity is not None:
        block["sparsity_config"] = sparsity
    return block


def export_compressed_tensors(model: nn.Module, entry: ModelEntry, out: Path | str, *,
                              tokenizer_folder: Path | str | None = None) -> Path:
    """Writes `model` (a variant of the transformers-family `entry`) to the folder `out` (atomically)
    in the compressed-tensors layout; copies the tokenizer files of `tokenizer_folder` (default: the
    entry's repo snapshot). A model without quantized layers is written with plain float weights and,
    when sparse, the `sparsity_config` metadata. Returns `out`."""
    if entry.family != "transformers" or "config" not in entry.model_kwargs:
        raise CompressedTensorsExportError(f"{entry.name} is not a transformers-repo model (family {entry.family!r}); "
                                           "the compressed-tensors export writes transformers checkpoints")
    try:
        import compressed_tensors  # noqa: F401
    except ImportError:
        raise CompressedTensorsExportError("the compressed-tensors export needs the compressed-tensors package: "
                                           "pip install 'the-zoo[compressed-tensors]'") from None
    from safetensors.torch import save_file

    from zoo.families.transformers.data import TOKENIZER_FILES, snapshot_folder

    state, groups = compress_state_dict(model)
    sparsity = sparsity_metadata(model, entry.keep_dense)
    config = dict(entry.model_kwargs["config"])
    if model.config.num_labels != entry.num_classes:  # a classifier re-initialized for the user's classes
        config.pop("num_labels", None)
        config.update(id2label={str(k): v for k, v in model.config.id2label.items()}, label2id=dict(model.config.label2id))
    if groups:
        config["quantization_config"] = quantization_config(groups, sparsity if sparsity["global_sparsity"] else None)
    source = Path(tokenizer_folder) if tokenizer_folder is not None else snapshot_folder(entry)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CompressedTensorsExportError(f"{out} exists and is not an empty folder; the export writes a new one")
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}."))
    try:
        save_file(state, str(work / WEIGHTS_FILE), metadata={"format": "pt"})
        (work / CONFIG_FILE).write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        for name in TOKENIZER_FILES:
            if (source / name).is_file():
                shutil.copyfile(source / name, work / name)
        os.replace(work, out)  # onto an empty folder or none: the folder appears whole or not at all
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return out
