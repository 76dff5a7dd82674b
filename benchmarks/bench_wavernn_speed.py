"""Generation speed of the zoo's WaveRNNs on this CPU, side by side: the dense base, its Sparse WaveRNN
variant (16x1 blocks of the recurrent matrix pruned, the zoo's default recipe) and the Subscale WaveRNN
(16 samples per step). Models come from `zoo.load` (trained, or derived, and cached on first use).

Each model generates the same held-out mel frames (sampling, seed 0) `--repeats` times, the models
taking turns so that a change in machine load hits all of them alike; the median is reported as
samples per second at batch 1 and as the real-time factor (seconds of compute per second of audio;
below 1 is faster than real time). Pruned blocks are still multiplied: torch's dense kernels do not
skip zeros, so sparsity alone cannot be faster here.

    python benchmarks/bench_wavernn_speed.py --sparsity 0.9 --frames 16 --repeats 5
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

import zoo
from zoo.data import dataset
from zoo.entry import DataSpec

MODELS = ("wavernn.zoo_espeak", "wavernn_subscale.zoo_espeak")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sparsity", type=float, default=0.9, help="sparsity of the Sparse WaveRNN variant")
    parser.add_argument("--frames", type=int, default=16, help="mel frames generated per run (at most the eval clip's)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
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


def seconds_to_generate(model: torch.nn.Module, mel: torch.Tensor) -> float:
    start = time.perf_counter()
    with torch.no_grad():
        model.generate(mel, generator=torch.Generator().manual_seed(0))
    return time.perf_counter() - start


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    loaded = [zoo.load(MODELS[0]), zoo.load(MODELS[0], sparsity=args.sparsity), zoo.load(MODELS[1])]
    models = {model.zoo.name: model for model in loaded}
    entry = zoo.get_entry(MODELS[0])
    mel = held_out_mel(entry, args.frames)
    samples = args.frames * entry.input.hop
    audio_seconds = samples / entry.input.sample_rate
    for model in models.values():
        seconds_to_generate(model, mel[..., : 2 + 2 * entry.input.mel_pad])  # warm-up
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.repeats):
        for name, model in models.items():
            times[name].append(seconds_to_generate(model, mel))
    dense = statistics.median(times[MODELS[0]])
    print(f"{samples} samples ({audio_seconds:.2f} s of audio), {args.threads} thread(s), median of {args.repeats}")
    print("| model | samples/s | real-time factor | vs dense |\n|---|---:|---:|---:|")
    for name, runs in times.items():
        seconds = statistics.median(runs)
        print(f"| {name} | {samples / seconds:,.0f} | {seconds / audio_seconds:.2f} | {dense / seconds:.2f}x |")


if __name__ == "__main__":
    main()
