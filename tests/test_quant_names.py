"""Low-bit quantization by name: the scheme grammar (zoo.quant_schemes), variant names that parse back,
the default recipes they stand for (QAT where the base trains, post-training otherwise) and distillation."""
from __future__ import annotations

import pytest

from zoo.errors import InvalidArgumentError
from zoo.quant_schemes import QuantScheme, canonical_quant, default_quant, parse_quant
from zoo.variants import VariantSpec, parse_variant_name, resolve

TRAINS = "resnet18.zoo_digits"
UPSTREAM = "test_resnet.r160_in1k"  # no training data here


@pytest.mark.parametrize(("text", "scheme"), [
    ("w8a8", QuantScheme(8, 8)),
    ("w4", QuantScheme(4)),
    ("w4a8g32", QuantScheme(4, 8, 32)),
    ("w2a2_id", QuantScheme(2, 2, proxy="identity")),
    ("w2a2_relu_bcgd", QuantScheme(2, 2, proxy="relu", bcgd=True)),
    ("wb_bcgd", QuantScheme(1, bcgd=True)),
    ("wta4", QuantScheme("ternary", 4)),
    ("w4g64_asym_ptq", QuantScheme(4, group_size=64, symmetric=False, ptq=True)),
])
def test_schemes_parse_and_print_back(text: str, scheme: QuantScheme) -> None:
    assert parse_quant(text) == scheme
    assert scheme.name == text == canonical_quant(text)


def test_int8_and_the_default_proxy_spelled_out() -> None:
    assert parse_quant("int8") is None and canonical_quant("int8") == "int8"
    assert canonical_quant("w2a2_clip") == "w2a2", "clipped ReLU is the default proxy: the canonical name omits it"


@pytest.mark.parametrize("bad", ["w3", "w4a3", "w4a8g0", "w8g32", "w8_asym", "wb_asym", "wb_ptq", "w4_ptq_bcgd",
                                 "w4_id", "int4", "W4", "w4a8_clip_clip", ""])
def test_bad_schemes_are_refused_by_name(bad: str) -> None:
    with pytest.raises(InvalidArgumentError):
        parse_quant(bad)


def test_default_quant_is_post_training_where_the_base_cannot_train() -> None:
    assert default_quant("w4", trains=True) == "w4"
    assert default_quant("w4a8", trains=False) == "w4a8_ptq"
    assert default_quant("int8", trains=False) == "int8" and default_quant(None, trains=False) is None
    assert resolve(UPSTREAM, quant="w4").name == f"{UPSTREAM}_w4_ptq"
    assert resolve(TRAINS, quant="w4").name == f"{TRAINS}_w4"
    with pytest.raises(InvalidArgumentError, match="w4_ptq"):
        resolve(f"{UPSTREAM}_w4")


@pytest.mark.parametrize("suffix", ["w8a8", "w4", "w2", "w2a2_id", "gmp90_w4a8", "w4g32_ptq", "wb_bcgd", "w2a2_kd",
                                    "gmp90_kd", "gmp90_w2_kd", "ch50_w4", "nm24_w4", "int8"])
def test_variant_names_parse_back(suffix: str) -> None:
    name = f"{TRAINS}_{suffix}"
    spec = resolve(name)
    assert spec.name == name
    assert resolve(spec.name) == spec


def test_the_issue_example_name_parses_to_its_canonical_spelling() -> None:
    base, kwargs = parse_variant_name(f"{TRAINS}_w2a2_clip")
    assert base == TRAINS and kwargs == {"quant": "w2a2_clip"}
    assert resolve(f"{TRAINS}_w2a2_clip").name == f"{TRAINS}_w2a2"


def test_qat_recipe_of_a_trained_base() -> None:
    spec = resolve(f"{TRAINS}_gmp90_w2a2_id")
    steps = spec.recipe().steps
    assert [type(s).__name__ for s in steps] == ["GradualMagnitudePruningConfig", "QATConfig"]
    qat = steps[1]
    entry = spec.base
    assert (qat.bits_w, qat.bits_a, qat.ste, qat.weight_update, qat.rho) == (2, 2, "identity", "ste", 0.0)
    assert qat.lr == pytest.approx(entry.train.lr / 10) and qat.keep_fp == entry.keep_dense and qat.keep_zeros
    assert qat.weight_range == "mse" and resolve(f"{TRAINS}_w8a8").recipe().steps[0].weight_range == "absmax"
    assert qat.epochs == max(1, round(entry.train.epochs * 0.5))
    assert spec.sparse_parent is not None and spec.sparse_parent.name == f"{TRAINS}_gmp90"
    bcgd = resolve(f"{TRAINS}_wb_bcgd").recipe().steps[0]
    assert (bcgd.bits_w, bcgd.weight_update, bcgd.rho) == (1, "bcgd", 1e-5)


def test_distillation_needs_a_fine_tuning_step() -> None:
    entry = resolve(TRAINS).base
    for ok in (dict(quant="w4"), dict(sparsity=0.9), dict(sparsity=0.5, method="channels")):
        assert VariantSpec(entry, distill=True, **ok).name.endswith("_kd")
    for bad in (dict(), dict(quant="int8"), dict(sparsity=0.9, method="oneshot"), dict(quant="w4_ptq")):
        with pytest.raises(InvalidArgumentError, match="fine-tuning step"):
            VariantSpec(entry, distill=True, **bad)
    distilled = resolve(f"{TRAINS}_gmp90_w4_kd")
    assert distilled.sparse_parent is None, "a distilled variant runs its whole recipe"


def test_cli_quant_and_distill_options(tmp_path) -> None:
    from click.testing import CliRunner

    from zoo.cli import main

    result = CliRunner().invoke(main, ["info", f"{TRAINS}_w4a8_kd"])
    assert result.exit_code == 0, result.output
    assert "QATConfig" in result.output and "DistillationConfig" in result.output
    bad = CliRunner().invoke(main, ["compress", TRAINS, "--quant", "w3", "--hub", str(tmp_path / "h"),
                                    "--cache", str(tmp_path / "c")])
    assert bad.exit_code != 0 and "unknown quant scheme 'w3'" in bad.output


def test_distilled_recipes_put_the_teacher_step_first() -> None:
    steps = resolve(f"{TRAINS}_gmp90_w2_kd").recipe().steps
    assert [type(s).__name__ for s in steps] == ["DistillationConfig", "GradualMagnitudePruningConfig", "QATConfig"]
    assert (steps[0].teacher, steps[0].logits_loss) == ("base", "kl")
    assert resolve("test_irn.zoo_skimage_gmp50_kd").recipe().steps[0].logits_loss == "mse"
    with pytest.raises(InvalidArgumentError, match="cannot be distilled"):
        resolve("test_mcbert.zoo_pydoc_gmp50_kd").recipe()


def test_schemes_in_words() -> None:
    from zoo.quant_schemes import describe_quant

    assert describe_quant("w4a8g32") == ("4-bit weights (per group of 32, symmetric), 8-bit inputs, "
                                         "quantization-aware training (STE weights, clipped relu STE for inputs)")
    assert describe_quant("wb_bcgd") == "binary weights (per channel, symmetric), float inputs, quantization-aware training (BCGD weights)"
    assert describe_quant("w2_asym_ptq").endswith("affine), float inputs, post-training (GPTQ rounding)")
    assert describe_quant("int8").startswith("int8 post-training")
