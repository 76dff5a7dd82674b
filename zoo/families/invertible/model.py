"""Invertible image models: IRN (invertible image rescaling, Xiao et al. ECCV 2020) and ILC (an
invertible encoder in a learned lossy codec, Wang et al. 2020, "Modeling lost information in lossy
image compression").

Both are one bijection `f: x -> h` built of levels, each a Haar transform (2x2 -> 4 bands, half the
resolution) followed by affine coupling blocks whose sub-networks are small dense conv blocks. The
first 3 channels of `h` are what is kept (IRN: the low-resolution image; ILC: the latent that is
quantized and entropy-coded); the rest, `z`, is the information lost on the way, pulled towards 0 by
a sum z^2 loss and sampled from N(0, s^2 I) when going back (s = `gaussian_scale`: 1 in the paper, 1e-3
in the zoo's entries, see `entries.GAUSSIAN_SCALE`). All weights live in nn.Conv2d modules, so pruning, int8
PTQ, the checkpoint format and FLOP counting (both directions) work unchanged.

Entries (`entries.py`): `irn_x2.zoo_skimage`, `irn_x4.zoo_skimage` (task image-rescaling, `task.py`),
`ilc.zoo_skimage` (task image-compression), trained on patches of scikit-image's bundled photographs
(`data.py`); `test_irn.zoo_skimage` and `test_ilc.zoo_skimage` are tiny versions used by the tests.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn
from torch.nn import functional as F

from zoo.entry import ModelEntry
from zoo.errors import InvalidArgumentError
from zoo.models import FAMILIES

IMAGE_CHANNELS = 3


# Building blocks ----------------------------------------------------------------------------------

def haar_forward(x: torch.Tensor) -> torch.Tensor:
    """The Haar transform of IRN: per channel, the 2x2 filter bank divided by 4, stride 2. Returns
    (B, 4C, H/2, W/2), band-major: channels [0, C) the averages (low-pass), then the horizontal,
    vertical and diagonal details of every channel. Its Jacobian has log|det| = (numel/4) log(1/16)."""
    if x.shape[-1] % 2 or x.shape[-2] % 2:
        raise InvalidArgumentError(f"the Haar transform needs even height and width, got {tuple(x.shape[-2:])}")
    a, b = x[..., 0::2, 0::2], x[..., 0::2, 1::2]
    c, d = x[..., 1::2, 0::2], x[..., 1::2, 1::2]
    return torch.cat([a + b + c + d, a - b + c - d, a + b - c - d, a - b - c + d], dim=1) / 4


def haar_inverse(h: torch.Tensor) -> torch.Tensor:
    """The exact inverse of `haar_forward` (the filter bank times 4 is orthogonal up to a factor 4)."""
    ll, hl, lh, hh = h.chunk(4, dim=1)
    a, b = ll + hl + lh + hh, ll - hl + lh - hh
    c, d = ll + hl - lh - hh, ll - hl - lh + hh
    batch, channels, height, width = a.shape
    sub = torch.stack([a, b, c, d], dim=2).reshape(batch, 4 * channels, height, width)
    return F.pixel_shuffle(sub, 2)


class DenseBlock(nn.Module):
    """IRN's sub-network: 5 3x3 convs, each seeing the input and all earlier outputs (growth `gc`),
    LeakyReLU(0.2); the first four Xavier-initialized and scaled by 0.1, the last zero-initialized,
    so that every coupling block starts as the identity. Borders are padded by replicating them, not
    with zeros as in the paper: on the zoo's 32x32 patches a quarter of the 16x16 LR pixels touch the
    border, and zero padding cost the x2 model 1.3 dB there (38.8 vs 40.1 dB, 4 epochs, z = 0)."""

    def __init__(self, channels_in: int, channels_out: int, gc: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(channels_in + i * gc, gc, 3, padding=1, padding_mode="replicate")
                                   for i in range(4))
        self.out = nn.Conv2d(channels_in + 4 * gc, channels_out, 3, padding=1, padding_mode="replicate")
        for conv in self.convs:
            nn.init.xavier_normal_(conv.weight)
            conv.weight.data.mul_(0.1)
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv in self.convs:
            features.append(F.leaky_relu(conv(torch.cat(features, dim=1)), 0.2))
        return self.out(torch.cat(features, dim=1))


class CouplingBlock(nn.Module):
    """IRN's invertible block on h = (h1, h2), h1 the first `split` channels:
    h1' = h1 + phi(h2);  s = clamp * (2 sigmoid(rho(h1')) - 1);  h2' = h2 * exp(s) + eta(h1')."""

    def __init__(self, channels: int, split: int, gc: int, clamp: float = 1.0) -> None:
        super().__init__()
        if not 0 < split < channels:
            raise InvalidArgumentError(f"split must be in (0, {channels}), got {split}")
        self.split, self.clamp = split, clamp
        self.phi = DenseBlock(channels - split, split, gc)
        self.rho = DenseBlock(split, channels - split, gc)
        self.eta = DenseBlock(split, channels - split, gc)

    def _scale(self, h1: torch.Tensor) -> torch.Tensor:
        return self.clamp * (2 * torch.sigmoid(self.rho(h1)) - 1)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h1, h2 = h[:, : self.split], h[:, self.split:]
        h1 = h1 + self.phi(h2)
        h2 = h2 * torch.exp(self._scale(h1)) + self.eta(h1)
        return torch.cat([h1, h2], dim=1)

    def inverse(self, h: torch.Tensor) -> torch.Tensor:
        h1, h2 = h[:, : self.split], h[:, self.split:]
        h2 = (h2 - self.eta(h1)) * torch.exp(-self._scale(h1))
        h1 = h1 - self.phi(h2)
        return torch.cat([h1, h2], dim=1)


class InvertibleNet(nn.Module):
    """`levels` x (Haar transform, `blocks` coupling blocks): (B, 3, H, W) -> (B, 3 * 4^levels,
    H / 2^levels, W / 2^levels), exactly invertible (up to floating-point rounding)."""

    def __init__(self, levels: int, blocks: int, gc: int, split: int = IMAGE_CHANNELS, clamp: float = 1.0) -> None:
        super().__init__()
        for name, value in (("levels", levels), ("blocks", blocks), ("gc", gc)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
        self.levels = levels
        self.stages = nn.ModuleList(
            nn.ModuleList(CouplingBlock(IMAGE_CHANNELS * 4 ** (level + 1), split, gc, clamp) for _ in range(blocks))
            for level in range(levels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for stage in self.stages:
            x = haar_forward(x)
            for block in stage:
                x = block(x)
        return x

    def inverse(self, h: torch.Tensor) -> torch.Tensor:
        for stage in reversed(self.stages):
            for block in reversed(stage):
                h = block.inverse(h)
            h = haar_inverse(h)
        return h


def quantize_8bit(y: torch.Tensor) -> torch.Tensor:
    """IRN's quantization of the LR image: clamp to [0, 1], round to 8 bits; identity gradient."""
    return y + (torch.round(y.clamp(0, 1) * 255) / 255 - y).detach()


