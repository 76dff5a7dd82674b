"""The WaveRNN's GRU for online training (`zoo.compress.snap`, SnAp-1/2): the recurrent matrix is
`recurrent` (Sparse WaveRNN prunes it in 16x1 blocks), the step inputs are the teacher-forced gate
inputs of `WaveRNN.forward` (conditioning, the previous sample, c_t into the fine half), and a step's loss
is the dual-softmax NLL of sample t from h_t, so the mean of the step losses is `task.nll_nats`.
Plain WaveRNN only: Subscale WaveRNN's rows are not one stream per sequence."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from zoo.compress.snap import OnlineGRUHooks, OnlineSequence, register_online_gru
from zoo.errors import InvalidArgumentError
from zoo.families.wavernn.model import SILENCE, WaveRNN, scale_8bit, split_16bit


def _recurrent(model: nn.Module) -> nn.Linear:
    return model.recurrent


def _sequence(model: nn.Module, batch: Any) -> OnlineSequence:
    """(mel, samples) -> the gate inputs of every sample [batch, L, 3N] and the NLL of step t."""
    if model.subscale != 1:
        raise InvalidArgumentError(f"online GRU training takes a plain WaveRNN, not subscale {model.subscale}")
    mel, samples = batch
    with torch.no_grad():
        previous = F.pad(samples[:, :-1], (1, 0), value=SILENCE)
        pc, pf = split_16bit(previous)
        coarse, fine = split_16bit(samples)
        gates_in = model.conditioning(mel, samples.shape[1])
        gates_in = gates_in + model.sample_input(torch.stack([scale_8bit(pc), scale_8bit(pf)], -1))
        gates_in = model._fine_slots(gates_in, coarse)

    def step_loss(h: torch.Tensor, t: int) -> torch.Tensor:
        logits_c, logits_f = model._logits(h)
        return F.cross_entropy(logits_c, coarse[:, t]) + F.cross_entropy(logits_f, fine[:, t])

    return OnlineSequence(gates_in, step_loss)


HOOKS = register_online_gru(WaveRNN, OnlineGRUHooks(recurrent=_recurrent, sequence=_sequence))
