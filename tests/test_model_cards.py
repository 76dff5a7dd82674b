"""Model cards: built from synthetic reports, written, loaded back through huggingface_hub, their
model-index equal to the measured floats; validation catches corrupted cards; the plot is a PNG."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import yaml
from huggingface_hub import ModelCard
from huggingface_hub.repocard import REGEX_YAML_BLOCK
from matplotlib.image import imread

import zoo
from zoo.errors import CardValidationError, InvalidArgumentError, UnknownNameError
from zoo.evaluate.machine import MachineInfo
from zoo.evaluate.report import VariantReport
from zoo.model_cards import (
    CardPlot, base_card, plot_accuracy_vs_flops, plot_metric_vs_metric, validate_card, variant_card, write_card,
)
from zoo.model_cards.card import card_data, short_label, variant_kind

BASE = "resnet18.zoo_digits"
DENSE_FLOPS = 71_234_560
PARAMS = 11_181_642
BASE_REPO = "zoo/resnet18.zoo_digits"  # where the base is published: the Hub id a variant's card names
CARD_ARGS = {"license": "apache-2.0", "dataset_description": "Handwritten digits, 8x8 upscaled.",
             "example": "one 3x32x32 image", "about": "A ResNet-18 trained on the digits."}


def _report(suffix: str, *, sparsity: float = 0.0, quant: str | None = None, top1: float,
            top5: float) -> VariantReport:
    name = BASE + suffix
    recipe = None if not suffix else [{"type": "magnitude_prune", "sparsity": sparsity, "quant": quant}]
    return VariantReport(
        name=name, base_model=BASE, task="image-classification", dataset="digits", split="test",
        metrics={"top1": top1, "top5": top5}, metric_average="micro", flops_dense=DENSE_FLOPS,
        flops_sparse=round(DENSE_FLOPS * (1 - sparsity)), params_total=PARAMS,
        params_nonzero=round(PARAMS * (1 - sparsity)), bytes_on_disk=44_800_000 if quant is None else 11_300_000,
        latency_ms=1.37, sparsity=sparsity, quant=quant, recipe=recipe,
    )


@pytest.fixture
def reports() -> list[VariantReport]:
    # Metrics with long binary expansions: the YAML must hold them exactly, not rounded.
    return [
        _report("", top1=350 / 360, top5=359 / 360),
        _report("_sp50", sparsity=0.5, top1=349 / 360, top5=0.1 + 0.2 + 0.69),
        _report("_sp90", sparsity=0.9, top1=338 / 360, top5=1.0),
        _report("_int8", quant="int8", top1=float(np.float64(347 / 360)), top5=359 / 360),
        _report("_sp90_int8", sparsity=0.9, quant="int8", top1=np.float64(331 / 360), top5=np.float32(0.75)),
    ]


def _variant(reports: list[VariantReport], index: int, plot: str | None = "accuracy_vs_flops.png") -> ModelCard:
    return variant_card(reports[index], base_repo_id=BASE_REPO, family_reports=reports, plot_filename=plot, **CARD_ARGS)


def _by_name(card: ModelCard) -> dict[str, float]:
    return {result.metric_name: result.metric_value for result in card.data.eval_results}


def test_variant_cards_load_back_with_exact_metrics(reports, tmp_path):
    for index, report in enumerate(reports[1:], start=1):
        path = write_card(_variant(reports, index), tmp_path / report.name)
        assert path.name == "README.md" and path.read_text().endswith("```\n")
        loaded = ModelCard.load(path)
        assert loaded.data.model_name == report.name
        assert _by_name(loaded) == {
            "top-1 accuracy (average=micro)": report.metrics["top1"],
            "top-5 accuracy (average=micro)": report.metrics["top5"],
        }
        result = loaded.data.eval_results[0]
        assert (result.task_type, result.dataset_type, result.dataset_split, result.metric_type) == (
            "image-classification", "digits", "test", "accuracy")
        assert loaded.data.base_model == BASE_REPO
        assert loaded.data.library_name == "zoo" and loaded.data.license == "apache-2.0"
        validate_card(loaded, report)
        validate_card(path.read_text(), report)
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["README.md"] * 4  # no temp files left


def test_tags_follow_the_compression(reports):
    tags = [set(_variant(reports, i).data.tags) for i in range(len(reports))]
    assert tags[0] == {"zoo", "image-classification"}
    assert tags[2] == {"zoo", "image-classification", "sparse", "pruned"}
    assert tags[3] == {"zoo", "image-classification", "quantized", "int8"}
    assert tags[4] == {"zoo", "image-classification", "sparse", "pruned", "quantized", "int8"}
    assert [variant_kind(r) for r in reports] == ["dense", "sparse", "sparse", "quantized", "sparse + quantized"]
    assert [short_label(r) for r in reports] == ["base", "sp50", "sp90", "int8", "sp90_int8"]


def test_variant_card_body(reports):
    text = str(_variant(reports, 2))
    body = text[REGEX_YAML_BLOCK.search(text).end():]
    assert '"type": "magnitude_prune"' in body and "```json" in body
    assert "| top-1 accuracy (average=micro) | 93.89 % |" in body
    assert "| top-5 accuracy (average=micro) | 100.00 % |" in body
    assert "| FLOPs per example, dense | 71.2 M (71,234,560) |" in body
    assert "| parameters, non-zero | 1,118,164 (10.00 %) |" in body
    assert "| latency, batch 1, torch eager | 1.37 ms |" in body
    assert "![top-1 accuracy vs non-zero FLOPs of the resnet18.zoo_digits family](accuracy_vs_flops.png)" in body
    assert 'zoo.load("resnet18.zoo_digits_sp90")' in body
    assert "Handwritten digits" in body
    assert "averaged `micro` (over all examples)" in body
    for report in reports:  # one family row per variant, the card's own in bold
        assert body.count(f"| `{report.name}` |") + body.count(f"| **`{report.name}`** |") == 1
    assert "| **`resnet18.zoo_digits_sp90`** | sparse | 93.89 % |" in body
    assert "![" not in str(_variant(reports, 2, plot=None))


def test_base_card(reports, tmp_path):
    card = base_card(reports[0], reports[1:], plot_filename="accuracy_vs_flops.png", **CARD_ARGS)
    loaded = ModelCard.load(write_card(card, tmp_path))
    assert loaded.data.get("base_model") is None
    assert _by_name(loaded)["top-1 accuracy (average=micro)"] == 350 / 360
    validate_card(loaded, reports[0])
    body = loaded.text
    assert body.index("accuracy_vs_flops.png") < body.index("## Results of the base model")
    assert all(f"`{r.name}`" in body for r in reports)
    assert "no compression recipe" not in body and 'zoo.load("resnet18.zoo_digits")' in body
    assert "## The family: top-1 accuracy vs FLOPs" in body
    # The base may be passed among the variants too: same card.
    assert str(base_card(reports[0], reports, plot_filename="accuracy_vs_flops.png", **CARD_ARGS)) == str(card)


def test_card_inputs_are_checked(reports):
    with pytest.raises(UnknownNameError, match="no_such_metric"):
        _with_metrics(reports, {"no_such_metric": 0.9})
    top1_only = _with_metrics(reports, {"top1": 0.9})  # metrics are the ones the task registered
    assert _by_name(top1_only) == {"top-1 accuracy (average=micro)": 0.9}
    with pytest.raises(InvalidArgumentError, match="fraction"):
        _with_metrics(reports, {"top1": 97.2})
    odd = _report("_sp50", sparsity=0.5, top1=0.9, top5=0.9)
    odd.metric_average = "no_such_average"
    with pytest.raises(UnknownNameError, match="metric average"):
        variant_card(odd, base_repo_id=BASE_REPO, family_reports=[odd], plot_filename=None, **CARD_ARGS)
    with pytest.raises(InvalidArgumentError, match="fraction"):
        _with_metrics(reports, {"top1": float("nan")})
    with pytest.raises(InvalidArgumentError, match="does not include"):
        variant_card(reports[2], base_repo_id=BASE_REPO, family_reports=reports[:2], plot_filename=None, **CARD_ARGS)
    other = _report("_sp50", sparsity=0.5, top1=0.9, top5=0.9)
    other.dataset = "cifar10"
    with pytest.raises(InvalidArgumentError, match="mixes datasets"):
        variant_card(reports[0], base_repo_id=BASE_REPO, family_reports=[reports[0], other], plot_filename=None, **CARD_ARGS)
    with pytest.raises(InvalidArgumentError, match="more than once"):
        variant_card(reports[0], base_repo_id=BASE_REPO, family_reports=[reports[0], reports[0]], plot_filename=None, **CARD_ARGS)
    stranger = _report("_sp50", sparsity=0.5, top1=0.9, top5=0.9)
    stranger.base_model = "vit_tiny.zoo_digits"
    with pytest.raises(InvalidArgumentError, match="not derived"):
        base_card(reports[0], [stranger], plot_filename=None, **CARD_ARGS)
    with pytest.raises(InvalidArgumentError, match="not a base"):
        base_card(reports[1], reports, plot_filename=None, **CARD_ARGS)


def _with_metrics(reports: list[VariantReport], metrics: dict[str, float]) -> ModelCard:
    report = _report("_sp50", sparsity=0.5, top1=0.0, top5=0.0)
    report.metrics = metrics
    return variant_card(report, base_repo_id=BASE_REPO, family_reports=[reports[0], report], plot_filename=None, **CARD_ARGS)


MACHINE = MachineInfo(cpu="AMD EPYC 9654", isa="AVX-512 + VNNI, BF16", torch_cpu_capability="AVX512",
                      os="Linux 6.8.0", arch="x86_64", python="3.11.7", torch="2.14.1", threads=4,
                      libraries={"timm": "1.0.31", "torchmetrics": "1.9.0"})
MACHINE_LINE = ("Measured on AMD EPYC 9654 (AVX-512 + VNNI, BF16), torch 2.14.1, 4 threads; torch CPU kernels "
                "AVX512, Linux 6.8.0 x86_64, Python 3.11.7, timm 1.0.31, torchmetrics 1.9.0.")


def _body(card: ModelCard) -> str:
    text = str(card)
    return text[REGEX_YAML_BLOCK.search(text).end():]


def test_cards_say_under_the_results_table_where_they_were_measured(reports):
    reports = [dataclasses.replace(r, machine=MACHINE) for r in reports]
    reports[3] = dataclasses.replace(reports[3], machine=dataclasses.replace(MACHINE, threads=1))
    body = _body(_variant(reports, 2))
    assert "| latency, batch 1, torch eager | 1.37 ms |\n\n" + MACHINE_LINE + "\n\n## The family" in body
    assert body.count("Measured on AMD") == 1
    assert "1 thread;" in _body(_variant(reports, 3))
    base = _body(base_card(reports[0], reports, plot_filename=None, **CARD_ARGS))
    assert "| latency, batch 1, torch eager | 1.37 ms |\n\n" + MACHINE_LINE + "\n\n## How to use" in base
    unrecorded = _body(_variant([dataclasses.replace(r, machine=None) for r in reports], 2))
    assert "| 1.37 ms |\n\nThe machine these numbers were measured on was not recorded.\n" in unrecorded
    assert "Measured on AMD" not in unrecorded


def test_cards_name_the_ops_left_out_of_the_flops(reports):
    assert "FLOPs exclude" not in _body(_variant(reports, 2))
    reports[2] = dataclasses.replace(reports[2], machine=MACHINE,
                                     flops_uncounted={"zoo_test.reverse": 1, "aten._int_mm": 2})
    body = _body(_variant(reports, 2))
    exclude = "FLOPs exclude: `aten._int_mm` (2 calls), `zoo_test.reverse` (1 call); no FLOP formula counts them."
    assert "| 1.37 ms |\n\n" + exclude + "\n\n" + MACHINE_LINE + "\n" in body


def test_validation_wants_the_reports_machine(reports):
    reports = [dataclasses.replace(r, machine=MACHINE) for r in reports]
    text = str(_variant(reports, 2))
    validate_card(text, reports[2])
    with pytest.raises(CardValidationError, match="where 'resnet18.zoo_digits_sp90' was measured"):
        validate_card(text, dataclasses.replace(reports[2], machine=dataclasses.replace(MACHINE, threads=8)))
    with pytest.raises(CardValidationError, match="was measured"):
        validate_card(text.replace(MACHINE_LINE, ""), reports[2])


def _without_model_index(text: str) -> str:
    match = REGEX_YAML_BLOCK.search(text)
    meta = yaml.safe_load(match.group(2))
    del meta["model-index"]
    return f"---\n{yaml.safe_dump(meta)}---\n{text[match.end():]}"


def test_validation_catches_corrupted_cards(reports, tmp_path):
    report = reports[2]
    text = str(_variant(reports, 2))
    validate_card(text, report)
    written = repr(report.metrics["top1"])
    assert f"value: {written}\n" in text  # the exact float, not a rounded one

    edited = text.replace(f"value: {written}", "value: 0.9389")
    validate_card(edited, None)  # well-formed...
    with pytest.raises(CardValidationError, match="top-1 accuracy"):
        validate_card(edited, report)  # ...but not what was measured
    with pytest.raises(CardValidationError, match="expected"):
        validate_card(text, reports[1])  # another variant's card
    with pytest.raises(CardValidationError, match="no model-index"):
        validate_card(_without_model_index(text))
    with pytest.raises(CardValidationError, match="front matter"):
        validate_card(text[REGEX_YAML_BLOCK.search(text).end():])
    with pytest.raises(CardValidationError, match="cannot be parsed"):
        validate_card(text.replace(f"      value: {written}\n", ""))  # a metric without a value
    with pytest.raises(CardValidationError, match="not a number"):
        validate_card(text.replace(f"value: {written}", "value: high"))
    with pytest.raises(CardValidationError, match="dataset_type"):
        validate_card(text.replace("type: digits", "type: ''"))
    with pytest.raises(CardValidationError, match="cannot be parsed"):
        validate_card(text.replace("model-index:\n", "model-index: [\n", 1))

    with pytest.raises(CardValidationError):
        write_card(_without_model_index(text), tmp_path)
    assert list(tmp_path.iterdir()) == []  # a refused card leaves nothing behind


def _png(path) -> np.ndarray:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return imread(path)


def _grey_pixels(image: np.ndarray, level: float) -> int:
    """Pixels of the grey `level` (within 2/255 in each of R, G, B)."""
    return int((np.abs(image[..., :3] - level).max(-1) < 2 / 255).sum())


def test_plot_is_a_png_with_the_front(reports, tmp_path):
    with_front = plot_accuracy_vs_flops(reports, tmp_path / "front.png", pareto=[0, 1, 2])
    without = plot_accuracy_vs_flops(reports, tmp_path / "none.png", pareto=[])
    one = plot_accuracy_vs_flops(reports, tmp_path / "one.png", pareto=[0])
    image, plain, single = _png(with_front), _png(without), _png(one)
    assert image.shape == plain.shape == (576, 900, 4)  # 7.5 x 4.8 in at 120 dpi
    # The front is a dashed step line in grey 0.3 through its points and a ring in grey 0.2 around each
    # (measured: 96 / 152 / 1215 pixels of 0.3 and 394 / 458 / 581 of 0.2 for fronts of 0 / 1 / 3 points).
    ring = _grey_pixels(single, 0.2) - _grey_pixels(plain, 0.2)
    assert ring > 30 and _grey_pixels(image, 0.2) - _grey_pixels(plain, 0.2) == pytest.approx(3 * ring, rel=0.25)
    assert _grey_pixels(image, 0.3) > _grey_pixels(single, 0.3) + 500, "three points: a step line joins them"
    top5 = _png(plot_accuracy_vs_flops(reports, tmp_path / "sub" / "top5.png", metric="top5", pareto=[0]))
    assert top5.shape == single.shape
    axis_label = (slice(None), slice(0, 40))  # the y-axis label names the metric
    assert not np.array_equal(top5[axis_label], single[axis_label])

    with pytest.raises(InvalidArgumentError, match="out of range"):
        plot_accuracy_vs_flops(reports, tmp_path / "bad.png", pareto=[7])
    with pytest.raises(InvalidArgumentError, match=r"\.png"):
        plot_accuracy_vs_flops(reports, tmp_path / "plot.svg", pareto=[0])
    with pytest.raises(UnknownNameError):
        plot_accuracy_vs_flops(reports, tmp_path / "x.png", metric="no_such_metric", pareto=[0])
    with pytest.raises(InvalidArgumentError, match="no reports"):
        plot_accuracy_vs_flops([], tmp_path / "x.png", pareto=[])


def test_plot_computes_the_front_when_not_given(reports, tmp_path):
    from zoo.evaluate.pareto import pareto_front

    points = [(r.flops_sparse / 1e6, 100 * float(r.metrics["top1"])) for r in reports]
    computed = plot_accuracy_vs_flops(reports, tmp_path / "computed.png")
    given = plot_accuracy_vs_flops(reports, tmp_path / "given.png", pareto=pareto_front(points))
    assert np.array_equal(_png(computed), _png(given))


def _other_model(name: str, top1: float) -> VariantReport:
    """The base report of another model of the same task (what `ModelEntry.compare_with` names)."""
    other = _report("", top1=top1, top5=1.0)
    other.name = other.base_model = name
    other.flops_dense = other.flops_sparse = DENSE_FLOPS // 2
    return other


def test_cards_compare_the_family_with_other_models_of_the_task(reports, tmp_path):
    smaller = _other_model("resnet10.zoo_digits", 0.9)
    card = base_card(reports[0], reports, plot_filename="accuracy_vs_flops.png", references=[smaller], **CARD_ARGS)
    body = ModelCard.load(write_card(card, tmp_path)).text
    compared = body[body.index("## Compared with"):body.index("## Dataset")]
    assert "| `resnet10.zoo_digits` | dense | 90.00 % |" in compared and "| 0.50x |" in compared, "FLOPs vs our base"
    assert "resnet18.zoo_digits_sp50" not in compared
    variant = variant_card(reports[2], base_repo_id=BASE_REPO, family_reports=reports, plot_filename=None, references=[smaller], **CARD_ARGS)
    assert "## Compared with" in str(variant)
    assert "## Compared with" not in str(_variant(reports, 2))
    other_task = _other_model("bert_mini.zoo_stdlib", 0.9)
    other_task.task = "text-classification"
    with pytest.raises(InvalidArgumentError, match="mixes tasks"):
        base_card(reports[0], reports, plot_filename=None, references=[other_task], **CARD_ARGS)
    with pytest.raises(InvalidArgumentError, match="more than once"):
        base_card(reports[0], reports, plot_filename=None, references=[reports[0]], **CARD_ARGS)


def test_cards_show_the_tasks_extra_plots_and_say_what_an_example_is(reports):
    plot = CardPlot("rate_distortion.png", "PSNR vs bits per pixel")
    body = str(base_card(reports[0], reports, plot_filename="accuracy_vs_flops.png", extra_plots=[plot],
                         **CARD_ARGS))
    assert "![PSNR vs bits per pixel](rate_distortion.png)" in body
    assert body.index("accuracy_vs_flops.png") < body.index("rate_distortion.png") < body.index("## Dataset")
    assert "2 x multiply-accumulates for one 3x32x32 image" in body


def test_pipeline_tag_is_the_hubs_where_it_has_one(reports):
    assert card_data(reports[0], license="mit", library_name="zoo").pipeline_tag == "image-classification"
    vocoder = dataclasses.replace(reports[0], task="vocoding", metrics={"bits_per_sample": 10.5})
    data = card_data(vocoder, license="mit", library_name="zoo")
    assert data.pipeline_tag is None and "vocoding" in data.tags, "no Hub pipeline for a vocoder: a tag instead"


def test_metric_vs_metric_plot_takes_the_front_in_each_metrics_direction(reports, tmp_path):
    codecs = []
    for i, (bpp, psnr) in enumerate([(0.5, 30.0), (1.0, 33.0), (1.5, 32.0)]):
        report = dataclasses.replace(reports[0], name=f"ilc.zoo_test_{i}", task="image-compression",
                                     metrics={"psnr": psnr, "ssim": 0.9, "bpp": bpp}, metric_average="patch-mean")
        codecs.append(report)
    given = plot_metric_vs_metric(codecs, tmp_path / "given.png", x="bpp", y="psnr", pareto=[0, 1])
    computed = plot_metric_vs_metric(codecs, tmp_path / "computed.png", x="bpp", y="psnr")
    assert np.array_equal(_png(given), _png(computed)), "fewer bits and more dB are both better"
    other = plot_metric_vs_metric(codecs, tmp_path / "other.png", x="bpp", y="psnr", pareto=[0, 2])
    assert not np.array_equal(_png(given), _png(other))
    with_reference = plot_metric_vs_metric(codecs[:2], tmp_path / "ref.png", x="bpp", y="psnr", references=codecs[2:])
    assert not np.array_equal(_png(with_reference), _png(given))
    with pytest.raises(InvalidArgumentError, match="missing"):
        plot_metric_vs_metric(reports, tmp_path / "x.png", x="bpp", y="top1")


def test_family_cards_need_the_compared_models_and_draw_every_plot(reports, tmp_path):
    from zoo.publish import LATENCY_PLOT_FILE, PLOT_FILE, family_cards, write_family_cards

    entry = dataclasses.replace(zoo.get_entry(BASE), compare_with=("resnet10.zoo_digits",))
    with pytest.raises(InvalidArgumentError, match="compared with"):
        family_cards(entry, reports)
    family = family_cards(entry, reports, [_other_model("resnet10.zoo_digits", 0.9)])
    assert "## Compared with" in str(family.cards[BASE])
    assert [p.name for p in family.draw_plots(tmp_path / "plain")] == [PLOT_FILE, LATENCY_PLOT_FILE]

    codec = zoo.get_entry("test_ilc.zoo_skimage")
    codecs = [dataclasses.replace(r, name=r.name.replace(BASE, codec.name), base_model=codec.name,
                                  task="image-compression", dataset="skimage_patches", metric_average="patch-mean",
                                  metrics={"psnr": 30 - 2 * r.sparsity, "ssim": 0.9, "bpp": 1.0 - r.sparsity / 4})
              for r in reports]
    written = write_family_cards(family_cards(codec, codecs), tmp_path / "cards")
    for card in written:
        assert {p.name for p in card.parent.iterdir()} == {"README.md", PLOT_FILE, LATENCY_PLOT_FILE,
                                                            "rate_distortion.png"}
        assert "(rate_distortion.png)" in card.read_text() and f"({LATENCY_PLOT_FILE})" in card.read_text()


@pytest.mark.parametrize("repo_id", ["resnet18.zoo_digits", "a/b/c", "zoo/bad name", ""])
def test_a_variant_card_names_its_base_by_a_hub_repo_id(reports, repo_id: str) -> None:
    with pytest.raises(InvalidArgumentError, match="Hub repo id"):
        variant_card(reports[1], base_repo_id=repo_id, family_reports=reports, plot_filename=None, **CARD_ARGS)
    text = str(_variant(reports, 1)).replace(f"base_model: {BASE_REPO}", "base_model: resnet18.zoo_digits")
    with pytest.raises(CardValidationError, match="base_model"):
        validate_card(text)


AVX2_EPYC = MachineInfo(cpu="AMD EPYC", isa="AVX2", torch_cpu_capability="AVX2", os="Linux", arch="x86_64",
                        python="3.11.7", torch="2.14.1", threads=2)


def test_cards_give_latency_per_runtime_the_fastest_and_the_int8_path(reports):
    int8 = dataclasses.replace(reports[3], latency_by_runtime={"torch": 1.37, "onnxruntime": 2.5, "openvino": 0.4},
                               runtime_errors={}, int8_path="openvino QDQ: 21/21 layers on integer kernels",
                               machine=AVX2_EPYC)
    family = [*reports[:3], int8, reports[4]]
    body = str(variant_card(int8, base_repo_id=BASE_REPO, family_reports=family, plot_filename=None,
                            latency_plot_filename="accuracy_vs_latency.png", **CARD_ARGS))
    assert "| latency, batch 1, torch eager | 1.37 ms |" in body
    assert "| latency, batch 1, ONNX Runtime | 2.50 ms |" in body
    assert "| latency, batch 1, OpenVINO | 0.40 ms (fastest) |" in body
    assert "| quantized arithmetic | openvino QDQ: 21/21 layers on integer kernels |" in body
    assert "has no integer dot-product instructions (VNNI, AMX): on it int8 saves bytes, not time." in body
    assert "| 1.37 | 0.40 (openvino) |" in body and "| 1.37 | 1.37 (torch) |" in body  # family table
    assert "](accuracy_vs_latency.png)" in body
    vnni = dataclasses.replace(int8, machine=dataclasses.replace(AVX2_EPYC, isa="AVX-512 + VNNI, BF16"))
    assert "saves bytes, not time" not in str(variant_card(vnni, base_repo_id=BASE_REPO, family_reports=family,
                                                           plot_filename=None, **CARD_ARGS))
    failed = dataclasses.replace(reports[1], latency_by_runtime={"torch": 1.37},
                                 runtime_errors={"openvino": "the graph disagrees with torch (rel. error 0.8)"})
    body = str(variant_card(failed, base_repo_id=BASE_REPO, family_reports=[reports[0], failed],
                            plot_filename=None, **CARD_ARGS))
    assert "| latency, batch 1, OpenVINO | not measured: the graph disagrees with torch (rel. error 0.8) |" in body


def test_a_structured_variant_is_described_as_a_smaller_dense_model(reports):
    structured = dataclasses.replace(reports[1], name=BASE + "_ch50",
                                     recipe=[{"type": "ChannelPruningConfig", "version": 1, "config": {}}])
    assert variant_kind(structured) == "structured" and variant_kind(reports[1]) == "sparse"
    card = variant_card(structured, base_repo_id=BASE_REPO, family_reports=[reports[0], structured],
                        plot_filename=None, **CARD_ARGS)
    assert "with 50 % of its channels removed (structured pruning: a smaller dense model)" in str(card)
    assert set(card.data.tags) == {"zoo", "image-classification", "structured-pruning", "pruned"}


def test_a_distilled_low_bit_variant_says_its_scheme_and_teacher_in_words(reports):
    recipe = [{"type": "DistillationConfig", "version": 1, "config": {"teacher": "base"}},
              {"type": "QATConfig", "version": 1, "config": {}}]
    low_bit = dataclasses.replace(reports[0], name=BASE + "_w2a2_kd", quant="w2a2", recipe=recipe)
    body = str(variant_card(low_bit, base_repo_id=BASE_REPO, family_reports=[reports[0], low_bit],
                            plot_filename=None, **CARD_ARGS))
    assert ("quantized (w2a2: 2-bit weights (per channel, symmetric), 2-bit inputs, quantization-aware training "
            "(STE weights, clipped relu STE for inputs)) and fine-tuned distilling from the dense base") in body
    assert "| bits on disk per parameter |" in body


def test_accuracy_vs_latency_plot_takes_the_front_on_the_fastest_runtime(reports, tmp_path):
    from zoo.model_cards import plot_accuracy_vs_latency
    from zoo.publish import latency_front

    timed = [dataclasses.replace(r, latency_by_runtime={"torch": 5.0, "onnxruntime": ms})
             for r, ms in zip(reports, [0.6, 0.5, 0.3, 0.7, 0.2])]
    assert [r.best_runtime for r in timed[:2]] == [("onnxruntime", 0.6), ("onnxruntime", 0.5)]
    spec = zoo.tasks.metric_spec("top1")
    # top-1: 350, 349, 338, 347, 331 (/360); latency 0.6, 0.5, 0.3, 0.7, 0.2: _int8 is dominated by the base
    assert sorted(latency_front(timed, spec)) == [0, 1, 2, 4]
    path = plot_accuracy_vs_latency(timed, tmp_path / "accuracy_vs_latency.png")
    assert imread(path).shape[2] in (3, 4)
