"""The compressed checkpoint format: exact round trips, integrity checks, atomic saves, dense export."""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import pytest
import timm
import torch
import zstandard
from safetensors.torch import load_file, save_file
from tiny_zoo import assert_bit_equal
from zoo.compress import checkpoint as ckpt
from zoo.compress import entropy, formats
from zoo.compress.checkpoint import (
    checkpoint_bytes,
    export_dense,
    load_checkpoint,
    read_config,
    save_checkpoint,
)
from zoo.compress.formats import (
    ENCODINGS,
    Encoding,
    Layout,
    TensorMeta,
    compress_state_dict,
    decompress_state_dict,
    encode_tensor,
    metas_from_json,
    metas_to_json,
    quantize_exact,
)

from zoo.errors import CheckpointError, ChecksumError, InvalidArgumentError, UnknownNameError

CONFIG = {
    "name": "net-test", "base_model": "net", "arch": "test_resnet", "model_kwargs": {"num_classes": 10}, "recipe": None,
}


def sparse(
    shape: tuple[int, ...], sparsity: float, *, dtype: torch.dtype = torch.float32, seed: int = 0,
) -> torch.Tensor:
    """Random values with a `sparsity` fraction of exact +0.0 (never -0.0)."""
    g = torch.Generator().manual_seed(seed)
    values = torch.randn(shape, generator=g)
    values = torch.where(values == 0, 1.0, values)
    keep = torch.rand(shape, generator=g) >= sparsity
    return torch.where(keep, values, 0.0).to(dtype)


def on_int8_grid(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The zoo's quantization convention: weight == q.float() * scale.view(-1, 1, ...)."""
    scale = weight.abs().amax(dim=tuple(range(1, weight.dim()))) / 127
    view = scale.view(-1, *([1] * (weight.dim() - 1)))
    q = torch.where(view == 0, 0.0, torch.round(weight / view)).clamp(-127, 127).to(torch.int8)
    return q.float() * view, scale


def encodings(metas) -> dict[str, Encoding]:
    return {name: meta.encoding for name, meta in metas.items()}


# Round trips -------------------------------------------------------------------------------------

@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.9, 0.999, 1.0])
@pytest.mark.parametrize("shape", [(64, 32, 3, 3), (7, 3, 5), (1001,), ()])
def test_float_round_trip_is_bit_exact_at_any_sparsity(sparsity: float, shape: tuple[int, ...]) -> None:
    sd = {"layer.weight": sparse(shape, sparsity)}
    stored, metas = compress_state_dict(sd)
    assert_bit_equal(decompress_state_dict(stored, metas), sd)


def test_plain_encoding_is_the_smaller_one() -> None:
    sd = {"dense.weight": sparse((256, 64), 0.0), "half.weight": sparse((256, 64), 0.5), "tiny.bias": torch.zeros(4)}
    stored, metas = compress_state_dict(sd, entropy_coding=False)
    assert encodings(metas) == {
        "dense.weight": Encoding.DENSE, "half.weight": Encoding.BITMASK, "tiny.bias": Encoding.DENSE,
    }
    assert set(stored) == {"dense.weight", "half.weight.values", "half.weight.bitmask", "tiny.bias"}
    assert stored["half.weight.bitmask"].dtype == torch.uint8 and stored["half.weight.bitmask"].numel() == 256 * 64 // 8
    assert stored["half.weight.values"].numel() == int(torch.count_nonzero(sd["half.weight"]))


def test_bitmask_uses_little_bit_order() -> None:
    t = torch.zeros(1000)
    t[[0, 3, 9, 999]] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    stored, _ = compress_state_dict({"t": t}, entropy_coding=False)
    bits = stored["t.bitmask"]
    assert bits[0] == 0b1001 and bits[1] == 0b10 and bits[124] == 0b10000000
    assert stored["t.values"].tolist() == [1.0, 2.0, 3.0, 4.0]


