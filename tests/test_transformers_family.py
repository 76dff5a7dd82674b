"""The transformers family: a tiny BertForSequenceClassification repo served by olah, read by the family's
repo reader, loaded by the zoo bit for bit as transformers loads it, and compressed without data."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import zoo
from tiny_bert_repo import REPO
from zoo.api import _recipe_context
from zoo.errors import CheckpointError
from zoo.families.transformers.entries import UnsupportedArchitectureError, read_transformers_repo
from zoo.hub import download
from zoo.repo_readers import REPO_READERS, RepoSnapshot
from zoo.variants import VariantSpec



def snapshot_of(folder: Path, commit: str) -> RepoSnapshot:
    return RepoSnapshot(REPO, commit, json.loads((folder / "config.json").read_text()),
                        tuple(sorted(p.name for p in folder.iterdir())))


def test_reader_is_registered_and_makes_a_plain_data_entry(tiny_bert):
    folder, commit = tiny_bert
    entry = REPO_READERS.get("transformers")(snapshot_of(folder, commit))
    assert entry.name == f"hf-hub:{REPO}" and entry.repo_id == REPO and entry.revision == commit
    assert entry.family == "transformers" and entry.task == "text-classification" and entry.num_classes == 3
    assert entry.input.vocab_size == json.loads((folder / "config.json").read_text())["vocab_size"]
    json.dumps(entry.to_dict())  # plain data


def test_reader_leaves_other_repos_and_refuses_unsupported_architectures(tiny_bert):
    folder, commit = tiny_bert
    assert read_transformers_repo(RepoSnapshot(REPO, commit, {"architecture": "resnet18"}, ("model.safetensors",))) is None
    config = {**json.loads((folder / "config.json").read_text()), "architectures": ["BertForMaskedLM"]}
    with pytest.raises(UnsupportedArchitectureError, match="BertForSequenceClassification"):
        read_transformers_repo(RepoSnapshot(REPO, commit, config, ("model.safetensors",)))
    config = {**config, "architectures": ["GPT2ForSequenceClassification"], "model_type": "gpt2"}
    with pytest.raises(UnsupportedArchitectureError):
        read_transformers_repo(RepoSnapshot(REPO, commit, config, ("model.safetensors",)))
    with pytest.raises(CheckpointError, match="safetensors"):
        read_transformers_repo(RepoSnapshot(REPO, commit, json.loads((folder / "config.json").read_text()),
                                            ("config.json", "pytorch_model.bin")))


def _load_base(tiny_bert, endpoint):
    folder, commit = tiny_bert
    entry = read_transformers_repo(snapshot_of(folder, commit))
    return entry, zoo.load(VariantSpec(entry), endpoint=endpoint, progress=False)


def test_loads_bit_exact_as_transformers_loads_it(tiny_bert, hub_env):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    entry, model = _load_base(tiny_bert, hub_env)
    assert model.zoo.source == "hf-hub" and model.zoo.name == entry.name
    snapshot = download(REPO, revision=entry.revision, local_files_only=True)
    reference = AutoModelForSequenceClassification.from_pretrained(snapshot).eval()
    tok = AutoTokenizer.from_pretrained(snapshot)
    batch = tok(["the value of a string", "return the list of file names in python"], padding="max_length",
                max_length=entry.input.max_length, return_tensors="pt")
    with torch.no_grad():
        expected = reference(**batch).logits
        got = model(batch["input_ids"])
    assert torch.equal(got, expected)
    ours, theirs = model.state_dict(), reference.state_dict()
    assert set(ours) == {k for k in theirs if k not in ("bert.embeddings.position_ids", "bert.embeddings.token_type_ids")}
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.parametrize("sparsity,quant,levels", [(0.5, None, None), (0.5, "w4_ptq", 15), (0.0, "int8", 255),
                                                   (0.0, "w8_ptq", 255)])
def test_one_shot_pruning_and_ptq_without_training_data(tiny_bert, hub_env, sparsity, quant, levels):
    """One-shot pruning needs no data; PTQ calibrates on the family's calibration text (no labels). The
    embeddings and the classifier stay dense (and float, but for int8, whose default recipe quantizes every
    linear layer); quantized weights lie on their grid (at most
    `levels` values per output channel). GPTQ moves pruned weights while it compensates rounding errors
    (zoo.compress.lowbit_ptq), so the 50 % + w4 variant's exact zero count is not asserted."""
    from zoo.compress.pruning import prunable_weights

    entry, base = _load_base(tiny_bert, hub_env)
    spec = VariantSpec(entry, sparsity=sparsity, quant=quant, method="oneshot")
    model = spec.recipe().apply(base.train(False), _recipe_context(entry, False)).eval()
    weights = prunable_weights(model, keep_dense=entry.keep_dense)
    assert "bert.embeddings.word_embeddings" not in weights and "classifier" not in weights
    if quant is None:
        zeros = sum(int((w == 0).sum()) for w in weights.values())
        assert zeros == int(sparsity * sum(w.numel() for w in weights.values()))
    else:
        quantized = {n: m for n, m in model.named_modules() if hasattr(m, "weight_scale")}
        assert "bert.encoder.layer.0.attention.self.query" in quantized
        assert ("classifier" in quantized) == (quant == "int8")  # the zoo's int8 recipe keeps no layer in float
        for layer in quantized.values():
            assert max(len(row.unique()) for row in layer.weight.detach()) <= levels
    with torch.no_grad():
        assert torch.isfinite(model(entry.input.example_ids(2))).all()


