"""English text that ships with Python, tokenized for the BERT-style families (MC-BERT, its MLM baseline).

Two data sets, both deterministic (no random state, no network), registered in `zoo.data.DATASETS`:

- `pydoc_text`: pre-training text. Python's `pydoc_data.topics` (the Language Reference and library
  sections `help()` shows: about 65k words of technical English). Paragraphs go to the test split when
  the MD5 of their text is 0 mod 10 (about 10 %), else to train; each split's paragraphs are tokenized
  and packed into `[CLS] ... [SEP]` sequences of `max_length` tokens.
- `stdlib_topics`: the downstream classification task. Sentences of the docstrings of 64 standard
  library modules, labelled by what the module is for: files, text, numbers, network, concurrency
  (see `TOPIC_MODULES`). It is topic classification of real English (as AG News is for news), a
  task a pre-trained encoder helps with; its text is not in the pre-training corpus, so fine-tuning
  measures transfer, not memorization. Classes are balanced (each cut to the smallest class's count,
  by a seeded permutation) and split 80/20, stratified, seed 0, as the digits are.

Text depends on the Python version (docstrings and `pydoc_data` change between releases): the
numbers in BENCHMARKS.md were measured with the Python the data set's `python_version()` reports.

The tokenizer is a BPE trained with Hugging Face `tokenizers` on the pre-training train split only
(deterministically: see `tokenizer`), with the special tokens of `SPECIAL_TOKENS` at fixed ids ([NEITHER] is MC-BERT's reject option;
the MLM baseline has it too, so both vocabularies and embedding tables are identical).
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import platform
import re
from functools import lru_cache

import torch
from torch.utils.data import Dataset, TensorDataset

from zoo.data import DATASET_DESCRIPTIONS, DATASETS
from zoo.entry import ModelEntry
from zoo.errors import InvalidArgumentError
from zoo.families.mcbert.entries import CLS_ID, PAD_ID, SEP_ID, SPECIAL_TOKENS, TOPIC_MODULES, TOPICS, TextInput

SPLITS = ("train", "test")
TEST_BUCKET_MODULUS = 10  # a paragraph is a test paragraph when md5(text) % 10 == 0
MIN_SENTENCE_WORDS = 6
CLASSIFICATION_TEST_FRACTION = 0.2
CLASSIFICATION_SEED = 0


def python_version() -> str:
    return platform.python_version()


# Pre-training text --------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def pydoc_paragraphs() -> tuple[str, ...]:
    """Paragraphs of `pydoc_data.topics`, topics in sorted order, whitespace collapsed."""
    from pydoc_data.topics import topics

    paragraphs = []
    for key in sorted(topics):
        for block in re.split(r"\n\s*\n", topics[key]):
            text = " ".join(block.split())
            if text:
                paragraphs.append(text)
    return tuple(paragraphs)


def is_test_text(text: str) -> bool:
    return int(hashlib.md5(text.encode()).hexdigest(), 16) % TEST_BUCKET_MODULUS == 0


def pydoc_split(split: str) -> tuple[str, ...]:
    _check_split(split)
    return tuple(p for p in pydoc_paragraphs() if is_test_text(p) == (split == "test"))


@lru_cache(maxsize=8)
def tokenizer(vocab_size: int):
    """A BPE tokenizer (lower-cased, BERT pre-tokenization) trained on the train paragraphs.

    BPE without a continuing-subword prefix, because that is what `tokenizers` trains deterministically:
    its WordPiece trainer numbers the `##` pieces in hash-map order, which breaks count ties differently
    from run to run (huggingface/tokenizers#1794), so the vocabulary, and every model, would change."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    tok.train_from_iterator(pydoc_split("train"), trainer=trainer)
    for i, token in enumerate(SPECIAL_TOKENS):
        if tok.token_to_id(token) != i:
            raise InvalidArgumentError(f"tokenizer placed {token} at {tok.token_to_id(token)}, expected {i}")
    if tok.get_vocab_size() > vocab_size:
        raise InvalidArgumentError(f"tokenizer has {tok.get_vocab_size()} tokens, more than {vocab_size}")
    return tok


def encode(texts: tuple[str, ...], vocab_size: int) -> list[list[int]]:
    return [e.ids for e in tokenizer(vocab_size).encode_batch(list(texts), add_special_tokens=False)]


def pack(token_lists: list[list[int]], max_length: int) -> torch.Tensor:
    """Concatenates token lists and cuts them into `[CLS] ... [SEP]` rows of `max_length` (the last
    row padded with [PAD]): BERT's "full sentences" packing."""
    body = max_length - 2
    stream = [t for tokens in token_lists for t in tokens]
    rows = []
    for start in range(0, len(stream), body):
        chunk = [CLS_ID, *stream[start:start + body], SEP_ID]
        rows.append(chunk + [PAD_ID] * (max_length - len(chunk)))
    return torch.tensor(rows, dtype=torch.long)


@lru_cache(maxsize=8)
def pydoc_sequences(split: str, max_length: int, vocab_size: int) -> torch.Tensor:
    """(sequences, max_length) token ids of the split's paragraphs."""
    return pack(encode(pydoc_split(split), vocab_size), max_length)


DATASET_DESCRIPTIONS.register(
    "pydoc_text", "the paragraphs of Python's own documentation topics (pydoc_data.topics, ~65k words), a tenth of "
                  "them (by hash) held out for testing")
DATASET_DESCRIPTIONS.register(
    "stdlib_topics", f"sentences of standard-library docstrings labelled by the topic of their module "
                     f"({', '.join(TOPICS)}), classes balanced, stratified train/test split")


@DATASETS.decorator("pydoc_text")
def pydoc_text(split: str, entry: ModelEntry) -> Dataset:
    """Pre-training sequences: `(input_ids,)` rows of `entry.input.max_length` tokens."""
    spec = _text_input(entry)
    return TensorDataset(pydoc_sequences(split, spec.max_length, spec.vocab_size))


# Downstream classification ------------------------------------------------------------------------

def _docstrings(module_name: str) -> list[str]:
    """The docstrings of a module and of the functions, classes and methods it defines, in name order."""
    module = importlib.import_module(module_name)
    seen: set[int] = set()
    docs: list[str] = []

    def add(obj: object) -> None:
        doc = getattr(obj, "__doc__", None)
        if isinstance(doc, str) and id(obj) not in seen:
            seen.add(id(obj))
            docs.append(doc)

    add(module)
    for _, obj in sorted(vars(module).items()):
        if getattr(obj, "__module__", None) != module.__name__:
            continue
        add(obj)
        if inspect.isclass(obj):
            for _, member in sorted(vars(obj).items()):
                add(member)
    return docs


def sentences(doc: str) -> list[str]:
    """Prose sentences of a docstring: split at sentence ends and blank lines; doctest lines, short
    fragments and lines of code-like text dropped."""
    out = []
    for block in re.split(r"\n\s*\n", doc):
        lines = [line for line in block.splitlines() if not line.strip().startswith((">>>", "..."))]
        for sentence in re.split(r"(?<=[.!?])\s+", " ".join(" ".join(lines).split())):
            words = sentence.split()
            if len(words) >= MIN_SENTENCE_WORDS and sum(w.isalpha() for w in words) >= len(words) // 2:
                out.append(sentence)
    return out


@lru_cache(maxsize=1)
def topic_sentences() -> tuple[tuple[str, int], ...]:
    """(sentence, topic index) pairs: unique sentences, a sentence seen under two topics dropped,
    classes balanced to the smallest one by a seeded permutation; in a fixed order."""
    labels: dict[str, set[int]] = {}
    for label, topic in enumerate(TOPICS):
        for module in TOPIC_MODULES[topic]:
            for doc in _docstrings(module):
                for sentence in sentences(doc):
                    labels.setdefault(sentence, set()).add(label)
    by_class: list[list[str]] = [[] for _ in TOPICS]
    for sentence in sorted(labels):
        if len(labels[sentence]) == 1:
            by_class[next(iter(labels[sentence]))].append(sentence)
    size = min(len(c) for c in by_class)
    generator = torch.Generator().manual_seed(CLASSIFICATION_SEED)
    pairs = []
    for label, items in enumerate(by_class):
        keep = torch.randperm(len(items), generator=generator)[:size].sort().values
        pairs.extend((items[i], label) for i in keep.tolist())
    return tuple(pairs)


@lru_cache(maxsize=8)
def topic_tensors(split: str, max_length: int, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, labels) of a split: `[CLS] sentence [SEP]` truncated/padded to `max_length`."""
    from sklearn.model_selection import train_test_split

    _check_split(split)
    pairs = topic_sentences()
    labels = [label for _, label in pairs]
    train_idx, test_idx = train_test_split(list(range(len(pairs))), test_size=CLASSIFICATION_TEST_FRACTION,
                                           random_state=CLASSIFICATION_SEED, stratify=labels)
    index = sorted(train_idx if split == "train" else test_idx)
    ids = sentence_ids(tuple(pairs[i][0] for i in index), max_length, vocab_size)
    return ids, torch.tensor([labels[i] for i in index], dtype=torch.long)


def sentence_ids(texts: tuple[str, ...], max_length: int, vocab_size: int) -> torch.Tensor:
    """(sentences, max_length) ids: each `[CLS] sentence [SEP]`, truncated and padded to `max_length`."""
    rows = []
    for tokens in encode(texts, vocab_size):
        row = [CLS_ID, *tokens[: max_length - 2], SEP_ID]
        rows.append(row + [PAD_ID] * (max_length - len(row)))
    return torch.tensor(rows, dtype=torch.long).reshape(len(rows), max_length)


def user_sentences(entry: ModelEntry, texts, labels: list[int]) -> Dataset:
    """The user's sentences (zoo.userdata) as `(input_ids, label)` rows, tokenized by the entry's tokenizer
    as the registered classification data is (`zoo.userdata.read` checked they are strings)."""
    texts = tuple(texts)
    spec = _text_input(entry)
    return TensorDataset(sentence_ids(texts, spec.max_length, spec.vocab_size), torch.tensor(labels, dtype=torch.long))


@DATASETS.decorator("stdlib_topics")
def stdlib_topics(split: str, entry: ModelEntry) -> Dataset:
    """Downstream classification: `(input_ids, label)` with labels indexing `TOPICS`."""
    spec = _text_input(entry)
    return TensorDataset(*topic_tensors(split, spec.max_length, spec.vocab_size))


def _text_input(entry: ModelEntry) -> TextInput:
    if not isinstance(entry.input, TextInput):
        raise InvalidArgumentError(f"{entry.name} does not take text (its input is {type(entry.input).__name__})")
    return entry.input


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise InvalidArgumentError(f"the English text data sets have splits {SPLITS}, not {split!r}")
