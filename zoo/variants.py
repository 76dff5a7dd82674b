"""Variants of a base model: the name grammar and the default recipe that derives each.

A variant's name is its base's `arch.tag` with the compression appended to the tag:
`resnet18.zoo_digits_gmp90` (gradual magnitude pruning to 90%, fine-tuned), `..._os90` (one-shot
magnitude pruning, no fine-tuning), `..._int8` (post-training int8), `..._gmp90_int8` (both), and
`..._r<hash>` for a custom recipe. Sparsities that are not whole percents use `p`: `_gmp97p5`; a name holds
at most 4 decimal places of a percent (`_os12p3456`), so a variant's sparsity is a multiple of 1e-6 and any
other is refused (`named_sparsity`): one name, one recipe, and `resolve(spec.name)` gives `spec` back.
Structured pruning, fine-tuned: `..._ch50` (50 % of every layer's channels removed), `..._hd50` (50 %
of the attention heads and FFN neurons removed); the number is then the fraction of structures removed.
Sparse training from scratch (`zoo.compress.sparse_training`): `..._rigl90`, `..._set90`, `..._static90`
with the ERK distribution over layers, `uni` or `er` after the number for the others (`_rigl90uni`), and
`x<k>` for k times the base's training steps (`_rigl90x2`, `_set95erx3`). ES masks (`zoo.compress.es_masks`, Lenc et al.): `..._es90`, fine-tuned from the base.
N:M sparsity (`zoo.compress.nm`: n of every m consecutive input channels kept):
`..._nm24` (2:4, gradual, fine-tuned), `..._osnm14` (1:4, one-shot), `..._riglnm24` / `_setnm24` /
`_staticnm24` (sparse training from scratch, every layer but the first 2:4 throughout); n and m single
digits. Online training of a GRU's
recurrent matrix by SnAp-n after pruning (`zoo.compress.snap`, families with an online GRU hook:
WaveRNN): `..._gmp90_snap2`, `..._snap1`. Quantization: `..._int8`, or low-bit weights (and inputs)
by QAT or post-training (`zoo.quant_schemes`): `..._w8a8`, `..._w4`, `..._gmp90_w4a8`, `..._w2a2_id`,
`..._w4g32_ptq`, `..._wb_bcgd`. `..._kd` last: every fine-tuning step of the recipe distills from the
dense base (`zoo.compress.distill`): `..._w2a2_kd`, `..._gmp90_kd`.

Made on the user's data (`zoo.userdata`: `train_data` fine-tunes and calibrates, `eval_data` measures):
`..._d<8 hex>` last, the first 8 hex digits of the SHA-256 of the data's identity (format, split, columns,
content fingerprint of the training and of the evaluation data, and any `FineTuning` overrides), e.g.
`resnet50.a1_in1k_gmp90_d3f9a0c12`: never the name of the entry's own variant, and another data set
(or other bytes in it) gives another name and cache key. Like `_r<hash>`, the name cannot be derived
again from itself: `resolve` refuses it (load its base with the same data, or its published repo).
An upstream entry (no TrainSpec) is fine-tuned on `train_data` with its task's defaults
(`USER_DATA_TASKS` of the family's entries module); a zoo-native one with its own TrainSpec's optimizer,
learning rate, batch size and weight decay (`zoo.userdata.finetune_spec`).

A base read from a Hub repo (`hf-hub:org/name`, zoo.hub_ids) takes the same suffixes after a '+' instead,
without the leading underscore: `hf-hub:acme/r18-gmp90+os50_int8` ('+' never occurs in a repo id).
"""
from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from zoo.entry import STRUCTURED_METHODS, ModelEntry, TrainSpec, is_hub_name
from zoo.errors import InvalidArgumentError
from zoo.models import MODELS, get_entry
from zoo.options import TrainOptions
from zoo.quant_schemes import PATTERN as QUANT_PATTERN
from zoo.quant_schemes import BCGD_RHO, canonical_quant, default_quant, parse_quant
from zoo.userdata import FineTuning, UserData, UserDataError, check_takes_user_data, data_tag, finetune_spec

if TYPE_CHECKING:  # the recipe modules import torch: loaded when a recipe is first built
    from zoo.compress.recipe import Recipe
    from zoo.store import Store

SPARSE_TRAINING_METHODS = ("rigl", "set", "static")
METHODS = ("gmp", "oneshot", "channels", "heads", "es", *SPARSE_TRAINING_METHODS)
_METHOD_CODES = {"gmp": "gmp", "oneshot": "os", "channels": "ch", "heads": "hd", "es": "es",
                 **{m: m for m in SPARSE_TRAINING_METHODS}}
