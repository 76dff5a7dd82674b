"""MC-BERT (Xu et al. 2020) and its masked-LM baseline, on transformers' BERT encoder.

transformers gives the encoder (`BertModel`: embeddings, self-attention and FFN all in nn.Linear /
nn.Embedding, so pruning, int8 PTQ and FLOP counting apply unchanged) and the LM head's transform
(`BertPredictionHeadTransform`). Written here, because no library has them:

- `MetaController`: MC-BERT's small generator, a BERT of the same depth with width, FFN and heads
  divided by `divider`, reading the main model's token embeddings through a projection
  (`embed_project`, H -> H/divider) both at its input and at its output (tied logits), and sharing
  the main model's per-token bias. It is trained as an MLM on the masked positions (`L_MC`).
- `MCBertForPreTraining`: the main model's multi-choice cloze with a reject option. Without
  gradient, k candidates are sampled at every position from the controller's softmax; masked
  positions take sample 0 as their corrupted input; slot 0 becomes `[NEITHER]` (the reject option),
  slot 1 the original token where the input was changed. The main model scores each candidate as
  `h . E[c] + b[c]`, softmax over the k slots; the label is slot 1 where the input was changed, slot 0
  (reject) elsewhere. `L = L_MC + lambda * L_main` (means over masked / non-pad positions: the
  reference's sums, `L_MC_sum + lambda * L_main_sum * n_masked / n_tokens`, divided by n_masked).
- `BertMaskedLM`: the baseline, BERT's MLM (80 % [MASK], 10 % random, 10 % kept) with logits tied to
  the token embeddings (`F.linear(h, E) + b`, so no weight is shared between two modules and the
  checkpoint format stores every tensor once).
- `BertTextClassifier`: an encoder with a classification head on [CLS] (dense, tanh, linear), as
  MC-BERT fine-tunes; its encoder's parameter names (`bert.*`) are those of both pre-training models,
  so `load_pretrained_encoder` copies a pre-trained main model into it (MC-BERT's controller is
  dropped: only the main model is fine-tuned).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from transformers import BertConfig, BertModel
from transformers.models.bert.modeling_bert import BertPredictionHeadTransform

from zoo.compress.structured import register_structured
from zoo.entry import ModelEntry
from zoo.errors import CheckpointError, InvalidArgumentError
from zoo.families.mcbert.entries import MASK_ID, MODEL_FAMILIES, NEITHER_ID, PAD_ID, SPECIAL_TOKENS, TextInput
from zoo.families.mcbert.structured import HOOKS as STRUCTURED_HOOKS
from zoo.models import FAMILIES, INITIALIZERS, build_model

NUM_SPECIAL = len(SPECIAL_TOKENS)


@dataclass(frozen=True)
class EncoderSpec:
    """The size of a BERT encoder (the main model's; the controller's is this divided by `divider`)."""

    vocab_size: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    max_positions: int
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if self.hidden % self.heads:
            raise InvalidArgumentError(f"hidden {self.hidden} is not a multiple of heads {self.heads}")

    def config(self, divider: int = 1, *, vocab_size: int | None = None) -> BertConfig:
        """transformers' BertConfig at this size, or the size divided by `divider` (the controller)."""
        if self.hidden % divider or self.heads % divider or self.intermediate % divider:
            raise InvalidArgumentError(f"hidden/heads/FFN ({self.hidden}/{self.heads}/{self.intermediate}) "
                                       f"are not divisible by the controller divider {divider}")
        return BertConfig(
            vocab_size=self.vocab_size if vocab_size is None else vocab_size,
            hidden_size=self.hidden // divider, num_hidden_layers=self.layers,
            num_attention_heads=self.heads // divider, intermediate_size=self.intermediate // divider,
            max_position_embeddings=self.max_positions, type_vocab_size=1, pad_token_id=PAD_ID,
            hidden_dropout_prob=self.dropout, attention_probs_dropout_prob=self.dropout,
        )


def bert_encoder(config: BertConfig) -> BertModel:
    """transformers' BertModel without a pooler and without its two index buffers (`position_ids`,
    `token_type_ids`, not saved in state dicts): `run_encoder` passes both, so a model built on the meta
    device (what `zoo.load` does before assigning weights) has no tensor left to materialize."""
    bert = BertModel(config, add_pooling_layer=False)
    del bert.embeddings.position_ids
    del bert.embeddings.token_type_ids
    return bert


def run_encoder(bert: BertModel, input_ids: Tensor, *, inputs_embeds: Tensor | None = None) -> Tensor:
    """Last hidden states of `bert` for `input_ids` ([PAD] masked out of attention); with
    `inputs_embeds`, those replace the word embeddings (the ids still give the padding and the length)."""
    positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand(input_ids.shape[0], -1)
    return bert(
        input_ids=None if inputs_embeds is not None else input_ids, inputs_embeds=inputs_embeds,
        attention_mask=(input_ids != PAD_ID).long(), position_ids=positions, token_type_ids=torch.zeros_like(input_ids),
    ).last_hidden_state


