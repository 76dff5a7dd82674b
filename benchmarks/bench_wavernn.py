"""Sparse WaveRNN at small scale: at an equal number of non-zero recurrent weights, does a larger
block-sparse WaveRNN reach a lower NLL than a smaller dense one? And how fast do dense, sparse and
subscale WaveRNNs generate on this CPU?

Each model trains for the same number of steps on the `espeak` training split (AdamW, warm-up +
cosine); the sparse ones are block-pruned along the cubic schedule while they train (recurrent matrix
only, as in the paper), from 10 % to 60 % of the steps. A dense model of N units has 3N^2 recurrent
weights; one of N * f units at sparsity 1 - 1/f^2 has as many non-zeros. NLL is teacher-forced bits
per sample on held-out windows. Generation speed: samples per second at batch 1 and the real-time
factor (seconds of compute per second of 16 kHz audio; < 1 is faster than real time), torch on
`--threads` threads; pruned weights are still multiplied (dense kernels), so sparsity is not faster here.

    python benchmarks/bench_wavernn.py --hidden 32 --factors 2 4 --steps 150 --block 16 1
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time

import torch

from zoo.compress.block import apply_gradual_block_pruning
from zoo.compress.recipe import RecipeContext
from zoo.data import Batches
from zoo.families.wavernn.data import speech_windows
from zoo.families.wavernn.model import WaveRNN
from zoo.families.wavernn.task import nll_nats
from zoo.models import get_entry
from zoo.training import train


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=32, help="units of the dense model")
    parser.add_argument("--factors", type=int, nargs="+", default=[2, 4], help="width multiples of the sparse models")
    parser.add_argument("--block", type=int, nargs=2, default=[16, 1], help="block (rows, cols)")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--segment-frames", type=int, default=2)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--eval-windows", type=int, default=96)
    parser.add_argument("--gen-seconds", type=float, default=0.25)
    parser.add_argument("--subscale", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    return parser.parse_args()


def fixed_batches(data, batch: int, steps: int, seed: int = 0) -> list:
    """The first `steps` batches of shuffled epochs over `data`, the same for every model."""
    out: list = []
    epoch = 0
    while len(out) < steps:
        out.extend(list(Batches(data, batch_size=batch, shuffle=True, seed=seed).epoch(epoch))[: steps - len(out)])
        epoch += 1
    return out


@torch.no_grad()
def bits_per_sample(model: torch.nn.Module, windows: list) -> float:
    model.eval()
    total = sum(float(nll_nats(model, mel[None], x[None], reduction="sum")) for mel, x in windows)
    return total / sum(x.numel() for _, x in windows) / math.log(2.0)


def generation_speed(model: WaveRNN, mel: torch.Tensor, sample_rate: int) -> tuple[float, float]:
    model.eval()
    model.generate(mel[..., : 1 + 2 * model.mel_pad])  # warm-up
    start = time.perf_counter()
    samples = model.generate(mel, generator=torch.Generator().manual_seed(0))
    seconds = time.perf_counter() - start
    return samples.numel() / seconds, seconds / (samples.numel() / sample_rate)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    entry = get_entry("wavernn.zoo_espeak")
    spec = dataclasses.replace(entry.input, segment_frames=args.segment_frames)
    train_data, test_data = speech_windows("espeak", "train", spec), speech_windows("espeak", "test", spec)
    batches = fixed_batches(train_data, args.batch, args.steps)
    stride = max(1, len(test_data) // args.eval_windows)
    held_out = [test_data[i] for i in range(0, len(test_data), stride)][: args.eval_windows]
    loss = lambda model, batch: nll_nats(model, *batch)  # noqa: E731
    block = tuple(args.block)
    rows, models = [], {}
    for factor in [1, *args.factors]:
        hidden, sparsity = args.hidden * factor, 1.0 - 1.0 / factor ** 2
        torch.manual_seed(0)
        model = WaveRNN(n_mels=spec.n_mels, hop=spec.hop, mel_pad=spec.mel_pad, hidden=hidden)
        start = time.perf_counter()
        if factor == 1:
            train(model, lambda e: batches, loss, epochs=1, lr=args.lr, weight_decay=0.0, optimizer="adamw",
                  progress=False)
        else:
            context = RecipeContext(train_batches=lambda e: batches, loss_fn=loss, progress=False)
            apply_gradual_block_pruning(model, context, final_sparsity=sparsity, epochs=1, lr=args.lr, block=block,
                                        begin_fraction=0.1, end_fraction=0.6, frequency=5, layers=("recurrent",),
                                        weight_decay=0.0, optimizer="adamw")
        seconds = time.perf_counter() - start
        recurrent = model.recurrent.weight
        row = {"hidden": hidden, "sparsity": round(sparsity, 4), "block": list(block) if factor > 1 else None,
               "recurrent_nonzero": int(torch.count_nonzero(recurrent)), "recurrent_total": recurrent.numel(),
               "params_nonzero": sum(int(torch.count_nonzero(p)) for p in model.parameters()),
               "bits_per_sample": bits_per_sample(model, held_out), "train_seconds": round(seconds, 1)}
        rows.append(row)
        models[hidden] = model
        print(json.dumps(row), flush=True)
    mel = test_data.clips()[0][0][None]
    frames = max(1, round(args.gen_seconds * spec.sample_rate / spec.hop))
    mel = mel[..., : frames + 2 * spec.mel_pad]
    speed = []
    widest = rows[-1]
    for label, model in [("dense", models[args.hidden]),
                         (f"sparse {widest['sparsity']:.1%}", models[widest["hidden"]])]:
        rate, rtf = generation_speed(model, mel, spec.sample_rate)
        speed.append({"model": label, "hidden": model.hidden, "samples_per_s": round(rate), "rtf": round(rtf, 2)})
        print(json.dumps(speed[-1]), flush=True)
    for hidden in sorted({args.hidden, rows[-1]["hidden"]}):
        torch.manual_seed(0)
        subscale = WaveRNN(n_mels=spec.n_mels, hop=spec.hop, mel_pad=spec.mel_pad, hidden=hidden,
                           subscale=args.subscale)
        rate, rtf = generation_speed(subscale, mel, spec.sample_rate)
        speed.append({"model": f"subscale B={args.subscale} (untrained)", "hidden": hidden,
                      "samples_per_s": round(rate), "rtf": round(rtf, 2)})
        print(json.dumps(speed[-1]), flush=True)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"args": vars(args), "nll": rows, "speed": speed}, handle, indent=2)


if __name__ == "__main__":
    main()
