"""N:M sparsity: the masks (which groups, which weights), one-shot and gradual pruning, their configs,
and the checkpoint's N:M encodings (packed layout, exact round trips, corrupt payloads refused)."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import timm
import torch
from torch import nn

from tiny_zoo import assert_bit_equal
from zoo.compress.checkpoint import load_checkpoint, read_config, save_checkpoint
from zoo.compress.formats import (
    NM_PREFERENCE,
    TENSOR_OVERHEAD_BYTES,
    Encoding,
    TensorMeta,
    compress_state_dict,
    decompress_state_dict,
    encode_tensor,
    metas_from_json,
    nm_groups,
    nm_pattern,
    quantize_exact,
)
from zoo.compress.nm import (
    GradualNMPruningConfig,
    NMPruningConfig,
    apply_gradual_nm_pruning,
    apply_nm_pruning,
    is_nm,
    nm_mask,
    nm_masks,
    nm_schedule,
)
from zoo.compress.quantization import dequantize_per_channel, quantize_per_channel
from zoo.compress.recipe import Recipe, RecipeContext
from zoo.errors import CheckpointError, InvalidArgumentError, RecipeError
from zoo.variants import VariantSpec

CONFIG = {"name": "nm-test", "base_model": "net", "arch": "test_resnet", "model_kwargs": {"num_classes": 10},
          "recipe": None}
PATTERNS = [(2, 4), (1, 4), (2, 8)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def nm_tensor(shape: tuple[int, ...], n: int, m: int, *, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    """Random non-zero values pruned to n:m by the zoo's own masks."""
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    w = torch.where(w == 0, 1.0, w)
    return torch.where(nm_mask(w, n, m), w, 0.0).to(dtype)


def groups_by_hand(w: torch.Tensor, m: int) -> list[list[float]]:
    """Groups of m along dim 1, in the documented order (output, kernel positions, then input), by loops."""
    out, cin = w.shape[0], w.shape[1]
    kernel = list(itertools.product(*(range(k) for k in w.shape[2:])))
    return [[float(w[(o, c, *k)]) for c in range(start, start + m)]
            for o in range(out) for k in kernel for start in range(0, cin, m)]


# Masks -------------------------------------------------------------------------------------------

def test_mask_keeps_the_n_largest_magnitudes_of_each_group_of_a_row() -> None:
    w = torch.tensor([[1.0, -5.0, 3.0, 2.0, 0.5, 0.1, -0.2, 4.0],
                      [-1.0, 1.0, -1.0, 1.0, 0.0, 0.0, -7.0, 0.0]])
    expected_24 = torch.tensor([[0, 1, 1, 0, 1, 0, 0, 1], [1, 1, 0, 0, 1, 0, 1, 0]], dtype=torch.bool)
    assert torch.equal(nm_mask(w, 2, 4), expected_24)  # ties (|-1| = |1|, 0 = 0) go to the lower position
    assert torch.equal(nm_mask(w, 1, 4), torch.tensor([[0, 1, 0, 0, 0, 0, 0, 1], [1, 0, 0, 0, 0, 0, 1, 0]],
                                                        dtype=torch.bool))
    assert torch.equal(nm_mask(w, 2, 8)[0], torch.tensor([0, 1, 0, 0, 0, 0, 0, 1], dtype=torch.bool))
    assert torch.equal(nm_mask(w, 2, 8)[1], torch.tensor([1, 0, 0, 0, 0, 0, 1, 0], dtype=torch.bool))
    assert torch.equal(nm_mask(w, 4, 4), torch.ones_like(w, dtype=torch.bool))


def test_conv_groups_run_along_input_channels_at_each_kernel_position() -> None:
    # [out=1, in=4, kh=1, kw=2]: kernel position 0 holds 1, 2, 3, 4 over the channels, position 1 holds 40, 30, 20, 10
    w = torch.tensor([[[[1.0, 40.0]], [[2.0, 30.0]], [[3.0, 20.0]], [[4.0, 10.0]]]])
    mask = nm_mask(w, 2, 4)
    assert mask[0, :, 0, 0].tolist() == [False, False, True, True]
    assert mask[0, :, 0, 1].tolist() == [True, True, False, False]
    # (the [out, in * kh * kw] view would have grouped (1, 40, 2, 30) and (3, 20, 4, 10): not this)
    assert nm_groups(w, 4).tolist() == [[1.0, 2.0, 3.0, 4.0], [40.0, 30.0, 20.0, 10.0]]


