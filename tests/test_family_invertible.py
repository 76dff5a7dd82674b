"""IRN and ILC: the Haar transform and the coupling network are invertible, the losses train, the
entropy model is a distribution, the data split is by image, checkpoints round-trip bit for bit, and
`zoo.load(name, sparsity=0.5)` trains and prunes the tiny entries (training cut short)."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import zoo
import zoo.api
from zoo.compress.checkpoint import load_checkpoint, save_checkpoint
from zoo.compress.pruning import apply_magnitude_pruning, prunable_weights
from zoo.compress.quantization import apply_int8_ptq
from zoo.errors import InvalidArgumentError
from zoo.families.invertible.data import TEST_IMAGES, TRAIN_IMAGES, bundled_image, grid_patches, patches
from zoo.families.invertible.entries import GAUSSIAN_SCALE, PatchInput
from zoo.families.invertible.model import (
    ILC, IRN, DenseBlock, FactorizedLogistic, InvertibleNet, haar_forward, haar_inverse, high_rate_gain, quantize_8bit,
)
from zoo.families.invertible.task import bicubic_down, bicubic_round_trip, ilc_loss, irn_loss, patch_psnr, to_8bit
from zoo.hub import LocalHub
from zoo.models import build_model, get_entry
from zoo.native import train_base_model
from zoo.store import Store
from zoo.tasks import task_of
from tiny_zoo import SHORT

TEST_IRN, TEST_ILC = "test_irn.zoo_skimage", "test_ilc.zoo_skimage"


def perturbed(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-zero weights everywhere (the zero-initialized last convs make a fresh net the identity
    on each coupling), so that invertibility is tested on a non-trivial map."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return model.eval()


def images(batch: int = 2, size: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


# Invertibility -----------------------------------------------------------------------------------

def test_haar_is_the_averaging_filter_bank_and_exactly_invertible() -> None:
    x = images()
    h = haar_forward(x)
    assert h.shape == (2, 12, 16, 16)
    assert torch.allclose(h[:, :3], torch.nn.functional.avg_pool2d(x, 2), atol=1e-6)
    assert (haar_inverse(h) - x).abs().max() < 1e-6
    # |det| of the 4x4 band matrix is 1/16: the filter bank times 4 is orthogonal up to a factor 2
    band = torch.eye(4).view(4, 1, 2, 2)
    matrix = haar_forward(band).reshape(4, 4)
    assert torch.isclose(torch.det(matrix).abs(), torch.tensor(1 / 16))
    with pytest.raises(InvalidArgumentError):
        haar_forward(torch.zeros(1, 3, 5, 4))


@pytest.mark.parametrize("levels", [1, 2])
def test_the_coupling_network_is_invertible(levels: int) -> None:
    net = perturbed(InvertibleNet(levels=levels, blocks=2, gc=4))
    x = images()
    with torch.no_grad():
        h = net(x)
        assert h.shape == (2, 3 * 4 ** levels, 32 // 2 ** levels, 32 // 2 ** levels)
        plain = x
        for _ in range(levels):
            plain = haar_forward(plain)
        assert (h - plain).abs().max() > 1e-2, "the coupling blocks must change the Haar bands"
        assert (net.inverse(h) - x).abs().max() < 1e-4


@pytest.mark.parametrize("scale", [2, 4])
def test_irn_rescales_and_inverts_without_quantization(scale: int) -> None:
    model = perturbed(IRN(scale=scale, blocks=2, gc=4))
    x = images()
    with torch.no_grad():
        lr, z = model.downscale(x)
        assert lr.shape == (2, 3, 32 // scale, 32 // scale) and z.shape[1] == 3 * scale ** 2 - 3
        assert (model.upscale(lr, z) - x).abs().max() < 1e-4
        out = model(x, generator=torch.Generator().manual_seed(0))
    assert out.hr.shape == x.shape and torch.equal(out.lr, lr)
    assert model.guide_weight == {2: 4.0, 4: 16.0}[scale]


def test_ilc_reconstructs_exactly_from_an_unquantized_latent_and_stored_z() -> None:
    model = perturbed(ILC(levels=2, blocks=2, gc=4, latent_channels=3))
    x = images()
    with torch.no_grad():
        y, z = model.analysis(x)
        assert y.shape == (2, 3, 8, 8) and z.shape == (2, 45, 8, 8)
        assert (model.synthesis(y, z) - x).abs().max() < 1e-4
        out = model(x, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out.latent, torch.round(y)) and out.bits.shape == (2,)
    # the code length is the entropy model's -log2 likelihood of the coded integers, summed per image
    expected_bits = -torch.log2(model.entropy.likelihood(out.latent)).sum(dim=(1, 2, 3))
    assert torch.allclose(out.bits, expected_bits, rtol=1e-4), (out.bits, expected_bits)


def test_dense_blocks_replicate_the_border_instead_of_padding_zeros() -> None:
    """On 32x32 patches a quarter of the 16x16 LR pixels touch the border: zero padding made the
    learned upscaler invent edges there (zoo-trained x2: 38.8 dB vs 40.1 dB with replicate padding)."""
    block = perturbed(DenseBlock(3, 9, gc=4))
    with torch.no_grad():
        out = block(torch.full((1, 3, 16, 16), 0.7))
    assert (out - out[..., :1, :1]).abs().max() < 1e-6, "a constant image must map to a constant output"


def test_the_sampled_latent_has_the_models_gaussian_scale() -> None:
    model = IRN(scale=2, blocks=1, gc=4, gaussian_scale=0.25).eval()
    x = images(batch=8)
    with torch.no_grad():
        lr, _ = model.downscale(x)
        # an untrained net is the Haar transform: the HR error is the sampled z, spread by the inverse Haar
        z = model.upscale(quantize_8bit(lr), torch.zeros(8, 9, 16, 16))
        hr = model(x, generator=torch.Generator().manual_seed(0)).hr
    assert 0.2 < float((hr - z).std() / 3 ** 0.5) < 0.3
    assert get_entry("irn_x2.zoo_skimage").model_kwargs["gaussian_scale"] == GAUSSIAN_SCALE


def test_bad_configurations_are_refused() -> None:
    for make in (lambda: IRN(scale=3), lambda: InvertibleNet(levels=0, blocks=1, gc=4),
                 lambda: ILC(levels=1, latent_channels=12), lambda: ILC(rate_lambda=0.0),
                 lambda: ILC(initial_gain=0.0), lambda: IRN(gaussian_scale=-1.0), lambda: ILC(gaussian_scale=-1.0),
                 lambda: PatchInput(4), lambda: PatchInput(32, train_stride=0)):
        with pytest.raises(InvalidArgumentError):
            make()


# Quantization and the entropy model -------------------------------------------------------------

def test_lr_quantization_is_8_bit_with_an_identity_gradient() -> None:
    y = torch.tensor([-0.2, 0.1234, 0.5, 1.3], requires_grad=True)
    q = quantize_8bit(y)
    assert torch.allclose(q * 255, torch.round(q * 255)) and q.min() >= 0 and q.max() <= 1
    q.sum().backward()
    assert torch.equal(y.grad, torch.ones(4))


def test_the_entropy_model_is_a_distribution_over_integers() -> None:
    model = FactorizedLogistic(2)
    with torch.no_grad():
        model.loc.copy_(torch.tensor([0.3, -2.0]))
        model.log_scale.copy_(torch.tensor([0.0, 1.0]))
    support = torch.arange(-200, 201, dtype=torch.float32).view(1, 1, -1, 1).expand(1, 2, -1, 1)
    total = model.likelihood(support).sum(dim=(0, 2, 3))
    assert torch.allclose(total, torch.ones(2), atol=1e-4)
    near, far = torch.zeros(1, 2, 1, 1), torch.full((1, 2, 1, 1), 50.0)
    assert (model.bits(near) < model.bits(far)).all(), "values near the location cost fewer bits"
    symmetric = FactorizedLogistic(1)  # location 0, scale 1: both tails must cost the same, accurately
    tails = symmetric.bits(torch.tensor([15.0, -15.0]).view(2, 1, 1, 1))
    assert torch.allclose(tails[0], tails[1], rtol=1e-4), tails


def test_the_initial_gain_is_the_high_rate_optimum_so_the_rate_follows_lambda() -> None:
    """A gain fixed at 64 for every lambda (and learned too slowly to move) pinned ILC at ~1 bpp."""
    def high_rate_loss(gain: float, rate_lambda: float) -> float:  # levels 2, 3 latent channels
        return 3 / 16 * math.log2(gain) + rate_lambda * 255 ** 2 / (12 * gain ** 2)

    for rate_lambda in (0.001, 0.01, 0.1):
        best = high_rate_gain(rate_lambda, levels=2, latent_channels=3)
        assert high_rate_loss(best, rate_lambda) < min(high_rate_loss(best * f, rate_lambda) for f in (0.9, 1.1))
    x = patches("test", 32)[:32]
    with torch.no_grad():
        bpp = [float(ILC(levels=2, blocks=1, gc=4, rate_lambda=lam).eval()(x).bits.mean()) / 32 ** 2
               for lam in (0.001, 0.01, 0.1)]
    assert bpp[1] - bpp[0] > 0.2 and bpp[2] - bpp[1] > 0.2, bpp


# Training ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, loss_fn", [(TEST_IRN, irn_loss), (TEST_ILC, ilc_loss)])
def test_a_few_training_steps_lower_the_loss(name: str, loss_fn) -> None:
    """An untrained net is the Haar transform, already a fair rescaler: a first Adam step of 2e-3 moves
    every zero-initialized conv at once and raises the loss (the training loop warms up for this), so
    the steps here are small."""
    torch.manual_seed(0)
    model = build_model(get_entry(name)).train()
    x = patches("train", 32, 128)[:16]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    losses = []
    for _ in range(10):
        loss = loss_fn(model, x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert losses[-1] < losses[0], losses


_BY_RECIPE: dict[str, torch.nn.Module] = {}


def trained_by_its_recipe(name: str) -> torch.nn.Module:
    """The tiny entry trained by its own TrainSpec (two epochs, ~1 s), once per test session."""
    if name not in _BY_RECIPE:
        _BY_RECIPE[name] = train_base_model(get_entry(name), progress=False)
    return _BY_RECIPE[name]


def untrained(name: str) -> torch.nn.Module:
    """The weights `train_base_model` starts from (same seed)."""
    entry = get_entry(name)
    torch.manual_seed(entry.train.seed)
    return build_model(entry).eval()


def eval_metrics(name: str, model: torch.nn.Module) -> dict[str, float]:
    entry = get_entry(name)
    task = task_of(entry)
    return task.evaluate(model, task.batches(entry, entry.eval_data, batch_size=64, shuffle=False), entry,
                         progress=False).metrics


def eval_images(name: str) -> torch.Tensor:
    entry = get_entry(name)
    return torch.cat([batch if isinstance(batch, torch.Tensor) else batch[0]
                      for batch in task_of(entry).batches(entry, entry.eval_data, batch_size=64, shuffle=False)])


def held_out_loss(name: str, model: torch.nn.Module) -> float:
    """The training objective on the held-out patches (z sampled from a fixed seed)."""
    loss_fn = {TEST_IRN: irn_loss, TEST_ILC: ilc_loss}[name]
    torch.manual_seed(0)
    with torch.no_grad():
        return float(loss_fn(model.eval(), eval_images(name)))


@pytest.mark.parametrize("name", [TEST_IRN, TEST_ILC])
def test_after_its_short_training_the_decoder_is_insensitive_to_the_sampled_latent(name: str) -> None:
    """The paper samples z ~ N(0, I); its net learns over 500k steps to make the upscaling ignore z.
    In the zoo's few hundred steps it cannot: unit-variance z cost the tiny IRN 13-17 dB (22 dB vs
    bicubic's 40). With the prior at GAUSSIAN_SCALE, sampled z and z = 0 decode alike."""
    metrics = eval_metrics(name, trained_by_its_recipe(name))
    assert abs(metrics["psnr"] - metrics["psnr_z0"]) < 1.5, metrics  # measured: 1.14 dB (IRN), unit z: > 13
    assert metrics["psnr"] > 25, metrics  # unit-variance z: 6.5 dB


