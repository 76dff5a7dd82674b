"""Tasks of the invertible image models: image rescaling (IRN) and lossy image compression (ILC).

Training objectives (all sums are divided by the number of HR pixel values, B * 3 * H * W, which keeps
the paper's ratios between terms and gives a loss of order 1 for SGD or AdamW):
- IRN: guide * sum (lr - bicubic_down(x))^2 + reconstruction * sum |x - upscale(Q(lr), z~N(0, I))|
  + distribution * sum z^2, Q the 8-bit rounding with a straight-through gradient;
- ILC: bits per pixel + lambda * 255^2 * MSE(x, decode(round(y), z~N(0, I))) + distribution * sum z^2
  (per HR value, as for IRN): the rate-distortion trade-off is set by lambda.
Metrics via torchmetrics: PSNR (per patch, data range 1, then averaged) and SSIM (Gaussian 11x11,
averaged over patches) of the decoded image quantized to 8 bits, against the original patch, decoded
from a sample of z ~ N(0, s^2 I) (s: the model's `gaussian_scale`), as the papers evaluate; beside it
`psnr_z0`, the PSNR decoded from z = 0 (the mode of the prior), which shows how much the sampled z
costs. For rescaling also PSNR of the 8-bit LR image against bicubic downscaling; for compression the
bits per pixel given by the entropy model. z is sampled with a fixed seed, so evaluations repeat exactly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torchmetrics.functional.image import peak_signal_noise_ratio
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure
from tqdm.auto import tqdm

from zoo.data import Batches
from zoo.entry import ModelEntry
from zoo.errors import InvalidArgumentError
from zoo.families.invertible.model import (
    CodecOutput, RescalingOutput, quantize_8bit, round_ste, sample_latent,
)
from zoo.runtimes.signature import GraphSignature, RunGraph, batch_axes
from zoo.tasks import LOCAL_METRIC, MetricPlot, MetricSpec, Task, TaskResult, register_task

EVAL_SEED = 0
PSNR = MetricSpec("psnr", "PSNR", "psnr", higher_is_better=True, unit="dB")
SSIM = MetricSpec("ssim", "SSIM", "ssim", higher_is_better=True, unit="")
PSNR_Z0 = MetricSpec("psnr_z0", "PSNR decoded from z = 0 (the mode)", "psnr", higher_is_better=True, unit="dB")
PSNR_LR = MetricSpec("psnr_lr", "PSNR of the LR image vs bicubic", "psnr", higher_is_better=True, unit="dB")
BPP = MetricSpec("bpp", "bits per pixel", "bpp", higher_is_better=False, unit="bpp")
PATCH_MEAN = "patch-mean"
PATCH_MEAN_MEANING = "per held-out patch, then the mean over patches"


def bicubic_down(x: torch.Tensor, scale: int) -> torch.Tensor:
    """Bicubic downscaling by `scale` with anti-aliasing (as MATLAB's imresize, the papers' reference)."""
    return F.interpolate(x, scale_factor=1 / scale, mode="bicubic", antialias=True, align_corners=False)


def bicubic_up(x: torch.Tensor, scale: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False)


def to_8bit(x: torch.Tensor) -> torch.Tensor:
    """What an image file would hold: clamped to [0, 1] and rounded to 8 bits."""
    return torch.round(x.clamp(0, 1) * 255) / 255


def bicubic_round_trip(x: torch.Tensor, scale: int) -> torch.Tensor:
    """The baseline IRN is compared with: bicubic down, 8-bit LR, bicubic up, 8-bit HR."""
    return to_8bit(bicubic_up(to_8bit(bicubic_down(x, scale)), scale))


def patch_psnr(decoded: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """PSNR (data range 1) of each patch, (B,)."""
    return peak_signal_noise_ratio(decoded, x, data_range=1.0, reduction="none", dim=(1, 2, 3)).reshape(-1)


def irn_loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """IRN's three losses (weights from the model's configuration), per HR pixel value."""
    out = model(x)
    guide = (out.lr - bicubic_down(x, model.scale)).pow(2).sum()
    reconstruction = (x - out.hr).abs().sum()
    distribution = out.z.pow(2).sum()
    return (model.guide_weight * guide + model.reconstruction_weight * reconstruction
            + model.distribution_weight * distribution) / x.numel()


def ilc_loss(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Rate (bits per pixel) + lambda * 255^2 * MSE + distribution matching of z (per HR value)."""
    out = model(x)
    bpp = out.bits.sum() / (x.shape[0] * x.shape[-2] * x.shape[-1])
    distortion = F.mse_loss(out.image, x) * 255 ** 2
    return bpp + model.rate_lambda * distortion + model.distribution_weight * out.z.pow(2).sum() / x.numel()