FINETUNED_METHODS = ("gmp", "channels", "heads", "es", *SPARSE_TRAINING_METHODS)  # need the entry's training data
DISTRIBUTIONS = ("erk", "er", "uniform")  # zoo.compress.distributions' (a test checks they agree)
DEFAULT_DISTRIBUTION = "erk"
_DISTRIBUTION_CODES = {"er": "er", "uniform": "uni"}  # ERK, the default, goes unnamed
STRUCTURED_STEPS = 3  # pruning steps of the default structured recipes (zoo.compress.structured)
_SUFFIX_RE = re.compile(
    r"(?P<base>[a-z0-9_]+\.[a-z0-9_]+?)"
    r"(?:_(?P<method>gmp|os|ch|hd|es|rigl|set|static)(?P<pct>\d+(?:p\d+)?)(?P<dist>uni|er)?(?:x(?P<budget>[2-9]|[1-9]\d+))?"
    r"|_(?P<nmmethod>os|rigl|set|static)?nm(?P<n>[1-9])(?P<m>[2-9]))?"
    r"(?:_snap(?P<snap>[12]))?(?:_(?P<quant>" + QUANT_PATTERN + r"))?(?P<kd>_kd)?(?:_r(?P<hash>[0-9a-f]{8}))?"
    r"(?:_d(?P<data>[0-9a-f]{8}))?"
)
GMP_FINETUNE_EPOCH_FRACTION = 0.5
SNAP_ORDERS = (1, 2)  # zoo.compress.snap's (a test checks they agree)
QAT_LR_FACTOR = 0.1  # QAT fine-tunes a trained base at a tenth of its peak learning rate


SPARSITY_DECIMALS = 6  # a variant's sparsity: a multiple of 1e-6, 4 decimal places of a percent in its name
_FLOAT_NOISE = 1e-12  # what a float computed as (say) 1 - 0.1 may be off its decimal value by


def check_sparsity(sparsity: float) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0.0 <= sparsity < 1.0:
        raise InvalidArgumentError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    return float(sparsity)


def named_sparsity(sparsity: float) -> float:
    """The sparsity a variant's name can hold: `sparsity` (checked) as the float nearest its value rounded
    to `SPARSITY_DECIMALS` places (12.3456 % is `_os12p3456`), so that the name parses back to this very
    float. InvalidArgumentError for one that does not round to itself (0.1234561: two recipes would share
    one name), which includes every non-zero sparsity under 1e-6 (it would be named as the base)."""
    sparsity = check_sparsity(sparsity)
    named = round(sparsity, SPARSITY_DECIMALS)
    if abs(named - sparsity) > _FLOAT_NOISE:
        raise InvalidArgumentError(
            f"sparsity {sparsity!r} cannot be named: a variant's sparsity is a multiple of 1e-6 "
            f"(at most 4 decimal places of a percent); give {named!r} or use a custom recipe")
    return named


def check_quant(quant: str | None) -> str | None:
    """The canonical spelling of a quant scheme (`zoo.quant_schemes`); InvalidArgumentError for an unknown one."""
    return canonical_quant(quant)


def _percent(sparsity: float) -> str:
    """`named_sparsity`'s value as a percent, `p` for the decimal point: 0.975 -> `97p5`, 0.123456 -> `12p3456`."""
    from decimal import Decimal

    text = format(Decimal(f"{sparsity:.{SPARSITY_DECIMALS}f}").scaleb(2).normalize(), "f")
    return text.replace(".", "p")