@pytest.mark.parametrize(("n", "m"), [*PATTERNS, (3, 4), (1, 2), (3, 6)])
@pytest.mark.parametrize("shape", [(6, 24), (4, 24, 3, 3), (5, 24, 7)])
def test_masks_match_a_brute_force_per_group(n: int, m: int, shape: tuple[int, ...]) -> None:
    w = torch.randn(shape, generator=torch.Generator().manual_seed(n * 10 + m))
    w[0, :m] = 0.25  # a tied group
    mask = nm_mask(w, n, m)
    kept = groups_by_hand(torch.where(mask, 1.0, 0.0), m)
    for values, keep in zip(groups_by_hand(w, m), kept):
        order = sorted(range(m), key=lambda i: (-abs(values[i]), i))  # largest |w|, ties to the lower position
        assert [i for i in range(m) if keep[i]] == sorted(order[:n])
    pruned = torch.where(mask, w, 0.0)
    assert is_nm(pruned, n, m) and int(mask.sum()) == w.numel() // m * n
    assert (pruned != 0).sum() == w.numel() // m * n  # exactly n non-zeros per group


def test_score_ranks_instead_of_magnitude() -> None:
    w = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    grad = torch.tensor([[0.0, 0.1, 5.0, 3.0]])
    assert nm_mask(w, 2, 4, score=grad).tolist() == [[False, False, True, True]]
    with pytest.raises(InvalidArgumentError, match="score has shape"):
        nm_mask(w, 2, 4, score=grad.T)


@pytest.mark.parametrize(("n", "m"), [(0, 4), (4, 4), (5, 4), (True, 4), (2, 4.0), (2, None)])
def test_bad_patterns_are_refused(n, m) -> None:
    with pytest.raises(InvalidArgumentError, match="N:M needs integers"):
        apply_nm_pruning(nn.Linear(8, 8), n, m)


def net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 1), nn.Flatten(), nn.Linear(16, 6),
                         nn.Linear(6, 4))


def test_layers_that_do_not_group_are_named_not_skipped() -> None:
    model = net()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(InvalidArgumentError, match=r"'0' \[8, 3, 3, 3\]: dim 1 \(3\).*'5' \[4, 6\]: dim 1 \(6\)"):
        apply_nm_pruning(model, 2, 4)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # nothing pruned
    with pytest.raises(InvalidArgumentError, match="no input axis"):
        nm_masks({"b": torch.ones(8)}, 2, 4)
    masks = apply_nm_pruning(model, 2, 4, keep_dense=("0", "5"))
    assert sorted(masks) == ["2", "4"]
    assert is_nm(model[2].weight, 2, 4) and is_nm(model[4].weight, 2, 4)
    assert torch.equal(model[0].weight, before["0.weight"]) and torch.equal(model[5].weight, before["5.weight"])
    assert not (model[2].weight.detach().view(torch.int32) == torch.tensor(-0.0).view(torch.int32)).any()  # +0.0


# Gradual -----------------------------------------------------------------------------------------

def test_schedule_decays_the_pattern_along_the_cubic_curve() -> None:
    # 1:4 over steps 0..100: kept = 1 + round(3 * (1 - p)^3)
    got = [nm_schedule(s, n=1, m=4, begin=0, end=100) for s in (0, 1, 10, 30, 50, 99, 100, 150)]
    assert got == [4, 4, 3, 2, 1, 1, 1, 1]  # 3*0.99^3=2.91 -> 4; 3*0.729=2.19 -> 3; 3*0.343=1.03 -> 2; 0.375 -> 1
    # 2:4 over steps 10..20: 2 * 0.9^3 = 1.46 -> 3 kept; 2 * 0.7^3 = 0.69 -> 3; 2 * 0.6^3 = 0.43 -> 2
    assert [nm_schedule(s, n=2, m=4, begin=10, end=20) for s in (5, 10, 11, 13, 14, 20)] == [4, 4, 3, 3, 2, 2]