@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.95])
def test_int8_round_trip_is_bit_exact(sparsity: float) -> None:
    conv, conv_scale = on_int8_grid(sparse((32, 16, 3, 3), sparsity, seed=1))
    fc, fc_scale = on_int8_grid(sparse((10, 77), sparsity, seed=2))
    sd = {
        "conv.weight": conv, "conv.weight_scale": conv_scale,
        "conv.input_scale": torch.tensor(0.02), "conv.input_zero_point": torch.tensor(0, dtype=torch.int32),
        "fc.weight": fc, "fc.weight_scale": fc_scale, "fc.bias": torch.randn(10),
    }
    stored, metas = compress_state_dict(sd, entropy_coding=False)
    expected = Encoding.INT8 if sparsity < 0.5 else Encoding.BITMASK_INT8
    assert metas["conv.weight"].encoding == expected and metas["fc.weight"].encoding == expected
    assert stored["conv.weight.values"].dtype == torch.int8
    assert_bit_equal(decompress_state_dict(stored, metas), sd)
    stored, metas = compress_state_dict(sd)
    if sparsity == 0.95:  # mask and values both compress: the zstd form saves more than ENTROPY_MIN_SAVING
        assert metas["conv.weight"].encoding == Encoding.BITMASK_INT8_ZSTD
    assert_bit_equal(decompress_state_dict(stored, metas), sd)


def test_int8_channel_of_zeros_has_zero_scale() -> None:
    weight = sparse((8, 5), 0.0)
    weight[3] = 0.0
    weight, scale = on_int8_grid(weight)
    assert scale[3] == 0
    sd = {"w.weight": weight, "w.weight_scale": scale}
    assert_bit_equal(decompress_state_dict(*compress_state_dict(sd)), sd)


def test_int8_with_one_scale_per_tensor() -> None:
    scale = torch.tensor([0.05])
    weight = torch.randint(-127, 128, (6, 4), generator=torch.Generator().manual_seed(3)).to(torch.int8).float() * scale
    sd = {"fc.weight": weight, "fc.weight_scale": scale}
    stored, metas = compress_state_dict(sd)
    assert metas["fc.weight"].encoding == Encoding.INT8
    assert_bit_equal(decompress_state_dict(stored, metas), sd)


def test_non_float_and_low_precision_tensors_round_trip(tmp_path: Path) -> None:
    sd = {
        "bn.num_batches_tracked": torch.tensor(12345, dtype=torch.int64),
        "mask": torch.tensor([True, False, True]),
        "ids": torch.zeros(1000, dtype=torch.int32),
        "bf16.dense": sparse((33, 7), 0.0, dtype=torch.bfloat16),
        "bf16.sparse": sparse((33, 7), 0.8, dtype=torch.bfloat16),
        "fp16.sparse": sparse((129,), 0.9, dtype=torch.float16),
        "fp64.sparse": sparse((129,), 0.9, dtype=torch.float64),
        "empty": torch.zeros(0, 4),
    }
    folder = save_checkpoint(tmp_path / "ck", sd, config=CONFIG)
    restored, _ = load_checkpoint(folder)
    assert_bit_equal(restored, sd)
    _, metas = compress_state_dict(sd)
    # 4000 bytes of zeros compress to a few bytes; bf16 randoms (462 bytes) are too small to try
    assert metas["ids"].encoding == Encoding.DENSE_ZSTD and metas["bf16.dense"].encoding == Encoding.DENSE
    _, plain = compress_state_dict(sd, entropy_coding=False)
    assert plain["bf16.sparse"].encoding == Encoding.BITMASK and plain["fp64.sparse"].encoding == Encoding.BITMASK
    assert_bit_equal(decompress_state_dict(*compress_state_dict(sd, entropy_coding=False)), sd)


def test_special_values_survive_and_negative_zero_becomes_zero() -> None:
    t = torch.zeros(200)
    t[:4] = torch.tensor([float("nan"), float("inf"), -float("inf"), -1e-45])
    t[10] = -0.0
    stored, metas = compress_state_dict({"t": t})
    assert metas["t"].encoding == Encoding.BITMASK
    out = decompress_state_dict(stored, metas)["t"]
    # Documented: the bitmask treats -0.0 as zero, so it decodes as +0.0; every other bit is kept.
    assert torch.equal(out.view(torch.int32)[:4], t.view(torch.int32)[:4])
    assert out[10].view(torch.int32) == 0 and torch.equal(out[4:], t[4:])
    dense = torch.full((4,), -0.0)
    restored = decompress_state_dict(*compress_state_dict({"d": dense}))["d"]
    assert torch.equal(restored.view(torch.int32), dense.view(torch.int32))


