"""WaveRNN (Kalchbrenner et al. 2018): a GRU vocoder with a dual softmax over 16-bit samples,
conditioned on mel frames; Sparse WaveRNN is this model block-pruned (`zoo.compress.block`); Subscale
WaveRNN generates a batch of `subscale` samples per step. Entries: `entries.py`; the vocoding task:
`task.py`; the espeak-ng speech data: `data.py`.

One step of the cell (the paper's equations; every matrix is an nn.Linear, so pruning, int8 PTQ and
FLOP counting apply unchanged):

    x_t = [c_{t-1}, f_{t-1}, c_t] (8-bit values scaled to [-1, 1]) plus the conditioning
    u = sigmoid(R_u h + I_u x_t),  r = sigmoid(R_r h + I_r x_t),  e = tanh(r * (R_e h) + I_e x_t)
    h_t = u * h + (1 - u) * e;     y_c, y_f = split(h_t)
    P(c_t) = softmax(O_2 relu(O_1 y_c)),  P(f_t) = softmax(O_4 relu(O_3 y_f))

`recurrent` is R (all three gates, one matmul per step); c_t enters only the fine half of the gates
(`fine_input`), which is the paper's masked I*. A 16-bit sample x in offset binary splits into
c = x // 256 and f = x % 256. Mel frames go through a small conv (`cond`) and a projection to the gates
(`cond_input`), once per frame, repeated over the frame's `hop` samples.

Subscale (B = `subscale`): the sequence is folded into B interleaved sub-sequences (row j holds samples
j, j + B, j + 2B, ...). Rows are batched through the same cell, each with its own state; row j at
position k also sees a context of rows i < j at positions k - W ... k + F (`context` past, `horizon`
future), masked so no row sees itself or later rows, through a small context net. Generation starts
row j at step j * (F + 1), so everything it sees is already generated: after a warm-up of
(B - 1)(F + 1) steps each step emits B samples.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from zoo.entry import ModelEntry
from zoo.errors import InvalidArgumentError
from zoo.families.wavernn.entries import AudioSpec
from zoo.models import FAMILIES

LEVELS = 256  # values of an 8-bit half
SILENCE = 32768  # offset-binary zero: the "previous sample" before the first one


# 16-bit samples <-> (coarse, fine) and the subscale fold --------------------------------------------

def split_16bit(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Offset-binary 16-bit samples in [0, 65535] -> (coarse, fine) 8-bit halves."""
    if samples.dtype.is_floating_point or samples.dtype == torch.bool:
        raise InvalidArgumentError(f"samples must be integers, got {samples.dtype}")
    if samples.numel() and (int(samples.min()) < 0 or int(samples.max()) > 65535):
        raise InvalidArgumentError("16-bit offset-binary samples must lie in [0, 65535]")
    return _halves(samples)


