"""WaveRNN generation in a compiled loop: the per-sample steps of `WaveRNN.generate` as one TorchScript
function, so that Python's per-sample overhead (a dozen module calls, slicing, argument parsing) does not
hide what a sparse recurrent matrix saves.

`generate_compiled(model, mel, generator=...)` returns exactly what `model.generate(mel, generator=...)`
returns, sample for sample: it runs the same torch operations on tensors of the same shapes in the same
order, and draws the same Gumbel noise from the generator in the same chunks. That holds for a dense
recurrent layer and for a `SparseLinear` one (`compress.sparse_kernels`), whose products the loop makes
with the same calls as the layer's eager forward. It covers WaveRNN with `subscale` 1 (WaveRNN and Sparse
WaveRNN); the Subscale WaveRNN's skewed rows and context windows stay in `model.generate`.

TorchScript is deprecated in favour of torch.compile / torch.export (torch 2.14 warns on `torch.jit.script`);
it is used here because it compiles in well under a second with no C++ compiler, while torch.compile's
first call takes tens of seconds, and neither export path handles a data-dependent sampling loop.
"""
from __future__ import annotations

import functools
import warnings

import torch
from torch import nn
from torch.nn import functional as F

from zoo.compress.sparse_kernels import SparseLinear
from zoo.errors import InvalidArgumentError
from zoo.families.wavernn.model import (
    LEVELS,
    SILENCE,
    WaveRNN,
    _GumbelNoise,
    fold,
    gumbel_noise,
    scale_8bit,
    unfold,
)

# Kinds of recurrent product: F.linear on a dense weight; torch.mv / torch.sparse.mm on a torch sparse
# (CSR or BSR) weight; gathered blocks (SparseLinear's 'blocks<h>x1' layout).
DENSE, TORCH_SPARSE, BLOCKS = 0, 1, 2


def _scale(values: torch.Tensor) -> torch.Tensor:
    return values.float() / 127.5 - 1.0


def _cell(h: torch.Tensor, rh: torch.Tensor, gates_in: torch.Tensor) -> torch.Tensor:
    ru, rr, re = rh.chunk(3, -1)
    iu, ir, ie = gates_in.chunk(3, -1)
    u, r = torch.sigmoid(ru + iu), torch.sigmoid(rr + ir)
    e = torch.tanh(r * re + ie)
    return u * h + (1 - u) * e