# Masking ------------------------------------------------------------------------------------------

def choose_masked(input_ids: Tensor, rate: float, generator: torch.Generator | None = None) -> Tensor:
    """Bool mask of the positions to mask: in each row, round(rate * n) of its n non-special tokens
    (at least one), uniformly at random. The count is fixed, so FLOPs do not depend on the draw."""
    if not 0.0 < rate < 1.0:
        raise InvalidArgumentError(f"mask rate must be in (0, 1), got {rate}")
    maskable = input_ids >= NUM_SPECIAL
    counts = (maskable.sum(1).float() * rate).round().clamp(min=1).long()
    scores = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    scores = scores.masked_fill(~maskable, 2.0)
    rank = scores.argsort(1).argsort(1)
    return (rank < counts[:, None]) & maskable


def module_input(tensor: Tensor) -> Tensor:
    """A parameter about to be passed into a submodule: detached when autograd is off, because torch's
    module tracker (under FlopCounterMode) cannot hook a leaf that requires grad inside `no_grad`."""
    return tensor if torch.is_grad_enabled() else tensor.detach()


def _sample_logits(logits: Tensor) -> Tensor:
    """Logits with the special tokens excluded (a candidate or a replacement is always a real token)."""
    return logits.index_fill(-1, torch.arange(NUM_SPECIAL, device=logits.device), float("-inf"))


# Heads --------------------------------------------------------------------------------------------

class TiedLMHead(nn.Module):
    """BERT's LM head (dense, GELU, LayerNorm) with logits against a given embedding table."""

    def __init__(self, config: BertConfig, vocab_size: int, bias: bool = True):
        super().__init__()
        self.transform = BertPredictionHeadTransform(config)
        self.bias = nn.Parameter(torch.zeros(vocab_size)) if bias else None

    def forward(self, hidden: Tensor, embeddings: Tensor, bias: Tensor | None = None) -> Tensor:
        return F.linear(self.transform(hidden), embeddings, self.bias if bias is None else bias)


@dataclass
class MaskedLMOutput:
    """Loss, logits at the masked positions, their labels (original tokens) and the mask."""

    loss: Tensor
    logits: Tensor
    labels: Tensor
    masked: Tensor


def corrupt_tokens(input_ids: Tensor, masked: Tensor, vocab_size: int, generator: torch.Generator | None) -> Tensor:
    """BERT's 80/10/10: masked positions become [MASK], a random real token, or stay."""
    draw = torch.rand(input_ids.shape, generator=generator, device=input_ids.device)
    random_tokens = torch.randint(NUM_SPECIAL, vocab_size, input_ids.shape, generator=generator, device=input_ids.device)
    corrupted = torch.where(masked & (draw < 0.8), torch.full_like(input_ids, MASK_ID), input_ids)
    return torch.where(masked & (draw >= 0.8) & (draw < 0.9), random_tokens, corrupted)


class BertMaskedLM(nn.Module):
    """The baseline: BERT pre-trained by masked-token prediction (`forward` masks, predicts, scores)."""

    def __init__(self, spec: EncoderSpec, mask_rate: float = 0.15):
        super().__init__()
        self.mask_rate = mask_rate
        self.bert = bert_encoder(spec.config())
        self.head = TiedLMHead(spec.config(), spec.vocab_size)

    def corrupt(self, input_ids: Tensor, masked: Tensor, generator: torch.Generator | None) -> Tensor:
        """BERT's 80/10/10: masked positions become [MASK], a random real token, or stay."""
        return corrupt_tokens(input_ids, masked, self.head.bias.numel(), generator)

    def all_logits(self, corrupted: Tensor) -> Tensor:
        """LM logits at every position of already corrupted ids (what an exported graph computes)."""
        return self.head(run_encoder(self.bert, corrupted), module_input(self.bert.embeddings.word_embeddings.weight))

    def forward(self, input_ids: Tensor, masked: Tensor | None = None,
                generator: torch.Generator | None = None) -> MaskedLMOutput:
        if masked is None:
            masked = choose_masked(input_ids, self.mask_rate, generator)
        corrupted = self.corrupt(input_ids, masked, generator)
        hidden = run_encoder(self.bert, corrupted)
        logits = self.head(hidden[masked], module_input(self.bert.embeddings.word_embeddings.weight))
        labels = input_ids[masked]
        return MaskedLMOutput(F.cross_entropy(logits, labels), logits, labels, masked)