def test_the_tiny_ilc_learns_a_better_rate_distortion_trade_off() -> None:
    """Its recipe's two epochs lower the rate-distortion objective on held-out patches below its
    untrained self's (measured: 4.40 vs 4.67, -5.7 %) and code them in fewer bits (2.51 vs 2.73 bpp)
    at no loss of PSNR (28.81 vs 28.71 dB). Training that did nothing would keep the untrained values."""
    trained, start = trained_by_its_recipe(TEST_ILC), untrained(TEST_ILC)
    loss, loss_untrained = held_out_loss(TEST_ILC, trained), held_out_loss(TEST_ILC, start)
    assert loss < 0.97 * loss_untrained, (loss, loss_untrained)
    metrics, before = eval_metrics(TEST_ILC, trained), eval_metrics(TEST_ILC, start)
    assert metrics["bpp"] < before["bpp"] - 0.1, (metrics, before)
    assert metrics["psnr"] > before["psnr"] - 0.3, (metrics, before)


def test_the_tiny_irn_rescales_far_better_than_a_constant_patch() -> None:
    """Trained, the tiny IRN's x2 round trip (8-bit LR image, sampled z) beats each held-out patch
    replaced by its mean colour, per-patch PSNR averaged the same way (measured: 38.45 vs 28.6 dB)."""
    x = eval_images(TEST_IRN)
    constant = x.mean(dim=(2, 3), keepdim=True).expand_as(x)
    baseline = float(patch_psnr(to_8bit(constant), x).mean())
    metrics = eval_metrics(TEST_IRN, trained_by_its_recipe(TEST_IRN))
    assert metrics["psnr"] > baseline + 4.0, (metrics, baseline)


