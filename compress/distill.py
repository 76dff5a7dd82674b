"""Knowledge distillation (Hinton, Vinyals & Dean 2015, "Distilling the Knowledge in a Neural Network")
as an option of any fine-tuning recipe: a `DistillationConfig` step placed before the fine-tuning steps
(gradual pruning, QAT, sparse training...) makes them train on a distilling loss.

Usage:

    recipe = Recipe((DistillationConfig(alpha=0.9), QATConfig(bits_w=2, bits_a=2)))
    model = recipe.apply(model, context)          # the QAT step trains on the distilling loss

    # or directly, around any loss_fn(model, batch):
    loss_fn = distilling(task_loss, student, frozen_copy(student), DistillationConfig(hidden=(r"layer\\d",)))

Suggested settings: `temperature` 2-8 (4 the default) and `alpha` 0.5 for classification heads, `alpha`
up to 0.9 where the student is far from its teacher (2-bit QAT, high sparsity); `logits_loss="mse"` for
models whose outputs are not class scores (image-to-image): `Task.distill_logits_loss` says which one a
task's outputs take. The zoo's `teacher="base"` is the model as it is when the step runs: in a default
recipe, the dense base model. The teacher costs one extra forward pass (no backward) per step and its
weights' memory.

Details:

- The step's handler returns the model unchanged and replaces `context.loss_fn` for the later steps with
  `distilling(context.loss_fn, model, teacher, config)`. The teacher is `frozen_copy(model)` for
  "base", else the zoo model named (`zoo.load(name)`, e.g. "resnet18.zoo_digits"), loaded when the step
  runs and moved to the student's device; either way frozen (no gradient, eval mode) and kept outside
  the student (never trained, never saved with it).
- The distilling loss calls the task loss `loss_fn(model, batch)`, which runs the student's forward;
  hooks on the student's root module (the module inside DistributedDataParallel when training is
  data-parallel, `zoo.distributed`) capture the call's inputs (positional and keyword) and output. The
  teacher then runs on the same inputs, under no_grad, with the random state the student's forward
  started from (the global CPU / CUDA generators and any `torch.Generator` argument are replayed, and
  restored after), so that what the model draws itself (masked positions, sampled latents) is the same
  for both. The task loss must call the student's root forward exactly once per call.
- Loss: `(1 - alpha) * task + alpha * D + hidden_weight * H`.
  D with `logits_loss="kl"`: `T^2 * KL(softmax(t / T) || softmax(s / T))`, the sum over classes
  (the last dimension) averaged over every leading position (for a sequence output each position is an
  example); the T^2 keeps its gradient's scale independent of T (Hinton et al.). With `"mse"`: the mean
  squared difference of the outputs (no temperature). s and t come from `output_logits` (a tensor; the
  `.logits` of an output object such as transformers' ModelOutput; the first element of a tuple or
  list). H: the mean over the modules whose names fully match a `hidden` pattern of the MSE between the
  student's and the teacher's outputs of that module (every call of it in the forward); their shapes
  must match. A pattern that matches no module of the student, a module the teacher lacks, and (at the
  first batch) outputs whose shapes differ are errors naming the modules.
- `alpha = 0` without hidden patterns gives exactly the task loss (the teacher is not run): the "off"
  arm of a distillation-on-vs-off comparison with the same recipe otherwise.
"""
from __future__ import annotations

import copy
import dataclasses
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel

from zoo.compress.config import CompressionConfig, check_choice, check_patterns, check_positive, register_config
from zoo.compress.recipe import RecipeContext, handles
from zoo.errors import RecipeError

LOGITS_LOSSES = ("kl", "mse")
BASE_TEACHER = "base"

LossFn = Callable[[nn.Module, Any], torch.Tensor]


@register_config
@dataclasses.dataclass(frozen=True)
class DistillationConfig(CompressionConfig):
    """Distill from `teacher` ("base": a frozen copy of the model when the step runs; or a zoo model name)
    in the fine-tuning steps after this one: `(1 - alpha) * task + alpha * D + hidden_weight * H`, D the
    T^2-scaled KL at `temperature` (`logits_loss="kl"`) or the outputs' MSE (`"mse"`), H the mean MSE of
    the outputs of the modules matching `hidden` (regular expressions, fullmatch). Module docstring."""

    VERSION = 1
    teacher: str = BASE_TEACHER
    temperature: float = 4.0
    alpha: float = 0.5
    logits_loss: str = "kl"
    hidden: tuple[str, ...] = ()
    hidden_weight: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.teacher, str) or not self.teacher or self.teacher != self.teacher.strip():
            raise RecipeError(f"teacher must be 'base' or a zoo model name, got {self.teacher!r}")
        check_positive("temperature", self.temperature)
        check_positive("alpha", self.alpha, allow_zero=True)
        if self.alpha > 1:
            raise RecipeError(f"alpha must be in [0, 1] (the weight of the distillation loss), got {self.alpha!r}")
        check_choice("logits_loss", self.logits_loss, LOGITS_LOSSES)
        check_patterns("hidden", self.hidden)
        check_positive("hidden_weight", self.hidden_weight, allow_zero=True)
        if self.hidden and self.hidden_weight == 0:
            raise RecipeError("hidden patterns with hidden_weight 0 would match modules and distill nothing; "
                              "drop the patterns or give a weight > 0")


