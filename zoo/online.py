"""Online training of a (sparse) GRU by real-time recurrent learning: exact RTRL and SnAp-n, the sparse
n-step approximation of Menick et al. (ICLR 2021). Family-free: it sees a GRU cell's tensors, nothing else.

The cell is the WaveRNN's (`zoo.families.wavernn.model`): one recurrent product for the three gates, the
reset gate applied to the recurrent part of the candidate only,

    [g_u, g_r, g_e] = W h + b,   [i_u, i_r, i_e] = V x + c + a   (a: an untracked input pre-activation)
    u = sigmoid(g_u + i_u),  r = sigmoid(g_r + i_r),  e = tanh(r * g_e + i_e),  h' = u * h + (1 - u) * e

with W [3k, k] (its zeros a fixed sparsity mask), V [3k, m] and the biases b, c [3k] the tracked parameters
(V, b, c optional). The influence matrix J_t = dh_t / dtheta (k x p over the p unmasked parameters)
follows J_t = I_t + D_t J_{t-1}, with the immediate Jacobian I_t and D_t = dh_t / dh_{t-1} computed in
closed form (no autograd per step):

    du = (h - e) u (1 - u),  de = (1 - u)(1 - e^2),  dr = de * g_e * r (1 - r)
    I_t[j, theta] = coef * source  for theta in gate row (gate, j): coef du_j, dr_j, de_j r_j (W_e, b_e: the
                    reset gate scales them) or de_j (V_e, c_e); source h_c, x_c or 1
    D_t = diag(u) + diag(du) W_u + diag(dr) W_r + diag(de * r) W_e

Each parameter moves its own unit first, so I_t has one non-zero per parameter. SnAp-n keeps J only on
the units reachable from that unit within n - 1 steps through D's structure (the structural non-zeros
of sum_{i<n} D^i I_t) and drops the rest every step:

- SnAp-1 (`n=1`): one entry per parameter, J stored as a [batch, p] vector, updated through the unit's
  self-recurrence D_jj only: O(p) memory and time per step, about a BPTT step's cost.
- SnAp-n (`n>=2`) and exact RTRL (`n=None`: every unit for every parameter): the parameters are grouped
  by unit j and each group's J block [units reachable from j, parameters of j] is updated by one batched
  matrix product with D restricted to those units. With weight density d, SnAp-2 keeps about 3dk units per
  parameter; RTRL keeps k (O(kp) memory, O(k^2 p) time).

SnAp-n with n at least the sequence length equals RTRL, which equals BPTT's gradient of the summed loss.

This is a training algorithm, so it lives beside `zoo.training` (the zoo's training loop), not in
`zoo.compress`: the recipe step `zoo.compress.snap.SnApTrainingConfig` uses it the way the gradual
pruning steps use `zoo.training.train`, and benchmarks use it on their own cells.

    tracker = SnApTracker(cell.recurrent.weight, cell.recurrent.bias, input_weight=cell.input.weight,
                          input_bias=cell.input.bias, n=2, batch=8)
    for x_t, y_t in stream:
        h = tracker.step(x=x_t).requires_grad_()
        loss = loss_fn(readout(h), y_t)
        tracker.accumulate(torch.autograd.grad(loss, h)[0])   # adds dL_t/dh_t J_t to the gradients
        tracker.write_grads(); optimizer.step(); tracker.zero_grad()  # every step, or every T steps
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from zoo.errors import InvalidArgumentError

GATES = 3  # u, r, e: rows [0, k), [k, 2k), [2k, 3k) of the recurrent and input matrices
# coefficient kinds of the immediate Jacobian, indexing a [4, k] table per step
_COEF_U, _COEF_R, _COEF_E_RECURRENT, _COEF_E_INPUT = 0, 1, 2, 3


class GRUCell(nn.Module):
    """The WaveRNN's GRU cell with its own input product: `forward(x, h) -> h'` (autograd: BPTT).
    `recurrent` is W h + b for the three gates (pruned in place: its zeros are the mask)."""

    def __init__(self, input_size: int, hidden: int) -> None:
        super().__init__()
        for name, value in (("input_size", input_size), ("hidden", hidden)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"{name} must be a positive integer, got {value!r}")
        self.hidden = hidden
        self.recurrent = nn.Linear(hidden, GATES * hidden)
        self.input = nn.Linear(input_size, GATES * hidden)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return gru_step(h, self.recurrent(h), self.input(x))


def gru_step(h: torch.Tensor, recurrent_product: torch.Tensor, input_product: torch.Tensor) -> torch.Tensor:
    """h' from h, W h + b and the input pre-activation (the WaveRNN cell's equations)."""
    g_u, g_r, g_e = recurrent_product.chunk(GATES, -1)
    i_u, i_r, i_e = input_product.chunk(GATES, -1)
    u, r = torch.sigmoid(g_u + i_u), torch.sigmoid(g_r + i_r)
    return u * h + (1 - u) * torch.tanh(r * g_e + i_e)


def reachable_units(mask: torch.Tensor, n: int) -> torch.Tensor:
    """[k, k] bool, [l, j]: unit l is reachable from unit j within n - 1 steps of the recurrence whose
    structure is `mask` ([3k, k], any gate: D[l, j] != 0 can only be when l == j or mask[g*k + l, j])."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise InvalidArgumentError(f"n must be a positive integer, got {n!r}")
    k = mask.shape[1]
    edges = (mask.reshape(GATES, k, k).any(0) | torch.eye(k, dtype=torch.bool, device=mask.device)).float()
    reach = torch.eye(k, device=mask.device)
    for _ in range(n - 1):
        grown = (edges @ reach) > 0
        if torch.equal(grown, reach > 0):
            break
        reach = grown.float()
    return reach > 0


@dataclass(frozen=True)
class _Tracked:
    name: str
    tensor: torch.Tensor
    positions: torch.Tensor  # flat indices of the tracked (unmasked) entries in `tensor`


class SnApTracker:
    """RTRL (`n=None`) or SnAp-n (`n >= 1`) for one GRU cell over a batch of `batch` independent streams.

    `recurrent_weight` [3k, k] is read live each step (the optimizer may change it between steps); its
    entries that are zero when the tracker is made (or `mask` == False) are pruned: they get no gradient
    and must stay zero. `input_weight` [3k, m], `recurrent_bias` and `input_bias` [3k] are optional
    tracked parameters (`input_mask` as `mask`). `step` advances the state and J; `accumulate(dL_dh)` adds
    dL_t/dh_t J_t to the gradients, which `grads()` returns per tensor and `write_grads()` puts in `.grad`.
    """

    def __init__(self, recurrent_weight: torch.Tensor, recurrent_bias: torch.Tensor | None = None, *,
                 input_weight: torch.Tensor | None = None, input_bias: torch.Tensor | None = None,
                 mask: torch.Tensor | None = None, input_mask: torch.Tensor | None = None,
                 n: int | None = 1, batch: int = 1) -> None:
        if recurrent_weight.ndim != 2 or recurrent_weight.shape[0] != GATES * recurrent_weight.shape[1]:
            raise InvalidArgumentError(f"the recurrent weight must be [3k, k], got {list(recurrent_weight.shape)}")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise InvalidArgumentError(f"batch must be a positive integer, got {batch!r}")
        if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
            raise InvalidArgumentError(f"n must be a positive integer or None (exact RTRL), got {n!r}")
        k = recurrent_weight.shape[1]
        self.k, self.n, self.batch = k, n, batch
        self.input_size = 0 if input_weight is None else input_weight.shape[1]
        for name, t, shape in (("recurrent_bias", recurrent_bias, (GATES * k,)),
                               ("input_bias", input_bias, (GATES * k,)),
                               ("input_weight", input_weight, (GATES * k, self.input_size))):
            if t is not None and tuple(t.shape) != shape:
                raise InvalidArgumentError(f"{name} must be {list(shape)}, got {list(t.shape)}")
        self.weight, self.bias, self.input_weight, self.input_bias = (
            recurrent_weight, recurrent_bias, input_weight, input_bias)
        self.mask = self._mask("mask", recurrent_weight, mask)
        device, dtype = recurrent_weight.device, recurrent_weight.dtype
        one = k + self.input_size  # index of the constant 1 in the source vector [h, x, 1]
        rows = torch.arange(GATES * k, device=device)
        gate_of_row = rows // k
        tracked, coef, source = [], [], []

        def track(name: str, tensor: torch.Tensor, keep: torch.Tensor | None, row: torch.Tensor,
                  src: torch.Tensor, e_kind: int) -> None:
            positions = torch.arange(tensor.numel(), device=device)
            if keep is not None:
                positions = positions[keep.reshape(-1)]
            r = row[positions]
            kind = torch.where(gate_of_row[r] == 2, e_kind, gate_of_row[r])
            tracked.append(_Tracked(name, tensor, positions))
            coef.append(kind * k + r % k)
            source.append(src[positions])

        cols = torch.arange(k, device=device)
        track("recurrent_weight", recurrent_weight, self.mask, rows.repeat_interleave(k), cols.repeat(GATES * k),
              _COEF_E_RECURRENT)
        if recurrent_bias is not None:
            track("recurrent_bias", recurrent_bias, None, rows, torch.full_like(rows, one), _COEF_E_RECURRENT)
        if input_weight is not None:
            self.input_mask = self._mask("input_mask", input_weight, input_mask)
            m = self.input_size
            track("input_weight", input_weight, self.input_mask, rows.repeat_interleave(m),
                  k + torch.arange(m, device=device).repeat(GATES * k), _COEF_E_INPUT)
        elif input_mask is not None:
            raise InvalidArgumentError("input_mask given without an input_weight")
        if input_bias is not None:
            track("input_bias", input_bias, None, rows, torch.full_like(rows, one), _COEF_E_INPUT)
        self._tracked = tracked
        self._coef = torch.cat(coef)
        self._source = torch.cat(source)
        self._unit = self._coef % k
        self.p = int(self._coef.numel())
        self._grad = torch.zeros(self.p + 1, device=device, dtype=dtype)  # + a dummy slot for padding
        if n == 1:
            self._diag_rows = (torch.arange(GATES, device=device)[:, None] * k + cols).reshape(-1)
        else:
            self._group(reachable_units(self.mask, n) if n is not None
                        else torch.ones(k, k, dtype=torch.bool, device=device))
        self.reset()

    @staticmethod
    def _mask(name: str, weight: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if mask is None:
            return weight.detach() != 0
        if mask.shape != weight.shape or mask.dtype != torch.bool:
            raise InvalidArgumentError(f"{name} must be a bool tensor of shape {list(weight.shape)}")
        if bool((weight.detach()[~mask] != 0).any()):
            raise InvalidArgumentError(f"{name}: the weight is non-zero where the mask prunes it")
        return mask.clone()

    def _group(self, reach: torch.Tensor) -> None:
        """Per unit j: the units its parameters may influence (padded with the dummy unit k) and its
        parameters (padded with the dummy slot p)."""
        k, device = self.k, self._coef.device
        units = [reach[:, j].nonzero().flatten() for j in range(k)]
        params = [(self._unit == j).nonzero().flatten() for j in range(k)]
        r_max, q_max = max(len(u) for u in units), max(len(q) for q in params)
        self._units = torch.full((k, r_max), k, dtype=torch.long, device=device)
        self._slots = torch.full((k, q_max), self.p, dtype=torch.long, device=device)
        for j in range(k):
            self._units[j, : len(units[j])] = units[j]
            self._slots[j, : len(params[j])] = params[j]
        self_position = (self._units == torch.arange(k, device=device)[:, None]).float().argmax(1)
        self._own_rows = torch.arange(k, device=device) * r_max + self_position  # rows of J viewed [k * r, q]
        self._block_index = (self._units[:, :, None] * (k + 1) + self._units[:, None, :]).reshape(-1)
        self.pattern_entries = int(sum(len(u) * len(q) for u, q in zip(units, params)))

    # state

    def reset(self, h: torch.Tensor | None = None) -> None:
        """Starts new streams: h = `h` (or zeros) [batch, k], J = 0."""
        device, dtype = self._coef.device, self._grad.dtype
        if h is not None and tuple(h.shape) != (self.batch, self.k):
            raise InvalidArgumentError(f"h must be [{self.batch}, {self.k}], got {list(h.shape)}")
        self.h = torch.zeros(self.batch, self.k, device=device, dtype=dtype) if h is None else h.detach().clone()
        if self.n == 1:
            self.influence = torch.zeros(self.p, self.batch, device=device, dtype=dtype)  # parameter-major
        else:
            self.influence = torch.zeros(self.batch, *self._units.shape, self._slots.shape[1], device=device,
                                         dtype=dtype)

    @property
    def influence_entries(self) -> int:
        """Numbers held per stream for J: p for SnAp-1."""
        return int(self.influence.numel()) // self.batch

    def dense_influence(self) -> torch.Tensor:
        """J as a dense [batch, k, p] tensor (columns in the tracked order: recurrent weight, recurrent
        bias, input weight, input bias; unmasked entries only). For checks on small cells."""
        batch, k, p = self.batch, self.k, self.p
        dense = torch.zeros(batch, k + 1, p + 1, device=self.h.device, dtype=self.influence.dtype)
        params = torch.arange(p, device=self.h.device)
        if self.n == 1:
            dense[:, self._unit, params] = self.influence.T
        else:
            rows = self._units[:, :, None].expand(-1, -1, self._slots.shape[1])
            cols = self._slots[:, None, :].expand(-1, self._units.shape[1], -1)
            dense[:, rows, cols] = self.influence
        return dense[:, :k, :p]

    # one step

    @torch.no_grad()
    def step(self, input_preactivation: torch.Tensor | None = None, x: torch.Tensor | None = None
             ) -> torch.Tensor:
        """Advances one step: `x` [batch, m] goes through the tracked input weight, `input_preactivation`
        [batch, 3k] (untracked: e.g. conditioning) is added to the gates. Returns h_t [batch, k] (a new
        tensor, detached)."""
        k, batch = self.k, self.batch
        if (x is None) != (self.input_weight is None):
            raise InvalidArgumentError("x is needed exactly when the tracker has an input_weight")
        w = self.weight.detach()
        h = self.h
        g = h @ w.T
        if self.bias is not None:
            g = g + self.bias.detach()
        i = torch.zeros_like(g)
        if input_preactivation is not None:
            if tuple(input_preactivation.shape) != (batch, GATES * k):
                raise InvalidArgumentError(f"input_preactivation must be [{batch}, {GATES * k}], "
                                           f"got {list(input_preactivation.shape)}")
            i = i + input_preactivation.detach()
        if x is not None:
            if tuple(x.shape) != (batch, self.input_size):
                raise InvalidArgumentError(f"x must be [{batch}, {self.input_size}], got {list(x.shape)}")
            i = i + x @ self.input_weight.detach().T
        if self.input_bias is not None:
            i = i + self.input_bias.detach()
        g_u, g_r, g_e = g.chunk(GATES, -1)
        i_u, i_r, i_e = i.chunk(GATES, -1)
        u, r = torch.sigmoid(g_u + i_u), torch.sigmoid(g_r + i_r)
        e = torch.tanh(r * g_e + i_e)
        h_new = u * h + (1 - u) * e
        d_u = (h - e) * u * (1 - u)
        d_e = (1 - u) * (1 - e * e)
        d_r = d_e * g_e * r * (1 - r)
        d_er = d_e * r
        # parameter-major tables ([rows, batch]): index_select along dim 0 copies whole rows, fast on CPU
        coef = torch.cat([d_u, d_r, d_er, d_e], 1).T.contiguous()  # [4k, batch]
        parts = [h, x, torch.ones(batch, 1, device=h.device, dtype=h.dtype)]
        source = torch.cat([t for t in parts if t is not None], 1).T.contiguous()  # [k + m + 1, batch]
        immediate = coef.index_select(0, self._coef) * source.index_select(0, self._source)  # [p, batch]
        if self.n == 1:
            diagonal = w.reshape(-1)[self._diag_rows * k + self._diag_rows % k].reshape(GATES, k)
            d_jj = (u + d_u * diagonal[0] + d_r * diagonal[1] + d_er * diagonal[2]).T.contiguous()  # [k, batch]
            self.influence = torch.addcmul(immediate, d_jj.index_select(0, self._unit), self.influence)
        else:
            w_u, w_r, w_e = w.reshape(GATES, k, k)
            d = (torch.diag_embed(u) + d_u[:, :, None] * w_u + d_r[:, :, None] * w_r
                 + d_er[:, :, None] * w_e)  # [batch, k, k]
            d = torch.nn.functional.pad(d, (0, 1, 0, 1)).flatten(1)  # the dummy unit k: zero row and column
            r_max = self._units.shape[1]
            block = d.index_select(1, self._block_index).reshape(batch, k, r_max, r_max)
            self.influence = block @ self.influence  # [batch, k, r, q]
            immediate = torch.nn.functional.pad(immediate, (0, 0, 0, 1)).index_select(0, self._slots.reshape(-1))
            self.influence.view(batch, k * r_max, -1).index_add_(
                1, self._own_rows, immediate.T.reshape(batch, k, -1))
        self.h = h_new
        return h_new.clone()

    @torch.no_grad()
    def accumulate(self, loss_grad_h: torch.Tensor) -> None:
        """Adds dL_t/dh_t J_t (summed over the batch) to the gradients; `loss_grad_h` is [batch, k]."""
        if tuple(loss_grad_h.shape) != (self.batch, self.k):
            raise InvalidArgumentError(f"dL/dh must be [{self.batch}, {self.k}], got {list(loss_grad_h.shape)}")
        if self.n == 1:
            self._grad[: self.p] += (loss_grad_h.T.contiguous().index_select(0, self._unit) * self.influence).sum(1)
        else:
            padded = torch.nn.functional.pad(loss_grad_h, (0, 1))[:, self._units]  # [batch, k, r]
            per_slot = torch.einsum("bjr,bjrq->jq", padded, self.influence)
            self._grad.index_add_(0, self._slots.reshape(-1), per_slot.reshape(-1))

    # gradients

    def grads(self) -> dict[str, torch.Tensor]:
        """The accumulated gradient of each tracked tensor, in its shape (zero where pruned)."""
        out, offset = {}, 0
        for t in self._tracked:
            g = torch.zeros(t.tensor.numel(), device=t.tensor.device, dtype=self._grad.dtype)
            g[t.positions] = self._grad[offset: offset + t.positions.numel()]
            offset += t.positions.numel()
            out[t.name] = g.reshape(t.tensor.shape)
        return out

    def write_grads(self) -> None:
        """Adds the accumulated gradients to the tracked tensors' `.grad`."""
        for t, g in zip(self._tracked, self.grads().values()):
            g = g.to(t.tensor.dtype)
            t.tensor.grad = g if t.tensor.grad is None else t.tensor.grad + g

    def zero_grad(self) -> None:
        self._grad.zero_()