def round_ste(y: torch.Tensor) -> torch.Tensor:
    """Rounding with an identity (straight-through) gradient."""
    return y + (torch.round(y) - y).detach()


def check_gaussian_scale(scale: float) -> float:
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not scale >= 0:
        raise InvalidArgumentError(f"gaussian_scale must be a number >= 0, got {scale!r}")
    return float(scale)


def sample_latent(like: torch.Tensor, generator: torch.Generator | None, scale: float = 1.0) -> torch.Tensor:
    """z ~ N(0, scale^2 I) shaped like `like` (seeded by `generator` when given)."""
    return scale * torch.randn(like.shape, generator=generator, dtype=like.dtype, device=like.device)


# IRN ----------------------------------------------------------------------------------------------

class RescalingOutput(NamedTuple):
    """One rescaling round trip: the LR image (before quantization), the lost information z, and the
    HR image rebuilt from the 8-bit LR image and a sample of N(0, gaussian_scale^2 I)."""

    lr: torch.Tensor
    z: torch.Tensor
    hr: torch.Tensor


class IRN(nn.Module):
    """Invertible rescaling by `scale` (2 or 4: one Haar level per factor 2, `blocks` couplings each).
    `downscale(x) -> (lr, z)`, `upscale(lr, z) -> x`; `forward(x)` does the round trip with an 8-bit
    LR image and a sampled z ~ N(0, gaussian_scale^2 I) (what the task trains and evaluates, and what
    FLOPs count; the official code's `gaussian_scale`, 1 by default as in the paper).
    The weights of its three training losses are part of its configuration: LR guidance (default 4 at
    x2, 16 at x4, as the paper), HR reconstruction and distribution matching (1 and 1)."""

    def __init__(self, scale: int = 2, blocks: int = 8, gc: int = 32, clamp: float = 1.0,
                 guide_weight: float | None = None, reconstruction_weight: float = 1.0,
                 distribution_weight: float = 1.0, gaussian_scale: float = 1.0) -> None:
        super().__init__()
        self.gaussian_scale = check_gaussian_scale(gaussian_scale)
        if scale not in (2, 4):
            raise InvalidArgumentError(f"IRN rescales by 2 or 4, not {scale!r}")
        self.scale = scale
        self.guide_weight = float(guide_weight if guide_weight is not None else {2: 4.0, 4: 16.0}[scale])
        self.reconstruction_weight = float(reconstruction_weight)
        self.distribution_weight = float(distribution_weight)
        self.net = InvertibleNet(int(math.log2(scale)), blocks, gc, IMAGE_CHANNELS, clamp)

    def downscale(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.net(x)
        return h[:, :IMAGE_CHANNELS], h[:, IMAGE_CHANNELS:]

    def upscale(self, lr: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net.inverse(torch.cat([lr, z], dim=1))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> RescalingOutput:
        lr, z = self.downscale(x)
        hr = self.upscale(quantize_8bit(lr), sample_latent(z, generator, self.gaussian_scale))
        return RescalingOutput(lr, z, hr)


# ILC ----------------------------------------------------------------------------------------------

class FactorizedLogistic(nn.Module):
    """A factorized entropy model: each latent channel's integers follow a discretized logistic with a
    learned location and scale, P(k) = sigmoid((k + 1/2 - mu) / s) - sigmoid((k - 1/2 - mu) / s)."""

    LIKELIHOOD_BOUND = 1e-9

    def __init__(self, channels: int, loc: float = 0.0, scale: float = 1.0) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.full((channels,), float(loc)))
        self.log_scale = nn.Parameter(torch.full((channels,), math.log(scale)))

    def likelihood(self, y: torch.Tensor) -> torch.Tensor:
        """P(y) per element of y (B, C, H, W), for integers y (or noisy y in training)."""
        loc, scale = self.loc.view(1, -1, 1, 1), self.log_scale.exp().view(1, -1, 1, 1)
        upper, lower = (y + 0.5 - loc) / scale, (y - 0.5 - loc) / scale
        # in the upper tail both sigmoids round to 1: take the difference of the mirrored ones there
        sign = torch.where(upper + lower > 0, -1.0, 1.0)
        return (torch.sigmoid(sign * upper) - torch.sigmoid(sign * lower)).abs().clamp_min(self.LIKELIHOOD_BOUND)

    def bits(self, y: torch.Tensor) -> torch.Tensor:
        """Code length of y in bits, per example (B,)."""
        return -torch.log2(self.likelihood(y)).flatten(1).sum(dim=1)


class CodecOutput(NamedTuple):
    """One coding round trip: the quantized latent (integers), its code length in bits per example,
    the lost information z (not stored), and the image decoded from the latent and a sample of z
    (from N(0, gaussian_scale^2 I))."""

    latent: torch.Tensor
    bits: torch.Tensor
    z: torch.Tensor
    image: torch.Tensor


def high_rate_gain(rate_lambda: float, levels: int, latent_channels: int) -> float:
    """The latent gain G minimizing bpp + lambda * 255^2 * MSE when y is the Haar average (in [0, 1])
    rounded on a grid of step 1/G, under the high-rate approximations: every latent value costs
    log2(G) + const bits and adds 1/(12 G^2) to the MSE of each of the 4^levels pixels it averages.
    Setting the derivative to 0: G^2 = lambda * 255^2 * ln 2 * 4^levels / (6 * latent_channels).
    (A learned gain starting at 64 for every lambda barely moves in a few hundred Adam steps, which
    pinned the rate at about 1 bpp whatever lambda; starting here puts each lambda at its own rate.)"""
    return 255.0 * math.sqrt(rate_lambda * math.log(2) * 4 ** levels / (6 * latent_channels))


class ILC(nn.Module):
    """An invertible encoder in a lossy codec: f(x) = (y, z) with `levels` Haar levels; y (the first
    `latent_channels`) is scaled by a learned per-channel gain (starting at `high_rate_gain` unless
    `initial_gain` is given), rounded, and coded with a factorized logistic entropy model; z is not
    stored: it is modelled as N(0, gaussian_scale^2 I) and sampled at decode.
    In training the rate sees y plus uniform noise and the decoder the rounded y (straight-through).
    Its training objective's weights are part of its configuration: `rate_lambda` (distortion weight,
    CompressAI's convention: loss = bpp + lambda * 255^2 * MSE) and `distribution_weight` (of sum z^2)."""

    def __init__(self, levels: int = 2, blocks: int = 4, gc: int = 32, latent_channels: int = IMAGE_CHANNELS,
                 initial_gain: float | None = None, clamp: float = 1.0, rate_lambda: float = 0.01,
                 distribution_weight: float = 1.0, gaussian_scale: float = 1.0) -> None:
        super().__init__()
        self.gaussian_scale = check_gaussian_scale(gaussian_scale)
        if not rate_lambda > 0:
            raise InvalidArgumentError(f"rate_lambda must be positive, got {rate_lambda!r}")
        self.rate_lambda = float(rate_lambda)
        self.distribution_weight = float(distribution_weight)
        total = IMAGE_CHANNELS * 4 ** levels if isinstance(levels, int) and levels > 0 else 0
        if isinstance(latent_channels, bool) or not isinstance(latent_channels, int) or not 0 < latent_channels < total:
            raise InvalidArgumentError(f"latent_channels must be in (0, {total}), got {latent_channels!r}")
        if initial_gain is None:
            initial_gain = high_rate_gain(rate_lambda, levels, latent_channels)
        if not initial_gain > 0:
            raise InvalidArgumentError(f"initial_gain must be positive, got {initial_gain!r}")
        self.latent_channels = latent_channels
        self.net = InvertibleNet(levels, blocks, gc, latent_channels, clamp)
        self.log_gain = nn.Parameter(torch.full((latent_channels,), math.log(initial_gain)))
        # y starts as the Haar average of pixels in [0, 1] times the gain: start the prior around there
        self.entropy = FactorizedLogistic(latent_channels, loc=0.5 * initial_gain, scale=0.1 * initial_gain)

    def _gain(self) -> torch.Tensor:
        return self.log_gain.exp().view(1, -1, 1, 1)

    def analysis(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x -> (y scaled by the gain, before rounding; z)."""
        h = self.net(x)
        return h[:, : self.latent_channels] * self._gain(), h[:, self.latent_channels:]

    def synthesis(self, latent: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """(quantized latent, z) -> image: the exact inverse of `analysis` when nothing was rounded."""
        return self.net.inverse(torch.cat([latent / self._gain(), z], dim=1))

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> CodecOutput:
        y, z = self.analysis(x)
        latent = round_ste(y)
        if self.training:
            bits = self.entropy.bits(y + torch.rand(y.shape, generator=generator, dtype=y.dtype, device=y.device) - 0.5)
        else:
            bits = self.entropy.bits(latent)
        return CodecOutput(latent, bits, z, self.synthesis(latent, sample_latent(z, generator, self.gaussian_scale)))


# Builders -----------------------------------------------------------------------------

def build_irn(entry: ModelEntry) -> nn.Module:
    return IRN(**entry.model_kwargs)


def build_ilc(entry: ModelEntry) -> nn.Module:
    return ILC(**entry.model_kwargs)


FAMILIES.register("irn", build_irn)
FAMILIES.register("ilc", build_ilc)