@dataclass(frozen=True)
class VariantSpec:
    """What to load: a base entry and the compression applied to it (none for the base itself).
    `distribution` (ERK by default) and `budget` (training steps, in multiples of the base's) apply
    to the sparse training methods only; `snap` (1 or 2) adds online SnAp-n training of the GRU's
    recurrent matrix after the pruning step. `nm` = (n, m) makes magnitude pruning ("gmp" or "oneshot")
    or sparse training keep n of every m weights; its sparsity, 1 - n/m, is filled in when not given,
    and sparse training's distribution is then uniform. `train_data` / `eval_data` (zoo.userdata) fine-tune
    and calibrate on, and measure on, the user's data instead of the entry's (`finetuning` overrides the
    fine-tuning hyper-parameters on it); they add `_d<hash>` to the name."""

    base: ModelEntry
    sparsity: float = 0.0
    quant: str | None = None
    method: str = "gmp"
    custom_recipe: Recipe | None = None
    distribution: str = DEFAULT_DISTRIBUTION
    budget: int = 1
    snap: int | None = None
    nm: tuple[int, int] | None = None
    distill: bool = False
    train_data: UserData | None = None
    eval_data: UserData | None = None
    finetuning: FineTuning | None = None

    def __post_init__(self) -> None:
        self._check_user_data()
        if self.nm is not None:
            self._check_nm()  # its sparsity, 1 - n/m, is named by `nm<n><m>`, not as a percent
        else:
            object.__setattr__(self, "sparsity", named_sparsity(self.sparsity))
        object.__setattr__(self, "quant", check_quant(self.quant))
        self._check_quant_and_distill()
        if self.method not in METHODS:
            raise InvalidArgumentError(f"unknown pruning method {self.method!r}; supported: {', '.join(METHODS)}")
        if self.distribution not in DISTRIBUTIONS:
            raise InvalidArgumentError(f"unknown distribution {self.distribution!r}; supported: {', '.join(DISTRIBUTIONS)}")
        if isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 1:
            raise InvalidArgumentError(f"budget must be a positive integer, got {self.budget!r}")
        if ((self.distribution != DEFAULT_DISTRIBUTION or self.budget != 1)
                and (self.method not in SPARSE_TRAINING_METHODS or self.sparsity == 0)):
            raise InvalidArgumentError("distribution and budget apply to sparse training (rigl, set, static) only")
        if self.snap is not None and (isinstance(self.snap, bool) or self.snap not in SNAP_ORDERS):
            raise InvalidArgumentError(f"snap must be None or one of {SNAP_ORDERS}, got {self.snap!r}")
        if self.snap is not None and self.training is None:
            raise InvalidArgumentError(f"{self.base.name} has no training data here to train online by SnAp")
        if self.method in STRUCTURED_METHODS and self.sparsity > 0 and self.base.structured != self.method:
            supported = (f"its structured pruning is {self.base.structured!r}" if self.base.structured
                         else "its family has no structured pruning")
            raise InvalidArgumentError(f"{self.base.name} cannot be pruned by {self.method!r}: {supported}")
        if self.method in FINETUNED_METHODS and self.sparsity > 0 and self.training is None:
            raise InvalidArgumentError(
                f"{self.base.name} has no training data here, so it cannot be fine-tuned while pruning; "
                "use method='oneshot'"
            )
        if self.train_data is not None and self.is_base:
            raise UserDataError("train_data is what fine-tuning and calibration run on: give a sparsity, quant or "
                                "recipe that uses it")

    def _check_quant_and_distill(self) -> None:
        scheme = parse_quant(self.quant) if self.quant else None
        qat = scheme is not None and not scheme.ptq
        if qat and self.training is None:
            raise InvalidArgumentError(f"{self.base.name} has no training data here for quantization-aware training; "
                                       f"use post-training quantization: quant={default_quant(self.quant, False)!r}")
        if not isinstance(self.distill, bool):
            raise InvalidArgumentError(f"distill must be True or False, got {self.distill!r}")
        if self.distill:
            if self.custom_recipe is not None:
                raise InvalidArgumentError("distill shapes the default recipe; a custom recipe names its own "
                                           "DistillationConfig step")
            if not self.finetunes:
                raise InvalidArgumentError("distillation trains the student: it needs a fine-tuning step (gradual or "
                                           "structured pruning, sparse training, QAT or SnAp), and this variant has none")

    @property
    def finetunes(self) -> bool:
        """Whether the default recipe has a fine-tuning step (gradual or structured pruning, sparse training,
        QAT or SnAp); a custom recipe is taken to (its steps say)."""
        if self.custom_recipe is not None:
            return True
        scheme = parse_quant(self.quant) if self.quant else None
        return ((self.sparsity > 0 and (self.method in FINETUNED_METHODS or self.nm is not None
                                        and self.method != "oneshot"))
                or (scheme is not None and not scheme.ptq) or self.snap is not None)

    def _check_user_data(self) -> None:
        for name in ("train_data", "eval_data"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, UserData):
                raise InvalidArgumentError(f"{name} must be None or a UserData (zoo.load takes paths too), "
                                           f"got {type(value).__name__}")
        if self.finetuning is not None and not isinstance(self.finetuning, FineTuning):
            raise InvalidArgumentError(f"finetuning must be None or a FineTuning, got {type(self.finetuning).__name__}")
        if self.finetuning is not None and self.train_data is None:
            raise UserDataError("finetuning sets how to fine-tune on train_data: give train_data")
        if self.train_data is not None:
            finetune_spec(self.base, self.finetuning)  # the task takes user data (else a typed error listing those that do)
        elif self.eval_data is not None:
            check_takes_user_data(self.base)

    @property
    def has_user_data(self) -> bool:
        return self.train_data is not None or self.eval_data is not None

    @property
    def training(self) -> TrainSpec | None:
        """The TrainSpec the recipe fine-tunes by: on `train_data`, `zoo.userdata.finetune_spec`'s; else the
        base's own (None for an upstream checkpoint: it has no training data here)."""
        return finetune_spec(self.base, self.finetuning) if self.train_data is not None else self.base.train

    @property
    def recipe_entry(self) -> ModelEntry:
        """The entry the default recipe is built for: the base, with the fine-tuning TrainSpec on user data."""
        if self.train_data is None:
            return self.base
        return dataclasses.replace(self.base, train=self.training)

    def data_identity(self) -> dict | None:
        """What of the user's data (and fine-tuning on it) decides this variant: None without user data."""
        if not self.has_user_data:
            return None
        return {"train": self.train_data.identity() if self.train_data is not None else None,
                "eval": self.eval_data.identity() if self.eval_data is not None else None,
                "finetuning": self.finetuning.overrides() if self.finetuning is not None else None}

    def _check_nm(self) -> None:
        nm = self.nm
        if (not isinstance(nm, tuple) or len(nm) != 2 or any(isinstance(v, bool) or not isinstance(v, int) for v in nm)
                or not 1 <= nm[0] < nm[1] <= 9):
            raise InvalidArgumentError(f"nm must be (n, m) with 1 <= n < m <= 9 (one digit each in a name), got {nm!r}")
        if self.method not in ("gmp", "oneshot", *SPARSE_TRAINING_METHODS):
            raise InvalidArgumentError(f"N:M applies to magnitude pruning (gmp, oneshot) and sparse training "
                                       f"({', '.join(SPARSE_TRAINING_METHODS)}), not {self.method!r}")
        if self.method in SPARSE_TRAINING_METHODS:
            if self.distribution not in (DEFAULT_DISTRIBUTION, "uniform") or self.budget != 1:
                raise InvalidArgumentError("N:M sparse training spreads n:m uniformly over the base's steps: "
                                           "no distribution or budget to choose")
            object.__setattr__(self, "distribution", "uniform")
        implied = 1.0 - nm[0] / nm[1]
        if self.sparsity == 0.0:
            object.__setattr__(self, "sparsity", implied)
        elif isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)) \
                or abs(self.sparsity - implied) > _FLOAT_NOISE:
            raise InvalidArgumentError(f"{nm[0]}:{nm[1]} is {implied:.4g} sparse, not {self.sparsity}")

    @property
    def is_base(self) -> bool:
        """No compression: the base's weights (measured on `eval_data` where given)."""
        return (self.sparsity == 0.0 and self.quant is None and self.snap is None and self.custom_recipe is None
                and not self.distill)

    @property
    def name(self) -> str:
        parts = [self.base.name]
        if self.nm is not None:
            prefix = {"gmp": "", "oneshot": "os"}.get(self.method, self.method)
            parts.append(f"{prefix}nm{self.nm[0]}{self.nm[1]}")
        elif self.sparsity > 0:
            budget = f"x{self.budget}" if self.budget > 1 else ""
            parts.append(f"{_METHOD_CODES[self.method]}{_percent(self.sparsity)}"
                         f"{_DISTRIBUTION_CODES.get(self.distribution, '')}{budget}")
        if self.snap is not None:
            parts.append(f"snap{self.snap}")
        if self.quant:
            parts.append(self.quant)
        if self.distill:
            parts.append("kd")
        if self.custom_recipe is not None:
            parts.append("r" + hashlib.sha256(self.custom_recipe.to_json().encode()).hexdigest()[:8])
        if self.has_user_data:
            parts.append("d" + data_tag(self.data_identity()))
        if is_hub_name(self.base.name) and len(parts) > 1:
            return f"{self.base.name}+{'_'.join(parts[1:])}"
        return "_".join(parts)

    @property
    def sparse_parent(self) -> VariantSpec | None:
        """For a default sparse + quantized variant, the sparse-only variant it is quantized from; the
        default recipe's steps are deterministic, so starting from the cached parent gives the same
        weights as running the whole recipe, without pruning and fine-tuning a second time. A distilled
        variant has none: its distillation step shapes every later fine-tuning step, so it runs whole."""
        if (self.custom_recipe is None and (self.sparsity > 0 or self.snap) and self.quant is not None
                and not self.distill):
            return VariantSpec(self.base, sparsity=self.sparsity, method=self.method,
                               distribution=self.distribution, budget=self.budget, snap=self.snap, nm=self.nm,
                               train_data=self.train_data, eval_data=self.eval_data, finetuning=self.finetuning)
        return None

    @property
    def repo_id(self) -> str:
        if self.is_base:
            return self.base.repo_id
        if is_hub_name(self.base.name):
            from zoo.hub_ids import variant_repo_name

            return f"zoo/{variant_repo_name(self.name)}"
        return f"zoo/{self.name}"

    def recipe(self, options: TrainOptions | None = None) -> Recipe:
        """The recipe that derives this variant from its base: the custom one, else the default (whose
        fine-tuning `options.finetune_epochs` may shorten)."""
        if self.custom_recipe is not None:
            return self.custom_recipe
        epochs = self.finetuning.epochs if self.finetuning is not None else None
        if epochs is not None and (options is None or options.finetune_epochs is None):
            options = dataclasses.replace(options or TrainOptions(), finetune_epochs=epochs)
        return default_recipe(self.recipe_entry, self.sparsity, self.quant, self.method, options,
                              distribution=self.distribution, budget=self.budget, snap=self.snap, nm=self.nm,
                              distill=self.distill)


