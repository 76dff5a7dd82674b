"""Bytes on disk and decode speed of the zoo's compressed checkpoint on a ResNet-50-sized state dict.

    python benchmarks/bench_checkpoint_size.py [--arch resnet50] [--sparsity 0.9] [--repeats 5]
                                               [--threads N] [--levels 1,3,9,19]
                                               [--nm 2:4,1:4] [--nm-keep-dense conv1] [--nm-only]
                                               [--lowbit-only]

Builds four state dicts from one random-init timm model: dense fp32; conv/linear weights pruned
globally by magnitude; those weights on a per-output-channel symmetric int8 grid (absmax / 127,
`X.weight_scale` beside each weight); and both. Saves each twice, with the plain (format version 1)
encodings and with entropy coding (zstd, the default), and prints one markdown table: bytes on disk
(weights + config.json) and their ratio to dense, the time to decode the stored tensors
(`decompress_state_dict`) and its speed in GB/s of dense output, and the time of a whole
`load_checkpoint` (read, SHA-256, decode). Pruning and quantization are the zoo's own (zoo.compress), so
the bytes are those of real variants. `--levels` adds a table of the zstd level's effect (bytes, encode
time, decode time of the sparse variants' entropy-coded parts), which chose `entropy.ZSTD_LEVEL`.

Three low-bit variants follow (format version 4, packed codes), made by the zoo's own post-training
quantizer (`zoo.compress.lowbit_ptq.apply_lowbit_ptq`, round-to-nearest): every conv/linear weight on a
per-output-channel symmetric 4-bit (`int4`) or 2-bit (`int2`) grid with the least-error clipped range
(`weight_range="mse"`, as the default `_w4` / `_w2` recipes), and the 90 %-sparse weights on the 4-bit
grid (`sparse + int4`; the zeros stay zeros), `X.weight_scale` (float32, one per output channel),
`X.weight_bits` and the layer's input-quantizer buffers beside each weight. `--lowbit-only` measures
only those beside dense fp32.

`--nm` adds a table of N:M sparsity: every conv/linear weight but the `--nm-keep-dense` ones (the stem)
pruned to each pattern by `apply_nm_pruning`, in fp32 and on the int8 grid, each saved with the N:M
encodings (per group the N kept values and their packed in-group indices) and with them turned off
(`nm_coding=False`: a bitmask over the same masks), plain and zstd-coded; bytes against dense fp32 and
against the bitmask of the same masks. `--nm-only` prints only that table.
"""
from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import timm
import torch
from safetensors import safe_open
from torch import nn
from zoo.compress import entropy
from zoo.compress.checkpoint import (
    METAS_KEY,
    WEIGHTS_FILE,
    checkpoint_bytes,
    load_checkpoint,
    save_checkpoint,
)
from zoo.compress.formats import (
    compress_state_dict,
    decompress_state_dict,
    metas_from_json,
)
from zoo.compress.lowbit_ptq import apply_lowbit_ptq
from zoo.compress.nm import apply_nm_pruning
from zoo.compress.pruning import apply_magnitude_pruning, prunable_weights
from zoo.compress.quantization import dequantize_per_channel, quantize_per_channel
from zoo.evaluate.machine import current_machine

TARGETS = {"dense fp32": None, "sparse fp32": 0.105, "int8": 0.27, "sparse + int8": 0.04,
           "int4": 0.14, "int2": 0.075, "sparse + int4": 0.05}
MIN_DECODE_GBPS = 1.0  # dense output per second, entropy-coded variants


def sparse_model(model: nn.Module, sparsity: float) -> nn.Module:
    """The zoo's one-shot global magnitude pruning, on a copy of `model`."""
    pruned = copy.deepcopy(model)
    apply_magnitude_pruning(pruned, sparsity, scope="global")
    return pruned


def sparse_state_dict(model: nn.Module, sparsity: float) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in sparse_model(model, sparsity).state_dict().items()}


