"""Bytes on disk and decode time of the zoo's compressed checkpoint on a ResNet-50-sized state dict.

    /work/venv/bin/python benchmarks/bench_checkpoint_size.py [--arch resnet50] [--sparsity 0.9] [--threads N]

Builds four state dicts from one random-init timm model: dense fp32; conv/linear weights pruned
globally by magnitude; those weights on a per-output-channel symmetric int8 grid (absmax / 127,
`X.weight_scale` beside each weight); and both. Saves each with `save_checkpoint`, then prints a
markdown table: bytes on disk (weights + config.json) as a ratio to dense, the time to decode the
stored tensors (`decompress_state_dict`) and the time of a whole `load_checkpoint` (read, SHA-256,
decode). Pruning and quantization are the zoo's own (zoo.compress), so the bytes are those of real variants.
"""
from __future__ import annotations

import argparse
import copy
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import timm
import torch
from safetensors import safe_open
from torch import nn

from zoo.compress.checkpoint import WEIGHTS_FILE, checkpoint_bytes, load_checkpoint, save_checkpoint
from zoo.compress.formats import decompress_state_dict, metas_from_json
from zoo.compress.pruning import apply_magnitude_pruning, prunable_weights
from zoo.compress.quantization import dequantize_per_channel, quantize_per_channel

TARGETS = {"dense fp32": None, "sparse fp32": 0.15, "int8": 0.27, "sparse + int8": 0.07}


def sparse_state_dict(model: nn.Module, sparsity: float) -> dict[str, torch.Tensor]:
    """The zoo's one-shot global magnitude pruning, on a copy of `model`."""
    pruned = copy.deepcopy(model)
    apply_magnitude_pruning(pruned, sparsity, scope="global")
    return {k: v.detach().clone() for k, v in pruned.state_dict().items()}


def int8_grid(sd: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    """The zoo's per-channel symmetric int8 weights (what Int8PTQConfig stores), `X.weight_scale` beside."""
    out = dict(sd)
    for key in names:
        q, scale = quantize_per_channel(sd[key])
        out[key] = dequantize_per_channel(q, scale)
        out[key + "_scale"] = scale
    return out


def bit_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bits (torch.equal alone would take -0.0 for 0.0)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    bits = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
    return torch.equal(a.contiguous().view(bits), b.contiguous().view(bits))


def best_time(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = timm.create_model(args.arch, pretrained=False)
    dense = {k: v.detach().clone() for k, v in model.state_dict().items()}
    names = [f"{name}.weight" for name in prunable_weights(model)]
    sparse = sparse_state_dict(model, args.sparsity)
    variants = {
        "dense fp32": dense,
        "sparse fp32": sparse,
        "int8": int8_grid(dense, names),
        "sparse + int8": int8_grid(sparse, names),
    }
    n_params = sum(p.numel() for p in model.parameters())
    config = {
        "name": f"{args.arch}-bench", "base_model": args.arch, "arch": args.arch, "model_kwargs": {}, "recipe": None,
    }

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, sd in variants.items():
            folder = save_checkpoint(Path(tmp) / label.replace(" ", "_"), sd, config=config)
            with safe_open(str(folder / WEIGHTS_FILE), framework="pt") as f:
                stored = {k: f.get_tensor(k) for k in f.keys()}
                metas = metas_from_json(f.metadata()["zoo.tensor_metas"])
            restored, _ = load_checkpoint(folder)
            exact = list(restored) == list(sd) and all(bit_equal(restored[k], sd[k]) for k in sd)
            rows.append((
                label, checkpoint_bytes(folder),
                best_time(lambda: decompress_state_dict(stored, metas), args.repeats),
                best_time(lambda: load_checkpoint(folder), args.repeats), exact,
            ))

    dense_bytes = rows[0][1]
    threads = "" if args.threads is None else f" --threads {args.threads}"
    print(f"Command: `python benchmarks/bench_checkpoint_size.py --arch {args.arch} --sparsity {args.sparsity}"
          f" --repeats {args.repeats}{threads}`  ")
    print(f"Model: timm `{args.arch}` random init, {n_params / 1e6:.1f}M parameters; {len(names)} conv/linear "
          f"weights pruned globally by magnitude to {args.sparsity:.0%} and/or put on a per-channel int8 grid.  ")
    print(f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, Python "
          f"{sys.version.split()[0]}, torch {torch.__version__}; times are the best of {args.repeats}.\n")
    print("| variant | bytes on disk | ratio to dense | target | decode (s) | load_checkpoint (s) "
          "| round trip bit-exact |")
    print("|---|---:|---:|---:|---:|---:|---|")
    for label, size, decode_s, load_s, exact in rows:
        target = TARGETS[label]
        ratio = size / dense_bytes
        mark = "-" if target is None else f"<= {target:.2f}x ({'met' if ratio <= target else 'MISSED'})"
        exact_mark = "yes" if exact else "NO"
        print(f"| {label} | {size:,} | {ratio:.3f}x | {mark} | {decode_s:.3f} | {load_s:.3f} | {exact_mark} |")


if __name__ == "__main__":
    main()
