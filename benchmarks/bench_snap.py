"""SnAp-1 and SnAp-2 against truncated BPTT, online, on a 90 %-sparse GRU (Menick et al., ICLR 2021).

Task: character-level language modelling of real English, the ~465k characters of Python's own
documentation (`pydoc_data.topics`, shipped with CPython), lower-cased to 26 letters, space, '.' and
',' (anything else becomes a space). `--streams` streams read the text from evenly spaced offsets; at
every step each predicts its next character. The loss reported is the online (prequential) one: each
prediction is scored before the update that uses it, so the curve is what the learner achieved online.

Model: the WaveRNN's GRU cell (`zoo.online.GRUCell`, one-hot characters in) with `--hidden` units, its
recurrent matrix pruned once at random to `--sparsity` (unstructured, fixed: the SnAp paper's setting),
and a linear softmax readout.

- SnAp-1 / SnAp-2: `zoo.online.SnApTracker` tracks the recurrent and input weights and biases; the
  readout gets its immediate gradient; every parameter is updated every step (fully online).
- BPTT: the same model, backpropagation truncated to `--truncation` steps, updated every `--truncation`
  steps (the state carries over between chunks), with the mean loss of the chunk.

One Adam learning rate for all methods, tuned lightly: each of `--lrs` is run for `--tune-steps` steps
on seed 0 by every method, and the rate with the lowest loss over the last half of those steps,
averaged over the methods, is used for the `--seeds` full runs. Wall time per step is the training loop's
(forward, influence update or backward, optimizer), one torch thread.

`--cost-hidden` widths also get the cost of the gradient computation alone per step (SnAp's influence
update and accumulation; BPTT's forward and backward), the paper's "SnAp-1 costs about a BPTT step".

    python benchmarks/bench_snap.py --hidden 64 --steps 3000 --seeds 0 1 2 --plot snap_curves.png --out snap.json
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from zoo.online import GRUCell, SnApTracker

ALPHABET = "abcdefghijklmnopqrstuvwxyz .,"
METHODS = ("snap1", "snap2", "bptt")


def corpus() -> torch.Tensor:
    """Python's documentation as indices into ALPHABET."""
    import pydoc_data.topics

    text = " ".join(pydoc_data.topics.topics[key] for key in sorted(pydoc_data.topics.topics)).lower()
    index = {c: i for i, c in enumerate(ALPHABET)}
    out, last_space = [], True
    for c in text:
        i = index.get(c, index[" "])
        if i == index[" "] and last_space:
            continue
        out.append(i)
        last_space = i == index[" "]
    return torch.tensor(out)


