"""Generation speed of WaveRNNs on this CPU, side by side, one thread by default: the dense WaveRNN in
`model.generate`'s eager loop and in the compiled loop (`zoo.families.wavernn.compiled`, TorchScript,
the same samples), and its Sparse WaveRNN variants (16x1 blocks of the recurrent matrix pruned) in the
compiled loop with the recurrent kernel `use_sparse_kernels` measures fastest here, and with each sparse
format forced; the Subscale WaveRNN (16 samples per step, eager loop) for reference.

Models come from `zoo.load` (trained, or derived by the zoo's GMP recipe, and cached on first use), or
with `--random-weights` are built untrained at any `--hidden` width and pruned to random 16x1 block
masks: generation costs the same whatever the weights, so this measures kernels without training.

Every model generates the same mel frames (sampling, seed 0) `--repeats` times, the models taking turns
so that a change in machine load hits all of them alike; the median is reported as samples per second at
batch 1 and as the real-time factor (seconds of compute per second of audio; below 1 is faster than
real time), and relative to the dense model in the compiled loop.

    python benchmarks/bench_wavernn_speed.py --sparsity 0.9 0.95 --frames 16 --repeats 5
    python benchmarks/bench_wavernn_speed.py --random-weights --hidden 128 512 --sparsity 0.9 0.95
"""
from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
from zoo.compress.sparse_kernels import DENSE, FORMATS, SparseLinear, use_sparse_kernels

import zoo
from zoo.data import dataset
from zoo.entry import DataSpec
from zoo.families.wavernn.compiled import generate_compiled
from zoo.families.wavernn.model import SILENCE, WaveRNN
from zoo.tasks import task_of

MODELS = ("wavernn.zoo_espeak", "wavernn_subscale.zoo_espeak")
BLOCK = 16  # Sparse WaveRNN's 16x1 blocks
KERNEL_TIMES: list[str] = []  # what use_sparse_kernels measured, printed under the table


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sparsity", type=float, nargs="+", default=[0.9, 0.95], help="Sparse WaveRNN sparsities")
    parser.add_argument("--frames", type=int, default=16, help="mel frames generated per run (at most the eval clip's)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--random-weights", action="store_true", help="untrained models, random block masks")
    parser.add_argument("--hidden", type=int, nargs="+", default=[128], help="widths (with --random-weights)")
    return parser.parse_args()


def held_out_mel(entry: zoo.entry.ModelEntry, frames: int) -> torch.Tensor:
    """The first held-out clip's mel frames (with the model's padding on each side), batch 1."""
    data = dataset(DataSpec(entry.eval_data.name, "test"), entry)
    mel, _ = next(iter(data.clips()))
    needed = frames + 2 * entry.input.mel_pad
    if mel.shape[-1] < needed:
        raise SystemExit(f"the first test clip has {mel.shape[-1]} frames; ask for at most "
                         f"{mel.shape[-1] - 2 * entry.input.mel_pad}")
    return mel[None, :, :needed]


def random_block_sparse(model: WaveRNN, sparsity: float, seed: int = 0) -> WaveRNN:
    """A copy of `model` with its recurrent matrix zero outside a random `sparsity` of 16x1 blocks."""
    pruned = copy.deepcopy(model)
    weight = pruned.recurrent.weight
    blocks = weight.shape[0] // BLOCK, weight.shape[1]
    keep = torch.rand(blocks, generator=torch.Generator().manual_seed(seed)) >= sparsity
    with torch.no_grad():
        weight.mul_(keep[:, None, :].expand(-1, BLOCK, -1).reshape(weight.shape))
    return pruned


def with_recurrent(model: WaveRNN, layout: str) -> WaveRNN:
    """A copy of `model` with its recurrent layer in `layout` (forced, not measured)."""
    forced = copy.deepcopy(model)
    if layout != DENSE:
        forced.recurrent = SparseLinear.from_dense(model.recurrent, layout)
    return forced


Runner = Callable[[torch.Tensor], torch.Tensor]