def _recurrent(h_rows: torch.Tensor, kind: int, weight: torch.Tensor, bias: torch.Tensor, values: torch.Tensor,
               columns: torch.Tensor, row_blocks: torch.Tensor, block: int) -> torch.Tensor:
    """The recurrent layer's output for h_rows [batch, 1, N], as the layer's own forward computes it."""
    if kind == 0:
        return F.linear(h_rows, weight, bias)
    rows = h_rows.reshape(-1, h_rows.shape[-1])
    out_features = bias.shape[0]
    if kind == 1:
        if rows.shape[0] == 1:
            out = torch.mv(weight, rows[0])[None]
        else:
            out = torch.sparse.mm(weight, rows.T).T
    else:
        if rows.shape[0] == 1:
            contributions = values * rows[0].index_select(0, columns)[:, None]
            out = rows.new_zeros(out_features // block, block)
            out = out.index_add_(0, row_blocks, contributions).reshape(1, out_features)
        else:
            x = rows.T
            contributions = values[:, :, None] * x.index_select(0, columns)[:, None, :]
            out = x.new_zeros(out_features // block, block, x.shape[1])
            out = out.index_add_(0, row_blocks, contributions).reshape(out_features, x.shape[1]).T
    out = out + bias
    return out.reshape(h_rows.shape[0], h_rows.shape[1], out_features)


def _steps(cond: torch.Tensor, noise: torch.Tensor, start: int, h: torch.Tensor, previous: torch.Tensor,
           out: torch.Tensor, temperature: float, half: int,
           sample_w: torch.Tensor, sample_b: torch.Tensor, kind: int, rec_w: torch.Tensor, rec_b: torch.Tensor,
           values: torch.Tensor, columns: torch.Tensor, row_blocks: torch.Tensor, block: int,
           fine_in_w: torch.Tensor, coarse_hidden_w: torch.Tensor, coarse_hidden_b: torch.Tensor,
           coarse_out_w: torch.Tensor, coarse_out_b: torch.Tensor, fine_hidden_w: torch.Tensor,
           fine_hidden_b: torch.Tensor, fine_out_w: torch.Tensor, fine_out_b: torch.Tensor) -> None:
    """Steps start .. start + len(noise) of `WaveRNN.generate` with subscale 1, updating h, previous and out."""
    for i in range(noise.shape[0]):
        t = start + i
        gates_in = cond[:, 0:1, t] + F.linear(previous[:, 0:1], sample_w, sample_b)
        h_rows = h[:, 0:1]
        rh = _recurrent(h_rows, kind, rec_w, rec_b, values, columns, row_blocks, block)
        h_coarse = _cell(h_rows, rh, gates_in)
        gumbel = noise[i][:, 0:1]
        coarse_logits = F.linear(F.relu(F.linear(h_coarse[..., :half], coarse_hidden_w, coarse_hidden_b)),
                                 coarse_out_w, coarse_out_b)
        coarse = (coarse_logits / temperature + gumbel[..., 0, :]).argmax(-1)
        extra = F.linear(_scale(coarse).unsqueeze(-1), fine_in_w).unflatten(-1, (3, 1, half))
        parts = gates_in.unflatten(-1, (3, 2, half))
        fine_gates = torch.cat([parts[..., :1, :], parts[..., 1:, :] + extra], -2).flatten(-3)
        h_fine = _cell(h_rows, rh, fine_gates)[..., half:]
        fine_logits = F.linear(F.relu(F.linear(h_fine, fine_hidden_w, fine_hidden_b)), fine_out_w, fine_out_b)
        fine = (fine_logits / temperature + gumbel[..., 1, :]).argmax(-1)
        h[:, 0:1] = torch.cat([h_coarse[..., :half], h_fine], -1)
        previous[:, 0:1] = torch.stack([_scale(coarse), _scale(fine)], -1)
        out[:, 0:1, t] = coarse.long() * 256 + fine.long()


@functools.cache
def _scripted():
    with warnings.catch_warnings():  # torch 2.14: "`torch.jit.script` is deprecated" (see the module's docstring)
        warnings.filterwarnings("ignore", message=".*torch.jit.script.* is deprecated", category=FutureWarning)
        return torch.jit.script(_steps)


def _recurrent_arguments(layer: nn.Module) -> tuple:
    """(kind, weight, bias, values, columns, row_blocks, block) of the recurrent layer for `_steps`."""
    empty, no_index = torch.empty(0), torch.empty(0, dtype=torch.long)
    if isinstance(layer, nn.Linear):
        return DENSE, layer.weight, layer.bias, empty, no_index, no_index, 1
    if isinstance(layer, SparseLinear) and layer.bias is not None:
        matrix = layer.matrix
        if matrix.kind == "blocks":
            return BLOCKS, empty, layer.bias, matrix.values, matrix.columns, matrix.row_blocks, matrix.block[0]
        return TORCH_SPARSE, matrix.weight, layer.bias, empty, no_index, no_index, 1
    raise InvalidArgumentError(f"the compiled loop takes a Linear or a biased SparseLinear recurrent layer, "
                               f"got {type(layer).__name__}")


@torch.inference_mode()
def generate_compiled(model: WaveRNN, mel: torch.Tensor, *, generator: torch.Generator | None = None,
                      temperature: float = 1.0) -> torch.Tensor:
    """`model.generate(mel, generator=generator, temperature=temperature)`, the same samples, with the
    per-sample loop in TorchScript. Only for `subscale` 1."""
    if model.subscale != 1:
        raise InvalidArgumentError(f"the compiled loop generates with subscale 1, this model has {model.subscale}: "
                                   "use model.generate")
    if not temperature > 0:
        raise InvalidArgumentError(f"temperature must be > 0, got {temperature}")
    batch, half = mel.shape[0], model.hidden // 2
    length = (mel.shape[-1] - 2 * model.mel_pad) * model.hop
    cond = fold(model.conditioning(mel, length).transpose(1, 2), 1).permute(0, 2, 3, 1)  # [batch, 1, L, 3N]
    out = torch.full((batch, 1, length), SILENCE, dtype=torch.long, device=mel.device)
    h = mel.new_zeros(batch, 1, model.hidden)
    silence = [float(scale_8bit(torch.tensor(v))) for v in (SILENCE // LEVELS, SILENCE % LEVELS)]
    previous = mel.new_tensor(silence).expand(batch, 1, 2).clone()
    recurrent = _recurrent_arguments(model.recurrent)
    weights = (model.fine_input.weight, model.coarse_hidden.weight, model.coarse_hidden.bias,
               model.coarse_out.weight, model.coarse_out.bias, model.fine_hidden.weight, model.fine_hidden.bias,
               model.fine_out.weight, model.fine_out.bias)
    steps = _scripted()
    for start in range(0, length, _GumbelNoise.CHUNK):  # the eager loop's noise chunks, drawn alike
        noise = gumbel_noise(generator, (min(_GumbelNoise.CHUNK, length - start), batch, 1, 2, LEVELS), mel.device)
        steps(cond, noise, start, h, previous, out, float(temperature), half,
              model.sample_input.weight, model.sample_input.bias, *recurrent, *weights)
    return unfold(out)
