"""Side by side in one process, batch 1, 2 threads: torch eager vs ONNX Runtime vs OpenVINO, fp32 and int8
(the zoo's PTQ: fake-quant in torch, QDQ graphs in the runtimes), for the architectures of
resnet18.zoo_digits (1x32x32), mobilenetv2_050.zoo_digits and bert_mini.zoo_stdlib (the BERT classifier).

Weights are random (seed 0) and int8 is calibrated on random inputs: latency does not depend on the
trained values. Each runtime's output is checked against torch's before timing, by the evaluator's rule
(zoo.runtimes.agreement: seeded random inputs, max error for fp32 graphs, relative RMS error for int8
ones; the error is shown, "off" where it breaks the rule).
Prints a markdown table headed by the machine (zoo.evaluate.machine).

    python benchmarks/bench_runtimes.py [--seconds 1.0]
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch

from zoo.compress.quantization import apply_int8_ptq
from zoo.evaluate import current_machine, measure_latency
from zoo.models import build_model, get_entry
from zoo.runtimes import GRAPH_RUNTIMES, RuntimeModel, cached_export, runtime_format
from zoo.runtimes.agreement import check_inputs, seeded_call, tolerance
from zoo.runtimes.int8 import integer_dot_product, integer_layers
from zoo.tasks import task_of

ENTRIES = ("resnet18.zoo_digits", "mobilenetv2_050.zoo_digits", "bert_mini.zoo_stdlib")
THREADS = 2


def _calibration(example: torch.Tensor, entry) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    if example.dtype == torch.long:
        return [torch.randint(5, entry.input.vocab_size, (8, *example.shape[1:]), generator=generator) for _ in range(2)]
    return [torch.rand((8, *example.shape[1:]), generator=generator) for _ in range(2)]


def bench(name: str, folder: Path, seconds: float) -> list[str]:
    entry = get_entry(name)
    task = task_of(entry)
    signature = task.export_signature(entry)
    example = task.example_input(entry)
    inputs = _calibration(example, entry)[0][:1]
    torch.manual_seed(0)
    cells = []
    for precision in ("fp32", "int8"):
        torch.manual_seed(0)
        model = build_model(entry).eval()
        if precision == "int8":
            apply_int8_ptq(model, _calibration(example, entry))
        bound, error_of, _ = tolerance(int8=precision == "int8")
        checked = check_inputs(example)
        cells.append(f"{measure_latency(model, (inputs,), min_run_time=seconds, num_threads=THREADS).median_ms:.2f}")
        for runtime in GRAPH_RUNTIMES:
            path = cached_export(model, signature, example, folder / precision, runtime_format(runtime), name + precision)
            session = RuntimeModel(runtime, path, signature, threads=THREADS)
            error = max(error_of(seeded_call(session, x), seeded_call(model, x)) for x in checked)
            ms = measure_latency(session, (inputs,), min_run_time=seconds, num_threads=THREADS).median_ms
            verdict = "" if error <= bound else ", off"
            note = f" ({error:.0e}{verdict})"
            if precision == "int8":
                integer, total = integer_layers(session)
                note = f" ({error:.0e}{verdict}; {integer}/{total} int)"
            cells.append(f"{ms:.2f}{note}")
    shape = "x".join(str(d) for d in example.shape[1:])
    return [f"{entry.arch} ({shape})"] + cells


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="minimum run time of each measurement")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    machine = current_machine(THREADS)
    print(f"Machine: {machine.summary()}; integer dot product: {integer_dot_product() or 'none'}\n")
    header = ["model (input)", "torch fp32", "ORT fp32", "OpenVINO fp32", "torch int8 (fake-quant)", "ORT int8 QDQ",
              "OpenVINO int8 QDQ"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    with tempfile.TemporaryDirectory() as folder:
        for name in ENTRIES:
            print("| " + " | ".join(bench(name, Path(folder), args.seconds)) + " |", flush=True)
    print("\nms per call, median; (error vs torch's output of the same precision, by the agreement rule; int: layers "
          "on integer kernels / conv+matmul layers)")


if __name__ == "__main__":
    main()