def default_recipe(entry: ModelEntry, sparsity: float, quant: str | None, method: str,
                   options: TrainOptions | None = None, *, distribution: str = DEFAULT_DISTRIBUTION,
                   budget: int = 1, snap: int | None = None, nm: tuple[int, int] | None = None,
                   distill: bool = False) -> Recipe:
    """The zoo's default: gradual pruning (per layer, cubic schedule, `entry.keep_dense` modules left
    dense) fine-tuned for half the base's epochs (or `options.finetune_epochs`) at the base's peak
    learning rate, or one-shot global pruning; then int8 PTQ. Pruning removes single weights by
    magnitude, or whole blocks of `entry.prune_block` by mean magnitude (Sparse WaveRNN); methods
    "channels" and "heads" remove whole channels, or heads and FFN neurons (`_structured_step`);
    "rigl", "set" and "static" train the base's architecture sparse from scratch (`_sparse_training_step`).
    A low-bit `quant` adds QAT or post-training quantization (`_low_bit_step`); `distill` puts a
    distillation step from the dense base first (`_distill_step`)."""
    from zoo.compress.block import BlockPruningConfig, GradualBlockPruningConfig
    from zoo.compress.pruning import GradualMagnitudePruningConfig, MagnitudePruningConfig
    from zoo.compress.quantization import Int8PTQConfig
    from zoo.compress.recipe import Recipe

    check_sparsity(sparsity)
    quant = check_quant(quant)
    if method not in METHODS:
        raise InvalidArgumentError(f"unknown pruning method {method!r}; supported: {', '.join(METHODS)}")
    finetune_epochs = (options or TrainOptions()).finetune_epochs
    steps = []
    if nm is not None and method in SPARSE_TRAINING_METHODS:
        steps.append(_sparse_training_step(entry, sparsity, method, "uniform", budget, options, nm=nm))
    elif nm is not None:
        steps.append(_nm_step(entry, nm, method, finetune_epochs))
    elif sparsity > 0 and method == "gmp":
        if entry.train is None:
            raise InvalidArgumentError(f"{entry.name} has no training data here: use method='oneshot'")
        if finetune_epochs is None:
            finetune_epochs = max(1, round(entry.train.epochs * GMP_FINETUNE_EPOCH_FRACTION))
        schedule = dict(epochs=finetune_epochs, lr=entry.train.lr,
                        keep_dense=entry.keep_dense, scope="layer", optimizer=entry.train.optimizer)
        if entry.prune_block is None:
            steps.append(GradualMagnitudePruningConfig(final_sparsity=sparsity, **schedule))
        else:
            steps.append(GradualBlockPruningConfig(final_sparsity=sparsity, block=entry.prune_block, **schedule))
    elif sparsity > 0 and method in ("channels", "heads"):
        steps.append(_structured_step(entry, sparsity, method, finetune_epochs))
    elif sparsity > 0 and method == "es":
        steps.append(_es_step(entry, sparsity, finetune_epochs))
    elif sparsity > 0 and method in SPARSE_TRAINING_METHODS:
        steps.append(_sparse_training_step(entry, sparsity, method, distribution, budget, options))
    elif sparsity > 0:  # method == "oneshot"
        if entry.prune_block is None:
            steps.append(MagnitudePruningConfig(sparsity=sparsity, scope="global", keep_dense=entry.keep_dense))
        else:
            steps.append(BlockPruningConfig(sparsity=sparsity, block=entry.prune_block, scope="global",
                                            keep_dense=entry.keep_dense))
    if snap is not None:
        steps.append(_snap_step(entry, snap, options))
    if quant == "int8":
        steps.append(Int8PTQConfig(calibration_batches=8, keep_fp=()))
    elif quant is not None:
        steps.append(_low_bit_step(entry, quant, finetune_epochs))
    if distill:
        steps.insert(0, _distill_step(entry))
    return Recipe(tuple(steps))