def test_evaluation_without_eval_data_is_not_measured(tiny_bert, hub_env, tmp_path):
    from zoo.compress.checkpoint import save_checkpoint
    from zoo.evaluation import measure_variant

    entry, model = _load_base(tiny_bert, hub_env)
    save_checkpoint(tmp_path / "ckpt", model.state_dict(), config={
        "name": entry.name, "base_model": entry.name, "arch": "bert", "model_kwargs": entry.model_kwargs, "recipe": None})
    with pytest.warns(UserWarning, match="not measured"):
        report = measure_variant(model, entry, name=entry.name, checkpoint_dir=tmp_path / "ckpt", sparsity=0.0,
                                 quant=None, recipe=None, progress=False, latency_seconds=0.01, graph_runtimes=())
    assert report.metrics == {} and "no labelled evaluation data" in report.eval_data_missing
    assert report.params_total == sum(p.numel() for p in model.parameters())


WEATHER = ("rain", "snow", "wind", "cloud", "storm", "fog")
FOOD = ("bread", "rice", "soup", "fruit", "cheese", "honey")


def test_fine_tunes_on_a_users_csv_by_hub_id_with_its_own_tokenizer_a_new_classifier_and_a_card(
        tiny_bert, hub_env, tmp_path):
    """Two classes of sentences (the repo's head has three): `zoo.load("hf-hub:org/name", sparsity=0.5,
    train_data=, eval_data=)` prunes gradually while fine-tuning on them through the repo's tokenizer with a
    fresh two-label head, measures on the validation csv, reloads from the cache, and cards the result on
    that data with the repo as its base model."""
    from zoo.compress.checkpoint import read_config
    from zoo.model_cards import validate_card
    from zoo.userdata import FineTuning
    from zoo.userdata.card import user_data_card

    rng = __import__("random").Random(0)
    for split, n in (("train", 48), ("val", 16)):
        rows = [(" ".join(rng.choice((WEATHER, FOOD)[i % 2]) for _ in range(5)), ("weather", "food")[i % 2])
                for i in range(n)]
        (tmp_path / f"{split}.csv").write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows))
    kwargs = dict(sparsity=0.5, train_data=tmp_path / "train.csv", eval_data=tmp_path / "val.csv",
                  finetuning=FineTuning(epochs=8, lr=3e-3, batch_size=8), endpoint=hub_env, progress=False)
    model = zoo.load(f"hf-hub:{REPO}", **kwargs)
    assert model.zoo.name.startswith(f"hf-hub:{REPO}+gmp50_d") and model.zoo.source == "derived"
    assert model.classifier.out_features == 2 and model.config.num_labels == 2
    report = model.zoo.report
    assert report.user_data["examples"] == 16 and report.metrics["accuracy"] >= 0.75, report.metrics
    encoder = [m.weight for n, m in model.named_modules() if n.endswith(("query", "key", "value", "dense"))
               and n.startswith("bert.encoder")]
    assert abs(float(sum((w == 0).sum() for w in encoder)) / sum(w.numel() for w in encoder) - 0.5) < 0.01
    assert read_config(model.zoo.path)["name"] == model.zoo.name
    again = zoo.load(f"hf-hub:{REPO}", **kwargs)
    ids = torch.randint(0, 100, (3, 12), generator=torch.Generator().manual_seed(0))
    assert again.zoo.source == "cache" and torch.equal(again(ids), model(ids))
    card = user_data_card(model)
    validate_card(card, report)
    assert card.data.base_model == REPO and "val.csv" in str(card)