def test_gradual_follows_the_schedule_and_ends_exactly_n_m() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.Tanh(), nn.Linear(32, 4))
    data = [(torch.randn(8, 16), torch.randn(8, 4)) for _ in range(20)]
    seen: list[int] = []

    def loss_fn(m: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        seen.append(int(nm_groups(m[0].weight.detach() != 0, 4).sum(dim=1).max()))  # left by the previous step
        return nn.functional.mse_loss(m(batch[0]), batch[1])

    context = RecipeContext(train_batches=lambda epoch: data, loss_fn=loss_fn, progress=False)
    start = model[0].weight.detach().clone()
    masks = apply_gradual_nm_pruning(model, context, n=1, m=4, epochs=2, lr=0.05, end_fraction=0.5, frequency=3)
    begin, end = 0, 20
    for step, got in enumerate(seen[1:]):  # seen[s + 1]: most non-zeros of a group after step s
        last_prune = min(step - step % 3, end) if step < end else end
        assert got == nm_schedule(last_prune, n=1, m=4, begin=begin, end=end), f"step {step}"
    assert sorted(set(seen)) == [1, 2, 3, 4]  # passed through every pattern
    for name, layer in (("0", model[0]), ("2", model[2])):
        groups = nm_groups(layer.weight.detach() != 0, 4).sum(dim=1)
        assert bool((groups == 1).all()) and torch.equal(masks[name], layer.weight != 0)
    assert not torch.equal(torch.where(masks["0"], model[0].weight.detach(), 0.0), torch.where(masks["0"], start, 0.0))


def test_gradual_refuses_layers_that_do_not_group_before_training() -> None:
    calls: list[int] = []

    def loss_fn(m: nn.Module, batch: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        return m(batch).sum()

    context = RecipeContext(train_batches=lambda epoch: [torch.randn(2, 6)], loss_fn=loss_fn, progress=False)
    with pytest.raises(InvalidArgumentError, match=r"'0' \[8, 6\]: dim 1 \(6\)"):
        apply_gradual_nm_pruning(nn.Sequential(nn.Linear(6, 8)), context, n=2, m=4, epochs=1, lr=0.1)
    assert calls == []


# Configs -----------------------------------------------------------------------------------------

def test_configs_round_trip_and_apply_through_a_recipe() -> None:
    recipe = Recipe((NMPruningConfig(n=1, m=4, keep_dense=("0", "5")),
                     GradualNMPruningConfig(n=2, m=8, epochs=3, frequency=5, keep_dense=("0",), optimizer="adamw")))
    assert Recipe.from_json(recipe.to_json()) == recipe
    assert Recipe.from_yaml(recipe.to_yaml()) == recipe
    assert recipe.to_list()[0] == {"type": "NMPruningConfig", "version": 1,
                                   "config": {"n": 1, "m": 4, "keep_dense": ["0", "5"], "ungroupable": "refuse"}}
    model = Recipe(recipe.steps[:1]).apply(net())
    assert is_nm(model[2].weight, 1, 4) and int((model[2].weight != 0).sum()) == 16 * 8 // 4
    assert int((model[0].weight == 0).sum()) == 0


@pytest.mark.parametrize("kwargs", [{"n": 4, "m": 4}, {"n": 0}, {"m": True}, {"n": 2.0}, {"keep_dense": ("(",)},
                                    {"keep_dense": "conv1"}])
def test_invalid_nm_configs_are_refused(kwargs: dict) -> None:
    with pytest.raises(RecipeError):
        NMPruningConfig(**kwargs)
    with pytest.raises(RecipeError):
        GradualNMPruningConfig(**kwargs)


@pytest.mark.parametrize("kwargs", [{"end_fraction": 0.0}, {"begin_fraction": 0.6, "end_fraction": 0.5},
                                    {"epochs": 0}, {"lr": -1.0}, {"frequency": 0}, {"optimizer": "lion"},
                                    {"weight_decay": -1.0}, {"exponent": 0}])
def test_invalid_gradual_schedules_are_refused(kwargs: dict) -> None:
    with pytest.raises(RecipeError):
        GradualNMPruningConfig(**kwargs)


# Checkpoint encoding -----------------------------------------------------------------------------

def test_packed_layout_by_hand() -> None:
    t = torch.tensor([[0.0, 1.0, 2.0, 0.0, 3.0, 0.0, 0.0, 4.0],
                      [0.0, 0.0, 5.0, -6.0, 7.0, 8.0, 0.0, -0.0]])
    assert nm_pattern(t) == (2, 4)  # (too small to beat dense: compress_state_dict would store it dense)
    stored = encode_tensor("t", t, Encoding.NM, nm=(2, 4))
    metas = {"t": TensorMeta(Encoding.NM, (2, 8), "float32", (2, 4))}
    assert metas["t"].to_json() == {"encoding": "nm", "shape": [2, 8], "dtype": "float32", "nm": [2, 4]}
    # positions (1, 2) (0, 3) (2, 3) (0, 1), two bits each, little bit order: 1 | 2<<2 | 0<<4 | 3<<6, 2 | 3<<2 | 0 | 1<<6
    assert stored["t.indices"].tolist() == [201, 78]
    assert stored["t.values"].tolist() == [1.0, 2.0, 3.0, 4.0, 5.0, -6.0, 7.0, 8.0]
    stored_t, indices_t, metas_t = stored["t.values"], stored["t.indices"], metas
    # a group with fewer than N non-zeros keeps its first zeros; -0.0 is a zero and decodes as +0.0
    u = torch.tensor([[-0.0, 0.0, 0.0, 9.0, 0.0, 0.0, 0.0, 0.0]])
    assert nm_pattern(u) == (1, 8)  # fewest bytes; stored here as 1:2 to show the filling
    stored = encode_tensor("u", u, Encoding.NM, nm=(1, 2))
    metas = {"u": TensorMeta(Encoding.NM, (1, 8), "float32", (1, 2))}
    assert stored["u.values"].tolist() == [0.0, 9.0, 0.0, 0.0] and stored["u.indices"].tolist() == [0b0010]
    assert stored["u.values"].view(torch.int32)[0] == 0  # the kept -0.0 is stored as +0.0
    assert_bit_equal(decompress_state_dict(stored, metas), {"u": torch.tensor([[0.0, 0.0, 0.0, 9.0, 0, 0, 0, 0]])})
    assert_bit_equal(decompress_state_dict({"t.values": stored_t, "t.indices": indices_t}, metas_t),
                     {"t": torch.where(t == 0, 0.0, t)})  # its -0.0 too


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("n", "m"), PATTERNS)
@pytest.mark.parametrize("shape", [(8, 16), (6, 8, 3, 3), (4, 16, 5), (16, 32, 1, 1)])
def test_nm_round_trips_are_bit_exact(shape: tuple[int, ...], n: int, m: int, dtype: torch.dtype) -> None:
    t = nm_tensor(shape, n, m, dtype=dtype, seed=len(shape) + n + m)
    t.view(-1)[m * 3] = float("nan") if t.view(-1)[m * 3] != 0 else 0.0  # special values survive
    t.view(-1)[m * 5] = -float("inf") if t.view(-1)[m * 5] != 0 else 0.0
    for encoding in (Encoding.NM, Encoding.NM_ZSTD):
        parts = encode_tensor("t", t, encoding, nm=(n, m))
        assert set(parts) == {"t.values", "t.indices"}
        metas = {"t": TensorMeta(encoding, shape, str(dtype).removeprefix("torch."), (n, m))}
        assert_bit_equal(decompress_state_dict(parts, metas), {"t": t})
    stored, metas = compress_state_dict({"t": t}, entropy_coding=False)
    assert metas["t"].encoding == Encoding.NM and metas["t"].nm == (n, m)
    assert stored["t.values"].numel() == t.numel() // m * n and stored["t.values"].dtype == dtype
    assert stored["t.indices"].numel() == (t.numel() // m * n * (m - 1).bit_length() + 7) // 8
    assert_bit_equal(decompress_state_dict(stored, metas), {"t": t})
    stored, metas = compress_state_dict({"t": t})
    assert metas["t"].encoding in (Encoding.NM, Encoding.NM_ZSTD)
    assert_bit_equal(decompress_state_dict(stored, metas), {"t": t})


@pytest.mark.parametrize(("n", "m"), [(1, 2), (2, 3), (3, 6), (1, 16), (5, 16), (2, 48)])
@pytest.mark.parametrize("shape", [(6, 48), (4, 48, 3, 3), (3, 48, 2, 1, 2)])
def test_other_patterns_round_trip_through_both_decode_paths(shape: tuple[int, ...], n: int, m: int) -> None:
    # M in (2, 4, 8, 16) decodes through packed group masks, any other M through group offsets
    t = nm_tensor(shape, n, m, seed=n * m)
    for encoding in (Encoding.NM, Encoding.NM_ZSTD):
        parts = encode_tensor("t", t, encoding, nm=(n, m))
        metas = {"t": TensorMeta(encoding, shape, "float32", (n, m))}
        assert_bit_equal(decompress_state_dict(parts, metas), {"t": t})
    q, scale = quantize_per_channel(t)
    w = dequantize_per_channel(q, scale)
    parts = encode_tensor("t.weight", quantize_exact("t.weight", w, scale), Encoding.NM_INT8, nm=(n, m))
    metas = {"t.weight_scale": TensorMeta(Encoding.DENSE, tuple(scale.shape), "float32"),
             "t.weight": TensorMeta(Encoding.NM_INT8, shape, "float32", (n, m))}
    assert_bit_equal(decompress_state_dict({"t.weight_scale": scale, **parts}, metas),
                     {"t.weight_scale": scale, "t.weight": w})


@pytest.mark.parametrize(("n", "m"), PATTERNS)
def test_int8_nm_round_trips_are_bit_exact(n: int, m: int) -> None:
    w = nm_tensor((32, 16, 3, 3), n, m, seed=n + m)
    q, scale = quantize_per_channel(w)  # the zoo's int8 weights: q * scale on the grid, scale beside
    q.view(-1)[:m * 64] = torch.where(q.view(-1)[:m * 64] != 0, 1, 0).to(torch.int8)  # some kept q are +-1 ...
    w_q = dequantize_per_channel(q, scale)
    w_q[0, :m, 0, 0] = 0.0  # ... and a whole group rounds to zero
    sd = {"conv.weight": w_q, "conv.weight_scale": scale, "fc.weight": torch.zeros(4, 16), "fc.bias": torch.ones(4)}
    stored, metas = compress_state_dict(sd, entropy_coding=False)
    assert metas["conv.weight"].encoding == Encoding.NM_INT8 and metas["conv.weight"].nm == (n, m)
    assert stored["conv.weight.values"].dtype == torch.int8
    assert stored["conv.weight.values"].numel() == w.numel() // m * n
    assert_bit_equal(decompress_state_dict(stored, metas), sd)
    stored, metas = compress_state_dict(sd)
    assert metas["conv.weight"].encoding in (Encoding.NM_INT8, Encoding.NM_INT8_ZSTD)
    assert_bit_equal(decompress_state_dict(stored, metas), sd)
    parts = encode_tensor("conv.weight", quantize_exact("conv.weight", w_q, scale), Encoding.NM_INT8_ZSTD, nm=(n, m))
    metas = {"conv.weight_scale": TensorMeta(Encoding.DENSE, tuple(scale.shape), "float32"),
             "conv.weight": TensorMeta(Encoding.NM_INT8_ZSTD, tuple(w.shape), "float32", (n, m))}
    assert_bit_equal(decompress_state_dict({"conv.weight_scale": scale, **parts}, metas),
                     {"conv.weight_scale": scale, "conv.weight": w_q})


def test_layout_is_chosen_by_bytes() -> None:
    one_four = nm_tensor((64, 64), 1, 4)
    _, nm_metas = compress_state_dict({"w": one_four}, entropy_coding=False)
    plain, plain_metas = compress_state_dict({"w": one_four}, entropy_coding=False, nm_coding=False)
    stored, _ = compress_state_dict({"w": one_four}, entropy_coding=False)
    assert plain_metas["w"].encoding == Encoding.BITMASK and nm_metas["w"].encoding == Encoding.NM
    assert sum(t.numel() * t.element_size() for t in stored.values()) == 1024 * 4 + 1024 * 2 // 8  # 0.5 bit each
    assert sum(t.numel() * t.element_size() for t in plain.values()) == 1024 * 4 + 4096 // 8  # 1 bit each
    # a 1:4-looking 99.5 %-sparse tensor is far smaller behind a bitmask; a 2:4 one is the same size (nm wins)
    sparse = torch.zeros(64, 64)
    sparse.view(-1)[::200] = 1.0
    assert nm_pattern(sparse) == (1, 16)
    assert compress_state_dict({"s": sparse}, entropy_coding=False)[1]["s"].encoding == Encoding.BITMASK
    two_four = nm_tensor((64, 64), 2, 4)
    assert compress_state_dict({"w": two_four}, entropy_coding=False)[1]["w"].encoding == Encoding.NM
    # kept zeros make the bitmask smaller: up to NM_PREFERENCE of its bytes the N:M layout stays, beyond not
    nm_bytes = 2048 * 4 + 4096 // 8 + 2 * TENSOR_OVERHEAD_BYTES
    for zeros, expected in ((40, Encoding.NM), (50, Encoding.BITMASK)):
        bitmask_bytes = 4096 // 8 + (2048 - zeros) * 4 + 2 * TENSOR_OVERHEAD_BYTES
        assert (nm_bytes <= bitmask_bytes * (1 + NM_PREFERENCE)) == (expected == Encoding.NM)
        t = two_four.clone()
        t.view(-1)[torch.nonzero(t.view(-1))[:zeros, 0]] = 0.0
        assert compress_state_dict({"w": t}, entropy_coding=False)[1]["w"].encoding == expected, zeros
    # an N:M tensor is stored with the group size whose bytes are fewest: 1:4 rather than 2:8 or 4:16
    assert nm_pattern(one_four) == (1, 4) and nm_pattern(nm_tensor((8, 24), 1, 8)) == (1, 8)
    assert nm_pattern(torch.randn(8, 16)) is None and nm_pattern(torch.zeros(8, 16)) is None


# Corrupt payloads --------------------------------------------------------------------------------

def nm_parts(n: int = 2, m: int = 4, encoding: Encoding = Encoding.NM) -> tuple[dict[str, torch.Tensor], dict]:
    t = nm_tensor((4, 2 * m), n, m, seed=7)
    return encode_tensor("t", t, encoding, nm=(n, m)), {"t": TensorMeta(encoding, (4, 2 * m), "float32", (n, m))}


def test_corrupt_indices_are_checkpoint_errors() -> None:
    parts, metas = nm_parts()
    indices = parts["t.indices"]
    with pytest.raises(CheckpointError, match=r"3 bytes of 2:4 indices, 4 expected"):
        decompress_state_dict({**parts, "t.indices": indices[:-1]}, metas)
    with pytest.raises(CheckpointError, match=r"5 bytes of 2:4 indices"):
        decompress_state_dict({**parts, "t.indices": torch.cat([indices, indices[:1]])}, metas)
    swapped = indices.clone()
    swapped[0] = (int(indices[0]) & 0xF0) | ((int(indices[0]) & 0x3) << 2) | ((int(indices[0]) >> 2) & 0x3)
    with pytest.raises(CheckpointError, match="distinct and ascending"):  # a group's two positions swapped
        decompress_state_dict({**parts, "t.indices": swapped}, metas)
    with pytest.raises(CheckpointError, match="expected torch.uint8"):
        decompress_state_dict({**parts, "t.indices": indices.to(torch.int8)}, metas)
    with pytest.raises(CheckpointError, match="must be 1-D"):
        decompress_state_dict({**parts, "t.indices": indices.view(2, 2)}, metas)
    with pytest.raises(CheckpointError, match="'t.indices' is missing"):
        decompress_state_dict({"t.values": parts["t.values"]}, metas)
    with pytest.raises(CheckpointError, match="N:M indices mark 16 values, 15 stored"):
        decompress_state_dict({**parts, "t.values": parts["t.values"][1:]}, metas)


def test_index_out_of_group_and_padding_bits_are_refused() -> None:
    parts, metas = nm_parts(1, 6)  # 3 bits per index: 8 indices in 3 bytes, positions 6 and 7 do not exist
    stream = torch.zeros(3, dtype=torch.uint8)
    stream[0] = 0b111  # the first index is 7
    with pytest.raises(CheckpointError, match="an in-group index is 7, not below M = 6"):
        decompress_state_dict({**parts, "t.indices": stream}, metas)
    t = torch.tensor([[1.0, 0.0, 0.0, 2.0, 3.0, 0.0]])
    parts = encode_tensor("t", t, Encoding.NM, nm=(1, 2))
    metas = {"t": TensorMeta(Encoding.NM, (1, 6), "float32", (1, 2))}
    assert parts["t.indices"].tolist() == [0b010]
    with pytest.raises(CheckpointError, match="non-zero padding bits"):
        decompress_state_dict({**parts, "t.indices": torch.tensor([0b1000_0010], dtype=torch.uint8)}, metas)
    assert_bit_equal(decompress_state_dict(parts, metas), {"t": t})


def test_corrupt_coded_indices_are_checkpoint_errors() -> None:
    parts, metas = nm_parts(encoding=Encoding.NM_ZSTD)
    frame = parts["t.indices"]
    for i in range(frame.numel()):
        damaged = frame.clone()
        damaged[i] ^= 0x5A
        with pytest.raises(CheckpointError, match="'t.indices'"):
            decompress_state_dict({**parts, "t.indices": damaged}, metas)


def test_encoding_a_tensor_that_is_not_n_m_is_refused() -> None:
    with pytest.raises(CheckpointError, match="is not 1:4 sparse: a group along dim 1 holds 2 non-zeros"):
        encode_tensor("t", nm_tensor((4, 8), 2, 4), Encoding.NM, nm=(1, 4))
    with pytest.raises(CheckpointError, match="nm = \\(N, M\\) is given exactly for the N:M encodings"):
        encode_tensor("t", nm_tensor((4, 8), 2, 4), Encoding.NM)
    with pytest.raises(CheckpointError, match="does not split"):
        encode_tensor("t", nm_tensor((4, 8), 2, 4), Encoding.NM, nm=(2, 16))


@pytest.mark.parametrize(
    ("meta", "message"),
    [({"encoding": "nm", "shape": [4, 8], "dtype": "float32"}, r"nm = \(N, M\) with 1 <= N < M <= 256, got None"),
     ({"encoding": "nm", "shape": [4, 8], "dtype": "float32", "nm": [4, 4]}, "got \\(4, 4\\)"),
     ({"encoding": "nm", "shape": [4, 8], "dtype": "float32", "nm": ["2", "4"]}, "got \\('2', '4'\\)"),
     ({"encoding": "nm", "shape": [4, 8], "dtype": "float32", "nm": [2, 4, 8]}, "got \\(2, 4, 8\\)"),
     ({"encoding": "nm", "shape": [4, 6], "dtype": "float32", "nm": [2, 4]}, "shape \\[4, 6\\] does not split"),
     ({"encoding": "nm", "shape": [32], "dtype": "float32", "nm": [2, 4]}, "shape \\[32\\] does not split"),
     ({"encoding": "bitmask", "shape": [4, 8], "dtype": "float32", "nm": [2, 4]}, "takes no N:M pattern"),
     ({"encoding": "nm", "shape": [4, 8], "dtype": "float32", "nm": [2, 4], "extra": 1}, "must have")],
)
def test_bad_nm_metas_are_refused(meta: dict, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        metas_from_json(json.dumps({"t": meta}))


# Checkpoint folders ------------------------------------------------------------------------------

def test_n_m_model_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=10)
    with pytest.raises(InvalidArgumentError, match="'conv1.0' \\[16, 3, 3, 3\\]"):
        apply_nm_pruning(model, 2, 4)
    masks = apply_nm_pruning(model, 2, 4, keep_dense=("conv1.0",))
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    folder = save_checkpoint(tmp_path / "nm24", sd, config={**CONFIG, "recipe": Recipe((NMPruningConfig(),)).to_list()})
    restored, config = load_checkpoint(folder)
    assert_bit_equal(restored, sd)
    assert config["format_version"] == 3 and config["recipe"][0]["type"] == "NMPruningConfig"
    with open(folder / "model.safetensors", "rb") as f:  # the metas as written
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    metas = metas_from_json(header["__metadata__"]["zoo.tensor_metas"])
    assert {name for name, meta in metas.items() if meta.nm == (2, 4)} == {f"{name}.weight" for name in masks}
    # without the N:M encodings: the same tensors behind bitmasks, a version-2 checkpoint
    plain = save_checkpoint(tmp_path / "bitmask", sd, config=CONFIG, nm_coding=False)
    assert read_config(plain)["format_version"] == 2
    assert_bit_equal(load_checkpoint(plain)[0], sd)


def test_int8_n_m_model_checkpoint_round_trip(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = timm.create_model("test_resnet", num_classes=10)
    masks = apply_nm_pruning(model, 1, 4, keep_dense=("conv1.0",))
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    for name in masks:
        q, scale = quantize_per_channel(sd[f"{name}.weight"])
        sd[f"{name}.weight"], sd[f"{name}.weight_scale"] = dequantize_per_channel(q, scale), scale
    folder = save_checkpoint(tmp_path / "nm14-int8", sd, config=CONFIG)
    assert_bit_equal(load_checkpoint(folder)[0], sd)
    assert read_config(folder)["format_version"] == 3


def test_a_version_2_file_naming_an_n_m_encoding_is_refused(tmp_path: Path) -> None:
    folder = save_checkpoint(tmp_path / "ck", {"w": nm_tensor((8, 16), 1, 4)}, config=CONFIG)
    config = json.loads((folder / "config.json").read_text())
    assert config["format_version"] == 3
    config["format_version"] = 2
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"encodings \['nm'\] need a newer format than the recorded version 2"):
        load_checkpoint(folder)


def test_older_readers_are_not_handed_an_n_m_file(tmp_path: Path) -> None:
    """A checkpoint without N:M tensors keeps the lowest version that holds it."""
    sd = {"w": torch.randn(64, 64), "b": torch.zeros(1024)}
    folder = save_checkpoint(tmp_path / "dense", sd, config=CONFIG)
    assert read_config(folder)["format_version"] == 2  # the zeros are zstd-coded
    folder = save_checkpoint(tmp_path / "plain", sd, config=CONFIG, entropy_coding=False)
    assert read_config(folder)["format_version"] == 1
    folder = save_checkpoint(tmp_path / "nm", {**sd, "w": nm_tensor((64, 64), 2, 4)}, config=CONFIG,
                             entropy_coding=False)
    assert read_config(folder)["format_version"] == 3


def test_nm_variant_names_parse_back_and_build_their_recipe() -> None:
    from zoo.variants import parse_variant_name, resolve

    base = "test_resnet.zoo_digits"
    assert parse_variant_name(f"{base}_nm24") == (base, {"method": "gmp", "nm": (2, 4)})
    assert parse_variant_name(f"{base}_osnm14_int8") == (base, {"method": "oneshot", "nm": (1, 4), "quant": "int8"})
    spec = resolve(f"{base}_nm24")
    assert spec.name == f"{base}_nm24" and spec.sparsity == 0.5 and not spec.is_base
    (step,) = spec.recipe().steps
    entry = spec.base
    assert step == GradualNMPruningConfig(n=2, m=4, epochs=max(1, round(entry.train.epochs / 2)), lr=entry.train.lr,
                                          keep_dense=entry.keep_dense, weight_decay=entry.train.weight_decay,
                                          optimizer=entry.train.optimizer, ungroupable="dense")
    spec = resolve(f"{base}_osnm14_int8")
    assert spec.sparsity == 0.75 and spec.sparse_parent.name == f"{base}_osnm14"
    assert [type(s).__name__ for s in spec.recipe().steps] == ["NMPruningConfig", "Int8PTQConfig"]
    assert resolve(f"{base}_osnm28").recipe().steps == (NMPruningConfig(n=2, m=8, keep_dense=entry.keep_dense,
                                                                        ungroupable="dense"),)
    with pytest.raises(InvalidArgumentError, match="N:M applies to magnitude pruning"):
        VariantSpec(entry, method="es", nm=(2, 4))
    with pytest.raises(InvalidArgumentError, match="not 0.9"):
        VariantSpec(entry, sparsity=0.9, nm=(2, 4))
    with pytest.raises(InvalidArgumentError, match="1 <= n < m <= 9"):
        VariantSpec(entry, nm=(4, 4))


@pytest.mark.slow
def test_zoo_load_derives_a_2_4_variant_that_saves_and_loads_packed(tmp_path_factory: pytest.TempPathFactory) -> None:
    import zoo
    from tiny_zoo import one_torch_thread, store_with_base
    from zoo.compress.nm import is_nm

    name = "test_resnet.zoo_digits_nm24"
    with one_torch_thread():
        store = store_with_base(tmp_path_factory, tmp_path_factory.mktemp("nm"))
        model = zoo.load(name, store=store, progress=False)
        again = zoo.load(name, store=store, progress=False)
    assert model.zoo.source == "derived" and again.zoo.source == "cache"
    from zoo.compress.pruning import prunable_weights

    weights = prunable_weights(again, zoo.resolve(name).base.keep_dense)
    assert weights and all(is_nm(w, 2, 4) for w in weights.values())
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))
    (folder,) = store.cached_entries(name)
    assert read_config(folder)["format_version"] == 3  # stored as N:M groups, not bitmasks