def _low_bit_step(entry: ModelEntry, quant: str, finetune_epochs: int | None):
    """The default low-bit step of a scheme (`zoo.quant_schemes`): QAT fine-tuned for half the base's
    epochs (or `finetune_epochs`) at a tenth of its peak learning rate (`QAT_LR_FACTOR`), with its
    optimizer and weight decay; or post-training with GPTQ rounding on 8 calibration batches of the
    training split. Both keep the entry's `keep_dense` layers (its first and last, for most) in float,
    calibrate activation ranges at the 99.99th percentile, keep a pruned model's zeros, and clip 4- and
    2-bit weight ranges to the least rounding error (`_weight_range`)."""
    from zoo.compress.lowbit import QATConfig

    scheme = parse_quant(quant)
    grid = dict(bits_w=scheme.weight_bits, bits_a=scheme.act_bits, granularity=scheme.granularity,
                group_size=scheme.group_size, symmetric=scheme.symmetric, keep_fp=entry.keep_dense)
    if scheme.ptq:
        from zoo.compress.lowbit_ptq import LowBitPTQConfig

        return LowBitPTQConfig(rounding="gptq", weight_range=_weight_range(scheme.weight_bits), calibration_batches=8,
                               **grid)
    if entry.train is None:  # VariantSpec refuses it first; default_recipe is public
        raise InvalidArgumentError(f"{entry.name} has no training data here for QAT: use {quant}_ptq")
    if finetune_epochs is None:
        finetune_epochs = max(1, round(entry.train.epochs * GMP_FINETUNE_EPOCH_FRACTION))
    return QATConfig(weight_range=_weight_range(scheme.weight_bits), ste=scheme.proxy, weight_update="bcgd" if scheme.bcgd else "ste",
                     rho=BCGD_RHO if scheme.bcgd else 0.0, epochs=finetune_epochs, lr=entry.train.lr * QAT_LR_FACTOR,
                     weight_decay=entry.train.weight_decay, optimizer=entry.train.optimizer, **grid)


