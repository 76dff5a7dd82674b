"""Generation speed of WaveRNNs on this CPU, side by side, one thread by default: the dense WaveRNN in
`model.generate`'s eager loop and in the fused numba loop (`zoo.families.wavernn.fused`, what the
vocoding task generates with), and its Sparse WaveRNN variants (16x1 blocks of the recurrent matrix
pruned) in the fused loop with the recurrent kernel it measures fastest here and with the block kernel
forced, and in the eager loop with the torch kernel `use_sparse_kernels` measures fastest (and each
forced); the Subscale WaveRNN (16 samples per step, eager loop) for reference. `--fused-only` times only
the fused loop (the wide models' eager loops are slow).

Models come from `zoo.load` (trained, or derived by the zoo's GMP recipe, and cached on first use), or
with `--random-weights` are built untrained at any `--hidden` width and pruned to random 16x1 block
masks: generation costs the same whatever the weights, so this measures kernels without training.

Every model generates the same mel frames (sampling, seed 0) `--repeats` times, the models taking turns
so that a change in machine load hits all of them alike; the median is reported as samples per second at
batch 1 and as the real-time factor (seconds of compute per second of audio; below 1 is faster than
real time), and relative to the dense model of the same width in the same loop; the real-time factor
in this thread's CPU time is printed beside it (on a shared machine the wall time also counts waiting
for a core).

    python benchmarks/bench_wavernn_speed.py --sparsity 0.9 0.95 --frames 16 --repeats 5
    python benchmarks/bench_wavernn_speed.py --random-weights --hidden 128 512 896 --sparsity 0.9 0.95 --fused-only
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
from zoo.families.wavernn import fused
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
    parser.add_argument("--fused-only", action="store_true", help="time the fused loop only")
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
GROUPS: dict[str, tuple[str, str]] = {}  # run name -> (model label, loop): the dense run of a group is its reference


def _add(runs: dict[str, Runner], label: str, variant: str, loop: str, run: Runner, kernel: str = "") -> None:
    name = f"{label} {variant}, {loop}" + (f", {kernel}" if kernel else "")
    runs[name], GROUPS[name] = run, (label, loop)


def contenders(dense: WaveRNN, sparse: dict[float, WaveRNN], example: tuple, label: str,
               fused_only: bool) -> dict[str, Runner]:
    """Name -> generate function, for one width; a name reads '<label> <variant>, <loop>[, <kernel>]'."""
    seed = lambda: torch.Generator().manual_seed(0)
    dense_fused = fused.FusedLoop(dense, DENSE)
    runs: dict[str, Runner] = {}
    _add(runs, label, "dense", "fused loop", lambda mel: dense_fused.generate(mel, generator=seed()))
    if not fused_only:
        _add(runs, label, "dense", "eager loop", lambda mel: dense.generate(mel, generator=seed()))
    for sparsity, model in sparse.items():
        variant = f"{sparsity:.0%} blocks"
        kernel, seconds = fused.recurrent_kernel(model)
        if seconds:
            KERNEL_TIMES.append(f"{label} {sparsity:.0%}: fused loop, µs per {fused.TIMING_STEPS} steps: "
                                + ", ".join(f"{k} {1e6 * s:.1f}" for k, s in sorted(seconds.items())))
        for name, loop in ((f"measured choice: {kernel}", fused.FusedLoop(model, kernel)),
                           (f"{fused.SPARSE} forced", fused.FusedLoop(model, fused.SPARSE))):
            _add(runs, label, variant, "fused loop", lambda mel, loop=loop: loop.generate(mel, generator=seed()), name)
        if fused_only:
            continue
        chosen = copy.deepcopy(model)
        choice = use_sparse_kernels(chosen, example).get("recurrent")
        layout = choice.layout if choice else DENSE
        if choice:
            KERNEL_TIMES.append(f"{label} {sparsity:.0%}: recurrent product, µs per call: "
                                + ", ".join(f"{k} {1e6 * s:.1f}" for k, s in sorted(choice.seconds.items())))
        _add(runs, label, variant, "eager loop", lambda mel, m=chosen: m.generate(mel, generator=seed()),
             f"measured choice: {layout}")
        for forced in FORMATS:
            forced_model = with_recurrent(model, forced)
            _add(runs, label, variant, "eager loop",
                 lambda mel, m=forced_model: m.generate(mel, generator=seed()), f"{forced} forced")
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
            runs.update(contenders(dense, sparse, example, f"hidden {hidden} (random)", args.fused_only))
    else:
        example = task_of(entry).example_input(entry)
        dense = zoo.load(MODELS[0])
        sparse = {s: zoo.load(MODELS[0], sparsity=s) for s in args.sparsity}
        runs.update(contenders(dense, sparse, example, MODELS[0], args.fused_only))
        if not args.fused_only:
            subscale = zoo.load(MODELS[1])
            _add(runs, MODELS[1], "subscale", "eager loop",
                 lambda m: subscale.generate(m, generator=torch.Generator().manual_seed(0)))
    samples = args.frames * entry.input.hop
    audio_seconds = samples / entry.input.sample_rate
    for run in runs.values():
        run(mel[..., : 2 + 2 * entry.input.mel_pad])  # warm-up (and numba's compile)
    times: dict[str, list[float]] = {name: [] for name in runs}
    cpu_times: dict[str, list[float]] = {name: [] for name in runs}  # this thread's CPU time: load-proof
    for _ in range(args.repeats):
        for name, run in runs.items():
            start, cpu_start = time.perf_counter(), time.thread_time()
            run(mel)
            times[name].append(time.perf_counter() - start)
            cpu_times[name].append(time.thread_time() - cpu_start)
    print(f"{samples} samples ({audio_seconds:.2f} s of audio at {entry.input.sample_rate} Hz), "
          f"{args.threads} thread(s), median of {args.repeats}; torch {torch.__version__}, numba {fused.numba.__version__}")
    print("| model, loop, recurrent kernel | samples/s | real-time factor | vs dense, same loop | "
          "real-time factor in CPU time |\n|---|---:|---:|---:|---:|")
    reference = {GROUPS[name]: statistics.median(t) for name, t in times.items() if " dense, " in name}
    for name, runs_seconds in times.items():
        seconds = statistics.median(runs_seconds)
        dense = reference.get(GROUPS[name])
        ratio = f"{dense / seconds:.2f}x" if dense else ""
        cpu = statistics.median(cpu_times[name])
        print(f"| {name} | {samples / seconds:,.0f} | {seconds / audio_seconds:.2f} | {ratio} | "
              f"{cpu / audio_seconds:.2f} |")
    print("\n".join(KERNEL_TIMES))


if __name__ == "__main__":
    main()