def test_nm_sparse_training_variant_names() -> None:
    from zoo.compress.sparse_training import SparseTrainingConfig
    from zoo.variants import parse_variant_name, resolve

    base = "test_resnet.zoo_digits"
    assert parse_variant_name(f"{base}_riglnm24") == (base, {"method": "rigl", "nm": (2, 4)})
    spec = resolve(f"{base}_setnm14_int8")
    assert spec.name == f"{base}_setnm14_int8" and spec.sparsity == 0.75 and spec.distribution == "uniform"
    step = spec.recipe().steps[0]
    assert isinstance(step, SparseTrainingConfig) and step.nm == (1, 4) and step.method == "set"
    assert step.distribution == "uniform" and step.sparsity == 0.75
    with pytest.raises(InvalidArgumentError, match="no distribution or budget"):
        VariantSpec(resolve(base).base, method="rigl", nm=(2, 4), distribution="er")
    with pytest.raises(InvalidArgumentError, match="apply to sparse training"):  # not a silent no-op on gmp
        VariantSpec(resolve(base).base, method="gmp", nm=(2, 4), distribution="uniform")


def test_ungroupable_layers_are_refused_or_left_dense_by_name() -> None:
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))  # the first layer's 6 inputs do not split by 4
    with pytest.raises(InvalidArgumentError, match="'0'"):
        apply_nm_pruning(model, 2, 4)
    with pytest.warns(UserWarning, match="leaves 1 layer"):
        masks = apply_nm_pruning(model, 2, 4, ungroupable="dense")
    assert set(masks) == {"2"} and is_nm(model[2].weight, 2, 4) and bool((model[0].weight != 0).all())
    with pytest.raises(RecipeError):
        NMPruningConfig(ungroupable="skip")
    with pytest.raises(InvalidArgumentError, match="nothing to prune"):
        apply_nm_pruning(nn.Sequential(nn.Linear(6, 3)), 2, 4, ungroupable="dense")


@pytest.mark.slow
def test_the_default_nm_recipes_leave_a_familys_ungroupable_layers_dense(tmp_path_factory) -> None:
    import zoo
    from tiny_zoo import one_torch_thread, short_store

    store = short_store(tmp_path_factory.mktemp("nm"))
    with one_torch_thread(), pytest.warns(UserWarning, match="dense, their input channels"):
        model = zoo.load("test_efficientnet.zoo_digits_osnm24", store=store, progress=False)  # depthwise convs
    assert model.zoo.report.metrics and model.zoo.report.params_nonzero < model.zoo.report.params_total
    with one_torch_thread(), pytest.raises(InvalidArgumentError, match="nothing to prune 2:4"):
        zoo.load("test_irn.zoo_skimage_osnm24", store=store, progress=False)  # dense blocks of odd widths