def _weight_range(bits: int | str) -> str:
    """4- and 2-bit grids take the least-error clipped range ("mse"): at 2 bits the full range rounds most
    weights to zero; 8-bit ones keep the int8 convention (absmax), binary and ternary their own rules."""
    return "mse" if bits in (4, 2) else "absmax"


def _distill_step(entry: ModelEntry):
    """Distillation from the dense base (the model the recipe starts from) for every later fine-tuning
    step: half task loss, half the teacher's logits at temperature 4 (Hinton et al.'s usual settings), or
    the MSE to its outputs for tasks whose outputs are not class scores."""
    from zoo.compress.distill import DistillationConfig
    from zoo.tasks import task_of

    logits_loss = task_of(entry).distill_logits_loss
    if logits_loss is None:
        raise InvalidArgumentError(f"{entry.name}'s task ({entry.task}) has no outputs a student can match to "
                                   "its teacher's: it cannot be distilled")
    return DistillationConfig(teacher="base", temperature=4.0, alpha=0.5, logits_loss=logits_loss)


def _structured_step(entry: ModelEntry, sparsity: float, method: str, finetune_epochs: int | None):
    """The default structured pruning step: `sparsity` of the channels (or of the heads and FFN
    neurons) removed in STRUCTURED_STEPS steps while fine-tuning as gradual magnitude pruning does
    (half the base's epochs at its peak learning rate and optimizer); `entry.keep_dense` layers keep
    their output channels."""
    from zoo.compress.structured import ChannelPruningConfig, HeadPruningConfig

    if entry.train is None:
        raise InvalidArgumentError(f"{entry.name} has no training data here to fine-tune while pruning")
    if finetune_epochs is None:
        finetune_epochs = max(1, round(entry.train.epochs * GMP_FINETUNE_EPOCH_FRACTION))
    schedule = dict(epochs=finetune_epochs, lr=entry.train.lr, steps=STRUCTURED_STEPS,
                    weight_decay=entry.train.weight_decay, optimizer=entry.train.optimizer)
    if method == "channels":
        return ChannelPruningConfig(sparsity=sparsity, keep=entry.keep_dense, **schedule)
    return HeadPruningConfig(sparsity=sparsity, **schedule)


def _sparse_training_step(entry: ModelEntry, sparsity: float, method: str, distribution: str, budget: int,
                          options: TrainOptions | None, nm: tuple[int, int] | None = None):
    """The default sparse training step: the base's own training run (its epochs, or `options.epochs`,
    times `budget`; its learning rate, optimizer and weight decay), sparse from the first step, from a
    fresh initialization; RigL's paper settings (drop fraction 0.3, updates until 75 % of training),
    the update interval spread over the run (`delta_t=None`), `entry.keep_dense` layers dense."""
    from zoo.compress.sparse_training import SparseTrainingConfig

    if entry.train is None:
        raise InvalidArgumentError(f"{entry.name} has no training data here to train sparse from scratch")
    epochs = (options or TrainOptions()).epochs or entry.train.epochs
    return SparseTrainingConfig(
        sparsity=sparsity, method=method, distribution=distribution, epochs=epochs * budget, lr=entry.train.lr,
        delta_t=None, drop_fraction=0.3, end_fraction=0.75, keep_dense=entry.keep_dense,
        weight_decay=entry.train.weight_decay, optimizer=entry.train.optimizer, from_scratch=True, nm=nm,
        ungroupable="refuse" if nm is None else "dense",
    )


