"""Does a runtime's graph compute the torch model? The check run before a runtime is timed.

Inputs: `check_inputs` draws `CHECK_DRAWS` inputs of the example's shape, seeded (`CHECK_SEED`): floating
inputs from a standard normal (what a normalized image is; for inputs with another range, a broader
input than the data's, which a graph must compute alike all the same), integer inputs (token ids,
masks) uniformly in the range the example's own values span, the one range known valid without the
family. A caller holding real data batches (the evaluator's) passes them too: they are checked as well.

Rule, per kind of graph (worst over the inputs; `disagreement` says why a graph fails, or None):

- fp32 graphs: max |runtime - torch| <= `FP32_RTOL` x max |torch| over all outputs. The same float
  arithmetic in another order: measured <= 2e-6 on ResNet-18 and MobileNetV2-0.5; the tests hold the
  vision, BERT, IRN and ILC graphs to it.
- int8 (QDQ) graphs: ||runtime - torch||_2 <= `INT8_RTOL` x ||torch||_2 for every output (relative RMS
  error). A runtime's int8 kernels round what the zoo's fake-quant computes in fp32 differently: a value
  within float noise of a rounding boundary of the uint8 grid lands on the neighbouring step, and the
  flips compound layer after layer, so a max-abs bound would fail good graphs on outliers. Measured
  (relative RMS): the trained resnet18.zoo_digits int8 in ONNX Runtime on digits data 0.33 % (max-abs
  1.2 %, top-1 the same on all 512 images); random-weight ResNet-18 with random BatchNorm statistics
  1.7 % in ONNX Runtime (3e-7 in OpenVINO), MobileNetV2-0.5 3e-7 in both; a wrong graph is off by tens
  of percent (OpenVINO's dynamic-batch QDQ bug, zoo.runtimes.session: ~100 %). The bound tells a wrong
  graph from rounding, not an int8 graph from an fp32 one: a random model's fake-quant output is only
  1.7-8 % (RMS) from its own fp32 output. That a quantized variant exports as integer QDQ is the
  exporter's (zoo.runtimes.qdq) and its tests' business. The rule holds every graph of a model that rounds
  some layer's input (`zoo.runtimes.qdq.quantizes_inputs`): int8 QDQ layers, and QAT layers whose 4- or
  2-bit inputs are rounded by plain ops in fp32, where the runtime's float noise flips roundings just the
  same. A QAT model with weight-only quantization (dequantized fp32 weights, inputs as they are) computes
  what an fp32 graph does: the fp32 rule.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from zoo.errors import InvalidArgumentError

FP32_RTOL = 1e-3
INT8_RTOL = 0.05
CHECK_DRAWS = 3
CHECK_SEED = 0

Inputs = tuple[torch.Tensor, ...]


def tensors_of(output: object) -> list[torch.Tensor]:
    """The tensors of a model output (a tensor, a tuple / NamedTuple / list of them, or a dataclass)."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, (tuple, list)):
        return [t for item in output for t in tensors_of(item)]
    if hasattr(output, "__dataclass_fields__"):
        return [t for name in output.__dataclass_fields__ for t in tensors_of(getattr(output, name))]
    return []


def seeded_call(model: nn.Module, inputs: Sequence[torch.Tensor], seed: int = 0) -> list[torch.Tensor]:
    """`model(*inputs)` in inference mode, torch's generator seeded (on a fork: the caller's is untouched)."""
    with torch.random.fork_rng(devices=[]), torch.inference_mode():
        torch.manual_seed(seed)
        return tensors_of(model(*inputs))


def _same_shapes(got: Sequence[torch.Tensor], want: Sequence[torch.Tensor]) -> bool:
    return len(got) == len(want) and all(g.shape == w.shape for g, w in zip(got, want))


def relative_error(got: Sequence[torch.Tensor], want: Sequence[torch.Tensor]) -> float:
    """max |got - want| / max |want| over all outputs (inf when the shapes differ)."""
    if not _same_shapes(got, want):
        return float("inf")
    diff = max((float((g.detach().float() - w.detach().float()).abs().max()) for g, w in zip(got, want) if w.numel()), default=0.0)
    scale = max((float(w.detach().float().abs().max()) for w in want if w.numel()), default=0.0)
    return diff / scale if scale > 0 else diff


def relative_rms_error(got: Sequence[torch.Tensor], want: Sequence[torch.Tensor]) -> float:
    """The largest ||got - want||_2 / ||want||_2 over the outputs (inf when the shapes differ; an all-zero
    `want` compares the absolute norm)."""
    if not _same_shapes(got, want):
        return float("inf")
    errors = []
    for g, w in zip(got, want):
        diff, norm = float(torch.linalg.vector_norm(g.detach().double() - w.detach().double())), float(torch.linalg.vector_norm(w.detach().double()))
        errors.append(diff / norm if norm > 0 else diff)
    return max(errors, default=0.0)


def tolerance(int8: bool) -> tuple[float, Callable[[Sequence[torch.Tensor], Sequence[torch.Tensor]], float], str]:
    """(bound, error function, the rule in words) for an int8 (QDQ) or an fp32 graph."""
    if int8:
        return INT8_RTOL, relative_rms_error, f"relative RMS error <= {INT8_RTOL:g} (int8 graph)"
    return FP32_RTOL, relative_error, f"max error <= {FP32_RTOL:g} of the largest value (fp32 graph)"


def check_inputs(example: torch.Tensor | Inputs, *, draws: int = CHECK_DRAWS, seed: int = CHECK_SEED) -> list[Inputs]:
    """`draws` random inputs shaped as `example`, seeded (see the module doc for the distribution)."""
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise InvalidArgumentError(f"draws must be a positive integer, got {draws!r}")
    example = example if isinstance(example, tuple) else (example,)
    generator = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(draws):
        inputs = []
        for tensor in example:
            if tensor.is_floating_point():
                inputs.append(torch.randn(tensor.shape, generator=generator).to(tensor.dtype))
            elif tensor.dtype == torch.bool or not tensor.numel():
                inputs.append(tensor.clone())
            else:
                low, high = int(tensor.min()), int(tensor.max())
                inputs.append(torch.randint(low, high + 1, tensor.shape, generator=generator, dtype=tensor.dtype))
        out.append(tuple(inputs))
    return out


def disagreement(graph: nn.Module, model: nn.Module, inputs: Sequence[Inputs], *, int8: bool,
                 seed: int = 0) -> str | None:
    """Why `graph` (a runtime's) does not compute `model` on `inputs` under the rule for its kind (see the
    module doc), or None when it agrees on all of them. Noise the model samples is drawn from the same
    seed in both calls."""
    if not inputs:
        raise InvalidArgumentError("the agreement check needs at least one input")
    bound, error_of, rule = tolerance(int8)
    worst = max(error_of(seeded_call(graph, x, seed), seeded_call(model, x, seed)) for x in inputs)
    if worst <= bound:
        return None
    return f"output differs from torch's: error {worst:.3g} on {len(inputs)} checked inputs, rule {rule}: not timed"