def test_the_tiny_irn_learns_to_beat_its_untrained_self() -> None:
    """Untrained, an IRN is the plain Haar transform: 37.80 dB held out, irn_loss 0.01407 (bicubic x2:
    39.65 dB). Its recipe (12 epochs at 1e-3, 96 steps) measured 38.45 dB and 0.01311; two epochs at 2e-3
    had made it worse (36.6 dB, 0.0147). The full-size irn_x2 beats bicubic (BENCHMARKS.md)."""
    trained, start = trained_by_its_recipe(TEST_IRN), untrained(TEST_IRN)
    assert held_out_loss(TEST_IRN, trained) < 0.97 * held_out_loss(TEST_IRN, start)
    assert eval_metrics(TEST_IRN, trained)["psnr"] > eval_metrics(TEST_IRN, start)["psnr"] + 0.3


def test_irn_guidance_target_is_bicubic_and_the_baseline_is_strong() -> None:
    x = patches("test", 32)[:8]
    assert bicubic_down(x, 2).shape == (8, 3, 16, 16)
    error = (bicubic_round_trip(x, 2) - x).pow(2).mean()
    assert 10 * torch.log10(1 / error) > 30, "bicubic x2 of real photographs is above 30 dB"


# Data --------------------------------------------------------------------------------------------