def output_logits(output: Any) -> torch.Tensor:
    """The scores in a model's output: a tensor as is, the `.logits` of an output object (transformers'
    ModelOutput and the like), the first element of a tuple or list (a NamedTuple included)."""
    logits = getattr(output, "logits", None)
    if not isinstance(output, torch.Tensor) and isinstance(logits, torch.Tensor):
        return logits
    leading = _leading_tensor(output)
    if leading is not None:
        return leading
    raise RecipeError(f"distillation cannot find logits in a model output of type {type(output).__name__}: it "
                      "takes a tensor, an object with a tensor .logits, or a tuple or list whose first element is one")


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, *, temperature: float = 4.0,
                 logits_loss: str = "kl") -> torch.Tensor:
    """The distillation term D between student and teacher outputs of the same shape (module docstring):
    "kl": T^2 * KL(softmax(teacher / T) || softmax(student / T)) over the last dimension, summed over it
    and averaged over every other position; "mse": the mean squared difference. Computed in float32 at
    least (float64 inputs stay float64)."""
    check_choice("logits_loss", logits_loss, LOGITS_LOSSES)
    if student.shape != teacher.shape:
        raise RecipeError(f"student output {tuple(student.shape)} and teacher output {tuple(teacher.shape)} differ "
                          "in shape; distillation compares them element by element")
    dtype = torch.promote_types(student.dtype, torch.float32)
    s, t = student.to(dtype), teacher.detach().to(dtype)
    if logits_loss == "mse":
        return F.mse_loss(s, t)
    if s.dim() == 0:
        raise RecipeError("KL distillation needs class scores along a last dimension, got a scalar output")
    s, t = s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1])
    log_p, log_q = F.log_softmax(t / temperature, -1), F.log_softmax(s / temperature, -1)
    kl = (log_p.exp() * (log_p - log_q)).sum()  # (F.kl_div has no vmap rule: ES masks vmap the loss)
    return kl * (temperature ** 2 / s.shape[0])


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy of `model` in eval mode with no parameter requiring a gradient: a "base" teacher."""
    return freeze(copy.deepcopy(model))


def freeze(model: nn.Module) -> nn.Module:
    for param in model.parameters():
        param.requires_grad_(False)
    return model.eval()


def hidden_module_names(model: nn.Module, patterns: tuple[str, ...]) -> list[str]:
    """Names of `model`'s modules fully matching one of `patterns`, in module order; a pattern that
    matches none is an error naming it."""
    names = [name for name, _ in model.named_modules()]
    compiled = [re.compile(p) for p in patterns]
    unmatched = [p.pattern for p in compiled if not any(p.fullmatch(name) for name in names)]
    if unmatched:
        raise RecipeError(f"hidden pattern(s) {unmatched} match no module of the student")
    return [name for name in names if any(p.fullmatch(name) for p in compiled)]


def _root(model: nn.Module) -> nn.Module:
    """The module the loss actually calls forward on inside a DistributedDataParallel wrapper."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def _leading_tensor(output: Any) -> torch.Tensor | None:
    """`output` itself if it is a tensor, else the first element of a tuple or list when that is one."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    return None


def _hidden_tensor(output: Any, name: str) -> torch.Tensor:
    leading = _leading_tensor(output)
    if leading is not None:
        return leading
    raise RecipeError(f"hidden module {name!r} outputs a {type(output).__name__}; hidden-state distillation "
                      "takes a tensor or a tuple or list whose first element is one")


@contextmanager
def _recording(modules: dict[str, nn.Module], into: dict[str, list[torch.Tensor]]) -> Iterator[None]:
    """Appends each output of each named module to `into[name]` while the block runs."""
    removers = []
    for name, module in modules.items():
        into[name] = []

        def hook(_: nn.Module, __: Any, output: Any, name: str = name) -> None:
            into[name].append(_hidden_tensor(output, name))

        removers.append(module.register_forward_hook(hook))
    try:
        yield
    finally:
        for remover in removers:
            remover.remove()


def _modules_named(model: nn.Module, names: list[str], whose: str) -> dict[str, nn.Module]:
    modules = dict(model.named_modules())
    missing = [name for name in names if name not in modules]
    if missing:
        raise RecipeError(f"the {whose} has no module(s) {missing} that the hidden patterns matched in the student")
    return {name: modules[name] for name in names}


class _Call:
    """One forward call of the student's root module: inputs, the random state it started from, output."""

    def __init__(self, args: tuple[Any, ...], kwargs: dict[str, Any], cuda_devices: list[torch.device]) -> None:
        self.args, self.kwargs = args, kwargs
        self.cpu_state = torch.get_rng_state()
        self.cuda_states = [torch.cuda.get_rng_state(d) for d in cuda_devices]
        self.generators = {id(g): g.get_state() for g in (*args, *kwargs.values()) if isinstance(g, torch.Generator)}
        self.output: Any = None

    def _replayed(self, value: Any) -> Any:
        if isinstance(value, torch.Generator):
            generator = torch.Generator(device=value.device)
            generator.set_state(self.generators[id(value)])
            return generator
        return value

    def replay(self, teacher: nn.Module, cuda_devices: list[torch.device]) -> Any:
        """The teacher's output on the same inputs, from the same random state (restored afterwards)."""
        with torch.no_grad(), torch.random.fork_rng(devices=cuda_devices):
            torch.set_rng_state(self.cpu_state)
            for device, state in zip(cuda_devices, self.cuda_states):
                torch.cuda.set_rng_state(state, device)
            args = tuple(self._replayed(a) for a in self.args)
            kwargs = {k: self._replayed(v) for k, v in self.kwargs.items()}
            return teacher(*args, **kwargs)