def _es_step(entry: ModelEntry, sparsity: float, finetune_epochs: int | None):
    """The default ES-mask step: fine-tuning from the trained base as gradual magnitude pruning does
    (half the base's epochs at its peak learning rate and optimizer, `entry.keep_dense` dense), a
    population of 8 masks per step, each layer at `sparsity`; the sampled masks are evaluated one call
    each (`vectorized=False`: batch norm in training mode cannot be vmapped, and the default recipe is
    chosen without looking at the model)."""
    from zoo.compress.es_masks import ESMaskConfig

    if entry.train is None:
        raise InvalidArgumentError(f"{entry.name} has no training data here to train ES masks on")
    if finetune_epochs is None:
        finetune_epochs = max(1, round(entry.train.epochs * GMP_FINETUNE_EPOCH_FRACTION))
    return ESMaskConfig(sparsity=sparsity, epochs=finetune_epochs, lr=entry.train.lr, population=8, scope="layer",
                        keep_dense=entry.keep_dense, weight_decay=entry.train.weight_decay,
                        optimizer=entry.train.optimizer, vectorized=False)


def _nm_step(entry: ModelEntry, nm: tuple[int, int], method: str, finetune_epochs: int | None):
    """The default N:M step: one-shot, or gradual by sparse structure decay fine-tuned as gradual
    magnitude pruning is (half the base's epochs at its peak learning rate and optimizer); the entry's
    `keep_dense` layers stay dense, and so do the layers whose input channels do not split into groups
    of m (`ungroupable="dense"`: named in a warning, and by their non-zero counts in the report)."""
    from zoo.compress.nm import GradualNMPruningConfig, NMPruningConfig

    n, m = nm
    if method == "oneshot":
        return NMPruningConfig(n=n, m=m, keep_dense=entry.keep_dense, ungroupable="dense")
    if entry.train is None:
        raise InvalidArgumentError(f"{entry.name} has no training data here: use the one-shot _osnm{n}{m}")
    if finetune_epochs is None:
        finetune_epochs = max(1, round(entry.train.epochs * GMP_FINETUNE_EPOCH_FRACTION))
    return GradualNMPruningConfig(n=n, m=m, epochs=finetune_epochs, lr=entry.train.lr, keep_dense=entry.keep_dense,
                                  weight_decay=entry.train.weight_decay, optimizer=entry.train.optimizer,
                                  ungroupable="dense")


def _snap_step(entry: ModelEntry, n: int, options: TrainOptions | None):
    """The default SnAp step: one epoch of the entry's training data, fully online (weights updated at
    every step), Adam at 1e-3 (the rate bench_snap.py's character-level runs favoured for Adam, an order
    below their best shared rate; untuned on the families' own tasks), or `options.finetune_epochs`."""
    from zoo.compress.snap import SnApTrainingConfig

    epochs = (options or TrainOptions()).finetune_epochs or 1
    return SnApTrainingConfig(n=n, lr=1e-3, epochs=epochs, update_every=1, optimizer="adam")


_PLACEHOLDER_BASE = "base.name"  # a Hub variant's suffix is parsed as that of a variant of this name


def _suffix_match(name: str) -> re.Match | None:
    """The suffix grammar's match of a registry variant name, or of an `hf-hub:...+suffix` one's suffix."""
    if "+" in name:
        match = _SUFFIX_RE.fullmatch(f"{_PLACEHOLDER_BASE}_{name.partition('+')[2]}")
        return match if match is not None and match["base"] == _PLACEHOLDER_BASE else None
    return _SUFFIX_RE.fullmatch(name)


def is_custom_recipe_name(name: str) -> bool:
    """Whether `name` cannot be derived from itself: a custom-recipe variant (`..._r<hash>`: its recipe is in
    its repo, not its name) or one made on the user's data (`..._d<hash>`: so are the data's description)."""
    match = _suffix_match(name)
    return bool(match and (match["hash"] or match["data"]))


def user_data_tag(name: str) -> str | None:
    """The `_d<hash>` of a variant made on user data (the 8 hex digits), None for any other name."""
    match = _suffix_match(name)
    return match["data"] if match else None


def parse_variant_name(name: str) -> tuple[str, dict]:
    """`resnet18.zoo_digits_gmp90_int8` -> ("resnet18.zoo_digits", {sparsity: 0.9, quant: "int8",
    method: "gmp"}); `hf-hub:acme/r18+os50` -> ("hf-hub:acme/r18", {sparsity: 0.5, method: "oneshot"}).
    Custom-recipe names (`_r<hash>`) and user-data ones (`_d<hash>`) cannot be derived again from their name alone."""
    match = _suffix_match(name)
    if not match or match["hash"] or match["data"]:
        return name, {}
    kwargs: dict = {}
    if match["n"]:
        kwargs["method"] = {None: "gmp", "os": "oneshot"}.get(match["nmmethod"], match["nmmethod"])
        kwargs["nm"] = (int(match["n"]), int(match["m"]))
    if match["method"]:
        kwargs["method"] = {v: k for k, v in _METHOD_CODES.items()}[match["method"]]
        kwargs["sparsity"] = float(match["pct"].replace("p", ".")) / 100
        if match["dist"]:
            kwargs["distribution"] = {v: k for k, v in _DISTRIBUTION_CODES.items()}[match["dist"]]
        if match["budget"]:
            kwargs["budget"] = int(match["budget"])
    if match["snap"]:
        kwargs["snap"] = int(match["snap"])
    if match["quant"]:
        kwargs["quant"] = match["quant"]
    if match["kd"]:
        kwargs["distill"] = True
    return (name.partition("+")[0] if "+" in name else match["base"]), kwargs