def test_checkpoint_round_trip_keeps_config_and_extra_metadata(tmp_path: Path) -> None:
    weight, scale = on_int8_grid(sparse((16, 8, 3, 3), 0.9))
    sd = {"conv.weight": weight, "conv.weight_scale": scale, "bn.num_batches_tracked": torch.tensor(3)}
    recipe = [{"type": "MagnitudePruningConfig", "version": 1, "config": {"sparsity": 0.9}}]
    config = {**CONFIG, "recipe": recipe, "metrics": {"top1": 0.75}}
    folder = save_checkpoint(tmp_path / "ck", sd, config=config)
    restored, loaded = load_checkpoint(folder)
    assert_bit_equal(restored, sd)
    # the 90 %-sparse int8 weight is entropy-coded: the lowest version holding it is 2
    assert loaded["format"] == "zoo-compressed" and loaded["format_version"] == 2
    assert {k: loaded[k] for k in config} == config
    weights = folder / "model.safetensors"
    entry = {"sha256": ckpt.sha256_file(weights), "bytes": weights.stat().st_size}
    assert loaded["files"] == {"model.safetensors": entry}
    assert checkpoint_bytes(folder) == weights.stat().st_size + (folder / "config.json").stat().st_size
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]


def test_tied_tensors_are_saved(tmp_path: Path) -> None:
    shared = torch.randn(10, 4)
    sd = {"embed.weight": shared, "head.weight": shared, "half": shared[:5]}
    restored, _ = load_checkpoint(save_checkpoint(tmp_path / "ck", sd, config=CONFIG))
    assert_bit_equal(restored, {k: v.clone() for k, v in sd.items()})


# Bad tensors and metas ---------------------------------------------------------------------------

def test_weight_off_the_int8_grid_is_refused() -> None:
    weight, scale = on_int8_grid(sparse((8, 4), 0.0))
    nudged = weight.clone()
    nudged[2, 1] = torch.nextafter(nudged[2, 1], torch.tensor(10.0))
    with pytest.raises(CheckpointError, match="not exactly on the int8 grid"):
        compress_state_dict({"fc.weight": nudged, "fc.weight_scale": scale})
    with pytest.raises(CheckpointError, match=r"\[-127, 127\]"):
        compress_state_dict({"fc.weight": weight, "fc.weight_scale": scale / 2})
    with pytest.raises(CheckpointError, match="one scale per output channel"):
        compress_state_dict({"fc.weight": weight, "fc.weight_scale": scale[:3]})
    with pytest.raises(CheckpointError, match=">= 0"):
        compress_state_dict({"fc.weight": -weight, "fc.weight_scale": -scale})
    with pytest.raises(CheckpointError, match="not floating"):
        compress_state_dict({"fc.weight": torch.ones(8, 4, dtype=torch.int64), "fc.weight_scale": scale})


def test_colliding_part_names_are_refused() -> None:
    with pytest.raises(CheckpointError, match="collides"):
        compress_state_dict({"a": sparse((100,), 0.9), "a.values": torch.randn(3)})


def test_unknown_encoding_raises_unknown_name() -> None:
    with pytest.raises(UnknownNameError, match="bitmsk"):
        metas_from_json(json.dumps({"t": {"encoding": "bitmsk", "shape": [3], "dtype": "float32"}}))
    assert sorted(ENCODINGS) == sorted(e.value for e in Encoding)


def test_inconsistent_stored_tensors_are_refused() -> None:
    stored, metas = compress_state_dict({"t": sparse((100,), 0.9), "u": torch.randn(3)})
    with pytest.raises(CheckpointError, match="without a meta"):
        decompress_state_dict({**stored, "stray": torch.zeros(1)}, metas)
    with pytest.raises(CheckpointError, match="'u' is missing"):
        decompress_state_dict({k: v for k, v in stored.items() if k != "u"}, metas)
    with pytest.raises(CheckpointError, match="non-zeros"):
        decompress_state_dict({**stored, "t.values": stored["t.values"][1:]}, metas)
    with pytest.raises(CheckpointError, match="dtype|expected"):
        decompress_state_dict({**stored, "u": stored["u"].double()}, metas)
    assert metas_from_json(metas_to_json(metas)) == metas