class MetaController(nn.Module):
    """MC-BERT's meta controller: a BERT `divider` times narrower, reading and predicting tokens through
    the main model's embeddings projected to its width. Its own word-embedding table is removed."""

    def __init__(self, spec: EncoderSpec, divider: int):
        super().__init__()
        config = spec.config(divider, vocab_size=1)
        self.embed_project = nn.Linear(spec.hidden, config.hidden_size)
        self.encoder = bert_encoder(config)
        self.encoder.embeddings.word_embeddings = None  # the main model's table is read through embed_project
        self.head = TiedLMHead(config, spec.vocab_size, bias=False)

    def features(self, input_ids: Tensor, embeddings: Tensor) -> Tensor:
        inputs = self.embed_project(F.embedding(input_ids, embeddings))
        return run_encoder(self.encoder, input_ids, inputs_embeds=inputs)

    def logits(self, features: Tensor, embeddings: Tensor, bias: Tensor) -> Tensor:
        return self.head(features, self.embed_project(module_input(embeddings)), module_input(bias))


@dataclass
class MultiChoiceOutput:
    """MC-BERT's forward: total and part losses, the controller's logits and labels at the masked
    positions, and the main model's candidate scores, candidates and labels at the scored positions."""

    loss: Tensor
    controller_loss: Tensor
    main_loss: Tensor
    controller_logits: Tensor
    controller_labels: Tensor
    scores: Tensor
    candidates: Tensor
    labels: Tensor
    replaced: Tensor
    corrupted: Tensor
    masked: Tensor


