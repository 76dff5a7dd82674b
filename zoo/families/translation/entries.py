"""The translation family's entries: a WMT-style Transformer and MAT (see `model.py`) trained on the
generated English -> German `numbers_en_de` corpus (`data.py`).

`transformer.zoo_numbers` (the baseline), `transformer_small.zoo_numbers` (the N = 1 model MAT starts
from: FFN narrowed so that MAT with two branches has the baseline's size), `mat.zoo_numbers`;
`transformer_tiny.zoo_numbers_tiny` and `mat_tiny.zoo_numbers_tiny` for tests.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from zoo.entry import DataSpec, ModelEntry, TrainSpec, register_input_type
from zoo.models import register_entry

MODEL_FAMILIES = ("transformer", "mat")
TASKS = ("translation",)
DATASETS = ("numbers_en_de", "numbers_en_de_tiny")

# The shared embedding/softmax matrix is pruned once through model.shared; its three aliases and the
# fixed sinusoidal position tables are kept out of pruning.
TRANSLATION_KEEP_DENSE = (
    r"model\.(encoder|decoder)\.embed_tokens", "lm_head", r"model\.(encoder|decoder)\.embed_positions",
)


@register_input_type  # a checkpoint config may record it (zoo.hub_ids.entry_record)
@dataclass(frozen=True)
class TranslationInput:
    """What a translation model eats: token ids of the registered corpus' joint BPE vocabulary. Beam
    size and the cap on generated tokens are how it is evaluated; the example lengths (the corpus'
    mean source/target lengths in tokens) size the input used for FLOPs and latency."""

    corpus: str
    source_lang: str = "en"
    target_lang: str = "de"
    num_beams: int = 4
    max_new_tokens: int = 40
    example_source_len: int = 12
    example_target_len: int = 9


_BASE = {"d_model": 64, "layers": 2, "heads": 4, "dropout": 0.1, "max_positions": 64}
_TINY = {"d_model": 32, "layers": 1, "heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "dropout": 0.0,
         "max_positions": 64}
# MAT with 2 branches adds 4 d^2 weights per attention sublayer; the FFNs give them back (d = 64:
# encoder 512 -> 384, decoder, with two attention sublayers, 512 -> 256), so mat.zoo_numbers has
# transformer.zoo_numbers' number of weights (biases aside).
_TRANSFORMER_FFN = {"encoder_ffn_dim": 512, "decoder_ffn_dim": 512}
_EQUAL_SIZE_FFN = {"encoder_ffn_dim": 384, "decoder_ffn_dim": 256}
EPOCHS = 12


def _entry(arch: str, family: str, corpus: str, kwargs: dict[str, Any], epochs: int, what: str,
           lr: float = 2e-3, batch_size: int = 64, init_from: str | None = None,
           compare_with: tuple[str, ...] = ()) -> ModelEntry:
    tag = {"numbers_en_de": "zoo_numbers", "numbers_en_de_tiny": "zoo_numbers_tiny"}[corpus]
    return register_entry(ModelEntry(
        name=f"{arch}.{tag}", family=family, task="translation", repo_id=f"zoo/{arch}.{tag}", source="zoo",
        input=TranslationInput(corpus=corpus), eval_data=DataSpec(corpus, "test"), model_kwargs=kwargs,
        train=TrainSpec(data=DataSpec(corpus, "train"), epochs=epochs, batch_size=batch_size, lr=lr,
                        weight_decay=0.01, label_smoothing=0.1, seed=0, optimizer="adamw", init_from=init_from),
        keep_dense=TRANSLATION_KEEP_DENSE, compare_with=compare_with,
        structured="heads" if family == "transformer" else None,  # MAT's branches cannot be narrowed
        description=f"{what}, trained by the zoo on {corpus} (English -> German numbers, dates and "
                    "prices spelled out by num2words; joint BPE).",
    ))


_entry("transformer", "transformer", "numbers_en_de", {**_BASE, **_TRANSFORMER_FFN}, EPOCHS,
       "A WMT-style Transformer (transformers' MarianMTModel, post-norm, tied embeddings)")
_entry("transformer_small", "transformer", "numbers_en_de", {**_BASE, **_EQUAL_SIZE_FFN}, EPOCHS // 2,
       "The N = 1 Transformer that MAT's proximal initialization starts from")
_entry("mat", "mat", "numbers_en_de", {**_BASE, **_EQUAL_SIZE_FFN, "branches": 2, "drop_branch": 0.3}, EPOCHS // 2,
       "MAT, two attention branches with drop-branch 0.3, of transformer.zoo_numbers' size, proximally "
       "initialized from transformer_small.zoo_numbers", init_from="transformer_small.zoo_numbers",
       compare_with=("transformer.zoo_numbers",))
_entry("transformer_tiny", "transformer", "numbers_en_de_tiny", _TINY, 2, "A tiny Transformer for tests")
_entry("mat_tiny", "mat", "numbers_en_de_tiny", {**_TINY, "branches": 2, "drop_branch": 0.3}, 2,
       "A tiny MAT for tests")
