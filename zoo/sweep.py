"""The main job: derive a family of variants of a base model, measure them, write their cards with the
accuracy-vs-FLOPs plot, and publish every one to the local hub. Under torchrun every rank trains;
rank 0 alone writes, publishes and shows progress (zoo.api, zoo.publish)."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn
from tqdm.auto import tqdm

from zoo.api import load, resolve
from zoo.distributed import is_main
from zoo.errors import InvalidArgumentError
from zoo.publish import FamilyCards, cards_of_models, push_variant, write_family_cards
from zoo.store import Store
from zoo.variants import VariantSpec

DEFAULT_BASE = "resnet18.zoo_digits"
DEFAULT_SPARSITIES = (0.5, 0.8, 0.9, 0.95, 0.98)  # up to 98 %: where the accuracy curves bend
DEFAULT_STRUCTURED = (0.5,)
DEFAULT_LOW_BIT = ("w8a8", "w4", "w2")  # QAT where the base trains, post-training (GPTQ) otherwise


@dataclass(frozen=True)
class SweepPlan:
    """Which variants of `base` to build: gradual pruning at each sparsity, one-shot pruning at the
    `oneshot` sparsities (to show what fine-tuning buys), structured pruning (the base's own kind:
    channels or heads, `ModelEntry.structured`) at the `structured` fractions where the base has one,
    int8 alone and int8 on the `int8_sparsities`, and each `low_bit` scheme (`zoo.quant_schemes`) of the
    dense base."""

    base: str = DEFAULT_BASE
    sparsities: tuple[float, ...] = DEFAULT_SPARSITIES
    oneshot: tuple[float, ...] = (0.9,)
    structured: tuple[float, ...] = DEFAULT_STRUCTURED
    int8: bool = True
    int8_sparsities: tuple[float, ...] = (0.9,)
    low_bit: tuple[str, ...] = DEFAULT_LOW_BIT
    specs: list[VariantSpec] = field(init=False, default_factory=list)

    def __post_init__(self) -> None:
        specs = [resolve(self.base)]
        specs += [resolve(self.base, sparsity=s, method="gmp") for s in self.sparsities]
        specs += [resolve(self.base, sparsity=s, method="oneshot") for s in self.oneshot]
        structured = specs[0].base.structured
        if structured is not None:
            specs += [resolve(self.base, sparsity=s, method=structured) for s in self.structured]
        if self.int8:
            specs.append(resolve(self.base, quant="int8"))
            specs += [resolve(self.base, sparsity=s, quant="int8", method="gmp") for s in self.int8_sparsities]
        specs += [resolve(self.base, quant=scheme) for scheme in self.low_bit]
        names = [spec.name for spec in specs]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:  # refused now, not after deriving every variant (the family table refuses them too)
            raise InvalidArgumentError(f"the sweep would build {', '.join(repeated)} more than once")
        self.specs.extend(specs)


@dataclass(frozen=True)
class SweepResult:
    family: FamilyCards
    revisions: dict[str, str]
    cards_written: list[Path]


def run_sweep(plan: SweepPlan, *, store: Store | None = None, cards_dir: Path | None = None,
              publish: bool = True, progress: bool = True) -> SweepResult:
    """Loads (deriving where needed) every variant of the plan, builds and validates the cards, writes
    them under `cards_dir` if given, and pushes each variant to the local hub if `publish`."""
    store = store or Store()
    models: list[nn.Module] = []
    for spec in tqdm(plan.specs, desc=f"variants of {plan.base}", disable=not progress or not is_main(), unit="variant"):
        models.append(load(spec, store=store, progress=progress))
    base = plan.specs[0].base
    family = cards_of_models(base, models, store, progress=progress)
    written = write_family_cards(family, cards_dir) if cards_dir is not None else []
    revisions: dict[str, str] = {}
    if publish:
        for spec, model in tqdm(list(zip(plan.specs, models)), desc="publish", disable=not progress or not is_main(), unit="repo"):
            revisions[spec.name] = push_variant(model, family.cards[spec.name], family, repo_id=spec.repo_id,
                                                hub=store.hub)
    return SweepResult(family, revisions, written)


def sweep_names(plan: SweepPlan) -> Sequence[str]:
    return [spec.name for spec in plan.specs]