class CharGRU(nn.Module):
    def __init__(self, hidden: int, sparsity: float, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.cell = GRUCell(len(ALPHABET), hidden)
        self.readout = nn.Linear(hidden, len(ALPHABET))
        self.mask = torch.rand(self.cell.recurrent.weight.shape) >= sparsity
        with torch.no_grad():
            self.cell.recurrent.weight.mul_(self.mask)


def batch_at(text: torch.Tensor, offsets: torch.Tensor, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One-hot inputs [streams, V] and next-character targets [streams] of every stream at `step`."""
    position = (offsets + step) % (len(text) - 1)
    return F.one_hot(text[position], len(ALPHABET)).float(), text[position + 1]


def run(method: str, *, text: torch.Tensor, hidden: int, sparsity: float, seed: int, steps: int, lr: float,
        streams: int, truncation: int) -> tuple[list[float], float]:
    """Online losses (bits per character, one per step) and seconds per step."""
    model = CharGRU(hidden, sparsity, seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    offsets = torch.arange(streams) * (len(text) // streams)
    losses = []
    start = time.perf_counter()
    if method == "bptt":
        h = torch.zeros(streams, hidden)
        for chunk in range(0, steps, truncation):
            h = h.detach()
            total = torch.zeros(())
            for step in range(chunk, min(steps, chunk + truncation)):
                x, y = batch_at(text, offsets, step)
                h = model.cell(x, h)
                loss = F.cross_entropy(model.readout(h), y)
                total = total + loss
                losses.append(float(loss.detach()) / math.log(2))
            opt.zero_grad()
            (total / min(truncation, steps - chunk)).backward()
            model.cell.recurrent.weight.grad.mul_(model.mask)  # BPTT's gradient reaches pruned weights
            opt.step()
    else:
        cell = model.cell
        tracker = SnApTracker(cell.recurrent.weight, cell.recurrent.bias, input_weight=cell.input.weight,
                              input_bias=cell.input.bias, mask=model.mask, n=1 if method == "snap1" else 2,
                              batch=streams)
        for step in range(steps):
            x, y = batch_at(text, offsets, step)
            h = tracker.step(x=x).requires_grad_()
            loss = F.cross_entropy(model.readout(h), y)
            opt.zero_grad()
            loss.backward()
            tracker.accumulate(h.grad)
            tracker.write_grads()
            opt.step()
            tracker.zero_grad()
            losses.append(float(loss.detach()) / math.log(2))
    seconds = (time.perf_counter() - start) / steps
    if bool((model.cell.recurrent.weight.detach()[~model.mask] != 0).any()):
        raise RuntimeError(f"{method}: a pruned weight moved")
    return losses, seconds


def gradient_cost(hidden: int, *, text: torch.Tensor, sparsity: float, streams: int, truncation: int,
                  steps: int) -> dict[str, float]:
    """Seconds per step of the gradient computation alone (no optimizer, no readout update): SnAp-n's
    step + accumulate, and BPTT's forward and backward over chunks of `truncation` steps."""
    model = CharGRU(hidden, sparsity, seed=0)
    offsets = torch.arange(streams) * (len(text) // streams)
    cell, out = model.cell, {}
    for n in (1, 2):
        tracker = SnApTracker(cell.recurrent.weight, cell.recurrent.bias, input_weight=cell.input.weight,
                              input_bias=cell.input.bias, mask=model.mask, n=n, batch=streams)
        start = time.perf_counter()
        for step in range(steps):
            x, y = batch_at(text, offsets, step)
            h = tracker.step(x=x).requires_grad_()
            (grad_h,) = torch.autograd.grad(F.cross_entropy(model.readout(h), y), h)
            tracker.accumulate(grad_h)
        out[f"snap{n}"] = (time.perf_counter() - start) / steps
        out[f"snap{n}_influence_entries_per_stream"] = tracker.influence_entries
        out["parameters_tracked"] = tracker.p
    h = torch.zeros(streams, hidden)
    start = time.perf_counter()
    for chunk in range(0, steps, truncation):
        h, total = h.detach(), torch.zeros(())
        for step in range(chunk, min(steps, chunk + truncation)):
            x, y = batch_at(text, offsets, step)
            h = cell(x, h)
            total = total + F.cross_entropy(model.readout(h), y)
        total.backward()
    out["bptt"] = (time.perf_counter() - start) / steps
    return out


def windows(losses: list[float], width: int) -> list[float]:
    return [statistics.fmean(losses[i: i + width]) for i in range(0, len(losses) - width + 1, width)]


def plot(results: dict, width: int, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2))
    for method, runs in results.items():
        curves = torch.tensor([windows(r["losses"], width) for r in runs])
        x = [(i + 1) * width for i in range(curves.shape[1])]
        mean, spread = curves.mean(0), curves.std(0) if len(runs) > 1 else torch.zeros(curves.shape[1])
        ax.plot(x, mean, label=f"{method} ({statistics.fmean(r['seconds'] for r in runs) * 1e3:.1f} ms/step)")
        ax.fill_between(x, mean - spread, mean + spread, alpha=0.2)
    ax.set_xlabel("online step (one character per stream)")
    ax.set_ylabel(f"online loss, bits/char (mean of {width} steps)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--streams", type=int, default=8)
    parser.add_argument("--truncation", type=int, default=16, help="BPTT's truncation and update interval")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2])
    parser.add_argument("--tune-steps", type=int, default=600)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--window", type=int, default=250, help="steps per point of the curves and table")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cost-hidden", type=int, nargs="*", default=[64, 128],
                        help="widths at which the gradient computation alone is timed")
    parser.add_argument("--cost-steps", type=int, default=200)
    parser.add_argument("--plot", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    text = corpus()
    common = dict(text=text, hidden=args.hidden, sparsity=args.sparsity, streams=args.streams,
                  truncation=args.truncation)
    costs = {}
    for hidden in args.cost_hidden:
        costs[hidden] = gradient_cost(hidden, text=text, sparsity=args.sparsity, streams=args.streams,
                                      truncation=args.truncation, steps=args.cost_steps)
        c = costs[hidden]
        print(f"gradient cost k={hidden} (p={c['parameters_tracked']}): snap1 {c['snap1'] * 1e3:.2f} ms/step "
              f"({c['snap1'] / c['bptt']:.1f}x BPTT), snap2 {c['snap2'] * 1e3:.2f} ms/step "
              f"({c['snap2'] / c['bptt']:.1f}x BPTT), bptt {c['bptt'] * 1e3:.2f} ms/step; J entries per stream "
              f"snap1 {c['snap1_influence_entries_per_stream']}, snap2 {c['snap2_influence_entries_per_stream']}",
              flush=True)
    tuning = {}
    for lr in args.lrs:
        tail = [statistics.fmean(run(m, seed=0, steps=args.tune_steps, lr=lr, **common)[0][args.tune_steps // 2:])
                for m in args.methods]
        tuning[lr] = tail
        print(f"tune lr={lr:g}: " + ", ".join(f"{m} {v:.3f}" for m, v in zip(args.methods, tail)), flush=True)
    lr = min(tuning, key=lambda k: statistics.fmean(tuning[k]))
    print(f"lr = {lr:g} for every method", flush=True)
    results: dict[str, list[dict]] = {m: [] for m in args.methods}
    for seed in args.seeds:
        for method in args.methods:
            losses, seconds = run(method, seed=seed, steps=args.steps, lr=lr, **common)
            results[method].append({"seed": seed, "losses": losses, "seconds": seconds})
            print(f"seed {seed} {method}: last {args.window} steps {statistics.fmean(losses[-args.window:]):.3f} "
                  f"bits/char, {seconds * 1e3:.2f} ms/step", flush=True)
    points = len(windows(results[args.methods[0]][0]["losses"], args.window))
    shown = sorted({0, points // 4, points // 2, points - 1})
    header = "| method | ms/step | " + " | ".join(f"steps {i * args.window}-{(i + 1) * args.window}" for i in shown)
    print(f"\n{len(args.seeds)} seeds, mean ± std of the online loss in bits/char")
    print(header + " | mean over all steps |")
    print("|---" * (len(shown) + 3) + "|")
    for method, runs in results.items():
        curves = torch.tensor([windows(r["losses"], args.window) for r in runs])
        overall = torch.tensor([statistics.fmean(r["losses"]) for r in runs])
        cells = [f"{float(curves[:, i].mean()):.3f} ± {float(curves[:, i].std(correction=0)):.3f}" for i in shown]
        ms = statistics.fmean(r["seconds"] for r in runs) * 1e3
        print(f"| {method} | {ms:.2f} | " + " | ".join(cells)
              + f" | {float(overall.mean()):.3f} ± {float(overall.std(correction=0)):.3f} |")
    title = (f"GRU k={args.hidden}, {args.sparsity:.0%} sparse recurrent, {args.streams} streams, Adam lr {lr:g}, "
             f"BPTT truncation {args.truncation}; {len(args.seeds)} seeds")
    if args.plot:
        plot(results, args.window, args.plot, title)
    if args.out:
        args.out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "lr": lr,
                                        "tuning": tuning, "gradient_cost": costs,
                                        "results": results}))


if __name__ == "__main__":
    main()
