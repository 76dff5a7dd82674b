"""The vision family's entries: image classifiers through timm (ResNet, MobileNet, EfficientNet, and every
architecture of timm's catalog).

Three kinds of entries: zoo-native models trained here on scikit-learn's digits (`resnet18.zoo_digits`...),
so that the whole zoo runs offline; timm's whole catalog of pretrained checkpoints on the Hugging Face Hub
(`resnet50.a1_in1k`, `test_resnet.r160_in1k`... every `timm.list_pretrained()` name), made on demand from
timm's own pretrained configs (the `timm` catalog of `zoo.models.CATALOGS`: nothing registered one by
one, timm imported only when the catalog is asked); and timm repos on the Hub that are not in the catalog,
read from their `config.json` (`hf-hub:org/name`, the `timm` repo reader). `test_*` architectures are
timm's tiny test models: real, fast, used by the tests.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from zoo.entry import DataSpec, InputSpec, ModelEntry, TrainSpec, is_hub_name
from zoo.models import CATALOGS, EntryCatalog, register_entry
from zoo.repo_readers import REPO_READERS, RepoSnapshot
from zoo.userdata import LABEL_NAMES, TaskDefaults

TASKS = ("image-classification",)
DATASETS = ("digits", "imagefolder")
# The user's images (zoo.userdata): an entry without a TrainSpec (timm's ImageNet checkpoints) fine-tunes on
# them as a timm fine-tune usually does: SGD with Nesterov momentum at 0.01 (cosine, warm-up), batch 32,
# weight decay 1e-4, label smoothing 0.1, for 5 epochs (half of `epochs`, as the default recipes take).
USER_DATA_TASKS = {"image-classification": TaskDefaults(epochs=10, lr=0.01, batch_size=32, optimizer="sgd",
                                                         weight_decay=1e-4, label_smoothing=0.1)}


def _imagenet_synsets() -> tuple[str, ...]:
    from timm.data import ImageNetInfo

    return tuple(ImageNetInfo().label_names())  # WordNet ids (n01440764, ...): ImageNet folders' class names


LABEL_NAMES.register("digits", lambda: tuple(str(i) for i in range(10)))
LABEL_NAMES.register("imagenet-1k", _imagenet_synsets)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DIGITS_INPUT = InputSpec(channels=1, size=(32, 32), mean=(0.305,), std=(0.375,))
IMAGENET_EVAL = DataSpec("imagefolder", "val")

RESNET_KEEP_DENSE = (r"conv1(\..*)?", "fc")
MOBILE_KEEP_DENSE = ("conv_stem", "classifier")

# Label sets by class count, as timm's pretrained tags name them (in1k, in12k, in22k).
LABEL_SETS = {1000: "imagenet-1k", 11821: "imagenet-12k", 21841: "imagenet-22k", 21842: "imagenet-22k",
              21843: "imagenet-22k"}
# Architectures whose channel pruning (torch-pruning's dependency graph, the timm pruned-model string) the
# tests exercise: plain ResNets, MobileNetV2, EfficientNet-B*, and timm's test models of both.
CHANNEL_PRUNED_ARCHS = re.compile(r"resnet\d+|mobilenetv2_\d+|efficientnet_b\d|test_resnet|test_efficientnet")


# The `ModelEntry.family` names the vision family's builder serves, in order (a dict as an ordered set):
# resnet, mobilenet, efficientnet, and the family of every entry made from timm's catalog or a timm repo so
# far (timm's module name for the architecture, `timm_family`). An entry of such a family exists only once
# the catalog made it, so `zoo.families`' lazy lookup finds its builder here without importing timm first.
MODEL_FAMILIES: dict[str, None] = dict.fromkeys(("resnet", "mobilenet", "efficientnet"))


def timm_family(arch: str) -> str:
    """The zoo family of a timm architecture: `mobilenet` for every MobileNet, else the timm module that
    defines it (`resnet`, `efficientnet`, `convnext`, `vision_transformer`...). Imports timm."""
    from timm.models import model_entrypoint

    family = "mobilenet" if arch.startswith("mobilenet") else model_entrypoint(arch).__module__.rpartition(".")[2]
    MODEL_FAMILIES[family] = None
    return family


def _as_tuple(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    return tuple(value) if isinstance(value, (list, tuple)) else (value,)


def timm_entry(name: str, arch: str, cfg: Mapping[str, Any], *, repo_id: str, revision: str = "main",
               num_classes: int | None = None, model_kwargs: Mapping[str, Any] | None = None,
               description: str) -> ModelEntry:
    """An upstream image classifier from a timm pretrained config (`PretrainedCfg` fields as a mapping):
    its input size, normalization and evaluation crop; its first conv and classifier kept dense (as
    regular expressions matching those modules and their children); channel pruning where the tests
    exercise it for the architecture (`CHANNEL_PRUNED_ARCHS`). `num_classes` 0 (a feature extractor) makes
    an entry that is listed but refused as a classifier (the task's `check_entry`)."""
    num_classes = cfg.get("num_classes", 1000) if num_classes is None else num_classes
    channels, height, width = cfg.get("input_size", (3, 224, 224))
    keep = (*_as_tuple(cfg.get("first_conv")), *_as_tuple(cfg.get("classifier")))
    return ModelEntry(
        name=name, family=timm_family(arch), task="image-classification", repo_id=repo_id, source="upstream",
        input=InputSpec(channels=channels, size=(height, width), mean=tuple(cfg.get("mean", IMAGENET_MEAN)),
                        std=tuple(cfg.get("std", IMAGENET_STD)), crop_pct=cfg.get("crop_pct", 0.875),
                        interpolation=cfg.get("interpolation", "bicubic")),
        num_classes=num_classes, label_set=LABEL_SETS.get(num_classes, f"{num_classes} classes" if num_classes else ""),
        eval_data=IMAGENET_EVAL, keep_dense=tuple(re.escape(module) + r"(\..*)?" for module in keep),
        structured="channels" if CHANNEL_PRUNED_ARCHS.fullmatch(arch) else None,
        model_kwargs=dict(model_kwargs or {}), revision=revision, license=cfg.get("license") or "unknown",
        description=description, architecture=arch if is_hub_name(name) else "",
    )


@lru_cache(maxsize=1)
def _timm_names() -> frozenset[str]:
    import timm

    return frozenset(timm.list_pretrained())


@lru_cache(maxsize=None)
def _timm_catalog_entry(name: str) -> ModelEntry | None:
    """The catalog entry of a timm pretrained name, from `timm.models.get_pretrained_cfg`; None for a
    name timm has no pretrained config for. Built once per name."""
    if name not in _timm_names():
        return None
    from timm.models import get_pretrained_cfg

    arch, _, tag = name.partition(".")
    cfg = get_pretrained_cfg(name)
    what = f"{cfg.num_classes}-class classifier" if cfg.num_classes else "feature extractor (no classifier)"
    return timm_entry(name, arch, cfg.to_dict(), repo_id=cfg.hf_hub_id or "",
                      model_kwargs={"pretrained_cfg": tag},
                      description=f"timm's {name} checkpoint, a {what}"
                                  + (f" ({cfg.paper_name})" if cfg.paper_name else "")
                                  + (f"; weights at {cfg.hf_hub_id} on the Hugging Face Hub." if cfg.hf_hub_id
                                     else "; timm hosts its weights outside the Hugging Face Hub."))


CATALOGS.register("timm", EntryCatalog(names=_timm_names, entry=_timm_catalog_entry))


@REPO_READERS.decorator("timm")
def read_timm_repo(repo: RepoSnapshot) -> ModelEntry | None:
    """A repo written by timm's `push_to_hub` / `save_for_hf` (`config.json` with `architecture` and
    `pretrained_cfg`): the catalog entry `architecture.tag`, pinned to the repo's commit, when the catalog
    hosts that name at this repo; else an entry `hf-hub:org/name` from the repo's own config."""
    config = repo.config
    if not isinstance(config.get("architecture"), str) or not isinstance(config.get("pretrained_cfg"), Mapping):
        return None
    import dataclasses

    from timm.models import is_model

    arch, cfg = config["architecture"], config["pretrained_cfg"]
    if not is_model(arch):
        from zoo.errors import UnsupportedModelError

        raise UnsupportedModelError(f"{repo.repo_id} is a timm repo of architecture {arch!r}, which this timm "
                                    "does not have")
    cataloged = _timm_catalog_entry(f"{arch}.{cfg.get('tag')}") if cfg.get("tag") else None
    if cataloged is not None and cataloged.repo_id == repo.repo_id:
        return dataclasses.replace(cataloged, revision=repo.commit)
    num_classes = config.get("num_classes", cfg.get("num_classes", 1000))
    kwargs = {**(config.get("model_args") or {}), "num_classes": num_classes}
    return timm_entry(repo.entry_name, arch, cfg, repo_id=repo.repo_id, revision=repo.commit,
                      num_classes=num_classes, model_kwargs=kwargs,
                      description=f"timm {arch} weights from the Hub repo {repo.repo_id} (commit {repo.commit[:12]}).")


def _digits(arch: str, family: str, epochs: int, keep_dense: tuple[str, ...], lr: float, what: str) -> ModelEntry:
    return register_entry(ModelEntry(
        name=f"{arch}.zoo_digits", family=family, task="image-classification", repo_id=f"zoo/{arch}.zoo_digits",
        source="zoo", input=DIGITS_INPUT, num_classes=10, label_set="digits",
        eval_data=DataSpec("digits", "test"), model_kwargs={"num_classes": 10, "in_chans": 1},
        train=TrainSpec(data=DataSpec("digits", "train"), epochs=epochs, lr=lr), keep_dense=keep_dense,
        structured="channels",
        description=f"{what} trained by the zoo on scikit-learn's digits (8x8 upsampled to 32x32, grey).",
    ))


_digits("resnet18", "resnet", 12, RESNET_KEEP_DENSE, 0.05, "timm's ResNet-18")
_digits("mobilenetv2_050", "mobilenet", 20, MOBILE_KEEP_DENSE, 0.05, "timm's MobileNetV2 at width 0.5")
_digits("efficientnet_b0", "efficientnet", 15, MOBILE_KEEP_DENSE, 0.05, "timm's EfficientNet-B0")
_digits("test_resnet", "resnet", 10, RESNET_KEEP_DENSE, 0.05, "timm's tiny test ResNet")
_digits("test_efficientnet", "efficientnet", 10, MOBILE_KEEP_DENSE, 0.05, "timm's tiny test EfficientNet")
