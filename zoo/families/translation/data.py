"""`numbers_en_de`: a parallel English -> German corpus the zoo generates offline, and its tokenizer.

Why a fair stand-in for WMT En-De at this scale: the German side is real German produced by
num2words (no hand-written translations), and it needs what makes WMT En-De hard for a small model:
long-range reordering (units before tens: "twenty-three" -> "dreiundzwanzig"; "the third of May" ->
"der dritte Mai"), compounding (one German word for a whole English phrase: "one thousand, nine hundred
and ninety-nine" -> "eintausendneunhundertneunundneunzig"), a joint subword vocabulary (BPE trained on
both sides, as WMT systems share one) and lexical choice (nouns, months, "is" -> "ist"). It is far
smaller and more regular than news text, so absolute BLEU is much higher than on WMT; comparisons
between models (Transformer vs MAT, dense vs sparse) are what it is for.

Sentences come from five templates (sums, prices, dates, counts of things, cardinal + ordinal) filled
by a seeded generator (12,000 training and 1,000 test pairs); a sentence is in the test split when the
SHA-1 of its English side says so (5 %), so the splits are disjoint, deterministic and independent of
generation order. Examples are token ids padded
to the corpus' longest sentence; `trim` drops the all-padding columns of a batch.
"""
from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from functools import lru_cache

import torch
from torch.utils.data import Dataset, TensorDataset

from zoo.data import DATASET_DESCRIPTIONS, DATASETS
from zoo.errors import InvalidArgumentError

PAD, EOS, UNK = "<pad>", "</s>", "<unk>"
PAD_ID, EOS_ID, UNK_ID = 0, 1, 2
SPLITS = ("train", "test")
TEST_PERCENT = 5


@dataclass(frozen=True)
class CorpusSpec:
    """What defines the corpus and its tokenizer: sizes, generator seed and BPE vocabulary size."""

    train_size: int = 12000
    test_size: int = 1000
    seed: int = 1234
    vocab_size: int = 600


NUMBERS_EN_DE = CorpusSpec()
NUMBERS_EN_DE_TINY = CorpusSpec(train_size=400, test_size=24, vocab_size=200)
CORPORA: dict[str, CorpusSpec] = {"numbers_en_de": NUMBERS_EN_DE, "numbers_en_de_tiny": NUMBERS_EN_DE_TINY}

MONTHS = (
    ("January", "Januar"), ("February", "Februar"), ("March", "März"), ("April", "April"), ("May", "Mai"),
    ("June", "Juni"), ("July", "Juli"), ("August", "August"), ("September", "September"),
    ("October", "Oktober"), ("November", "November"), ("December", "Dezember"),
)
NOUNS = (
    ("apples", "Äpfel"), ("houses", "Häuser"), ("books", "Bücher"), ("cars", "Autos"), ("children", "Kinder"),
    ("dogs", "Hunde"), ("cats", "Katzen"), ("trees", "Bäume"), ("students", "Studenten"), ("birds", "Vögel"),
    ("bottles", "Flaschen"), ("chairs", "Stühle"), ("windows", "Fenster"), ("letters", "Briefe"),
)


@lru_cache(maxsize=None)
def _words(n: int, lang: str, to: str = "cardinal") -> str:
    """`n` spelled out by num2words (cached: it is the slow part of generating the corpus)."""
    from num2words import num2words

    return num2words(n, lang=lang, to=to)


def _number(rng: random.Random) -> int:
    """Mostly small numbers, some up to a million: each order of magnitude about equally often."""
    digits = rng.randint(1, 6)
    return rng.randint(0 if digits == 1 else 10 ** (digits - 1), 10 ** digits - 1)