def int8_grid(sd: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
    """The zoo's per-channel symmetric int8 weights (what Int8PTQConfig stores), `X.weight_scale` beside."""
    out = dict(sd)
    for key in names:
        q, scale = quantize_per_channel(sd[key])
        out[key] = dequantize_per_channel(q, scale)
        out[key + "_scale"] = scale
    return out


def lowbit_grid(model: nn.Module, bits: int) -> dict[str, torch.Tensor]:
    """The state dict of a copy of `model` after the zoo's low-bit post-training quantization
    (`apply_lowbit_ptq`, round-to-nearest, per output channel, symmetric, least-error clipped ranges: what
    the default `_w4` / `_w2` recipes store, GPTQ aside, which changes the codes, not their number) of
    every conv/linear weight: the weight on its grid, `X.weight_scale` and `X.weight_bits` beside it."""
    quantized = copy.deepcopy(model)
    apply_lowbit_ptq(quantized, (), bits_w=bits, granularity="channel", group_size=0, rounding="nearest",
                     weight_range="mse")
    return {k: v.detach().clone() for k, v in quantized.state_dict().items()}


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


def measure(folder: Path, sd: dict[str, torch.Tensor], repeats: int) -> tuple[int, float, float, bool, str]:
    """(bytes on disk, decode seconds, load_checkpoint seconds, bit-exact, encodings used)."""
    with safe_open(str(folder / WEIGHTS_FILE), framework="pt") as f:
        stored = f.get_tensors()
        metas = metas_from_json(f.metadata()[METAS_KEY])
    restored, _ = load_checkpoint(folder)
    exact = list(restored) == list(sd) and all(bit_equal(restored[k], sd[k]) for k in sd)
    counts: dict[str, int] = {}
    for meta in metas.values():
        counts[meta.encoding.value] = counts.get(meta.encoding.value, 0) + 1
    used = ", ".join(f"{n} {e}" for e, n in sorted(counts.items(), key=lambda kv: -kv[1]))
    return (checkpoint_bytes(folder), best_time(lambda: decompress_state_dict(stored, metas), repeats),
            best_time(lambda: load_checkpoint(folder), repeats), exact, used)


def nm_state_dict(model: nn.Module, n: int, m: int, keep_dense: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The zoo's one-shot N:M magnitude pruning, on a copy of `model`."""
    pruned = copy.deepcopy(model)
    apply_nm_pruning(pruned, n, m, keep_dense=keep_dense)
    return {k: v.detach().clone() for k, v in pruned.state_dict().items()}


def nm_table(model: nn.Module, patterns: list[tuple[int, int]], keep_dense: tuple[str, ...], dense_bytes: int,
             config: dict, repeats: int) -> None:
    """Bytes of N:M checkpoints: the N:M encodings against a bitmask over the same masks, plain and zstd."""
    names = [f"{name}.weight" for name in prunable_weights(model, keep_dense)]
    print(f"\nN:M: {len(names)} conv/linear weights pruned to N:M along the input channels by `apply_nm_pruning` "
          f"(kept dense: {', '.join(keep_dense) or 'none'}); layout \"N:M\": the N:M encodings, \"bitmask\": "
          "`nm_coding=False`, a bitmask over the same masks.\n")
    print("| pattern | weights | coding | layout | bytes on disk | ratio to dense fp32 | N:M / bitmask | "
          "decode (s) | load_checkpoint (s) | round trip bit-exact | tensors by encoding |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for n, m in patterns:
            fp32 = nm_state_dict(model, n, m, keep_dense)
            for weights, sd in (("fp32", fp32), ("int8", int8_grid(fp32, names))):
                for coding in ("plain", "zstd"):
                    rows = {}
                    for layout in ("N:M", "bitmask"):
                        folder = Path(tmp) / f"{n}-{m}-{weights}-{coding}-{layout.replace(':', '')}"
                        save_checkpoint(folder, sd, config=config, entropy_coding=coding == "zstd",
                                        nm_coding=layout == "N:M")
                        rows[layout] = measure(folder, sd, repeats)
                    relative = rows["N:M"][0] / rows["bitmask"][0]
                    for layout, (size, decode_s, load_s, exact, used) in rows.items():
                        print(f"| {n}:{m} | {weights} | {coding} | {layout} | {size:,} | {size / dense_bytes:.3f}x | "
                              f"{f'{relative:.3f}x' if layout == 'N:M' else '-'} | {decode_s:.3f} | {load_s:.3f} | "
                              f"{'yes' if exact else 'NO'} | {used} |")


def level_sweep(variants: dict[str, dict[str, torch.Tensor]], levels: list[int], repeats: int) -> None:
    """Bytes, encode and decode time of the sparse variants' entropy-coded parts at each zstd level."""
    print("\n| zstd level | variant | entropy-coded bytes | encode (s) | decode (s) |\n|---:|---|---:|---:|---:|")
    default = entropy.ZSTD_LEVEL
    try:
        for level in levels:
            entropy.ZSTD_LEVEL = level
            for label in ("sparse fp32", "sparse + int8"):
                sd = variants[label]
                start = time.perf_counter()
                stored, metas = compress_state_dict(sd)
                encode_s = time.perf_counter() - start
                coded = sum(t.numel() for k, t in stored.items() if metas.get(k.rsplit(".", 1)[0]) is not None
                            and metas[k.rsplit(".", 1)[0]].codec.entropy)
                decode_s = best_time(lambda stored=stored, metas=metas: decompress_state_dict(stored, metas), repeats)
                print(f"| {level} | {label} | {coded:,} | {encode_s:.2f} | {decode_s:.3f} |")
    finally:
        entropy.ZSTD_LEVEL = default


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet50")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--levels", default="", help="comma-separated zstd levels to compare (default: none)")
    parser.add_argument("--nm", default="2:4,1:4", help="comma-separated N:M patterns to measure ('' for none)")
    parser.add_argument("--nm-keep-dense", default="conv1",
                        help="comma-separated module-name patterns left dense by N:M pruning (the stem)")
    parser.add_argument("--nm-only", action="store_true", help="print only the N:M table")
    parser.add_argument("--lowbit-only", action="store_true",
                        help="measure only dense fp32 and the low-bit variants (int4, int2, sparse + int4)")
    args = parser.parse_args(argv)
    patterns = [tuple(int(v) for v in p.split(":")) for p in args.nm.split(",") if p]
    if any(len(p) != 2 for p in patterns):
        parser.error(f"--nm takes N:M patterns such as 2:4,1:4, got {args.nm!r}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    torch.manual_seed(0)
    model = timm.create_model(args.arch, pretrained=False)
    dense = {k: v.detach().clone() for k, v in model.state_dict().items()}
    names = [f"{name}.weight" for name in prunable_weights(model)]
    variants = {"dense fp32": dense}
    if not args.nm_only:
        sparse = sparse_state_dict(model, args.sparsity)
        if not args.lowbit_only:
            variants.update({"sparse fp32": sparse, "int8": int8_grid(dense, names),
                             "sparse + int8": int8_grid(sparse, names)})
        variants.update({"int4": lowbit_grid(model, 4), "int2": lowbit_grid(model, 2),
                         "sparse + int4": lowbit_grid(sparse_model(model, args.sparsity), 4)})
    n_params = sum(p.numel() for p in model.parameters())
    dense_output = sum(t.numel() * t.element_size() for t in dense.values())
    config = {
        "name": f"{args.arch}-bench", "base_model": args.arch, "arch": args.arch, "model_kwargs": {}, "recipe": None,
    }

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, sd in variants.items():
            for coding in ("plain", "zstd") if not args.nm_only else ("plain",):
                folder = Path(tmp) / f"{label.replace(' ', '_')}-{coding}"
                # plain: the version-1 encodings, what the previous format wrote
                save_checkpoint(folder, sd, config=config, entropy_coding=coding == "zstd")
                rows.append((label, coding, *measure(folder, sd, args.repeats)))

    dense_bytes = rows[0][2]
    threads = "" if args.threads is None else f" --threads {args.threads}"
    cpu = current_machine().cpu
    nm_args = f" --nm {args.nm} --nm-keep-dense {args.nm_keep_dense}{' --nm-only' if args.nm_only else ''}"
    nm_args += " --lowbit-only" if args.lowbit_only else ""
    print(f"Command: `python benchmarks/bench_checkpoint_size.py --arch {args.arch} --sparsity {args.sparsity}"
          f" --repeats {args.repeats}{threads}{nm_args}`  ")
    print(f"Model: timm `{args.arch}` random init, {n_params / 1e6:.1f}M parameters; {len(names)} conv/linear "
          f"weights pruned globally by magnitude to {args.sparsity:.0%} and/or put on a per-channel int8 grid.  ")
    print(f"Machine: {cpu}, {torch.get_num_threads()} torch threads, Python {sys.version.split()[0]}, torch "
          f"{torch.__version__}, zstd level {entropy.ZSTD_LEVEL}; times are the best of {args.repeats}.")
    print(f"Dense fp32 (plain): {dense_bytes:,} bytes.\n")
    if not args.nm_only:
        variants_table(rows, dense_bytes, dense_output)
        if args.levels and not args.lowbit_only:
            level_sweep(variants, [int(x) for x in args.levels.split(",")], args.repeats)
    if patterns:
        keep_dense = tuple(p for p in args.nm_keep_dense.split(",") if p)
        nm_table(model, patterns, keep_dense, dense_bytes, config, args.repeats)


def variants_table(rows: list[tuple], dense_bytes: int, dense_output: int) -> None:
    """The dense/sparse/int8 variants, plain and zstd-coded."""
    print("| variant | encodings | bytes on disk | ratio to dense | target | decode (s) | decode GB/s of dense "
          "output | load_checkpoint (s) | round trip bit-exact | tensors by encoding |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|---|")
    for label, coding, size, decode_s, load_s, exact, used in rows:
        target = TARGETS[label]
        ratio = size / dense_bytes
        mark = "-" if target is None or coding == "plain" else f"<= {target}x ({'met' if ratio <= target else 'MISSED'})"
        speed = dense_output / decode_s / 1e9
        print(f"| {label} | {coding} | {size:,} | {ratio:.3f}x | {mark} | {decode_s:.3f} | {speed:.1f} | "
              f"{load_s:.3f} | {'yes' if exact else 'NO'} | {used} |")
    slow = [f"{r[0]} ({dense_output / r[3] / 1e9:.2f} GB/s)" for r in rows
            if r[1] == "zstd" and dense_output / r[3] / 1e9 < MIN_DECODE_GBPS]
    print(f"\nDecode >= {MIN_DECODE_GBPS} GB/s of dense output for every entropy-coded variant: "
          f"{'met' if not slow else 'MISSED: ' + ', '.join(slow)}")


if __name__ == "__main__":
    main()