def test_patches_come_from_bundled_photographs_split_by_image() -> None:
    assert not set(TRAIN_IMAGES) & set(TEST_IMAGES)
    train, test = patches("train", 32, 128), patches("test", 32)
    assert train.shape[1:] == test.shape[1:] == (3, 32, 32)
    assert 0.0 <= float(train.min()) and float(train.max()) <= 1.0
    chelsea = bundled_image("chelsea")
    assert torch.equal(test[0], grid_patches(chelsea, 32, 32)[0])
    assert (train.flatten(1).std(dim=1) >= 2 / 255).all(), "flat training patches are left out"
    with pytest.raises(InvalidArgumentError):
        patches("validation", 32)
    with pytest.raises(InvalidArgumentError):
        bundled_image("skin")  # downloadable, not bundled: never read


# Checkpoints and zoo.load ------------------------------------------------------------------------

@pytest.mark.parametrize("name", [TEST_IRN, TEST_ILC])
def test_a_pruned_int8_model_round_trips_the_compressed_format_bit_for_bit(name: str, tmp_path: Path) -> None:
    entry = get_entry(name)
    model = perturbed(build_model(entry))
    apply_magnitude_pruning(model, 0.5, scope="layer")
    apply_int8_ptq(model, [patches("train", 32, 128)[:4]])
    state = model.state_dict()
    save_checkpoint(tmp_path / "ckpt", state, config={"name": name, "base_model": name, "arch": entry.arch,
                                                     "model_kwargs": entry.model_kwargs, "recipe": None})
    loaded, config = load_checkpoint(tmp_path / "ckpt")
    assert config["name"] == name and list(loaded) == list(state)
    for key, value in state.items():
        assert value.dtype == loaded[key].dtype and torch.equal(value, loaded[key]), key
    again = zoo.api.instantiate(entry, loaded)
    x = images()
    with torch.no_grad():
        assert torch.equal(model(x, generator=torch.Generator().manual_seed(1))[-1],
                           again(x, generator=torch.Generator().manual_seed(1))[-1])


