"""The invertible family's entries: IRN x2/x4 (image-rescaling) and ILC at five rates
(image-compression), see `model.py`, trained on patches of scikit-image's bundled photographs
(`data.py`); `test_irn.zoo_skimage` and `test_ilc.zoo_skimage` are tiny versions used by the tests.
`PatchInput` says what these models eat."""
from __future__ import annotations

from dataclasses import dataclass

from zoo.entry import DataSpec, ModelEntry, TrainSpec, register_input_type
from zoo.errors import InvalidArgumentError
from zoo.models import register_entry

MODEL_FAMILIES = ("irn", "ilc")
TASKS = ("image-rescaling", "image-compression")
DATASET_NAME = "skimage_patches"
DATASETS = (DATASET_NAME,)


@register_input_type  # a checkpoint config may record it (zoo.hub_ids.entry_record)
@dataclass(frozen=True)
class PatchInput:
    """What an image-to-image model eats: RGB patches of `patch` x `patch` pixels in [0, 1];
    `train_stride` is the grid stride of training patches (None: 3/4 of the patch)."""

    patch: int
    train_stride: int | None = None
    channels: int = 3

    def __post_init__(self) -> None:
        if isinstance(self.patch, bool) or not isinstance(self.patch, int) or self.patch < 8:
            raise InvalidArgumentError(f"patch must be an integer >= 8, got {self.patch!r}")
        stride = self.train_stride
        if stride is not None and (isinstance(stride, bool) or not isinstance(stride, int) or stride < 1):
            raise InvalidArgumentError(f"train_stride must be a positive integer or None, got {stride!r}")
        if self.channels != 3:
            raise InvalidArgumentError(f"the scikit-image photographs are RGB (3 channels), not {self.channels}")

    def example_shape(self, batch: int = 1) -> tuple[int, int, int, int]:
        return (batch, self.channels, self.patch, self.patch)


def _entry(name: str, family: str, task: str, patch: PatchInput, model_kwargs: dict, train: TrainSpec,
           description: str, compare_with: tuple[str, ...] = ()) -> ModelEntry:
    return register_entry(ModelEntry(
        name=name, family=family, task=task, repo_id=f"zoo/{name}", source="zoo", input=patch,
        eval_data=DataSpec(DATASET_NAME, "test"), model_kwargs=model_kwargs, train=train, description=description,
        compare_with=compare_with,
    ))


def _adamw(epochs: int, lr: float, batch_size: int = 16) -> TrainSpec:
    """Adam as IRN (weight decay 1e-5), with the zoo's warm-up + cosine schedule."""
    return TrainSpec(data=DataSpec(DATASET_NAME, "train"), epochs=epochs, batch_size=batch_size, lr=lr,
                     weight_decay=1e-5, label_smoothing=0.0, optimizer="adamw")


# The zoo's entries sample z ~ N(0, GAUSSIAN_SCALE^2 I), not N(0, I). The Haar detail bands of these
# photos have a standard deviation of about 0.017, while unit-variance z, spread by the inverse Haar
# transform, puts noise of std 1.7 on every pixel (6 dB from an untrained net). The paper's net learns
# over 500k steps to damp it; the loss sum z^2 pulls the forward z towards 0 rather than to unit
# variance, so the damping it can reach is set by how well HF is predicted from LR, and in a few hundred
# steps the tiny nets stayed at 22 dB (x2) against bicubic's 39.7. At this scale the sampled z costs
# under 1 dB against z = 0 (the task reports both: psnr and psnr_z0).
GAUSSIAN_SCALE = 1e-3
_PHOTOS = "32x32 patches of scikit-image's bundled photographs (held out for testing: chelsea, rocket)"
# The paper's clamp is 1 with 8 blocks per level; with 2-4 blocks, clamp 2 keeps the same bound on how
# much the blocks together can scale (and so, going back, damp a sampled z): exp(clamp * blocks).
_NATIVE_INPUT = PatchInput(32, train_stride=48)
_TEST_INPUT = PatchInput(32, train_stride=128)
_entry("irn_x2.zoo_skimage", "irn", "image-rescaling", _NATIVE_INPUT,
       {"scale": 2, "blocks": 4, "gc": 8, "clamp": 2.0, "gaussian_scale": GAUSSIAN_SCALE}, _adamw(12, 1e-3),
       f"Invertible rescaling x2 (IRN: Haar + 4 coupling blocks, dense blocks gc=8, clamp 2, z sampled from "
       f"N(0, {GAUSSIAN_SCALE:g}^2 I)), trained by the zoo on {_PHOTOS}.")
_entry("irn_x4.zoo_skimage", "irn", "image-rescaling", _NATIVE_INPUT,
       {"scale": 4, "blocks": 2, "gc": 8, "clamp": 2.0, "gaussian_scale": GAUSSIAN_SCALE}, _adamw(12, 1e-3),
       f"Invertible rescaling x4 (IRN: 2 x (Haar + 2 coupling blocks), gc=8, clamp 2, z sampled from "
       f"N(0, {GAUSSIAN_SCALE:g}^2 I)), trained by the zoo on {_PHOTOS}.")
# ILC at five rates, as learned codecs are published (one model per quality level, CompressAI's
# convention): `ilc.zoo_skimage` is lambda = 0.01, `_q1`..`_q5` span 0.001..0.1 (q3 is ilc.zoo_skimage
# itself); its cards draw them all on one rate-distortion curve.
ILC_QUALITIES = {1: 0.001, 2: 0.003, 4: 0.03, 5: 0.1}


def _ilc(name: str, rate_lambda: float, compare_with: tuple[str, ...] = ()) -> ModelEntry:
    return _entry(name, "ilc", "image-compression", _NATIVE_INPUT,
                  {"levels": 2, "blocks": 2, "gc": 8, "clamp": 2.0, "latent_channels": 3, "rate_lambda": rate_lambda,
                   "gaussian_scale": GAUSSIAN_SCALE}, _adamw(4, 1e-3),
                  f"Invertible lossy compression (ILC: a 2 x (Haar + 2 coupling blocks) invertible encoder, "
                  f"factorized logistic entropy model, lambda={rate_lambda:g}, z sampled from N(0, "
                  f"{GAUSSIAN_SCALE:g}^2 I)), trained by the zoo on {_PHOTOS}.", compare_with)


ILC_RATE_ENTRIES = tuple(_ilc(f"ilc.zoo_skimage_q{quality}", rate_lambda)
                         for quality, rate_lambda in ILC_QUALITIES.items())
_ilc("ilc.zoo_skimage", 0.01, compare_with=tuple(entry.name for entry in ILC_RATE_ENTRIES))
_entry("test_irn.zoo_skimage", "irn", "image-rescaling", _TEST_INPUT,
       {"scale": 2, "blocks": 1, "gc": 4, "gaussian_scale": GAUSSIAN_SCALE},
       _adamw(12, 1e-3, 32), "A tiny IRN x2 (1 coupling block, gc=4) for the tests.")
_entry("test_ilc.zoo_skimage", "ilc", "image-compression", _TEST_INPUT,
       {"levels": 1, "blocks": 1, "gc": 4, "latent_channels": 3, "rate_lambda": 0.01, "gaussian_scale": GAUSSIAN_SCALE},
       _adamw(2, 2e-3, 32),
       "A tiny ILC (1 Haar level, 1 coupling block, gc=4) for the tests.")