class MCBertForPreTraining(nn.Module):
    """MC-BERT pre-training: the meta controller proposes k candidates per position, the main model
    picks the original token among them or rejects them all (`[NEITHER]`, slot 0)."""

    def __init__(self, spec: EncoderSpec, *, divider: int = 2, num_candidates: int = 10,
                 loss_weight: float = 50.0, mask_rate: float = 0.15):
        super().__init__()
        if num_candidates < 3:
            raise InvalidArgumentError(f"num_candidates must be at least 3 (reject, original, a sample), got "
                                       f"{num_candidates}")
        self.num_candidates, self.loss_weight, self.mask_rate = num_candidates, loss_weight, mask_rate
        self.bert = bert_encoder(spec.config())
        self.head = BertPredictionHeadTransform(spec.config())
        self.candidate_bias = nn.Embedding(spec.vocab_size, 1)
        nn.init.zeros_(self.candidate_bias.weight)
        self.controller = MetaController(spec, divider)

    @property
    def embeddings(self) -> Tensor:
        return self.bert.embeddings.word_embeddings.weight

    @torch.no_grad()
    def propose(self, input_ids: Tensor, masked: Tensor, features: Tensor,
                generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Samples candidates from the controller (no gradient) and builds the cloze: returns the
        corrupted input, the (B, L, k) candidates, the labels (slot index) and where input changed."""
        valid = input_ids != PAD_ID
        logits = self.controller.logits(features[valid], self.embeddings, self.candidate_bias.weight.view(-1))
        probs = torch.softmax(_sample_logits(logits).float(), -1)
        samples = torch.full((*input_ids.shape, self.num_candidates), PAD_ID, dtype=torch.long,
                             device=input_ids.device)
        samples[valid] = torch.multinomial(probs, self.num_candidates, replacement=True, generator=generator)
        return build_cloze(input_ids, masked, samples)

    def forward(self, input_ids: Tensor, masked: Tensor | None = None,
                generator: torch.Generator | None = None) -> MultiChoiceOutput:
        if masked is None:
            masked = choose_masked(input_ids, self.mask_rate, generator)
        features = self.controller.features(input_ids.masked_fill(masked, MASK_ID), self.embeddings)
        bias = self.candidate_bias.weight.view(-1)
        controller_logits = self.controller.logits(features[masked], self.embeddings, bias)
        controller_labels = input_ids[masked]
        controller_loss = F.cross_entropy(controller_logits, controller_labels)
        corrupted, candidates, labels, replaced = self.propose(input_ids, masked, features.detach(), generator)
        valid = input_ids != PAD_ID
        hidden = run_encoder(self.bert, corrupted)
        scores = self.score(hidden[valid], candidates[valid])
        main_loss = F.cross_entropy(scores, labels[valid])
        return MultiChoiceOutput(
            controller_loss + self.loss_weight * main_loss, controller_loss, main_loss, controller_logits,
            controller_labels, scores, candidates[valid], labels[valid], replaced[valid], corrupted, masked,
        )

    def score(self, hidden: Tensor, candidates: Tensor) -> Tensor:
        """(N, H) states, (N, k) candidates -> (N, k) scores `h . E[c] + b[c]`."""
        vectors = F.embedding(candidates, self.embeddings)
        dots = torch.bmm(vectors, self.head(hidden).unsqueeze(-1)).squeeze(-1)
        return dots + self.candidate_bias(candidates).squeeze(-1)


def build_cloze(input_ids: Tensor, masked: Tensor, samples: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """MC-BERT's candidate sets from (B, L, k) samples: masked positions take sample 0 as input; slot 1
    holds the original token where the input changed; slot 0 is `[NEITHER]`. Label: 1 where the input
    changed, else 0 (reject). Returns (corrupted ids, candidates, labels, replaced)."""
    corrupted = torch.where(masked, samples[..., 0], input_ids)
    replaced = corrupted != input_ids
    candidates = samples.clone()
    candidates[..., 1] = torch.where(replaced, input_ids, samples[..., 1])
    candidates[..., 0] = NEITHER_ID
    return corrupted, candidates, replaced.long(), replaced


class BertTextClassifier(nn.Module):
    """A BERT encoder with a sentence classification head on [CLS] (dense, tanh, dropout, linear)."""

    def __init__(self, spec: EncoderSpec, num_classes: int):
        super().__init__()
        self.bert = bert_encoder(spec.config())
        self.dense = nn.Linear(spec.hidden, spec.hidden)
        self.dropout = nn.Dropout(spec.dropout)
        self.classifier = nn.Linear(spec.hidden, num_classes)

    def forward(self, input_ids: Tensor) -> Tensor:
        hidden = run_encoder(self.bert, input_ids)[:, 0]
        return self.classifier(self.dropout(torch.tanh(self.dense(self.dropout(hidden)))))


def load_pretrained_encoder(model: nn.Module, pretrained: nn.Module) -> list[str]:
    """Copies the pre-trained main encoder (`bert.*`) into `model`, in place; returns the names copied.
    Every encoder tensor of `model` must exist with the same shape in `pretrained` (else CheckpointError);
    the rest of `model` (the new head) keeps its initialization."""
    source = {k: v for k, v in pretrained.state_dict().items() if k.startswith("bert.")}
    target = model.state_dict()
    names = [k for k in target if k.startswith("bert.")]
    missing = [k for k in names if k not in source or source[k].shape != target[k].shape]
    extra = [k for k in source if k not in target]
    if not names or missing or extra:
        raise CheckpointError(f"the pre-trained encoder does not fit: missing or reshaped {missing[:3]}, "
                              f"unexpected {extra[:3]}")
    with torch.no_grad():
        for name in names:
            target[name].copy_(source[name])
    return names


# Builders -----------------------------------------------------------------------------------------

KINDS = ("mcbert", "mlm", "classifier")
ENCODER_KEYS = ("hidden", "layers", "heads", "intermediate", "max_positions", "dropout")


def encoder_spec(entry: ModelEntry) -> EncoderSpec:
    if not isinstance(entry.input, TextInput):
        raise InvalidArgumentError(f"{entry.name}: a BERT-style entry needs a TextInput, "
                                   f"got {type(entry.input).__name__}")
    return EncoderSpec(vocab_size=entry.input.vocab_size, **{k: entry.model_kwargs[k] for k in ENCODER_KEYS})


def build_text_model(entry: ModelEntry) -> nn.Module:
    """MC-BERT pre-training model, the MLM baseline, or a classifier, by `model_kwargs["kind"]`."""
    kwargs = entry.model_kwargs
    kind = kwargs.get("kind")
    spec = encoder_spec(entry)
    if kind == "mcbert":
        return MCBertForPreTraining(spec, divider=kwargs["divider"], num_candidates=kwargs["num_candidates"],
                                    loss_weight=kwargs["loss_weight"], mask_rate=kwargs["mask_rate"])
    if kind == "mlm":
        return BertMaskedLM(spec, mask_rate=kwargs["mask_rate"])
    if kind == "classifier":
        return BertTextClassifier(spec, entry.num_classes)
    raise InvalidArgumentError(f"{entry.name}: model_kwargs['kind'] must be one of {', '.join(KINDS)}, got {kind!r}")


def pretrained_source(entry: ModelEntry) -> str | None:
    """The entry whose main encoder initializes `entry` before fine-tuning (None: random init)."""
    return entry.train.init_from if entry.train is not None else None


def _init_from_pretrained(entry: ModelEntry, pretrained: nn.Module) -> nn.Module:
    """`zoo.load` / `zoo train` of a classifier entry: its encoder copied from the pre-trained model."""
    model = build_model(entry)
    load_pretrained_encoder(model, pretrained)
    return model


for _family in MODEL_FAMILIES:
    FAMILIES.register(_family, build_text_model)
    INITIALIZERS.register(_family, _init_from_pretrained)

for _model_type in (BertTextClassifier, BertMaskedLM, MCBertForPreTraining):  # head and FFN pruning of `.bert`
    register_structured(_model_type, STRUCTURED_HOOKS)
