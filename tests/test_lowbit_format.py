"""Packed low-bit weights in the checkpoint format (version 4): 4- and 2-bit codes packed two or four to a
byte with their scales (and zero points), alone, behind a bitmask or in the N:M layout, plain or
zstd-coded; exact round trips, the bit order by hand, corrupt payloads and off-grid weights refused."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tiny_zoo import assert_bit_equal
from zoo.compress import formats
from zoo.compress.checkpoint import export_dense, load_checkpoint, read_config, save_checkpoint
from zoo.compress.formats import (
    Encoding,
    TensorMeta,
    compress_state_dict,
    decompress_state_dict,
    encode_tensor,
    pack_codes,
    quantize_lowbit_exact,
    unpack_codes,
)
from zoo.compress.nm import nm_mask
from zoo.errors import CheckpointError

CONFIG = {"name": "lowbit-test", "base_model": "net", "arch": "test_resnet", "model_kwargs": {}, "recipe": None}


def lowbit_layer(
    bits: int, shape: tuple[int, ...], *, group: int | None = None, affine: bool = False, layout: str = "dense",
    scale_dtype: torch.dtype = torch.float32, weight_dtype: torch.dtype = torch.float32, seed: int = 0,
    prefix: str = "conv",
) -> dict[str, torch.Tensor]:
    """A layer's state dict in the documented contract: the weight exactly (q - zp) * scale, the scale
    per output channel ([out]) or per group of `group` consecutive elements of a row ([out, row // group]),
    `weight_bits`, and for an affine grid `weight_zero_point`; `layout` "sparse" zeroes 90 % of the
    weights, "2:4" keeps 2 of every 4 along the input channels."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen)
    if layout == "sparse":
        w = torch.where(torch.rand(shape, generator=gen) < 0.9, 0.0, w)
    elif layout == "2:4":
        w = torch.where(nm_mask(w, 2, 4), w, 0.0)
    out = shape[0]
    rows = w.reshape(out, -1) if group is None else w.reshape(out, -1, group)
    if affine:  # codes in [0, 2**bits - 1], zero exactly representable
        low, high = rows.amin(-1).clamp(max=0), rows.amax(-1).clamp(min=0)
        scale = ((high - low) / (2 ** bits - 1)).to(scale_dtype)
        zero = torch.round(-low / scale.float()).clamp(0, 2 ** bits - 1)
        q = torch.clamp(torch.round(rows / scale.float()[..., None]) + zero[..., None], 0, 2 ** bits - 1)
        centered = q - zero[..., None]
    else:  # codes in [-2**(bits-1), 2**(bits-1) - 1]
        scale = (rows.abs().amax(-1) / (2 ** (bits - 1) - 1 if bits > 2 else 1)).to(scale_dtype)
        centered = torch.clamp(torch.round(rows / scale.float()[..., None]), -(2 ** (bits - 1)), 2 ** (bits - 1) - 1)
        zero = None
    weight = (centered.to(torch.int8).to(scale_dtype) * scale[..., None]).to(weight_dtype).reshape(shape)
    sd = {f"{prefix}.weight": weight, f"{prefix}.weight_scale": scale, f"{prefix}.weight_bits": torch.tensor(bits)}
    if zero is not None:
        sd[f"{prefix}.weight_zero_point"] = zero.to(torch.uint8)
    return sd


def codes_of(sd: dict[str, torch.Tensor], prefix: str = "conv") -> tuple[torch.Tensor, torch.Tensor | None]:
    weight, scale = sd[f"{prefix}.weight"], sd[f"{prefix}.weight_scale"]
    zero = sd.get(f"{prefix}.weight_zero_point")
    return quantize_lowbit_exact(f"{prefix}.weight", weight, scale, int(sd[f"{prefix}.weight_bits"]), zero), zero


# The bit order, by hand ------------------------------------------------------------------------------

def test_codes_pack_low_bits_first() -> None:
    # 4-bit signed codes -8 7 1 -1 3: fields 8 7 1 15 3, two per byte, the first in the low nibble
    fields = torch.tensor([-8, 7, 1, -1, 3], dtype=torch.int8).view(torch.uint8) & 0xF
    assert pack_codes(fields.numpy(), 4).tolist() == [0x78, 0xF1, 0x03]
    # 2-bit signed codes -2 1 0 -1 | 1: fields 2 1 0 3 | 1, four per byte
    fields = torch.tensor([-2, 1, 0, -1, 1], dtype=torch.int8).view(torch.uint8) & 0x3
    assert pack_codes(fields.numpy(), 2).tolist() == [2 | 1 << 2 | 0 << 4 | 3 << 6, 1]
    packed = pack_codes(fields.numpy(), 2)
    assert unpack_codes("k", packed, 5, 2, signed=True).tolist() == [-2, 1, 0, -1, 1]
    assert unpack_codes("k", packed, 5, 2, signed=False).tolist() == [2, 1, 0, 3, 1]
    with pytest.raises(CheckpointError, match="non-zero padding bits after 5 codes"):
        unpack_codes("k", packed | 0b0100_0000, 5, 2, signed=True)


def test_a_layer_by_hand() -> None:
    scale = torch.tensor([0.5, 0.25])
    weight = torch.tensor([[-4.0, 3.5, 0.5, -0.5], [0.0, 1.75, -2.0, 0.25]])  # codes -8 7 1 -1 / 0 7 -8 1
    sd = {"fc.weight": weight, "fc.weight_scale": scale, "fc.weight_bits": torch.tensor(4, dtype=torch.int8)}
    stored, metas = compress_state_dict(sd)
    assert metas["fc.weight"] == TensorMeta(Encoding.INT4, (2, 4), "float32")
    assert stored["fc.weight.values"].tolist() == [0x78, 0xF1, 0x70, 0x18]
    assert "fc.weight" not in stored and torch.equal(stored["fc.weight_scale"], scale)
    assert_bit_equal(decompress_state_dict(stored, metas), sd)
    # affine 2-bit, one scale per group of two: codes 0..3 around zero points 1 and 2
    scale = torch.tensor([[1.0, 0.5]])
    zero = torch.tensor([[1, 2]], dtype=torch.uint8)
    weight = torch.tensor([[-1.0, 2.0, -1.0, 0.5]])  # codes 0 3 | 0 3
    sd = {"fc.weight": weight, "fc.weight_scale": scale, "fc.weight_bits": torch.tensor(2),
          "fc.weight_zero_point": zero}
    stored, metas = compress_state_dict(sd, entropy_coding=False)
    assert metas["fc.weight"].encoding == Encoding.UINT2
    assert stored["fc.weight.values"].tolist() == [0 | 3 << 2 | 0 << 4 | 3 << 6]
    assert_bit_equal(decompress_state_dict(stored, metas), sd)


# Round trips -------------------------------------------------------------------------------------

LAYOUT_ENCODINGS = {"dense": "{code}", "sparse": "bitmask-{code}", "2:4": "nm-{code}"}


@pytest.mark.parametrize("layout", ["dense", "sparse", "2:4"])
@pytest.mark.parametrize("affine", [False, True], ids=["symmetric", "affine"])
@pytest.mark.parametrize("group", [None, 12], ids=["per-channel", "per-group"])
@pytest.mark.parametrize("bits", [4, 2])
def test_round_trips_are_exact(bits: int, group: int | None, affine: bool, layout: str) -> None:
    sd = lowbit_layer(bits, (16, 8, 3, 3), group=group, affine=affine, layout=layout, seed=bits)
    code = f"{'u' if affine else ''}int{bits}"
    plain = Encoding(LAYOUT_ENCODINGS[layout].format(code=code))
    # at 2 bits a 2:4 layout costs 2 + 2 bits per kept value, as much as dense 2-bit codes: dense is chosen
    chosen = Encoding(code) if (bits, layout) == (2, "2:4") else plain
    stored, metas = compress_state_dict(sd, entropy_coding=False)
    assert metas["conv.weight"].encoding == chosen
    assert metas["conv.weight"].nm == ((2, 4) if chosen.value.startswith("nm") else None)
    values = stored["conv.weight.values"]
    kept = {"dense": 16 * 72, "sparse": int(torch.count_nonzero(sd["conv.weight"])), "2:4": 16 * 72 // 2}[layout]
    kept = 16 * 72 if chosen != plain else kept
    assert values.dtype == torch.uint8 and values.numel() == (kept * bits + 7) // 8  # packed: 8 / bits a byte
    assert_bit_equal(decompress_state_dict(stored, metas), sd)
    stored, metas = compress_state_dict(sd)  # the entropy-coded form where it pays
    assert metas["conv.weight"].encoding in (chosen, Encoding(chosen.value + "-zstd"))
    assert_bit_equal(decompress_state_dict(stored, metas), sd)
    # every encoding of the layout decodes exactly, coded or not
    q, zero = codes_of(sd)
    side = {k: v for k, v in sd.items() if k != "conv.weight"}
    for encoding in (plain, Encoding(plain.value + "-zstd")):
        nm = (2, 4) if layout == "2:4" else None
        parts = encode_tensor("conv.weight", q, encoding, nm=nm, zero_point=zero)
        metas = {k: TensorMeta(Encoding.DENSE, tuple(v.shape), str(v.dtype).removeprefix("torch."))
                 for k, v in side.items()}
        metas["conv.weight"] = TensorMeta(encoding, (16, 8, 3, 3), "float32", nm)
        out = decompress_state_dict({**side, **parts}, metas)
        assert_bit_equal({k: out[k] for k in sd}, sd)


@pytest.mark.parametrize("bits", [4, 2])
def test_fp16_scales_low_precision_weights_and_linear_layers(bits: int) -> None:
    # the grid's product is taken in the scale's dtype, then cast to the weight's
    weight_dtype = torch.bfloat16 if bits == 2 else torch.float32
    sd = lowbit_layer(bits, (24, 32), group=8, affine=True, scale_dtype=torch.float16, weight_dtype=weight_dtype,
                      prefix="fc")
    sd.update(lowbit_layer(bits, (16, 32, 5), layout="2:4", seed=3, prefix="conv1d"))
    sd["fc.bias"] = torch.randn(24)
    stored, metas = compress_state_dict(sd)
    assert metas["fc.weight"].codec.bits == bits and metas["conv1d.weight"].codec.bits == bits
    if bits == 4:  # (at 2 bits a 2:4 layout saves nothing over the dense codes)
        assert metas["conv1d.weight"].codec.layout.value == "nm"
    assert_bit_equal(decompress_state_dict(stored, metas), sd)


def test_a_zero_scale_row_and_a_per_tensor_scale() -> None:
    sd = lowbit_layer(4, (4, 8), prefix="a")
    sd["a.weight"][1] = 0.0
    sd["a.weight_scale"][1] = 0.0
    w = torch.tensor([[0.5, -1.0], [0.25, 0.0]])  # codes 2 -4 1 0: fields 0x2 0xC 0x1 0x0
    sd.update({"b.weight": w, "b.weight_scale": torch.tensor(0.25), "b.weight_bits": torch.tensor(4)})
    stored, metas = compress_state_dict(sd)
    assert metas["b.weight"].encoding == Encoding.INT4 and stored["b.weight.values"].tolist() == [0xC2, 0x01]
    assert_bit_equal(decompress_state_dict(stored, metas), sd)


# Refused at encoding -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    ("change", "message"),
    [(lambda sd: sd.update({"conv.weight": sd["conv.weight"] * 1.001}), "not exactly on the 4-bit grid"),
     (lambda sd: sd.update({"conv.weight": sd["conv.weight"] * 2}), r"codes outside \[-8, 7\]"),
     (lambda sd: sd.update({"conv.weight_bits": torch.tensor(3)}), "is 3; packed low-bit weights have 4 or 2 bits"),
     (lambda sd: sd.update({"conv.weight_bits": torch.tensor(4.0)}), "must be one integer"),
     (lambda sd: sd.update({"conv.weight_bits": torch.tensor([4, 4])}), "must be one integer"),
     (lambda sd: sd.pop("conv.weight_scale"), "has a '_bits' or '_zero_point' sibling but no"),
     (lambda sd: sd.update({"conv.weight_scale": sd["conv.weight_scale"][:-1]}), "has shape \\[15\\]"),
     (lambda sd: sd.update({"conv.weight_scale": torch.ones(16, 5)}), "k dividing 72"),
     (lambda sd: sd.update({"conv.weight_scale": -sd["conv.weight_scale"]}), "finite and >= 0"),
     (lambda sd: sd.update({"conv.weight_zero_point": torch.zeros(16, dtype=torch.uint8)}), "not exactly on|outside"),
     (lambda sd: sd.update({"conv.weight_zero_point": torch.full((16,), 16)}), r"must lie in \[0, 15\]"),
     (lambda sd: sd.update({"conv.weight_zero_point": torch.zeros(8, dtype=torch.int8)}), "one zero point per scale"),
     (lambda sd: sd.update({"conv.weight_zero_point": torch.zeros(16)}), "must hold integers"),
     (lambda sd: sd.pop("conv.weight_bits"), "affine grids are stored for low-bit weights only")],
)
def test_off_grid_weights_and_bad_siblings_are_refused(change, message: str) -> None:
    sd = lowbit_layer(4, (16, 8, 3, 3))
    if "zero_point" in message or "affine" in message:
        sd["conv.weight_zero_point"] = torch.full((16,), 8, dtype=torch.uint8)  # affine-looking but off
    change(sd)
    with pytest.raises(CheckpointError, match=message):
        compress_state_dict(sd)


# Corrupt payloads --------------------------------------------------------------------------------

def stored_layer(layout: str, *, affine: bool = False, entropy_coding: bool = False):
    sd = lowbit_layer(4, (16, 8, 3, 3), affine=affine, layout=layout, seed=5)
    stored, metas = compress_state_dict(sd, entropy_coding=entropy_coding)
    return sd, stored, metas


def test_corrupt_packed_values_are_checkpoint_errors() -> None:
    sd, stored, metas = stored_layer("dense")
    values = stored["conv.weight.values"]
    assert values.numel() == 576
    with pytest.raises(CheckpointError, match="575 bytes of 4-bit codes, 576 expected for 1152 codes"):
        decompress_state_dict({**stored, "conv.weight.values": values[:-1]}, metas)
    with pytest.raises(CheckpointError, match="expected torch.uint8"):
        decompress_state_dict({**stored, "conv.weight.values": values.view(torch.int8)}, metas)
    with pytest.raises(CheckpointError, match="must be 1-D"):
        decompress_state_dict({**stored, "conv.weight.values": values.view(16, 36)}, metas)
    with pytest.raises(CheckpointError, match="'conv.weight.values' is missing"):
        decompress_state_dict({k: v for k, v in stored.items() if k != "conv.weight.values"}, metas)
    # an odd count leaves a padding nibble, which must be zero
    sd = {"fc.weight": torch.tensor([[1.0, -1.0, 0.5]]), "fc.weight_scale": torch.tensor([0.5]),
          "fc.weight_bits": torch.tensor(4)}
    stored, metas = compress_state_dict(sd)
    assert stored["fc.weight.values"].tolist() == [0x2 | 0xE << 4, 0x1]
    with pytest.raises(CheckpointError, match="non-zero padding bits after 3 codes"):
        decompress_state_dict({**stored, "fc.weight.values": torch.tensor([0xE2, 0x91], dtype=torch.uint8)}, metas)
    assert_bit_equal(decompress_state_dict(stored, metas), sd)


def test_sparse_layouts_check_their_value_counts() -> None:
    _, stored, metas = stored_layer("sparse")
    assert metas["conv.weight"].encoding == Encoding.BITMASK_INT4
    values = stored["conv.weight.values"]
    with pytest.raises(CheckpointError, match="bytes of 4-bit codes"):
        decompress_state_dict({**stored, "conv.weight.values": values[1:]}, metas)
    _, stored, metas = stored_layer("2:4", affine=True)
    assert metas["conv.weight"].encoding == Encoding.NM_UINT4
    with pytest.raises(CheckpointError, match="287 bytes of 4-bit codes, 288 expected for 576 codes"):
        decompress_state_dict({**stored, "conv.weight.values": stored["conv.weight.values"][1:]}, metas)
    with pytest.raises(CheckpointError, match="bytes of 2:4 indices"):
        decompress_state_dict({**stored, "conv.weight.indices": stored["conv.weight.indices"][1:]}, metas)


def test_damaged_zstd_frames_are_checkpoint_errors() -> None:
    sd = lowbit_layer(4, (16, 8, 3, 3), layout="sparse", seed=5)
    q, _ = codes_of(sd)
    parts = encode_tensor("conv.weight", q, Encoding.BITMASK_INT4_ZSTD)
    side = {k: v for k, v in sd.items() if k != "conv.weight"}
    metas = {k: TensorMeta(Encoding.DENSE, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in side.items()}
    metas["conv.weight"] = TensorMeta(Encoding.BITMASK_INT4_ZSTD, (16, 8, 3, 3), "float32")
    frame = parts["conv.weight.values"]
    for i in range(0, frame.numel(), 3):
        damaged = frame.clone()
        damaged[i] ^= 0x5A
        with pytest.raises(CheckpointError, match="'conv.weight.values'"):
            decompress_state_dict({**side, **parts, "conv.weight.values": damaged}, metas)


@pytest.mark.parametrize(
    ("change", "message"),
    [(lambda st: st.pop("conv.weight_bits"), "'conv.weight_bits' is missing"),
     (lambda st: st.update({"conv.weight_bits": torch.tensor(2)}), "is int4 but 'conv.weight_bits' is 2"),
     (lambda st: st.update({"conv.weight_zero_point": torch.zeros(16, dtype=torch.uint8)}), "a symmetric grid has no"),
     (lambda st: st.update({"conv.weight_scale": -st["conv.weight_scale"]}), "finite and >= 0"),
     (lambda st: st.update({"conv.weight_scale": st["conv.weight_scale"][:8]}), "has shape \\[8\\]"),
     (lambda st: st.pop("conv.weight_scale"), "'conv.weight_scale' is missing")],
)
def test_bad_stored_grids_are_refused(change, message: str) -> None:
    _, stored, metas = stored_layer("dense")
    stored = dict(stored)
    change(stored)
    metas = {k: m for k, m in metas.items() if k in stored or k == "conv.weight"}
    for key in ("conv.weight_bits", "conv.weight_zero_point"):
        if key in stored and key not in metas:
            metas = {key: TensorMeta(Encoding.DENSE, tuple(stored[key].shape),
                                     str(stored[key].dtype).removeprefix("torch.")), **metas}
        elif key in stored:
            metas[key] = TensorMeta(Encoding.DENSE, tuple(stored[key].shape), str(stored[key].dtype).removeprefix("torch."))
    with pytest.raises(CheckpointError, match=message):
        decompress_state_dict(stored, metas)


def test_an_affine_encoding_needs_its_zero_point_and_int8_takes_no_bits() -> None:
    _, stored, metas = stored_layer("dense", affine=True)
    assert metas["conv.weight"].encoding == Encoding.UINT4
    stored = {k: v for k, v in stored.items() if k != "conv.weight_zero_point"}
    metas = {k: m for k, m in metas.items() if k != "conv.weight_zero_point"}
    with pytest.raises(CheckpointError, match="an affine grid needs 'conv.weight_zero_point', which is missing"):
        decompress_state_dict(stored, metas)
    # an int8 encoding names no bits: a low-bit sibling beside one is refused, not ignored
    w = torch.tensor([[127.0, -1.0]])
    stored, metas = compress_state_dict({"fc.weight": w, "fc.weight_scale": torch.tensor([1.0])})
    assert metas["fc.weight"].encoding == Encoding.INT8
    stored["fc.weight_bits"] = torch.tensor(4)
    metas = {"fc.weight_bits": TensorMeta(Encoding.DENSE, (), "int64"), **metas}
    with pytest.raises(CheckpointError, match="is int8 \\(8-bit, symmetric\\) but has a '_bits'"):
        decompress_state_dict(stored, metas)


# Checkpoint folders ------------------------------------------------------------------------------

def test_low_bit_checkpoints_are_version_4_and_older_versions_are_refused(tmp_path: Path) -> None:
    sd = {**lowbit_layer(4, (16, 8, 3, 3), layout="sparse"), **lowbit_layer(2, (10, 16), affine=True, prefix="fc"),
          "fc.bias": torch.randn(10)}
    folder = save_checkpoint(tmp_path / "ck", sd, config=CONFIG)
    config = json.loads((folder / "config.json").read_text())
    assert config["format_version"] == 4
    restored, _ = load_checkpoint(folder)
    assert_bit_equal(restored, sd)
    config["format_version"] = 3
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"need a newer format than the recorded version 3"):
        load_checkpoint(folder)
    # the same weights without the low-bit marker are an int8-free float checkpoint of an older version
    plain = {k: v for k, v in sd.items() if not k.endswith(("_bits", "_scale", "_zero_point"))}
    folder = save_checkpoint(tmp_path / "plain", plain, config=CONFIG, entropy_coding=False)
    assert read_config(folder)["format_version"] == 1


def test_export_dense_drops_the_low_bit_buffers(tmp_path: Path) -> None:
    sd = {**lowbit_layer(2, (10, 16), affine=True, prefix="fc"), "fc.bias": torch.randn(10)}
    folder = save_checkpoint(tmp_path / "ck", sd, config=CONFIG)
    out = load_file(str(export_dense(folder, tmp_path / "dense.safetensors")))
    assert sorted(out) == ["fc.bias", "fc.weight"] and torch.equal(out["fc.weight"], sd["fc.weight"])


@pytest.mark.parametrize("weight_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("affine", [False, True], ids=["symmetric", "affine"])
@pytest.mark.parametrize("bits", [4, 2])
def test_long_rows_decode_through_per_row_tables(bits: int, affine: bool, weight_dtype: torch.dtype,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows of at least 256 bytes decode by a per-row table of dequantized bytes: the same bits."""
    calls = []
    table_path = formats._dequantize_by_table
    monkeypatch.setattr(formats, "_dequantize_by_table", lambda *a: calls.append(1) or table_path(*a))
    sd = lowbit_layer(bits, (6, 256, 2, 2), affine=affine, weight_dtype=weight_dtype, seed=bits,
                      scale_dtype=torch.float16 if affine else torch.float32)
    sd["conv.weight_scale"][2] = 0.0  # a zero scale row decodes as zeros
    sd["conv.weight"][2] = 0.0
    encoding = Encoding(f"{'u' if affine else ''}int{bits}")  # dense, whatever the size rule picks
    q, zero = codes_of(sd)
    side = {k: v for k, v in sd.items() if k != "conv.weight"}
    metas = {k: TensorMeta(Encoding.DENSE, tuple(v.shape), str(v.dtype).removeprefix("torch.")) for k, v in side.items()}
    metas["conv.weight"] = TensorMeta(encoding, (6, 256, 2, 2), str(weight_dtype).removeprefix("torch."))
    parts = encode_tensor("conv.weight", q, encoding, zero_point=zero)
    out = decompress_state_dict({**side, **parts}, metas)
    assert_bit_equal({k: out[k] for k in sd}, sd)
    assert calls == [1]
