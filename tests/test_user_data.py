"""The user's own data (zoo.userdata): an ImageNet-style folder written here from scikit-learn's digits and a
local csv read through Hugging Face `datasets`, fine-tuned on with gradual pruning through the CLI and
measured on their validation data (the card names it); an upstream checkpoint (no TrainSpec) pruned
gradually on user data with its classifier re-initialized for the data's classes; bad input as typed
one-line errors; identity (other data, another name and cache key). Everything offline, training cut to
one epoch (tiny_zoo.SHORT)."""
from __future__ import annotations

import json
import os
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
from click.testing import CliRunner
from PIL import Image
from safetensors.torch import save_file

import zoo
from tiny_zoo import BASE, one_torch_thread, refuse_derivation, short_store, store_env, store_with_base
from zoo.catalog import catalog
from zoo.cli import main
from zoo.compress.checkpoint import read_config
from zoo.errors import InvalidArgumentError
from zoo.evaluate import VariantReport
from zoo.families.vision.data import image_transform
from zoo.model_cards import validate_card
from zoo.store import REPORT_FILE
from zoo.userdata import FineTuning, UserData, UserDataError, finetune_spec
from zoo.userdata.classes import ClassPlan, Labels, index_labels, plan_classes
from zoo.userdata.read import read_rows
from zoo.variants import VariantSpec, parse_variant_name, resolve

CLASSIFIER = "test_mcbert.zoo_pydoc_ft_stdlib"
UPSTREAM = "test_resnet.r160_in1k"
TRAIN_PER_CLASS, VAL_PER_CLASS = 8, 4
WORDS = {"weather": ("rain", "sun", "cloud", "wind", "snow", "storm"),
         "food": ("bread", "apple", "cheese", "soup", "rice", "pear")}


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    with one_torch_thread():
        yield


def write_digits(root: Path, per_class: dict[str, int], *, labels: range = range(10),
                 classes: dict[int, str] | None = None) -> None:
    """An ImageNet-style folder per split, `root/<split>/<class>/<i>.png`: 8x8 grey digits as PNG files, the
    next `count` of each digit in scikit-learn's order for each split; class folders named by `classes`."""
    from sklearn.datasets import load_digits

    digits, offset = load_digits(), 0
    for split, count in per_class.items():
        for label in labels:
            folder = root / split / (classes or {}).get(label, str(label))
            folder.mkdir(parents=True, exist_ok=True)
            for i in np.flatnonzero(digits.target == label)[offset:offset + count]:
                Image.fromarray((digits.images[i] * 255 / 16).astype(np.uint8), mode="L").save(folder / f"{i}.png")
        offset += count


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("digits")
    write_digits(root, {"train": TRAIN_PER_CLASS, "val": VAL_PER_CLASS})
    return root


def write_csv(path: Path, rows: list[tuple[str, str]], header: str = "sentence,topic") -> Path:
    path.write_text("\n".join([header, *(f"{text},{label}" for text, label in rows)]) + "\n")
    return path