def _images(batch: Any) -> torch.Tensor:
    images = batch[0] if isinstance(batch, (tuple, list)) else batch
    if not isinstance(images, torch.Tensor) or images.dim() != 4:
        raise InvalidArgumentError("image tasks take batches of (B, C, H, W) images")
    return images


class _ImageToImage(Task):
    """Shared parts: patches in, patches out; metrics averaged over held-out patches."""

    average = PATCH_MEAN
    average_meaning = PATCH_MEAN_MEANING
    distill_logits_loss = "mse"  # outputs are images and latents; distillation compares the first (LR image / latent)
    round_trip: str

    def example_input(self, entry: ModelEntry) -> torch.Tensor:
        return torch.zeros(entry.input.example_shape(1))

    def model_inputs(self, batch: Any) -> torch.Tensor:
        return _images(batch)

    def describe_example(self, entry: ModelEntry) -> str:
        spec = entry.input
        return f"one {spec.channels}x{spec.patch}x{spec.patch} patch {self.round_trip}"

    def evaluate(self, model: nn.Module, batches: Batches, entry: ModelEntry, *, progress: bool = True) -> TaskResult:
        psnr = PeakSignalNoiseRatio(data_range=1.0, reduction="elementwise_mean", dim=(1, 2, 3), **LOCAL_METRIC)
        ssim = StructuralSimilarityIndexMeasure(data_range=1.0, **LOCAL_METRIC)
        extra: dict[str, list[torch.Tensor]] = {}
        generator = torch.Generator().manual_seed(EVAL_SEED)
        count = 0
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                for batch in tqdm(batches, desc="evaluate", unit="batch", disable=not progress):
                    x = _images(batch)
                    decoded, values = self._decode(model, x, generator)
                    psnr.update(to_8bit(decoded), x)
                    ssim.update(to_8bit(decoded), x)
                    for key, value in values.items():
                        extra.setdefault(key, []).append(value)
                    count += len(x)
        finally:
            model.train(was_training)
        if count == 0:
            raise InvalidArgumentError("no examples to evaluate: the batches were empty")
        metrics = {PSNR.key: float(psnr.compute()), SSIM.key: float(ssim.compute())}
        metrics.update({key: float(torch.cat(v).mean()) for key, v in extra.items()})
        return TaskResult(metrics, self.average, count)

    def _decode(self, model: nn.Module, x: torch.Tensor,
                generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def export_signature(self, entry: ModelEntry) -> GraphSignature:
        """The round trip in a graph: (x, the sampled z) in, the model's outputs out; z ~ N(0, s^2 I) is
        drawn in torch with the caller's generator, as the torch model draws it. Methods besides forward
        (`upscale`, `synthesis`: the z = 0 metric) are not in the graph."""
        from zoo.families.invertible.model import IMAGE_CHANNELS
        from zoo.models import build_empty_model

        model = build_empty_model(entry)  # on the meta device: its configuration, no weights
        levels = model.net.levels
        kept = getattr(model, "latent_channels", IMAGE_CHANNELS)  # ILC's latent; IRN keeps the LR image
        return SampledLatentGraph(("x", "noise"), self.outputs, batch_axes("x", "noise"), levels=levels,
                                  z_channels=IMAGE_CHANNELS * 4 ** levels - kept,
                                  gaussian_scale=model.gaussian_scale, round_trip=self.name)


@dataclass(frozen=True)
class SampledLatentGraph(GraphSignature):
    """IRN / ILC in a graph whose second input is the latent z, sampled by the caller (see
    `_ImageToImage.export_signature`); outputs as the model's NamedTuple, rebuilt from the graph's."""

    levels: int = 1
    z_channels: int = 0
    gaussian_scale: float = 1.0
    round_trip: str = ""

    def noise(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        down = 2 ** self.levels
        shape = (x.shape[0], self.z_channels, x.shape[-2] // down, x.shape[-1] // down)
        return sample_latent(x.new_empty(shape), generator, self.gaussian_scale)

    def graph_module(self, model: nn.Module) -> nn.Module:
        return _WithNoise(model, self.round_trip)

    def example_inputs(self, example: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        x = example[0] if isinstance(example, tuple) else example
        return x, self.noise(x, torch.Generator().manual_seed(0))

    def call(self, run: RunGraph, x: torch.Tensor, generator: torch.Generator | None = None) -> tuple:
        outputs = run((x, self.noise(x, generator)))
        return (RescalingOutput if self.round_trip == "image-rescaling" else CodecOutput)(*outputs)


class _WithNoise(nn.Module):
    """forward(x, noise): the model's round trip (eval mode) with `noise` as the sampled z."""

    def __init__(self, model: nn.Module, round_trip: str) -> None:
        super().__init__()
        self.model, self.round_trip = model, round_trip

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> tuple[torch.Tensor, ...]:
        model = self.model
        if self.round_trip == "image-rescaling":
            lr, z = model.downscale(x)
            return lr, z, model.upscale(quantize_8bit(lr), noise)
        y, z = model.analysis(x)
        latent = round_ste(y)
        return latent, model.entropy.bits(latent), z, model.synthesis(latent, noise)


class ImageRescaling(_ImageToImage):
    """IRN: downscale to an 8-bit LR image, upscale it back with a sampled z; scored on the HR image
    (primary: PSNR), with the LR image's PSNR against bicubic downscaling beside it."""

    name = "image-rescaling"
    pipeline_tag = "image-to-image"
    round_trip = "downscaled and upscaled back"
    metrics = (PSNR, SSIM, PSNR_Z0, PSNR_LR)
    outputs = ("lr", "z", "hr")

    def loss(self, model: nn.Module, batch: Any, entry: ModelEntry) -> torch.Tensor:
        return irn_loss(model, _images(batch))

    def _decode(self, model: nn.Module, x: torch.Tensor,
                generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = model(x, generator=generator)
        mode = model.upscale(to_8bit(out.lr), torch.zeros_like(out.z))
        return out.hr, {PSNR_Z0.key: patch_psnr(to_8bit(mode), x),
                        PSNR_LR.key: patch_psnr(to_8bit(out.lr), to_8bit(bicubic_down(x, model.scale)))}


class ImageCompression(_ImageToImage):
    """ILC: code the quantized latent (bits from the entropy model), decode with a sampled z.
    Primary metric: PSNR. Each entry is one point of a rate-distortion curve, fixed by its lambda; its
    compressed variants are fine-tuned with the same objective, so they stay near that operating point
    and PSNR-vs-FLOPs compares like with like (bits per pixel is reported beside it on every card)."""

    name = "image-compression"
    pipeline_tag = "image-to-image"
    round_trip = "encoded, its rate estimated by the entropy model, and decoded"
    extra_plots = (MetricPlot(BPP.key, PSNR.key, "rate_distortion.png"),)
    metrics = (PSNR, SSIM, PSNR_Z0, BPP)
    outputs = ("latent", "bits", "z", "image")

    def loss(self, model: nn.Module, batch: Any, entry: ModelEntry) -> torch.Tensor:
        return ilc_loss(model, _images(batch))

    def _decode(self, model: nn.Module, x: torch.Tensor,
                generator: torch.Generator) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        out = model(x, generator=generator)
        mode = model.synthesis(out.latent, torch.zeros_like(out.z))
        return out.image, {PSNR_Z0.key: patch_psnr(to_8bit(mode), x), BPP.key: out.bits / (x.shape[-2] * x.shape[-1])}


register_task(ImageRescaling())
register_task(ImageCompression())