# Integrity of files on disk ----------------------------------------------------------------------

@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    sd = {
        "conv.weight": sparse((32, 16, 3, 3), 0.8), "fc.weight": sparse((10, 32), 0.0),
        "bn.num_batches_tracked": torch.tensor(7),
    }
    return save_checkpoint(tmp_path / "ck", sd, config=CONFIG), sd


def test_truncated_weight_file_fails_checksum(saved) -> None:
    folder, _ = saved
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(ChecksumError, match="model.safetensors") as err:
        load_checkpoint(folder)
    assert read_config(folder)["files"]["model.safetensors"]["sha256"] in str(err.value)
    with pytest.raises(CheckpointError, match="bytes on disk"):
        load_checkpoint(folder, verify=False)


def test_unreadable_header_is_a_checkpoint_error(saved) -> None:
    folder, _ = saved
    weights = folder / "model.safetensors"
    size = weights.stat().st_size
    weights.write_bytes(b"\xff" * size)  # same size, garbage header
    with pytest.raises(ChecksumError):
        load_checkpoint(folder)
    with pytest.raises(CheckpointError, match="not a readable safetensors file"):
        load_checkpoint(folder, verify=False)


def test_altered_byte_fails_checksum(saved) -> None:
    folder, _ = saved
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01
    weights.write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="truncated or altered"):
        load_checkpoint(folder)


def test_missing_files_are_checkpoint_errors(saved) -> None:
    folder, _ = saved
    (folder / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(folder)
    (folder / "config.json").unlink()
    with pytest.raises(CheckpointError, match="config.json is missing"):
        load_checkpoint(folder)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [("format_version", 5, r"version 5 is not supported; supported versions: 1, 2, 3, 4"),
     ("format_version", True, r"version True is not supported"),
     ("format", "other", r"unknown checkpoint format 'other'; supported: 'zoo-compressed'"),
     ("files", {"../x": {"sha256": "0", "bytes": 1}}, "must list"),
     ("files", {"model.safetensors": {"sha256": "0", "bytes": 1}, "../x": {"sha256": "0", "bytes": 1}}, "plain name")],
)
def test_bad_config_is_refused(saved, key: str, value: object, message: str) -> None:
    folder, _ = saved
    config = json.loads((folder / "config.json").read_text())
    config[key] = value
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint(folder)


# Atomic saves and config validation --------------------------------------------------------------

def test_interrupted_save_keeps_previous_checkpoint(saved, monkeypatch: pytest.MonkeyPatch) -> None:
    folder, sd = saved
    before = sorted(p.name for p in folder.parent.iterdir())

    def failing_save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ckpt, "save_file", failing_save_file)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(folder, {"other": torch.randn(5)}, config={**CONFIG, "name": "new"})
    assert sorted(p.name for p in folder.parent.iterdir()) == before
    restored, config = load_checkpoint(folder)
    assert_bit_equal(restored, sd)
    assert config["name"] == CONFIG["name"]


