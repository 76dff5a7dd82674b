"""Translation models: a WMT-style Transformer (transformers' own `MarianMTModel`) and MAT, the
Multi-branch Attentive Transformer (Fan et al. 2020).

The Transformer is `MarianMTModel` built from a `MarianConfig` (no download): post-norm encoder-decoder,
sinusoidal positions, ReLU feed-forward, one joint vocabulary whose embedding matrix is shared by the
encoder, the decoder and the softmax (as in Vaswani et al. and the State of Sparsity setup). Beam
search is transformers' `generate()`.

MAT is the same model with every attention sublayer (encoder self, decoder self, encoder-decoder)
replaced by `MultiBranchAttention`: N independent multi-head attentions whose outputs are averaged,
`x + (1/N) sum_i beta_i Attn_i(x)`, where in training each beta_i is zeroed with probability rho and
the survivors scaled by 1/(1 - rho) (drop-branch); at test time beta_i = 1. The N branches' heads are
computed as one attention of N*H heads, so transformers' key/value cache (and with it `generate()`
and beam search) works unchanged. Unlike the reference code we do not scale by an extra 1/N (the
"dropout on 1/N weights then mean" quirk): with the plain average, proximal initialization (each branch a
copy of a trained Transformer's attention, `proximal_init`) gives exactly the trained Transformer's
function at the start, which is the point of it. FFN branches are not implemented.

Pruning follows Gale et al.: every nn.Linear and the shared embedding/softmax matrix are pruned. The
shared matrix is one tensor reachable from four modules (`model.shared`, the encoder's and decoder's
`embed_tokens`, `lm_head`); the entries keep the three aliases out of pruning (`keep_dense`) so the
matrix is pruned once, through `model.shared`, and the fixed sinusoidal position tables are never
pruned. The checkpoint format stores tied tensors as copies; `retie_shared_embeddings` (a
load_state_dict post-hook) ties them again on load. Head and FFN-neuron pruning (`_hd` variants) of the
Transformer is in `structured.py`; MAT's multi-branch attention is not narrowed (it says why).

The entries are in `entries.py`. MAT's recipe is proximal initialization from
transformer_small.zoo_numbers (`TrainSpec.init_from`, through `INITIALIZERS`: `mat_from_transformer`),
then its TrainSpec: `zoo.load("mat.zoo_numbers")`, `zoo train` and `zoo.native.train_base_model(entry,
init=transformer)` do both.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import GenerationConfig, MarianConfig, MarianMTModel
from transformers.cache_utils import EncoderDecoderCache
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.marian.modeling_marian import MarianAttention, eager_attention_forward

from zoo.compress.structured import register_structured
from zoo.entry import ModelEntry
from zoo.errors import InvalidArgumentError
from zoo.families.translation.data import CORPORA, EOS_ID, PAD_ID
from zoo.families.translation.entries import TranslationInput
from zoo.families.translation.structured import HOOKS as STRUCTURED_HOOKS
from zoo.models import FAMILIES, INITIALIZERS

MODEL_KWARGS = ("d_model", "layers", "heads", "encoder_ffn_dim", "decoder_ffn_dim", "dropout", "max_positions")
MAT_KWARGS = ("branches", "drop_branch")


# Multi-branch attention ---------------------------------------------------------------------------

class AttentionBranch(nn.Module):
    """The four projections of one multi-head attention branch."""

    def __init__(self, embed_dim: int, bias: bool = True) -> None:
        super().__init__()
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.k_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.v_proj = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias=bias)


class MultiBranchAttention(nn.Module):
    """MAT's attention sublayer: `branches` multi-head attentions averaged with drop-branch weights.

    A drop-in for `MarianAttention` (same call signature, same cache protocol): the branches' queries,
    keys and values are concatenated along the head axis, attended in one call of transformers'
    attention function, split back per branch and projected by each branch's `out_proj`.
    """

    def __init__(self, embed_dim: int, num_heads: int, *, branches: int, drop_branch: float,
                 dropout: float = 0.0, is_decoder: bool = False, is_causal: bool = False,
                 config: MarianConfig | None = None, layer_idx: int | None = None) -> None:
        super().__init__()
        if not isinstance(branches, int) or isinstance(branches, bool) or branches < 1:
            raise InvalidArgumentError(f"branches must be a positive integer, got {branches!r}")
        if not 0.0 <= drop_branch < 1.0:
            raise InvalidArgumentError(f"drop_branch must be in [0, 1), got {drop_branch!r}")
        if embed_dim % num_heads:
            raise InvalidArgumentError(f"embed_dim {embed_dim} is not divisible by {num_heads} heads")
        self.embed_dim, self.num_heads, self.head_dim = embed_dim, num_heads, embed_dim // num_heads
        self.num_branches, self.drop_branch = branches, float(drop_branch)
        self.dropout, self.scaling = dropout, self.head_dim ** -0.5
        self.is_decoder, self.is_causal, self.config, self.layer_idx = is_decoder, is_causal, config, layer_idx
        self.branches = nn.ModuleList(AttentionBranch(embed_dim) for _ in range(branches))

    def branch_weights(self) -> torch.Tensor:
        """beta_i / N: 1/N each at test time; in training each zeroed with probability rho, the
        survivors scaled by 1/(1 - rho) (inverted dropout), one draw per forward pass."""
        weights = torch.full((self.num_branches,), 1.0 / self.num_branches)
        if self.training and self.drop_branch > 0:
            keep = (torch.rand(self.num_branches) >= self.drop_branch).float()
            weights = weights * keep / (1.0 - self.drop_branch)
        return weights

    def _heads(self, x: torch.Tensor, projection: str) -> torch.Tensor:
        """(B, T, D) -> (B, N*H, T, head_dim): every branch's heads, branch-major."""
        shape = (*x.shape[:-1], -1, self.head_dim)
        return torch.cat([getattr(b, projection)(x).view(shape).transpose(1, 2) for b in self.branches], dim=1)

    def forward(self, hidden_states: torch.Tensor, key_value_states: torch.Tensor | None = None,
                cache: Any = None, attention_mask: torch.Tensor | None = None,
                **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        is_cross_attention = key_value_states is not None
        query_states = self._heads(hidden_states, "q_proj")
        is_updated, curr_cache = False, None
        if cache is not None:
            if isinstance(cache, EncoderDecoderCache):
                is_updated = cache.is_updated.get(self.layer_idx)
                curr_cache = cache.cross_attention_cache if is_cross_attention else cache.self_attention_cache
            else:
                curr_cache = cache
        current_states = key_value_states if is_cross_attention else hidden_states
        if is_cross_attention and cache is not None and is_updated:
            key_states = curr_cache.layers[self.layer_idx].keys
            value_states = curr_cache.layers[self.layer_idx].values
        else:
            key_states, value_states = self._heads(current_states, "k_proj"), self._heads(current_states, "v_proj")
            if cache is not None:
                key_states, value_states = curr_cache.update(key_states, value_states, self.layer_idx, kwargs=kwargs)
                if is_cross_attention and isinstance(cache, EncoderDecoderCache):
                    cache.is_updated[self.layer_idx] = True
        implementation = self.config._attn_implementation if self.config is not None else "eager"
        attention = ALL_ATTENTION_FUNCTIONS.get_interface(implementation, eager_attention_forward)
        attn_output, attn_weights = attention(
            self, query_states, key_states, value_states, attention_mask,
            dropout=self.dropout if self.training else 0.0, scaling=self.scaling, **kwargs,
        )
        # (B, T, N*H, head_dim) -> one (B, T, D) slice per branch
        parts = attn_output.reshape(*hidden_states.shape[:-1], self.num_branches, self.embed_dim).unbind(-2)
        weights = self.branch_weights().to(hidden_states.dtype)
        output = weights[0] * self.branches[0].out_proj(parts[0])
        for weight, branch, part in zip(weights[1:], self.branches[1:], parts[1:]):
            output = output + weight * branch.out_proj(part)
        return output, attn_weights


# Models -------------------------------------------------------------------------------------------

def marian_config(model_kwargs: dict[str, Any], vocab_size: int) -> MarianConfig:
    """A post-norm, ReLU, shared-vocabulary `MarianConfig` from an entry's model_kwargs."""
    unknown = sorted(set(model_kwargs) - set(MODEL_KWARGS) - set(MAT_KWARGS))
    missing = sorted(set(MODEL_KWARGS) - set(model_kwargs))
    if unknown or missing:
        raise InvalidArgumentError(f"translation model_kwargs: unknown {unknown}, missing {missing}; "
                                   f"expected {MODEL_KWARGS} (+ {MAT_KWARGS} for MAT)")
    kw = model_kwargs
    return MarianConfig(
        vocab_size=vocab_size, decoder_vocab_size=vocab_size, d_model=kw["d_model"],
        encoder_layers=kw["layers"], decoder_layers=kw["layers"],
        encoder_attention_heads=kw["heads"], decoder_attention_heads=kw["heads"],
        encoder_ffn_dim=kw["encoder_ffn_dim"], decoder_ffn_dim=kw["decoder_ffn_dim"],
        dropout=kw["dropout"], attention_dropout=0.0, activation_dropout=0.0, activation_function="relu",
        max_position_embeddings=kw["max_positions"], scale_embedding=True,
        pad_token_id=PAD_ID, eos_token_id=EOS_ID, decoder_start_token_id=PAD_ID, forced_eos_token_id=None,
        share_encoder_decoder_embeddings=True, tie_word_embeddings=True,
        # fairseq/T2T scale: token embeddings N(0, 1/d) so that sqrt(d) * embedding is O(1), as large as the
        # sinusoids (transformers' default 0.02 drowns the tokens under the positions at small d)
        init_std=kw["d_model"] ** -0.5,
    )


_SHARED_ALIASES = ("model.encoder.embed_tokens", "model.decoder.embed_tokens", "lm_head")


def retie_shared_embeddings(model: MarianMTModel, incompatible_keys: Any = None) -> None:
    """Ties the embedding aliases to `model.shared` again where they hold the same values: a state dict
    stores tied tensors as copies, and `load_state_dict(assign=True)` would leave them untied. An alias
    whose values differ (an int8-quantized softmax layer) is left as it is."""
    shared = model.model.shared.weight
    for name in _SHARED_ALIASES:
        module = model.get_submodule(name)
        weight = module.weight
        if weight is shared or weight.is_meta or shared.is_meta:
            continue
        if weight.shape == shared.shape and weight.dtype == shared.dtype and torch.equal(weight, shared):
            module.weight = shared


def _generation_config(max_positions: int) -> GenerationConfig:
    return GenerationConfig(decoder_start_token_id=PAD_ID, eos_token_id=EOS_ID, pad_token_id=PAD_ID,
                            bos_token_id=PAD_ID, max_new_tokens=max_positions, num_beams=1)


def build_transformer(config: MarianConfig) -> MarianMTModel:
    """transformers' MarianMTModel for `config`, randomly initialized, with re-tying on load."""
    model = MarianMTModel(config)
    model.generation_config = _generation_config(config.max_position_embeddings)
    model.register_load_state_dict_post_hook(retie_shared_embeddings)
    return model


def build_mat(config: MarianConfig, *, branches: int, drop_branch: float) -> MarianMTModel:
    """The Transformer of `config` with every attention sublayer multi-branch (fresh random weights)."""
    model = build_transformer(config)
    for layer in model.model.encoder.layers:
        layer.self_attn = _multi_branch_like(layer.self_attn, config, branches, drop_branch)
    for layer in model.model.decoder.layers:
        layer.self_attn = _multi_branch_like(layer.self_attn, config, branches, drop_branch)
        layer.encoder_attn = _multi_branch_like(layer.encoder_attn, config, branches, drop_branch)
    for module in model.modules():
        if isinstance(module, AttentionBranch):
            for linear in module.children():
                model._init_weights(linear)
    return model


def _multi_branch_like(attention: MarianAttention, config: MarianConfig, branches: int,
                       drop_branch: float) -> MultiBranchAttention:
    device = attention.q_proj.weight.device
    with torch.device(device):
        return MultiBranchAttention(
            attention.embed_dim, attention.num_heads, branches=branches, drop_branch=drop_branch,
            dropout=attention.dropout, is_decoder=attention.is_decoder, is_causal=attention.is_causal,
            config=config, layer_idx=attention.layer_idx,
        )


def attention_modules(model: MarianMTModel) -> dict[str, nn.Module]:
    """Every attention sublayer of a Transformer or MAT, by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, (MarianAttention, MultiBranchAttention))}


def proximal_init(transformer: MarianMTModel, *, branches: int, drop_branch: float) -> MarianMTModel:
    """MAT initialized from a trained Transformer: every branch of every attention sublayer a copy of
    that sublayer's weights, everything else copied as is. In eval mode it computes what
    `transformer` computes; training then continues with drop-branch."""
    mat = build_mat(transformer.config, branches=branches, drop_branch=drop_branch)
    source = transformer.state_dict()
    state = {}
    for key in mat.state_dict():
        if ".branches." in key:
            prefix, rest = key.split(".branches.", 1)
            key_in_source = f"{prefix}.{rest.split('.', 1)[1]}"
        else:
            key_in_source = key
        if key_in_source not in source:
            raise InvalidArgumentError(f"proximal init: the Transformer has no {key_in_source!r} for {key!r}")
        state[key] = source[key_in_source].detach().clone()
    mat.load_state_dict(state, strict=True)
    return mat.train(transformer.training)


def mat_from_transformer(entry: ModelEntry, transformer: MarianMTModel) -> MarianMTModel:
    """The MAT entry's architecture proximally initialized from a trained Transformer (the hook a
    zoo-native base that starts from another entry's weights needs: `TrainSpec.init_from`)."""
    if entry.family != "mat":
        raise InvalidArgumentError(f"{entry.name} is not a MAT entry")
    return proximal_init(transformer, branches=entry.model_kwargs["branches"],
                         drop_branch=entry.model_kwargs["drop_branch"])


def build_translation(entry: ModelEntry) -> MarianMTModel:
    """The builder of the `transformer` and `mat` families: the entry's architecture, random init."""
    if not isinstance(entry.input, TranslationInput):
        raise InvalidArgumentError(f"{entry.name}: a translation entry needs a TranslationInput, got {entry.input!r}")
    if entry.input.corpus not in CORPORA:
        raise InvalidArgumentError(f"{entry.name}: unknown corpus {entry.input.corpus!r}; known: {sorted(CORPORA)}")
    config = marian_config(entry.model_kwargs, CORPORA[entry.input.corpus].vocab_size)
    if entry.family == "mat":
        return build_mat(config, branches=entry.model_kwargs["branches"],
                         drop_branch=entry.model_kwargs["drop_branch"])
    if any(k in entry.model_kwargs for k in MAT_KWARGS):
        raise InvalidArgumentError(f"{entry.name}: {MAT_KWARGS} apply to the mat family only")
    return build_transformer(config)


FAMILIES.register("transformer", build_translation)
FAMILIES.register("mat", build_translation)


INITIALIZERS.register("mat", mat_from_transformer)  # MAT's proximal initialization, via TrainSpec.init_from
register_structured(MarianMTModel, STRUCTURED_HOOKS)  # head and FFN pruning of the Transformer (not MAT)