def contenders(dense: WaveRNN, sparse: dict[float, WaveRNN], example: tuple, label: str) -> dict[str, Runner]:
    """Name -> generate function, for one width."""
    seed = lambda: torch.Generator().manual_seed(0)
    runs: dict[str, Runner] = {
        f"{label} dense, eager loop": lambda mel: dense.generate(mel, generator=seed()),
        f"{label} dense, compiled loop": lambda mel: generate_compiled(dense, mel, generator=seed()),
    }
    for sparsity, model in sparse.items():
        chosen = copy.deepcopy(model)
        choice = use_sparse_kernels(chosen, example).get("recurrent")
        layout = choice.layout if choice else DENSE
        if choice:
            KERNEL_TIMES.append(f"{label} {sparsity:.0%}: recurrent product, µs per call: "
                                + ", ".join(f"{k} {1e6 * s:.1f}" for k, s in sorted(choice.seconds.items())))
        runs[f"{label} {sparsity:.0%} blocks, compiled, measured choice: {layout}"] = (
            lambda mel, m=chosen: generate_compiled(m, mel, generator=seed()))
        for forced in FORMATS:
            forced_model = with_recurrent(model, forced)
            runs[f"{label} {sparsity:.0%} blocks, compiled, {forced} forced"] = (
                lambda mel, m=forced_model: generate_compiled(m, mel, generator=seed()))
    return runs


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    entry = zoo.get_entry(MODELS[0])
    if args.random_weights:
        mel = torch.randn(1, entry.input.n_mels, args.frames + 2 * entry.input.mel_pad)
    else:
        mel = held_out_mel(entry, args.frames)
    example = (torch.full((1, entry.input.n_mels, 1 + 2 * entry.input.mel_pad), -5.0),
               torch.full((1, entry.input.hop), SILENCE, dtype=torch.long))
    runs: dict[str, Runner] = {}
    if args.random_weights:
        for hidden in args.hidden:
            torch.manual_seed(hidden)
            dense = WaveRNN(n_mels=entry.input.n_mels, hop=entry.input.hop, mel_pad=entry.input.mel_pad,
                            **{**entry.model_kwargs, "hidden": hidden}).eval()
            sparse = {s: random_block_sparse(dense, s) for s in args.sparsity}
            runs.update(contenders(dense, sparse, example, f"hidden {hidden} (random),"))
    else:
        example = task_of(entry).example_input(entry)
        dense = zoo.load(MODELS[0])
        sparse = {s: zoo.load(MODELS[0], sparsity=s) for s in args.sparsity}
        runs.update(contenders(dense, sparse, example, f"{MODELS[0]},"))
        subscale = zoo.load(MODELS[1])
        runs[f"{MODELS[1]}, eager loop"] = lambda m: subscale.generate(m, generator=torch.Generator().manual_seed(0))
    samples = args.frames * entry.input.hop
    audio_seconds = samples / entry.input.sample_rate
    for run in runs.values():
        run(mel[..., : 2 + 2 * entry.input.mel_pad])  # warm-up (and TorchScript's compile)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run(mel)
            times[name].append(time.perf_counter() - start)
    print(f"{samples} samples ({audio_seconds:.2f} s of audio at {entry.input.sample_rate} Hz), "
          f"{args.threads} thread(s), median of {args.repeats}; torch {torch.__version__}")
    print("| model, loop, recurrent kernel | samples/s | real-time factor | vs dense compiled |\n|---|---:|---:|---:|")
    reference = {name.split(",")[0]: statistics.median(t) for name, t in times.items() if "dense, compiled" in name}
    for name, runs_seconds in times.items():
        seconds = statistics.median(runs_seconds)
        dense = reference.get(name.split(",")[0], reference.get(f"{MODELS[0]}"))
        ratio = f"{dense / seconds:.2f}x" if dense else ""
        print(f"| {name} | {samples / seconds:,.0f} | {seconds / audio_seconds:.2f} | {ratio} |")
    print("\n".join(KERNEL_TIMES))


if __name__ == "__main__":
    main()