def _halves(samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    samples = samples.long()
    return samples // LEVELS, samples % LEVELS


def merge_16bit(coarse: torch.Tensor, fine: torch.Tensor) -> torch.Tensor:
    return coarse.long() * LEVELS + fine.long()


def scale_8bit(values: torch.Tensor) -> torch.Tensor:
    """8-bit values in [0, 255] -> floats in [-1, 1]."""
    return values.float() / 127.5 - 1.0


def fold(x: torch.Tensor, b: int) -> torch.Tensor:
    """[..., L] -> [..., b, L // b]: row j holds x[..., j::b]."""
    if x.shape[-1] % b:
        raise InvalidArgumentError(f"length {x.shape[-1]} is not a multiple of the subscale factor {b}")
    return x.reshape(*x.shape[:-1], x.shape[-1] // b, b).transpose(-1, -2)


def unfold(x: torch.Tensor) -> torch.Tensor:
    """Inverse of `fold`: [..., b, K] -> [..., b * K]."""
    return x.transpose(-1, -2).reshape(*x.shape[:-2], x.shape[-1] * x.shape[-2])


# The model -----------------------------------------------------------------------------------------

class WaveRNN(nn.Module):
    """Dual-softmax GRU vocoder; `forward(mel, samples)` is teacher-forced and returns (coarse, fine)
    logits [batch, L, 256]; `generate(mel)` samples a waveform autoregressively."""

    def __init__(self, *, n_mels: int, hop: int, mel_pad: int, hidden: int = 128, cond_channels: int = 32,
                 subscale: int = 1, horizon: int = 4, context: int = 4, context_channels: int = 64) -> None:
        super().__init__()
        for name, value in (("hidden", hidden), ("cond_channels", cond_channels), ("subscale", subscale),
                            ("context_channels", context_channels), ("hop", hop), ("n_mels", n_mels)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
        if hidden % 2:
            raise InvalidArgumentError(f"hidden must be even (coarse and fine halves), got {hidden}")
        if hop % subscale:
            raise InvalidArgumentError(f"hop ({hop}) must be a multiple of subscale ({subscale})")
        if min(horizon, context, mel_pad) < 0:
            raise InvalidArgumentError("horizon, context and mel_pad must be >= 0")
        self.hidden, self.hop, self.mel_pad, self.subscale = hidden, hop, mel_pad, subscale
        self.horizon, self.context_width = horizon, context
        half = hidden // 2
        self.cond = nn.Conv1d(n_mels, cond_channels, kernel_size=2 * mel_pad + 1)
        self.cond_input = nn.Linear(cond_channels, 3 * hidden)
        self.sample_input = nn.Linear(2, 3 * hidden)
        self.fine_input = nn.Linear(1, 3 * half, bias=False)
        if subscale > 1:
            self.context = nn.Linear(subscale * (context + horizon + 1) + subscale, context_channels)
            self.context_input = nn.Linear(context_channels, 3 * hidden, bias=False)
        self.recurrent = nn.Linear(hidden, 3 * hidden)
        self.coarse_hidden = nn.Linear(half, half)
        self.coarse_out = nn.Linear(half, LEVELS)
        self.fine_hidden = nn.Linear(half, half)
        self.fine_out = nn.Linear(half, LEVELS)

    # pieces shared by training and generation

    def conditioning(self, mel: torch.Tensor, length: int) -> torch.Tensor:
        """Gate inputs from the mel frames, per sample: [batch, n_mels, frames + 2 * mel_pad] -> [batch, L, 3N]."""
        frames = mel.shape[-1] - 2 * self.mel_pad
        if frames < 1 or frames * self.hop != length:
            raise InvalidArgumentError(
                f"{length} samples need {length / self.hop:g} mel frames plus {self.mel_pad} on each side; "
                f"got {mel.shape[-1]}")
        return self.frame_conditioning(mel).repeat_interleave(self.hop, dim=1)

    def frame_conditioning(self, mel: torch.Tensor) -> torch.Tensor:
        """Gate inputs from the mel frames, per frame: [batch, n_mels, frames + 2 * mel_pad] -> [batch, frames, 3N]."""
        if mel.shape[-1] - 2 * self.mel_pad < 1:
            raise InvalidArgumentError(f"mel needs at least one frame plus {self.mel_pad} on each side, "
                                       f"got {mel.shape[-1]}")
        return self.cond_input(F.relu(self.cond(mel)).transpose(1, 2))

    def _context_features(self, window: torch.Tensor, rows: slice = slice(None)) -> torch.Tensor:
        """[batch, rows i, rows j, W + F + 1] sample values -> gate inputs [batch, rows j, 3N], rows
        i >= j masked out, row j's one-hot appended (rows j: the `rows` slice of all rows)."""
        batch, b = window.shape[0], self.subscale
        order = torch.arange(b, device=window.device)
        visible = (order[None, :] < order[:, None]).to(window.dtype)[rows]  # [j, i]: i < j
        seen = (window.transpose(1, 2) * visible[None, :, :, None]).reshape(batch, visible.shape[0], -1)
        one_hot = torch.eye(b, device=window.device)[rows].expand(batch, -1, -1)
        return self.context_input(F.relu(self.context(torch.cat([seen, one_hot], -1))))

    def _fine_slots(self, gates_in: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        """Adds c_t's contribution to the fine half of each gate (the masked part of I*)."""
        half = self.hidden // 2
        extra = self.fine_input(scale_8bit(coarse).unsqueeze(-1)).unflatten(-1, (3, 1, half))
        parts = gates_in.unflatten(-1, (3, 2, half))
        return torch.cat([parts[..., :1, :], parts[..., 1:, :] + extra], -2).flatten(-3)

    def _cell(self, h: torch.Tensor, rh: torch.Tensor, gates_in: torch.Tensor) -> torch.Tensor:
        ru, rr, re = rh.chunk(3, -1)
        iu, ir, ie = gates_in.chunk(3, -1)
        u, r = torch.sigmoid(ru + iu), torch.sigmoid(rr + ir)
        e = torch.tanh(r * re + ie)
        return u * h + (1 - u) * e

    def _logits(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y_c, y_f = h.chunk(2, -1)
        return (self.coarse_out(F.relu(self.coarse_hidden(y_c))),
                self.fine_out(F.relu(self.fine_hidden(y_f))))

    # teacher forcing

    def forward(self, mel: torch.Tensor, samples: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(coarse, fine) logits [batch, L, 256] of every sample given the true previous ones."""
        batch, length = samples.shape
        cond = self.conditioning(mel, length)
        b = self.subscale
        rows = fold(samples, b)  # [batch, b, K]
        previous = F.pad(rows[..., :-1], (1, 0), value=SILENCE)
        pc, pf = split_16bit(previous)
        coarse, _ = split_16bit(rows)
        gates_in = fold(cond.transpose(1, 2), b).permute(0, 2, 3, 1)  # [batch, b, K, 3N]
        gates_in = gates_in + self.sample_input(torch.stack([scale_8bit(pc), scale_8bit(pf)], -1))
        if b > 1:
            values = F.pad(rows.float() / 32767.5 - 1.0, (self.context_width, self.horizon))
            windows = values.unfold(-1, self.context_width + self.horizon + 1, 1)  # [batch, b_i, K, W+F+1]
            per_position = windows.permute(0, 2, 1, 3)  # [batch, K, b_i, W+F+1]
            window = per_position.unsqueeze(2).expand(-1, -1, b, -1, -1)  # [batch, K, b_j, b_i, W+F+1]
            window = window.reshape(-1, b, b, window.shape[-1]).transpose(1, 2)  # [batch*K, b_i, b_j, .]
            ctx = self._context_features(window).reshape(batch, -1, b, 3 * self.hidden).transpose(1, 2)
            gates_in = gates_in + ctx
        gates_in = self._fine_slots(gates_in, coarse).flatten(0, 1)  # [batch*b, K, 3N]
        h = gates_in.new_zeros(gates_in.shape[0], self.hidden)
        states = []
        for step_in in gates_in.unbind(1):  # unbind: one gradient stack in backward, not one per step
            h = self._cell(h, self.recurrent(h), step_in)
            states.append(h)
        logits_c, logits_f = self._logits(torch.stack(states, 1))  # [batch*b, K, 256]

        def back(logits: torch.Tensor) -> torch.Tensor:
            return logits.unflatten(0, (batch, b)).transpose(1, 2).flatten(1, 2)  # position k * b + j

        return back(logits_c), back(logits_f)

    # generation

    @torch.inference_mode()
    def generate(self, mel: torch.Tensor, *, generator: torch.Generator | None = None,
                 temperature: float = 1.0) -> torch.Tensor:
        """Samples [batch, frames * hop] 16-bit offset-binary values from mel [batch, n_mels, frames +
        2 * mel_pad]; `subscale` > 1 generates `subscale` samples per step after the warm-up.

        Row j runs `lag` = horizon + 1 steps behind row j - 1, so the tensors are kept "skewed": row j's
        position k lives at step k + j * lag, and each step is one slice over the rows running then."""
        if not temperature > 0:
            raise InvalidArgumentError(f"temperature must be > 0, got {temperature}")
        batch, b, half = mel.shape[0], self.subscale, self.hidden // 2
        length = (mel.shape[-1] - 2 * self.mel_pad) * self.hop
        cond = fold(self.conditioning(mel, length).transpose(1, 2), b).permute(0, 2, 3, 1)  # [batch, b, K, 3N]
        steps, lag = length // b, self.horizon + 1
        total = steps + (b - 1) * lag
        skewed = cond.new_zeros(batch, b, total, cond.shape[-1])
        for j in range(b):
            skewed[:, j, j * lag: j * lag + steps] = cond[:, j]
        out = torch.full((batch, b, total), SILENCE, dtype=torch.long, device=mel.device)
        values = mel.new_zeros(batch, b, self.context_width + steps + self.horizon)  # scaled, padded samples
        span = self.context_width + self.horizon + 1
        h = mel.new_zeros(batch, b, self.hidden)
        silence = [float(scale_8bit(torch.tensor(v))) for v in (SILENCE // LEVELS, SILENCE % LEVELS)]
        previous = mel.new_tensor(silence).expand(batch, b, 2).clone()  # scaled (c, f) of the last sample
        noise = _GumbelNoise(generator, (batch, b, 2, LEVELS), mel.device, total)
        for t in range(total):
            lo, hi = max(0, -(-(t - steps + 1) // lag)), min(b, t // lag + 1)  # rows running at step t
            rows = slice(lo, hi)
            gates_in = skewed[:, rows, t] + self.sample_input(previous[:, rows])
            if b > 1:
                positions = t - torch.arange(lo, hi, device=mel.device) * lag
                window = values[:, :, positions[:, None] + torch.arange(span, device=mel.device)]
                gates_in = gates_in + self._context_features(window, rows)
            h_rows = h[:, rows]
            rh = self.recurrent(h_rows)
            h_coarse = self._cell(h_rows, rh, gates_in)
            gumbel = noise.next()[:, rows]
            coarse = (self.coarse_out(F.relu(self.coarse_hidden(h_coarse[..., :half]))) / temperature
                      + gumbel[..., 0, :]).argmax(-1)
            h_fine = self._cell(h_rows, rh, self._fine_slots(gates_in, coarse))[..., half:]
            fine = (self.fine_out(F.relu(self.fine_hidden(h_fine))) / temperature + gumbel[..., 1, :]).argmax(-1)
            h[:, rows] = torch.cat([h_coarse[..., :half], h_fine], -1)
            previous[:, rows] = torch.stack([scale_8bit(coarse), scale_8bit(fine)], -1)
            sample = merge_16bit(coarse, fine)
            out[:, rows, t] = sample
            if b > 1:
                values[:, torch.arange(lo, hi, device=mel.device), self.context_width + positions] = (
                    sample.float() / 32767.5 - 1.0)
        return unfold(torch.stack([out[:, j, j * lag: j * lag + steps] for j in range(b)], 1))


def gumbel_noise(generator: torch.Generator | None, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Gumbel(0, 1) noise of `shape` from `generator`'s uniform stream."""
    uniform = torch.rand(shape, generator=generator, device=device)
    return -torch.log(-torch.log(uniform.clamp_(1e-10, 1.0 - 1e-7)))


class _GumbelNoise:
    """Gumbel(0, 1) noise drawn in chunks of steps: argmax(logits / T + noise) samples softmax(logits / T)
    with one random draw per chunk instead of one multinomial call per sample."""

    CHUNK = 1024

    def __init__(self, generator: torch.Generator | None, shape: tuple[int, ...], device: torch.device,
                 steps: int) -> None:
        self.generator, self.shape, self.device, self.left = generator, shape, device, steps
        self.chunk = torch.empty(0)
        self.index = 0

    def next(self) -> torch.Tensor:
        if self.index == len(self.chunk):
            size, self.left = min(self.CHUNK, self.left), self.left - min(self.CHUNK, self.left)
            self.chunk = gumbel_noise(self.generator, (size, *self.shape), self.device)
            self.index = 0
        self.index += 1
        return self.chunk[self.index - 1]


def build_wavernn(entry: ModelEntry) -> nn.Module:
    """A WaveRNN for the entry's audio (mel bands, hop, mel context) with its `model_kwargs`."""
    spec = entry.input
    if not isinstance(spec, AudioSpec):
        raise InvalidArgumentError(f"{entry.name}: a WaveRNN needs an AudioSpec input, got {type(spec).__name__}")
    return WaveRNN(n_mels=spec.n_mels, hop=spec.hop, mel_pad=spec.mel_pad, **entry.model_kwargs)


FAMILIES.register("wavernn", build_wavernn)