def test_interrupted_first_save_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def failing_save_file(tensors, filename, metadata=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save_file", failing_save_file)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "ck", {"w": torch.randn(3)}, config=CONFIG)
    assert [p.name for p in tmp_path.iterdir()] == [".ck.lock"]  # its lock (zoo.locks), not a checkpoint


def test_save_replaces_a_previous_checkpoint(saved) -> None:
    folder, _ = saved
    new = {"w": sparse((50,), 0.5)}
    save_checkpoint(folder, new, config={**CONFIG, "name": "v2"})
    restored, config = load_checkpoint(folder)
    assert_bit_equal(restored, new)
    assert config["name"] == "v2"
    assert sorted(p.name for p in folder.parent.iterdir()) == [".ck.lock", "ck"]


def test_save_refuses_to_replace_unrelated_folder(tmp_path: Path) -> None:
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(InvalidArgumentError, match="refusing"):
        save_checkpoint(tmp_path / "mine", {"w": torch.randn(3)}, config=CONFIG)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    "config",
    [{k: v for k, v in CONFIG.items() if k != "arch"}, {**CONFIG, "files": {}}, {**CONFIG, "recipe": "prune"},
     {**CONFIG, "model_kwargs": None}, {**CONFIG, "extra": object()}, {**CONFIG, "extra": float("nan")}],
)
def test_invalid_config_is_refused(tmp_path: Path, config: dict) -> None:
    with pytest.raises(InvalidArgumentError):
        save_checkpoint(tmp_path / "ck", {"w": torch.randn(3)}, config=config)
    assert not (tmp_path / "ck").exists()


# Dense export ------------------------------------------------------------------------------------

def test_export_dense_loads_through_timm(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=10)
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    convs = [k for k, v in sd.items() if k.endswith(".weight") and v.dim() == 4]
    for name in convs[::2]:  # prune half the convs to 80%, quantize the others (+ their quant buffers)
        sd[name] = torch.where(sd[name].abs() > sd[name].abs().quantile(0.8), sd[name], 0.0)
    for name in convs[1::2]:
        sd[name], sd[name + "_scale"] = on_int8_grid(sd[name])
        prefix = name.removesuffix("weight")
        sd[prefix + "input_scale"], sd[prefix + "input_zero_point"] = torch.tensor(0.1), torch.tensor(0)
    folder = save_checkpoint(tmp_path / "ck", sd, config=CONFIG)
    out = export_dense(folder, tmp_path / "export" / "dense.safetensors")

    exported = load_file(out)
    assert not any(k.endswith(("weight_scale", "input_scale", "input_zero_point")) for k in exported)
    loaded = timm.create_model(
        "test_resnet", pretrained=True, num_classes=10,
        pretrained_cfg_overlay=dict(file=str(out), num_classes=10),
    )
    expected = {k: v for k, v in sd.items() if k in model.state_dict()}
    assert_bit_equal(loaded.state_dict(), expected)
    assert_bit_equal(load_file(export_dense(sd, tmp_path / "from_sd.safetensors")), exported)


def test_export_dense_rejects_other_inputs(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError):
        export_dense([torch.zeros(1)], tmp_path / "x.safetensors")


# Entropy-coded encodings and format versions -----------------------------------------------------

FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
# (shape, sparsity): empty, scalar, all zero, all non-zero, typical, odd sizes (bitmask tail bits)
CASES = [((0,), 0.5), ((0, 3), 0.0), ((), 0.0), ((), 1.0), ((257,), 1.0), ((257,), 0.0), ((33, 7), 0.9),
         ((8, 4, 3, 3), 0.5), ((3000,), 0.99)]


def encoded(name: str, tensor: torch.Tensor, encoding: Encoding) -> tuple[dict[str, torch.Tensor], dict]:
    """`tensor` stored in `encoding` (not quantized) by hand rather than by the size rule; (parts, metas)."""
    meta = TensorMeta(encoding, tuple(tensor.shape), str(tensor.dtype).removeprefix("torch."))
    return encode_tensor(name, tensor, encoding), {name: meta}


def plain_layout(encoding: Encoding) -> bool:
    """Dense or bitmask: the layouts any tensor fits (the N:M ones: tests/test_nm_sparsity.py)."""
    return ENCODINGS.get(encoding.value).layout is not Layout.NM


@pytest.mark.parametrize("encoding", [e for e in Encoding if not ENCODINGS.get(e.value).quantized and plain_layout(e)])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize(("shape", "sparsity"), CASES)
def test_every_float_encoding_round_trips_bit_exactly(encoding, dtype, shape, sparsity) -> None:
    tensor = sparse(shape, sparsity, dtype=dtype, seed=len(shape))
    parts, metas = encoded("t", tensor, encoding)
    assert_bit_equal(decompress_state_dict(parts, metas), {"t": tensor})