def resolve(
    name: str, *, sparsity: float = 0.0, quant: str | None = None, method: str | None = None,
    recipe: Recipe | None = None, train_data: UserData | None = None, eval_data: UserData | None = None,
    finetuning: FineTuning | None = None, store: Store | None = None, endpoint: str | None = None,
    revision: str | None = None,
) -> VariantSpec:
    """The VariantSpec for a base name plus arguments, or for a variant name such as
    `resnet18.zoo_digits_gmp90_int8` (then no further compression arguments are accepted). A Hub id
    (`hf-hub:org/name[@revision][+variant]` or `org/name`) reads its repo (zoo.hub_ids: `store`'s local
    hub, the Hugging Face cache, then `endpoint`) at `revision` (or the one the name gives) for its entry.
    With `train_data`, fine-tuning methods and QAT are the defaults even for an upstream entry."""
    from zoo.hub_ids import is_hub_reference

    tag = user_data_tag(name) if isinstance(name, str) and name not in MODELS else None
    if tag is not None:
        base_name = name[: -len("_d" + tag)]
        raise InvalidArgumentError(f"{name!r} was made on the user's data (d{tag}): the name does not say which; "
                                   f"load {base_name!r} with the same train_data / eval_data")
    user = dict(train_data=train_data, eval_data=eval_data, finetuning=finetuning)
    if is_hub_reference(name):
        entry, parsed = _hub_base(name, store=store, endpoint=endpoint, revision=revision)
    elif revision is not None:
        raise InvalidArgumentError(f"{name!r} is not a Hub id: a revision applies to Hub ids (hf-hub:org/name)")
    elif name in MODELS or "_" not in name.rpartition(".")[2]:
        entry, parsed = get_entry(name), {}
    else:
        base_name, parsed = parse_variant_name(name)
        if not parsed:
            get_entry(name)  # raises UnknownNameError listing close names
        entry = get_entry(base_name)
    if parsed and (sparsity or quant or recipe is not None or method):
        raise InvalidArgumentError(f"{name!r} already names a variant; pass its base name with arguments instead")
    if parsed:
        return VariantSpec(entry, **parsed, **user)
    trains = entry.train is not None or train_data is not None
    return VariantSpec(entry, sparsity=sparsity, quant=default_quant(quant, trains),
                       method=method or ("gmp" if trains else "oneshot"), custom_recipe=recipe, **user)


def _hub_base(name: str, *, store: Store | None, endpoint: str | None,
              revision: str | None) -> tuple[ModelEntry, dict]:
    """The entry a Hub id's repo makes and the compression its `+suffix` names."""
    from zoo.hub_ids import hub_entry, parse_hub_reference

    reference = parse_hub_reference(name)
    if reference.revision is not None and revision not in (None, "main", reference.revision):
        raise InvalidArgumentError(f"{name!r} names revision {reference.revision!r}; revision={revision!r} contradicts it")
    parsed: dict = {}
    if reference.suffix is not None:
        variant = f"{reference.entry_name}+{reference.suffix}"
        if is_custom_recipe_name(variant):
            raise InvalidArgumentError(f"{name!r} is a custom-recipe variant: its recipe is in its repo, not its name; "
                                       "load the repo it was published to")
        _, parsed = parse_variant_name(variant)
        if not parsed:
            raise InvalidArgumentError(f"{name!r}: {reference.suffix!r} is not a variant suffix (e.g. os50, gmp90_int8, w4_ptq)")
    entry = hub_entry(reference.repo_id, reference.revision or revision or "main", store=store, endpoint=endpoint)
    return entry, parsed


def default_method(entry: ModelEntry) -> str:
    """Gradual pruning with fine-tuning where the zoo has the entry's training data, else one-shot."""
    return "gmp" if entry.train is not None else "oneshot"


def info(name: str, *, store: Store | None = None, endpoint: str | None = None) -> dict:
    """What the zoo knows of a name: its registry entry (for a variant, the base's) and the variant; a
    Hub id's entry is read from its repo (`store`'s local hub, the Hugging Face cache, `endpoint`)."""
    spec = resolve(name, store=store, endpoint=endpoint)
    return {"name": spec.name, "repo_id": spec.repo_id, "entry": spec.base.to_dict(),
            "sparsity": spec.sparsity, "quant": spec.quant,
            "recipe": spec.recipe().to_list() if not spec.is_base else None}