def _sum(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(0, 999), rng.randint(0, 999)
    en = f"{_words(a, 'en')} plus {_words(b, 'en')} is {_words(a + b, 'en')}"
    de = f"{_words(a, 'de')} plus {_words(b, 'de')} ist {_words(a + b, 'de')}"
    return en, de


def _price(rng: random.Random) -> tuple[str, str]:
    euros, cents = _number(rng) % 10000, rng.randint(1, 99)
    return (f"{_words(euros, 'en')} euros and {_words(cents, 'en')} cents",
            f"{_words(euros, 'de')} Euro und {_words(cents, 'de')} Cent")


def _date(rng: random.Random) -> tuple[str, str]:
    day, (month_en, month_de), year = rng.randint(1, 28), rng.choice(MONTHS), rng.randint(1100, 2099)
    return (f"the {_words(day, 'en', 'ordinal')} of {month_en} {_words(year, 'en', 'year')}",
            f"der {_words(day, 'de', 'ordinal')} {month_de} {_words(year, 'de', 'year')}")


def _count(rng: random.Random) -> tuple[str, str]:
    n, (noun_en, noun_de) = max(2, _number(rng)), rng.choice(NOUNS)
    return f"there are {_words(n, 'en')} {noun_en}", f"es gibt {_words(n, 'de')} {noun_de}"


def _ordinal(rng: random.Random) -> tuple[str, str]:
    n, (noun_en, noun_de) = rng.randint(1, 9999), rng.choice(NOUNS)
    return (f"{_words(n, 'en')} {noun_en} and the {_words(n, 'en', 'ordinal')} one",
            f"{_words(n, 'de')} {noun_de} und der {_words(n, 'de', 'ordinal')}")


TEMPLATES = (_sum, _price, _date, _count, _ordinal)


def is_test(source: str) -> bool:
    return int(hashlib.sha1(source.encode("utf-8")).hexdigest(), 16) % 100 < TEST_PERCENT


@lru_cache(maxsize=4)
def sentence_pairs(split: str, spec: CorpusSpec = NUMBERS_EN_DE) -> tuple[tuple[str, str], ...]:
    """The (English, German) pairs of `split`, the same on every machine."""
    if split not in SPLITS:
        raise InvalidArgumentError(f"numbers_en_de has splits {SPLITS}, not {split!r}")
    rng = random.Random(spec.seed)
    seen: set[str] = set()
    pairs: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    while len(pairs["train"]) < spec.train_size or len(pairs["test"]) < spec.test_size:
        en, de = rng.choice(TEMPLATES)(rng)
        if en in seen:
            continue
        seen.add(en)
        target = pairs["test" if is_test(en) else "train"]
        if len(target) < (spec.test_size if target is pairs["test"] else spec.train_size):
            target.append((en, de))
    return tuple(pairs[split])


@lru_cache(maxsize=4)
def tokenizer(spec: CorpusSpec = NUMBERS_EN_DE):
    """A joint BPE (Hugging Face `tokenizers`) over both sides of the training split, with a
    Metaspace pre-tokenizer so decoding restores the spaces exactly. Deterministic for a corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    trainer = trainers.BpeTrainer(vocab_size=spec.vocab_size, special_tokens=[PAD, EOS, UNK], show_progress=False)
    pairs = sentence_pairs("train", spec)
    tok.train_from_iterator([s for pair in pairs for s in pair], trainer=trainer)
    if (tok.token_to_id(PAD), tok.token_to_id(EOS), tok.token_to_id(UNK)) != (PAD_ID, EOS_ID, UNK_ID):
        raise InvalidArgumentError("tokenizer special tokens must have ids 0, 1, 2")
    if tok.get_vocab_size() != spec.vocab_size:  # the models' embedding size is spec.vocab_size
        raise InvalidArgumentError(f"BPE learned {tok.get_vocab_size()} tokens, not {spec.vocab_size}: "
                                   "the corpus is too small for this vocabulary size")
    return tok


def encode(texts: list[str], spec: CorpusSpec = NUMBERS_EN_DE, *, length: int | None = None) -> torch.Tensor:
    """Token ids with EOS appended, right-padded with PAD to `length` (default: the longest)."""
    ids = [e.ids + [EOS_ID] for e in tokenizer(spec).encode_batch(texts)]
    width = max(len(i) for i in ids) if length is None else length
    if any(len(i) > width for i in ids):
        raise InvalidArgumentError(f"a sentence is longer than {width} tokens")
    return torch.tensor([i + [PAD_ID] * (width - len(i)) for i in ids], dtype=torch.long)


def decode(ids: torch.Tensor, spec: CorpusSpec = NUMBERS_EN_DE) -> list[str]:
    """Text of each row, up to its first EOS; PAD and EOS are dropped."""
    out = []
    for row in ids.tolist():
        row = row[: row.index(EOS_ID)] if EOS_ID in row else row
        out.append(tokenizer(spec).decode([t for t in row if t != PAD_ID]))
    return out


@lru_cache(maxsize=4)
def max_lengths(spec: CorpusSpec = NUMBERS_EN_DE) -> tuple[int, int]:
    """Longest source and target, in tokens with EOS, over all splits (the padded widths)."""
    pairs = [p for split in SPLITS for p in sentence_pairs(split, spec)]
    tok = tokenizer(spec)
    return (max(len(e.ids) for e in tok.encode_batch([en for en, _ in pairs])) + 1,
            max(len(e.ids) for e in tok.encode_batch([de for _, de in pairs])) + 1)


@lru_cache(maxsize=4)
def _tensors(split: str, spec: CorpusSpec) -> tuple[torch.Tensor, torch.Tensor]:
    pairs = sentence_pairs(split, spec)
    source_len, target_len = max_lengths(spec)
    return (encode([en for en, _ in pairs], spec, length=source_len),
            encode([de for _, de in pairs], spec, length=target_len))


def numbers_en_de(split: str, spec: CorpusSpec = NUMBERS_EN_DE) -> Dataset:
    """(source ids, target ids) pairs of `split`, padded to the corpus' widths."""
    return TensorDataset(*_tensors(split, spec))


def trim(ids: torch.Tensor) -> torch.Tensor:
    """`ids` without the trailing columns that are padding in every row (at least one column kept)."""
    used = (ids != PAD_ID).any(dim=0).nonzero()
    return ids[:, : int(used.max()) + 1 if used.numel() else 1]


def _register(name: str, spec: CorpusSpec) -> None:
    DATASETS.register(name, lambda split, entry: numbers_en_de(split, spec))
    DATASET_DESCRIPTIONS.register(
        name, f"English -> German pairs of numbers, dates and prices spelled out by num2words, generated with seed "
              f"{spec.seed} ({spec.train_size:,} train / {spec.test_size:,} test pairs, joint BPE of "
              f"{spec.vocab_size} tokens): real German reordering and compounding, far more regular than news text, "
              "so only comparisons between models mean anything")


for _name, _spec in CORPORA.items():
    _register(_name, _spec)