@pytest.mark.parametrize("encoding", [e for e in Encoding if ENCODINGS.get(e.value).quantized and plain_layout(e)
                                      and not ENCODINGS.get(e.value).packed])  # low-bit: tests/test_lowbit_format.py
@pytest.mark.parametrize(("shape", "sparsity"), [((0, 3), 0.0), ((6, 5), 1.0), ((6, 5), 0.0), ((32, 16, 3, 3), 0.9)])
def test_every_int8_encoding_round_trips_bit_exactly(encoding, shape, sparsity) -> None:
    weight, scale = on_int8_grid(sparse(shape, sparsity, seed=5)) if shape[0] else (torch.zeros(shape), torch.zeros(0))
    sd = {"l.weight_scale": scale, "l.weight": weight}
    parts = {"l.weight_scale": scale, **encode_tensor("l.weight", quantize_exact("l.weight", weight, scale), encoding)}
    metas = {"l.weight_scale": TensorMeta(Encoding.DENSE, tuple(scale.shape), "float32"),
             "l.weight": TensorMeta(encoding, shape, "float32")}
    assert_bit_equal(decompress_state_dict(parts, metas), sd)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool, torch.int16])
def test_dense_zstd_round_trips_integer_and_bool_tensors(dtype) -> None:
    g = torch.Generator().manual_seed(0)
    tensor = torch.randint(0, 2 if dtype == torch.bool else 16, (5, 301), generator=g).to(dtype)
    parts, metas = encoded("t", tensor, Encoding.DENSE_ZSTD)
    assert_bit_equal(decompress_state_dict(parts, metas), {"t": tensor})
    stored, chosen = compress_state_dict({"t": tensor})  # few distinct values: coding pays
    assert chosen["t"].encoding == Encoding.DENSE_ZSTD and set(stored) == {"t.values"}
    assert_bit_equal(decompress_state_dict(stored, chosen), {"t": tensor})


def test_entropy_coding_is_chosen_where_it_pays() -> None:
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(256, 512, generator=g)
    pruned = torch.where(weight.abs() > weight.abs().quantile(0.9), weight, 0.0)  # magnitude: exponents cluster
    sd = {"dense.weight": weight, "pruned.weight": pruned, "ones": torch.ones(4096), "small": torch.zeros(8)}
    stored, metas = compress_state_dict(sd)
    plain_stored, plain_metas = compress_state_dict(sd, entropy_coding=False)
    assert encodings(plain_metas) == {"dense.weight": Encoding.DENSE, "pruned.weight": Encoding.BITMASK,
                                      "ones": Encoding.DENSE, "small": Encoding.DENSE}
    # random mantissas save < ENTROPY_MIN_SAVING[False]: stays plain (read in place); a tiny tensor is not tried
    assert encodings(metas) == {"dense.weight": Encoding.DENSE, "pruned.weight": Encoding.BITMASK_ZSTD,
                                "ones": Encoding.DENSE_ZSTD, "small": Encoding.DENSE}
    assert stored["pruned.weight.bitmask"].dtype == torch.uint8 and stored["pruned.weight.values"].dim() == 1
    def nbytes(tensors: dict[str, torch.Tensor], prefix: str) -> int:
        return sum(t.numel() * t.element_size() for k, t in tensors.items() if k.startswith(prefix))

    assert nbytes(stored, "pruned") < 0.85 * nbytes(plain_stored, "pruned")  # the mask shrinks ~3x, values ~10 %
    assert nbytes(stored, "ones") < 100
    assert_bit_equal(decompress_state_dict(stored, metas), sd)


def test_parallel_decode_matches_serial_and_reports_the_first_error() -> None:
    sd = {f"l{i}.weight": sparse((64, 32, 3, 3), 0.9, seed=i) for i in range(6)}
    sd["small"] = sparse((100,), 0.9)
    stored, metas = compress_state_dict(sd)
    assert all(m.codec.entropy for m in metas.values() if m.numel >= formats.PARALLEL_MIN_NUMEL)
    assert_bit_equal(decompress_state_dict(stored, metas, threads=4), sd)
    assert_bit_equal(decompress_state_dict(stored, metas, threads=1), sd)
    broken = dict(stored)
    assert metas["small"].numel < formats.PARALLEL_MIN_NUMEL  # decoded inline, before the pool's results
    for name in ("small.values", "l4.weight.values", "l1.weight.values"):
        broken[name] = stored[name][:-1]
    with pytest.raises(CheckpointError, match="'l1.weight.values'"):
        decompress_state_dict(broken, metas, threads=4)