@pytest.mark.parametrize("name, task, metrics", [
    (TEST_IRN, "image-rescaling", {"psnr", "ssim", "psnr_z0", "psnr_lr"}),
    (TEST_ILC, "image-compression", {"psnr", "ssim", "psnr_z0", "bpp"}),
])
def test_zoo_load_trains_then_prunes_a_tiny_entry(name: str, task: str, metrics: set[str], tmp_path: Path) -> None:
    store = Store(hub=LocalHub(tmp_path / "hub"), cache_root=tmp_path / "cache", options=SHORT)
    entry = get_entry(name)
    assert task_of(entry).name == task
    sparse = zoo.load(name, sparsity=0.5, store=store, progress=False)
    assert sparse.zoo.name == f"{name}_gmp50" and sparse.zoo.source == "derived"
    for layer, w in prunable_weights(sparse, entry.keep_dense).items():
        assert int((w == 0).sum()) == int(0.5 * w.numel()), layer
    report = sparse.zoo.report
    assert report.task == task and set(report.metrics) == metrics
    # PSNR of the z = 0 decode, computed here from the loaded weights: per patch, then the mean
    x = eval_images(name)
    with torch.no_grad():
        if task == "image-rescaling":
            lr, z = sparse.downscale(x)
            mode = sparse.upscale(to_8bit(lr), torch.zeros_like(z))
        else:
            y, z = sparse.analysis(x)
            mode = sparse.synthesis(torch.round(y), torch.zeros_like(z))
    mse = (to_8bit(mode) - x).pow(2).mean(dim=(1, 2, 3))
    assert report.metrics["psnr_z0"] == pytest.approx(float((10 * torch.log10(1 / mse)).mean()), abs=1e-3)
    assert abs(report.metrics["psnr"] - report.metrics["psnr_z0"]) < 1.0, report.metrics
    assert report.flops_sparse < report.flops_dense and report.params_nonzero < report.params_total
    again = zoo.load(name, sparsity=0.5, store=store, progress=False)
    assert again.zoo.source == "cache"
    for key, value in again.state_dict().items():
        assert torch.equal(value, sparse.state_dict()[key]), key
