"""A tiny transformers repo for the tests: a seeded random-init BertForSequenceClassification (hidden 32,
2 layers, 100 tokens, 3 labels) written by `save_pretrained`, with a WordPiece tokenizer over a fixed
vocabulary (tokenizers library, no training: the same files on every run), as a Hub repo holds them; and
(a pytest plugin, conftest's `pytest_plugins`) the fixtures that serve it through olah."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from huggingface_hub import constants

REPO = "acme/tiny-bert-sst"

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
LETTERS = "abcdefghijklmnopqrstuvwxyz"
WORDS = ["the", "of", "and", "a", "to", "in", "is", "for", "that", "with", "as", "on", "by", "be", "this", "an",
         "are", "it", "from", "or", "if", "not", "function", "object", "value", "module", "return", "file",
         "string", "list", "type", "class", "name", "data", "python", "use", "method", "used", "can", "which"]
VOCAB = SPECIALS + list(LETTERS) + ["##" + c for c in LETTERS] + WORDS + [".", ",", "(", ")"]
CONFIG = dict(hidden_size=32, initializer_range=0.3, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
              max_position_embeddings=32, type_vocab_size=2, num_labels=3, pad_token_id=0)


def write_tiny_bert(folder: Path, seed: int = 0) -> dict[str, Path]:
    """Writes the repo's files into `folder`; returns {repo path: file} for `OlahServer.add_repo`."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(VOCAB), **CONFIG)
    config.architectures = ["BertForSequenceClassification"]
    model = BertForSequenceClassification(config).eval()
    with torch.no_grad():  # a non-zero classifier bias and pooler, so every tensor matters
        for parameter in model.parameters():
            parameter.add_(0.01 * torch.randn_like(parameter))
    model.save_pretrained(folder)
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(VOCAB)}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=32)
    fast.save_pretrained(folder)
    return {p.name: p for p in sorted(folder.iterdir()) if p.is_file()}


@pytest.fixture(scope="session")
def tiny_bert(olah_hub, tmp_path_factory):
    """(repo folder, commit) of the tiny repo, served by olah."""
    folder = tmp_path_factory.mktemp("tiny-bert")
    files = write_tiny_bert(folder)
    commit = olah_hub.add_repo(REPO, files)
    return folder, commit


@pytest.fixture()
def hub_env(olah_hub, tmp_path, monkeypatch):
    """An empty Hugging Face cache, zoo hub and variant cache of this test; olah as the endpoint."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setenv("ZOO_HUB", str(tmp_path / "hub"))
    monkeypatch.setenv("ZOO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ZOO_TRAIN_OPTIONS", "latency_seconds=0.01,graph_runtimes=none")
    return olah_hub.endpoint