def zstd_parts() -> tuple[dict[str, torch.Tensor], dict]:
    tensor = sparse((40, 50), 0.9, seed=3)
    parts, metas = encoded("t", tensor, Encoding.BITMASK_ZSTD)
    return parts, metas


@pytest.mark.parametrize("key", ["t.values", "t.bitmask"])
def test_every_corrupted_byte_of_a_frame_is_a_checkpoint_error(key: str) -> None:
    parts, metas = zstd_parts()
    frame = parts[key]
    for i in range(frame.numel()):
        damaged = frame.clone()
        damaged[i] ^= 0x5A
        with pytest.raises(CheckpointError, match=repr(key)):
            decompress_state_dict({**parts, key: damaged}, metas)


@pytest.mark.parametrize(
    ("change", "message"),
    [(lambda f: f[:-4], "damaged zstd frame"), (lambda f: f[:3], "not a zstd frame"),
     (lambda f: torch.cat([f, f]), "damaged zstd frame"),  # a second frame: trailing data
     (lambda f: torch.cat([f, torch.zeros(1, dtype=torch.uint8)]), "damaged zstd frame"),
     (lambda f: f.view(1, -1), "1-D zstd frame"), (lambda f: f.to(torch.int8), "expected torch.uint8")],
)
def test_malformed_frames_are_checkpoint_errors(change, message: str) -> None:
    parts, metas = zstd_parts()
    with pytest.raises(CheckpointError, match=message):
        decompress_state_dict({**parts, "t.values": change(parts["t.values"])}, metas)


def header_only_frame(content_size: int) -> torch.Tensor:
    """A zstd frame header declaring `content_size` bytes (single segment, 8-byte size), one empty block."""
    raw = struct.pack("<IBQ", 0xFD2FB528, 0b1110_0000, content_size) + bytes([1, 0, 0])
    assert zstandard.frame_content_size(raw) == content_size
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8)


def test_decoded_size_is_bounded_by_the_shape_before_allocating(monkeypatch: pytest.MonkeyPatch) -> None:
    parts, metas = zstd_parts()

    huge = header_only_frame(1 << 40)
    real = zstandard.ZstdDecompressor()
    decompressed: list[bytes] = []

    class Recording:
        def decompress(self, data, **kwargs):
            decompressed.append(bytes(data))
            return real.decompress(data, **kwargs)

    monkeypatch.setattr(entropy, "_decompressor", lambda: Recording())
    for key in ("t.bitmask", "t.values"):
        with pytest.raises(CheckpointError, match=rf"{key!r} declares 1099511627776 bytes decoded, its meta implies"):
            decompress_state_dict({**parts, key: huge}, metas)
    assert decompressed and bytes(huge.numpy()) not in decompressed  # refused from the header alone
    # a well-formed frame of the wrong size (one value more than the bitmask marks) is refused the same way
    nnz = int(torch.count_nonzero(decompress_state_dict(parts, metas)["t"]))
    extra = torch.from_numpy(entropy.encode(torch.ones(nnz + 1).numpy()))
    with pytest.raises(CheckpointError, match=rf"declares {4 * (nnz + 1)} bytes decoded, its meta implies {4 * nnz}"):
        decompress_state_dict({**parts, "t.values": extra}, metas)
    _, dense_meta = encoded("d", torch.randn(10), Encoding.DENSE_ZSTD)
    with pytest.raises(CheckpointError, match="declares 1099511627776 bytes decoded, its meta implies 40"):
        decompress_state_dict({"d.values": huge}, dense_meta)
    assert bytes(huge.numpy()) not in decompressed


