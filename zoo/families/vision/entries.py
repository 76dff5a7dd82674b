"""The vision family's entries: image classifiers through timm (ResNet, MobileNet, EfficientNet).

Two kinds of entries: upstream timm checkpoints on the Hugging Face Hub (`resnet50.a1_in1k`...), and
zoo-native models trained here on scikit-learn's digits (`resnet18.zoo_digits`...), so that the whole
zoo runs offline. `test_*` entries are timm's tiny test architectures: real, fast, used by the tests.
"""
from __future__ import annotations

from zoo.entry import DataSpec, InputSpec, ModelEntry, TrainSpec
from zoo.models import register_entry
from zoo.userdata import LABEL_NAMES, TaskDefaults

MODEL_FAMILIES = ("resnet", "mobilenet", "efficientnet")
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


def _upstream(name: str, family: str, size: int, keep_dense: tuple[str, ...], crop_note: str, *,
              crop_pct: float, interpolation: str = "bicubic", mean: tuple[float, ...] = IMAGENET_MEAN,
              std: tuple[float, ...] = IMAGENET_STD) -> ModelEntry:
    return register_entry(ModelEntry(
        name=name, family=family, task="image-classification", repo_id=f"timm/{name}", source="upstream",
        input=InputSpec(channels=3, size=(size, size), mean=mean, std=std, crop_pct=crop_pct,
                        interpolation=interpolation),
        num_classes=1000, label_set="imagenet-1k", eval_data=IMAGENET_EVAL, keep_dense=keep_dense,
        structured="channels",
        description=f"timm's {name} ImageNet-1k checkpoint ({crop_note}).",
    ))


_upstream("resnet50.a1_in1k", "resnet", 224, RESNET_KEEP_DENSE, "ResNet strikes back A1 recipe", crop_pct=0.95)
_upstream("mobilenetv2_100.ra_in1k", "mobilenet", 224, MOBILE_KEEP_DENSE, "RandAugment recipe", crop_pct=0.875)
_upstream("efficientnet_b0.ra_in1k", "efficientnet", 224, MOBILE_KEEP_DENSE, "RandAugment recipe", crop_pct=0.875)
_upstream("test_resnet.r160_in1k", "resnet", 160, RESNET_KEEP_DENSE, "timm's tiny test model", crop_pct=0.95,
          interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
_upstream("test_efficientnet.r160_in1k", "efficientnet", 160, MOBILE_KEEP_DENSE, "timm's tiny test model",
          crop_pct=0.95)


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