def distilling(loss_fn: LossFn, model: nn.Module, teacher: nn.Module, config: DistillationConfig) -> LossFn:
    """`loss_fn` (the task loss, `loss_fn(model, batch)`) turned into the distilling loss of `config`
    against `teacher` (module docstring), which is frozen in place (no gradient, eval mode). `model` is the
    student (its hidden modules are resolved here, and again by name at each call);
    the returned loss may be called with it or with it wrapped in DistributedDataParallel."""
    if not isinstance(config, DistillationConfig):
        raise RecipeError(f"distilling needs a DistillationConfig, got {type(config).__name__}")
    names = hidden_module_names(_root(model), config.hidden)
    _modules_named(teacher, names, "teacher")
    freeze(teacher)
    cuda_devices = sorted({p.device for p in teacher.parameters() if p.device.type == "cuda"}, key=str)
    if config.alpha == 0 and not names:
        return loss_fn

    def loss(student: nn.Module, batch: Any) -> torch.Tensor:
        root = _root(student)
        calls: list[_Call] = []

        def before(_: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            calls.append(_Call(args, kwargs, cuda_devices))

        def after(_: nn.Module, __: Any, ___: Any, output: Any) -> None:
            calls[-1].output = output

        student_hidden: dict[str, list[torch.Tensor]] = {}
        teacher_hidden: dict[str, list[torch.Tensor]] = {}
        pre = root.register_forward_pre_hook(before, with_kwargs=True)
        post = root.register_forward_hook(after, with_kwargs=True)
        try:
            with _recording(_modules_named(root, names, "student"), student_hidden):
                task = loss_fn(student, batch)
        finally:
            pre.remove()
            post.remove()
        if len(calls) != 1:
            raise RecipeError(f"distillation needs a task loss that calls the student's forward exactly once; it "
                              f"called it {len(calls)} times")
        with _recording(_modules_named(teacher, names, "teacher"), teacher_hidden):
            teacher_out = calls[0].replay(teacher, cuda_devices)
        total = task if config.alpha == 0 else (1 - config.alpha) * task + config.alpha * distill_loss(
            output_logits(calls[0].output), output_logits(teacher_out), temperature=config.temperature,
            logits_loss=config.logits_loss)
        if names:
            total = total + config.hidden_weight * hidden_loss(student_hidden, teacher_hidden)
        return total

    return loss


def hidden_loss(student: dict[str, list[torch.Tensor]], teacher: dict[str, list[torch.Tensor]]) -> torch.Tensor:
    """The mean over modules of the MSE between their student and teacher outputs (each module's calls
    averaged); the modules whose outputs differ in shape or number of calls are named in the error."""
    mismatched = [f"{name}: student {[tuple(t.shape) for t in outs]} vs teacher "
                  f"{[tuple(t.shape) for t in teacher[name]]}"
                  for name, outs in student.items()
                  if [t.shape for t in outs] != [t.shape for t in teacher[name]]]
    if mismatched:
        raise RecipeError("hidden-state distillation needs outputs of the same shape; these differ: "
                          + "; ".join(mismatched))
    silent = [name for name, outs in student.items() if not outs]
    if silent:
        raise RecipeError(f"hidden module(s) {silent} did not run in the forward pass")
    per_module = [torch.stack([F.mse_loss(s.float(), t.detach().float()) for s, t in zip(outs, teacher[name])]).mean()
                  for name, outs in student.items()]
    return torch.stack(per_module).mean()


def load_teacher(config: DistillationConfig, model: nn.Module, context: RecipeContext) -> nn.Module:
    """The teacher `config` names, frozen, on `model`'s device: a copy of `model` for "base", else the
    zoo model loaded by name."""
    if config.teacher == BASE_TEACHER:
        return frozen_copy(model)
    import zoo

    teacher = zoo.load(config.teacher, progress=context.progress)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return freeze(teacher.to(device))


@handles(DistillationConfig)
def _distill(model: nn.Module, config: DistillationConfig, context: RecipeContext) -> nn.Module:
    context.require("loss_fn", step="distillation")
    context.loss_fn = distilling(context.loss_fn, model, load_teacher(config, model, context), config)
    return model