def test_corrupted_frame_on_disk_is_typed(tmp_path: Path) -> None:
    sd = {"conv.weight": sparse((64, 32, 3, 3), 0.9)}
    folder = save_checkpoint(tmp_path / "ck", sd, config=CONFIG)
    assert read_config(folder)["format_version"] == 2
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-200] ^= 0xFF  # inside the last stored frame
    weights.write_bytes(bytes(data))
    with pytest.raises(ChecksumError):
        load_checkpoint(folder)
    with pytest.raises(CheckpointError, match="zstd frame"):
        load_checkpoint(folder, verify=False)


def write_v1_by_hand(folder: Path) -> dict[str, torch.Tensor]:
    """A version-1 checkpoint laid out by hand, as the zoo wrote them before format version 2."""
    folder.mkdir()
    expected = {"w": torch.tensor([0.0, 1.5, 0.0, 0.0, -2.0, 0.0, 0.0, 0.0, 3.0]), "b": torch.tensor([1.0, 2.0]),
                "q.weight_scale": torch.tensor([0.5, 0.25]), "q.weight": torch.tensor([[1.0, -0.5], [0.0, 0.25]])}
    stored = {"w.bitmask": torch.tensor([0b0001_0010, 0b1], dtype=torch.uint8), "w.values": torch.tensor([1.5, -2.0, 3.0]),
              "b": expected["b"], "q.weight_scale": expected["q.weight_scale"],
              "q.weight.values": torch.tensor([[2, -1], [0, 1]], dtype=torch.int8)}
    metas = {"w": {"encoding": "bitmask", "shape": [9], "dtype": "float32"},
             "b": {"encoding": "dense", "shape": [2], "dtype": "float32"},
             "q.weight_scale": {"encoding": "dense", "shape": [2], "dtype": "float32"},
             "q.weight": {"encoding": "int8", "shape": [2, 2], "dtype": "float32"}}
    save_file(stored, str(folder / "model.safetensors"), metadata={"format": "pt", "zoo.tensor_metas": json.dumps(metas)})
    data = (folder / "model.safetensors").read_bytes()
    files = {"model.safetensors": {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}}
    (folder / "config.json").write_text(json.dumps({"format": "zoo-compressed", "format_version": 1, **CONFIG, "files": files}))
    return expected


def test_version_1_checkpoints_still_load(tmp_path: Path) -> None:
    expected = write_v1_by_hand(tmp_path / "by-hand")
    restored, config = load_checkpoint(tmp_path / "by-hand")
    assert config["format_version"] == 1
    assert_bit_equal(restored, expected)
    # the plain encoder path still writes version 1, readable by zoo versions before the zstd encodings
    sd = {"conv.weight": sparse((64, 32, 3, 3), 0.9), "bn.num_batches_tracked": torch.tensor(3)}
    folder = save_checkpoint(tmp_path / "plain", sd, config=CONFIG, entropy_coding=False)
    assert read_config(folder)["format_version"] == 1
    with ckpt.safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        assert {m.encoding for m in metas_from_json(f.metadata()[ckpt.METAS_KEY]).values()} <= {
            Encoding.DENSE, Encoding.BITMASK, Encoding.INT8, Encoding.BITMASK_INT8}
    assert_bit_equal(load_checkpoint(folder)[0], sd)


def test_version_1_checkpoint_naming_a_zstd_encoding_is_refused(tmp_path: Path) -> None:
    folder = save_checkpoint(tmp_path / "ck", {"conv.weight": sparse((64, 32, 3, 3), 0.9)}, config=CONFIG)
    config = json.loads((folder / "config.json").read_text())
    config["format_version"] = 1
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"\['bitmask-zstd'\] need a newer format than the recorded version 1"):
        load_checkpoint(folder)


def test_encode_tensor_refuses_a_payload_of_the_wrong_kind() -> None:
    with pytest.raises(CheckpointError, match="int8 grid indices"):
        encode_tensor("l.weight", torch.randn(4), Encoding.INT8_ZSTD)
    with pytest.raises(CheckpointError, match="stores the tensor"):
        encode_tensor("t", torch.zeros(4, dtype=torch.int8), Encoding.BITMASK_ZSTD)
    with pytest.raises(UnknownNameError):
        encode_tensor("t", torch.zeros(4), "zstd")