@pytest.fixture(scope="module")
def sentences(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train.csv (40 rows) and val.csv (12 rows): six-word sentences of weather or food words."""
    root, rng = tmp_path_factory.mktemp("text"), random.Random(0)
    for split, count in (("train", 40), ("val", 12)):
        labels = ["weather", "food"] * (count // 2)
        write_csv(root / f"{split}.csv", [(" ".join(rng.choice(WORDS[y]) for _ in range(6)), y) for y in labels])
    return root


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    return store_with_base(tmp_path_factory, tmp_path_factory.mktemp("userdata"))


@pytest.fixture(scope="module")
def text_store(tmp_path_factory: pytest.TempPathFactory):
    """A store holding the tiny text classifier (and its pre-trained encoder), trained one epoch each."""
    store = short_store(tmp_path_factory.mktemp("text-store"))
    zoo.load(CLASSIFIER, store=store, progress=False)
    return store


def cli(args: list[str], store) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, args, env=store_env(store))
    return result.exit_code, result.stdout, result.stderr


def one_line_error(args: list[str], store, kind: str = "UserDataError") -> str:
    code, out, err = cli(args, store)
    assert code == 1 and out == "", (code, out, err)
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: {kind}: "), err
    return lines[0]


def top1_by_hand(model: torch.nn.Module, folder: Path) -> float:
    """Top-1 of `model` on an ImageNet-style folder of digits, computed here: the entry's eval transform."""
    transform = image_transform(zoo.get_entry(BASE), training=False)
    right = total = 0
    with torch.inference_mode():
        for path in sorted(folder.rglob("*.png")):
            logits = model(transform(Image.open(path).convert("L")).unsqueeze(0))
            right += int(logits.argmax(1).item() == int(path.parent.name))
            total += 1
    return right / total


# The image folder through the CLI --------------------------------------------------------------------

def test_gradual_pruning_on_an_image_folder_through_the_cli(digits: Path, store, tmp_path: Path) -> None:
    cards = tmp_path / "cards"
    code, out, err = cli(["compress", BASE, "--sparsity", "0.5", "--train-data", str(digits / "train"),
                          "--eval-data", str(digits / "val"), "--cards", str(cards)], store)
    assert code == 0, err
    name = out.splitlines()[0].split(":")[0]
    assert name.startswith(f"{BASE}_gmp50_d") and len(name) == len(f"{BASE}_gmp50_d") + 8
    assert f"measured on the ImageNet-style folder `{digits / 'val'}`" in out and f"{10 * VAL_PER_CLASS} examples" in out

    data = dict(train_data=digits / "train", eval_data=digits / "val")
    with pytest.MonkeyPatch.context() as mp:
        refuse_derivation(mp)  # the CLI's variant is found again by the same data, not made again
        model = zoo.load(BASE, sparsity=0.5, store=store, progress=False, **data)
        report = model.zoo.report
        (model.zoo.path / REPORT_FILE).unlink()  # an interrupted measurement: measured again, on the same data
        again = zoo.load(BASE, sparsity=0.5, store=store, progress=False, **data).zoo.report
    assert model.zoo.name == name and model.zoo.source == "cache"
    assert (again.dataset, again.user_data, again.metrics) == (report.dataset, report.user_data, report.metrics)
    assert report.split == "val" and report.dataset.startswith("local:val@")
    assert report.user_data["examples"] == 10 * VAL_PER_CLASS and report.user_data["format"] == "folder"
    assert report.metrics["top1"] == pytest.approx(top1_by_hand(model, digits / "val"), abs=1e-6)
    config = read_config(model.zoo.path)["user_data"]
    assert config["train"]["examples"] == 10 * TRAIN_PER_CLASS
    assert config["classes"] == {"classes": [str(i) for i in range(10)], "num_classes": 10,
                                 "classifier_reinitialized": False}  # digit folders map onto the digits' classes
    assert not bool((model.fc.weight == 0).any())  # the classifier stays dense (keep_dense)
    layer = model.layer1[0].conv1.weight
    assert float((layer == 0).float().mean()) == pytest.approx(0.5, abs=0.01)

    card = (cards / name / "README.md").read_text()
    assert str(digits / "val") in card and str(digits / "train") in card
    assert f"{10 * VAL_PER_CLASS} examples" in card and report.user_data["fingerprint"][:16] in card
    assert f"name: {report.dataset}" in card  # the model-index names the data set as the report does

    own = zoo.resolve(BASE, sparsity=0.5)
    assert own.name == f"{BASE}_gmp50" != name  # never the entry's own variant

    # published to a team's repo with the card measured on the data, then loaded back by its id
    code, out, err = cli(["push", name, "--repo-id", "acme/digits-gmp50"], store)
    assert code == 0, err
    assert out.startswith(f"pushed {name} to acme/digits-gmp50 (local) at ")
    snapshot = store.hub.snapshot("acme/digits-gmp50")
    published = (snapshot / "README.md").read_text()
    validate_card(published, again)  # the report measured again above, on the same data
    assert str(digits / "val") in published and not list(snapshot.glob("*.png"))
    pushed = zoo.load("acme/digits-gmp50", store=store, progress=False)
    x = torch.randn(2, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(pushed(x), model(x)) and pushed.zoo.source == "hf-hub"


def test_evaluate_measures_any_model_on_user_data_without_caching_it(digits: Path, store) -> None:
    base = zoo.load(BASE, store=store, progress=False)
    before = (base.zoo.path / REPORT_FILE).read_text()
    code, out, err = cli(["evaluate", BASE, "--eval-data", str(digits / "val")], store)
    assert code == 0, err
    row = next(line for line in out.splitlines() if line.startswith(BASE))
    assert float(row.split()[1]) == pytest.approx(100 * top1_by_hand(base, digits / "val"), abs=0.01)
    assert f"{10 * VAL_PER_CLASS} examples" in out
    assert (base.zoo.path / REPORT_FILE).read_text() == before
    assert VariantReport.load(base.zoo.path / REPORT_FILE).dataset == "digits"


# An upstream checkpoint, its classifier re-initialized -------------------------------------------------

def test_an_upstream_checkpoint_is_pruned_gradually_on_user_data_with_a_new_classifier(
        tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    root = tmp_path_factory.mktemp("letters")
    write_digits(root, {"train": 3, "val": 2}, classes={i: "abc"[i % 3] + str(i) for i in range(10)})
    store = short_store(tmp_path)
    with pytest.raises(InvalidArgumentError):  # without the user's data it has none to fine-tune on
        zoo.load(UPSTREAM, sparsity=0.5, method="gmp", store=store)
    torch.manual_seed(0)  # random weights stand for timm's download (offline), published where zoo.load looks
    weights = tmp_path / "upstream"
    weights.mkdir()
    save_file(timm.create_model("test_resnet", num_classes=1000).state_dict(), str(weights / "model.safetensors"))
    store.hub.push(f"timm/{UPSTREAM}", weights)

    data = dict(train_data=root / "train", eval_data=root / "val")
    model = zoo.load(UPSTREAM, sparsity=0.5, store=store, progress=False, **data)
    assert model.zoo.name.startswith(f"{UPSTREAM}_gmp50_d") and model.fc.out_features == 10
    recipe = model.zoo.recipe.to_list()[0]["config"]
    defaults = finetune_spec(zoo.get_entry(UPSTREAM))
    assert (recipe["epochs"], recipe["lr"], recipe["optimizer"]) == (1, defaults.lr, defaults.optimizer)  # SHORT: 1 epoch
    config = read_config(model.zoo.path)["user_data"]
    assert config["classes"]["classifier_reinitialized"] and config["classes"]["num_classes"] == 10
    assert model.zoo.report.user_data["examples"] == 20 and "top1" in model.zoo.report.metrics
    with pytest.MonkeyPatch.context() as mp:
        refuse_derivation(mp)
        again = zoo.load(UPSTREAM, sparsity=0.5, store=store, progress=False, **data)  # rebuilt with 10 classes
    assert again.fc.out_features == 10 and torch.equal(again.fc.weight, model.fc.weight)
    with pytest.raises(UserDataError, match="give eval_data"):  # its own ImageNet evaluation does not fit 10 classes
        zoo.load(UPSTREAM, sparsity=0.8, store=store, progress=False, train_data=root / "train")


# A csv through datasets, the text classifier ---------------------------------------------------------

def test_gradual_pruning_on_a_csv_data_set_through_the_cli(sentences: Path, text_store, tmp_path: Path) -> None:
    store = text_store
    cards = tmp_path / "cards"
    args = ["compress", CLASSIFIER, "--sparsity", "0.5", "--train-data", str(sentences / "train.csv"),
            "--eval-data", str(sentences / "val.csv"), "--text-column", "sentence", "--label-column", "topic",
            "--cards", str(cards)]
    code, out, err = cli(args, store)
    assert code == 0, err
    name = out.splitlines()[0].split(":")[0]
    assert name.startswith(f"{CLASSIFIER}_gmp50_d")
    text = UserData(str(sentences / "val.csv"), text_column="sentence", label_column="topic")
    model = zoo.load(CLASSIFIER, sparsity=0.5, store=store, progress=False, eval_data=text,
                     train_data=UserData(str(sentences / "train.csv"), text_column="sentence", label_column="topic"))
    assert model.zoo.name == name and model.zoo.source == "cache"
    assert model.classifier.out_features == 2  # two topics, not the registered five: a new classifier
    config = read_config(model.zoo.path)["user_data"]
    assert config["classes"] == {"classes": ["food", "weather"], "num_classes": 2, "classifier_reinitialized": True}
    report = model.zoo.report
    assert report.user_data["examples"] == 12 and report.user_data["format"] == "csv"
    assert report.dataset.startswith("local:val.csv@") and report.split == "train"  # datasets' name of a file's split
    from zoo.families.mcbert.data import sentence_ids

    rows = read_rows(text, "text")
    ids = sentence_ids(tuple(rows.inputs), 32, 512)
    labels = torch.tensor(index_labels(ClassPlan(("food", "weather"), 2), rows.labels, "val"))
    with torch.inference_mode():
        accuracy = float((model(ids).argmax(1) == labels).float().mean())
    assert report.metrics["accuracy"] == pytest.approx(accuracy, abs=1e-6)
    card = (cards / name / "README.md").read_text()
    assert str(sentences / "val.csv") in card and "text column `sentence`" in card and "12 examples" in card


def test_a_hub_data_set_served_by_olah_fine_tunes_and_measures_through_the_cli(
        sentences: Path, text_store, olah_hub, tmp_path: Path) -> None:
    """`--train-data hf-hub:org/name --train-split train --eval-split validation`: datasets' `load_dataset`
    reads the data set repo from the Hub endpoint (olah on loopback), as a user's `zoo compress` would."""
    import subprocess
    import sys

    olah_hub.add_repo("acme/sentences", {"README.md": b"---\nlicense: mit\n---\n# Weather and food\n",
                                          "train.csv": sentences / "train.csv",
                                          "validation.csv": sentences / "val.csv"}, repo_type="dataset")
    env = {**os.environ, **store_env(text_store), "HF_ENDPOINT": olah_hub.endpoint, "HF_HOME": str(tmp_path / "hf"),
           "HF_HUB_DISABLE_XET": "1"}
    args = ["compress", CLASSIFIER, "--sparsity", "0.5", "--train-data", "hf-hub:acme/sentences", "--train-split",
            "train", "--eval-data", "hf-hub:acme/sentences", "--eval-split", "validation", "--text-column", "sentence",
            "--label-column", "topic", "--cards", str(tmp_path / "cards")]
    done = subprocess.run([sys.executable, "-m", "zoo.cli", *args], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    name = done.stdout.splitlines()[0].split(":")[0]
    assert name.startswith(f"{CLASSIFIER}_gmp50_d")
    (folder,) = text_store.cached_entries(name)
    report = VariantReport.load(folder / REPORT_FILE)
    assert report.dataset == "acme/sentences" and report.split == "validation" and report.user_data["examples"] == 12
    card = (tmp_path / "cards" / name / "README.md").read_text()
    assert "acme/sentences" in card and "12 examples" in card


# Bad input -------------------------------------------------------------------------------------------

def test_bad_user_data_gives_typed_one_line_errors(digits: Path, sentences: Path, store, text_store,
                                                   tmp_path: Path) -> None:
    missing = one_line_error(["compress", BASE, "--sparsity", "0.5", "--train-data", str(tmp_path / "nope"),
                              "--eval-data", str(digits / "val")], store)
    assert "no such file or folder" in missing
    column = one_line_error(["evaluate", CLASSIFIER, "--eval-data", str(sentences / "val.csv"),
                             "--text-column", "words", "--label-column", "topic"], text_store)
    assert "no column 'words'" in column and "sentence, topic" in column
    write_csv(tmp_path / "empty.csv", [])
    empty = one_line_error(["evaluate", CLASSIFIER, "--eval-data", str(tmp_path / "empty.csv")], text_store)
    assert "empty.csv" in empty and "no data" in empty  # datasets' own words for a split without rows
    (tmp_path / "hollow" / "cat").mkdir(parents=True)
    assert "holds no images" in one_line_error(["evaluate", BASE, "--eval-data", str(tmp_path / "hollow")], store)
    write_digits(tmp_path / "pets", {"val": 1}, labels=range(2), classes={0: "cat", 1: "dog"})
    cannot = one_line_error(["evaluate", BASE, "--eval-data", str(tmp_path / "pets" / "val")], store)
    assert "labels the model cannot take: 'cat', 'dog'" in cannot
    write_csv(tmp_path / "ints.csv", [("the rain and the sun", "7")], header="text,label")
    assert "labels [7] the model cannot take" in one_line_error(
        ["evaluate", CLASSIFIER, "--eval-data", str(tmp_path / "ints.csv")], text_store)
    write_csv(tmp_path / "numbers.csv", [("12", "weather"), ("34", "food")], header="text,label")
    assert "a text column holds strings, not int (12)" in one_line_error(  # datasets reads the column as int64
        ["evaluate", CLASSIFIER, "--eval-data", str(tmp_path / "numbers.csv")], text_store)
    other_task = one_line_error(["compress", "test_bert.zoo_pydoc", "--sparsity", "0.5",
                                 "--train-data", str(sentences / "train.csv")], store)
    assert "task (fill-mask) takes no user data; the tasks that do: image-classification, text-classification" in other_task
    assert "one split" in one_line_error(["evaluate", BASE, "--eval-data", str(digits / "val"),
                                          "--eval-split", "test"], store)
    nothing = one_line_error(["compress", BASE, "--train-data", str(digits / "train")], store)
    assert "give a sparsity, quant or recipe" in nothing
    with pytest.raises(UserDataError, match="cannot tell the format"):
        UserData(str(write_csv(tmp_path / "data.txt", [])))


# Identity --------------------------------------------------------------------------------------------

def test_other_data_gives_another_name_and_cache_key(digits: Path, tmp_path: Path) -> None:
    def name(train: Path, **kwargs) -> str:
        return resolve(BASE, sparsity=0.5, train_data=UserData(str(train)), eval_data=UserData(str(digits / "val")),
                       **kwargs).name

    first = name(digits / "train")
    copy = tmp_path / "copy"
    write_digits(copy, {"train": TRAIN_PER_CLASS})
    assert name(copy / "train") == first  # the same bytes elsewhere: the same data
    changed = sorted((copy / "train" / "3").glob("*.png"))[0]
    changed.write_bytes(sorted((digits / "val" / "3").glob("*.png"))[0].read_bytes())
    assert name(copy / "train") != first  # one image changed: other data
    assert name(digits / "train", finetuning=FineTuning(lr=0.001)) != first
    assert parse_variant_name(first) == (first, {})
    with pytest.raises(InvalidArgumentError, match="made on the user's data"):
        resolve(first)

    store = short_store(tmp_path / "store")
    spec = resolve(BASE, sparsity=0.5, train_data=UserData(str(digits / "train")))
    from zoo.api import variant_cache_folder

    own = variant_cache_folder(VariantSpec(spec.base, sparsity=0.5), store, "weights")
    assert variant_cache_folder(spec, store, "weights") != own
    (store.cache_root / first / "x").mkdir(parents=True)
    (store.cache_root / first / "x" / "config.json").write_text("{}")
    assert first not in {row.name for row in catalog(store)}  # listed nowhere by a name it cannot be loaded by


def test_labels_meet_the_models_classes() -> None:
    digits = ClassPlan(tuple(str(i) for i in range(10)), 10)
    assert plan_classes(digits, Labels.of_names(["3", "1", "3"])) == digits  # by name, classifier kept
    assert plan_classes(ClassPlan(None, 2), Labels.of_names(["b", "a"])) == ClassPlan(("a", "b"), 2)  # in order
    assert plan_classes(digits, Labels.of_names(["x", "y"])) == ClassPlan(("x", "y"), 2, reinitialized=True)
    assert plan_classes(ClassPlan(None, 5), Labels((0, 4, 2), None)) == ClassPlan(None, 5)
    assert plan_classes(ClassPlan(None, 5), Labels((0, 6), None)).num_classes == 7
    assert index_labels(digits, Labels.of_names(["3", "1"]), "x") == [3, 1]
    with pytest.raises(UserDataError, match="one class"):
        plan_classes(digits, Labels.of_names(["x"]))
    with pytest.raises(UserDataError, match="no names"):
        index_labels(ClassPlan(None, 3), Labels.of_names(["a", "b"]), "x")


def test_datasets_formats_read_the_same_rows(digits: Path, tmp_path: Path) -> None:
    folder = read_rows(UserData(str(digits / "val")), "image")
    image = read_rows(UserData(str(digits / "val"), format="imagefolder"), "image")  # datasets' imagefolder
    assert image.labels == folder.labels and len(image) == 10 * VAL_PER_CLASS
    assert np.array_equal(np.asarray(image.inputs[0]), np.asarray(Image.open(folder.inputs[0])))
    lines = tmp_path / "rows.jsonl"
    lines.write_text("".join(json.dumps({"text": f"line {i}", "label": i % 3}) + "\n" for i in range(6)))
    rows = read_rows(UserData(str(lines), split="train[:4]"), "text")
    assert list(rows.inputs) == ["line 0", "line 1", "line 2", "line 3"] and rows.labels == Labels((0, 1, 2, 0), None)
    with pytest.raises(UserDataError, match="split"):
        UserData("hf-hub:acme/reviews")  # a Hub data set names its split (and is not fetched here)
