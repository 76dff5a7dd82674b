"""WaveRNN generation in a fused loop: every per-sample step of `WaveRNN.generate` (subscale 1) as one
numba-compiled function over numpy arrays, so that no framework call is made per sample and a sparse
recurrent matrix saves what its zeros cost.

Per sample the loop makes the gate inputs (the frame's conditioning plus the previous sample's), the
recurrent product R h (dense, or over the non-zero 16x1 blocks of R), the GRU cell for the coarse half,
the coarse logits O_2 relu(O_1 y_c) and their Gumbel-max sample, the fine half of the gates with c_t, the
fine logits and their sample, exactly as `model.generate` orders them. The Gumbel noise is drawn from the
caller's generator in the chunks `model.generate` draws it (`_GumbelNoise.CHUNK` steps), so both sample
from the same noise; the products sum in another order than torch's kernels, so logits agree within
float rounding, and a sample differs only where two candidates' noisy logits are that close (after which
the two waveforms go their own ways, as two samplers do).

Dense or sparse recurrent product is chosen per model and machine by measuring both in the loop itself
(`recurrent_kernel`), the times kept in the sparse-kernel cache file (`compress.sparse_kernels.cache_path`)
under the same machine key, and chosen by `compress.sparse_kernels.choose` (sparse only where it is
`MARGIN` times faster).

`generate(model, mel, generator=...)` is the family's entry for sampling audio: the fused loop for a
subscale-1 WaveRNN whose layers are plain `nn.Linear`s (a recurrent `SparseLinear` too), and
`model.generate` otherwise (the Subscale WaveRNN, and int8 models whose fake-quantized layers only torch
runs), as `fused_unsupported` says.

numba compiles the loop on first use (a few seconds) and caches the machine code beside this file or in
`NUMBA_CACHE_DIR` (`cache=True`). `fastmath` allows only FMA contraction (`contract`): every product
is a sum over columns into independent outputs, which vectorizes without reassociating any sum.
"""
from __future__ import annotations

import weakref

import numba
import numpy as np
import torch
from torch import nn

from zoo.atomic import atomic_write_json
from zoo.compress.selection import machine_key, read_cache
from zoo.compress.sparse_kernels import (
    DENSE,
    MARGIN,
    MIN_SPARSITY,
    SparseLinear,
    _seconds_per_call,
    cache_path,
    choose,
    signature,
)
from zoo.errors import InvalidArgumentError
from zoo.families.wavernn.entries import PRUNE_BLOCK
from zoo.families.wavernn.model import (
    LEVELS,
    SILENCE,
    WaveRNN,
    _GumbelNoise,
    gumbel_noise,
)

BLOCK = PRUNE_BLOCK[0]  # rows of a block of the recurrent matrix (Sparse WaveRNN's 16x1 blocks)
SPARSE = f"blocks{BLOCK}x1"
KERNELS = (DENSE, SPARSE)
TIMING_STEPS = 64  # steps of the loop per timed call when choosing the recurrent kernel


# The compiled loop ----------------------------------------------------------------------------------

_jit = numba.njit(cache=True, nogil=True, fastmath={"contract"})


@_jit
def _affine(out, bias, weight_t, x):
    """out = weight_t.T @ x + bias, skipping zero entries of x (relu outputs), one column at a time."""
    out[:] = bias
    for j in range(x.shape[0]):
        v = x[j]
        if v != 0.0:
            row = weight_t[j]
            for i in range(out.shape[0]):
                out[i] += row[i] * v


@_jit
def _blocks(out, bias, starts, row_blocks, values, x):
    """out = R @ x + bias for R given by its non-zero blocks, column by column: column j holds blocks
    starts[j] .. starts[j + 1] - 1, block k covering rows row_blocks[k] * height ... with values[k].
    Consecutive blocks of a column write different rows, so their updates do not wait on each other."""
    out[:] = bias
    height = values.shape[1]
    rows = out.reshape(-1, height)
    for j in range(starts.shape[0] - 1):
        v = x[j]
        for k in range(starts[j], starts[j + 1]):
            # row views and a run-time trip count: the form LLVM vectorizes here (a constant 16 is unrolled
            # to scalars, and an index computed as row_blocks[k] * height into `out` is not affine)
            target, block = rows[row_blocks[k]], values[k]
            for i in range(height):
                target[i] += block[i] * v


# exp for the cell's sigmoids and tanh, in float32 and vectorizable (libm's exp is a call per element, which
# made the cell cost as much as a dense 384x128 product): exp(v) = 2^n exp(r) with n = round(v / ln 2),
# |r| <= ln(2) / 2 (ln 2 split in two for an exact n ln 2), exp(r) by its Taylor series to r^7 (relative
# error under 1e-8), 2^n written into the float's exponent bits. v is clamped to +-87 (exp stays a normal float).
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI, _LN2_LO = np.float32(0.693359375), np.float32(-2.12194440e-4)
_C2, _C3, _C4, _C5, _C6, _C7 = (np.float32(1.0 / f) for f in (2, 6, 24, 120, 720, 5040))
_EXP_MAX = np.float32(87.0)
_ZERO, _ONE, _TWO, _HALF = np.float32(0.0), np.float32(1.0), np.float32(2.0), np.float32(0.5)


@_jit
def _exp_into(x, scale):
    """x[k] = exp(x[k]) in place; `scale` a float32 scratch array at least as long."""
    bits = scale.view(np.int32)
    for k in range(x.shape[0]):
        v = x[k]
        v = _EXP_MAX if v > _EXP_MAX else (-_EXP_MAX if v < -_EXP_MAX else v)  # noqa: FURB136 (vectorizes)
        n = np.floor(v * _LOG2E + _HALF)
        r = v - n * _LN2_HI - n * _LN2_LO
        x[k] = _ONE + r * (_ONE + r * (_C2 + r * (_C3 + r * (_C4 + r * (_C5 + r * (_C6 + r * _C7))))))
        bits[k] = (np.int32(n) + 127) << 23
    for k in range(x.shape[0]):
        x[k] *= scale[k]


@_jit
def _cell(state, h, rh, gates, lo, fine_w, c, a, b, scale):
    """GRU units lo .. lo + len(a) - 1: state = u h + (1 - u) e with u = sigmoid(R_u h + I_u x),
    r = sigmoid(R_r h + I_r x), e = tanh(r (R_e h) + I_e x), where each gate's input I x is `gates` plus
    fine_w (3 slices, one per gate) times c (c_t for the fine half, 0 for the coarse half). a, b, scale:
    float32 scratch arrays."""
    n, m = h.shape[0], a.shape[0]
    for j in range(m):
        k = lo + j
        a[j] = -(rh[k] + (gates[k] + fine_w[j] * c))
        b[j] = -(rh[n + k] + (gates[n + k] + fine_w[m + j] * c))
    _exp_into(a, scale)
    _exp_into(b, scale)
    for j in range(m):
        k = lo + j
        r = _ONE / (_ONE + b[j])
        a[j] = _ONE / (_ONE + a[j])  # u
        b[j] = -_TWO * (r * rh[2 * n + k] + (gates[2 * n + k] + fine_w[2 * m + j] * c))
    _exp_into(b, scale)
    for j in range(m):
        e = _TWO / (_ONE + b[j]) - _ONE  # tanh(x) = 2 sigmoid(2x) - 1
        state[lo + j] = a[j] * h[lo + j] + (_ONE - a[j]) * e


@_jit
def _sample(logits, temperature, noise):
    """argmax(logits / temperature + noise): a draw from softmax(logits / temperature)."""
    best, best_value = 0, -np.inf
    for k in range(logits.shape[0]):
        value = logits[k] / temperature + noise[k]
        if value > best_value:
            best, best_value = k, value
    return best


@_jit
def _steps(cond, hop, start, noise, h, previous, out, temperature, sample_w, sparse, rec_wt, rec_b, starts,
           row_blocks, values, fine_w, ch_wt, ch_b, co_wt, co_b, fh_wt, fh_b, fo_wt, fo_b, record):
    """Steps start .. start + len(noise) - 1 for every batch row, updating h, previous and out in place.

    cond [batch, frames, 3N]: each frame's gate inputs (sample_input's bias included); noise [steps,
    batch, 2, 256]; h [batch, N]; previous [batch, 2] scaled (c, f); out [batch, L] int64; sample_w
    [2, 3N]; rec_wt [N, 3N] (dense R transposed) or the blocks (starts, row_blocks, values) when `sparse`;
    *_wt the output layers' weights transposed; record [steps, batch, 2, 256] receives the logits unless
    it is empty."""
    n = h.shape[1]
    half = n // 2
    gates = np.empty(3 * n, np.float32)
    rh = np.empty(3 * n, np.float32)
    state = np.empty(n, np.float32)
    hidden = np.empty(half, np.float32)
    logits = np.empty(co_b.shape[0], np.float32)
    a, a2, scale = np.empty(half, np.float32), np.empty(half, np.float32), np.empty(half, np.float32)
    for b in range(h.shape[0]):
        for i in range(noise.shape[0]):
            t = start + i
            frame = cond[b, t // hop]
            pc, pf = previous[b, 0], previous[b, 1]
            for k in range(3 * n):
                gates[k] = frame[k] + (sample_w[0, k] * pc + sample_w[1, k] * pf)
            if sparse:
                _blocks(rh, rec_b, starts, row_blocks, values, h[b])
            else:
                _affine(rh, rec_b, rec_wt, h[b])
            _cell(state, h[b], rh, gates, 0, fine_w, _ZERO, a, a2, scale)  # the coarse half: no c_t
            _affine(hidden, ch_b, ch_wt, state[:half])
            for k in range(half):
                hidden[k] = max(hidden[k], _ZERO)
            _affine(logits, co_b, co_wt, hidden)
            if record.shape[0]:
                record[i, b, 0] = logits
            coarse = _sample(logits, temperature, noise[i, b, 0])
            c = np.float32(coarse) / np.float32(127.5) - _ONE
            _cell(state, h[b], rh, gates, half, fine_w, c, a, a2, scale)  # the fine half sees c_t
            _affine(hidden, fh_b, fh_wt, state[half:])
            for k in range(half):
                hidden[k] = max(hidden[k], _ZERO)
            _affine(logits, fo_b, fo_wt, hidden)
            if record.shape[0]:
                record[i, b, 1] = logits
            fine = _sample(logits, temperature, noise[i, b, 1])
            h[b] = state
            previous[b, 0] = c
            previous[b, 1] = np.float32(fine) / np.float32(127.5) - _ONE
            out[b, t] = coarse * 256 + fine


# The model's weights, packed once -------------------------------------------------------------------

def _array(tensor: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(tensor.detach().to(torch.float32).numpy())


def _dense_recurrent(layer: nn.Module) -> nn.Linear:
    """The recurrent layer as a dense nn.Linear (a SparseLinear's weight unpacked)."""
    if type(layer) is nn.Linear:
        return layer
    if isinstance(layer, SparseLinear) and layer.bias is not None:
        matrix = layer.matrix
        eye = torch.eye(layer.in_features, dtype=layer.bias.dtype)
        with torch.inference_mode():
            weight = matrix.matmul(eye)  # [out, in]: the stored weight, whatever its layout
        dense = nn.Linear(layer.in_features, layer.out_features)
        with torch.no_grad():
            dense.weight.copy_(weight)
            dense.bias.copy_(layer.bias)
        return dense
    raise InvalidArgumentError(f"the fused loop takes a plain Linear or a biased SparseLinear recurrent layer, "
                               f"got {type(layer).__name__}")


def fused_unsupported(model: nn.Module) -> str | None:
    """Why the fused loop cannot run `model` (None when it can): it runs a `WaveRNN` with subscale 1
    whose output and input layers are plain nn.Linear and whose recurrent layer is one too, or a biased
    SparseLinear."""
    if not isinstance(model, WaveRNN):
        return f"not a WaveRNN: {type(model).__name__}"
    if model.subscale != 1:
        return f"subscale {model.subscale} (the fused loop generates one sample per step)"
    for name in ("sample_input", "fine_input", "coarse_hidden", "coarse_out", "fine_hidden", "fine_out"):
        layer = getattr(model, name)
        if type(layer) is not nn.Linear:
            return f"{name} is a {type(layer).__name__}, not a plain Linear"
    recurrent = model.recurrent
    if not (type(recurrent) is nn.Linear or (isinstance(recurrent, SparseLinear) and recurrent.bias is not None)):
        return f"recurrent is a {type(recurrent).__name__}, not a plain Linear or a biased SparseLinear"
    return None


class FusedLoop:
    """A WaveRNN's per-sample weights as numpy arrays for `_steps`, with the recurrent matrix dense
    (`kernel` 'dense') or as its non-zero 16x1 blocks ('blocks16x1'). Built once per model
    (`fused_loop`); `generate` samples like `model.generate`."""

    def __init__(self, model: WaveRNN, kernel: str) -> None:
        reason = fused_unsupported(model)
        if reason is not None:
            raise InvalidArgumentError(f"the fused loop cannot run this model: {reason}")
        if kernel not in KERNELS:
            raise InvalidArgumentError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        recurrent = _dense_recurrent(model.recurrent)
        if kernel == SPARSE and recurrent.out_features % BLOCK:
            raise InvalidArgumentError(f"{BLOCK}x1 blocks do not tile a recurrent matrix of "
                                       f"{recurrent.out_features} rows")
        self.model, self.kernel = model, kernel
        weight = recurrent.weight.detach().float()
        self.sample_w = _array(model.sample_input.weight.T)  # [2, 3N]
        self.rec_b = _array(recurrent.bias)
        index = np.zeros(0, np.int64)
        if kernel == SPARSE:
            grid = weight.reshape(weight.shape[0] // BLOCK, BLOCK, weight.shape[1]).permute(2, 0, 1)  # [N, R, 16]
            present = (grid != 0).any(-1)  # [N, R]
            column, row_block = present.nonzero(as_tuple=True)  # blocks grouped by column
            self.starts = np.concatenate([[0], np.cumsum(present.sum(1).numpy())]).astype(np.int64)
            self.row_blocks = row_block.numpy().astype(np.int64)
            self.values = _array(grid[column, row_block])  # [blocks, 16]
            self.rec_wt = np.zeros((0, 0), np.float32)
        else:
            self.starts, self.row_blocks, self.values = index, index, np.zeros((0, BLOCK), np.float32)
            self.rec_wt = _array(weight.T)  # [N, 3N]
        self.fine_w = _array(model.fine_input.weight[:, 0])  # [3 * N/2]
        self.outputs = tuple(_array(t) for layer in (model.coarse_hidden, model.coarse_out, model.fine_hidden,
                                                     model.fine_out) for t in (layer.weight.T, layer.bias))

    def run(self, cond: np.ndarray, start: int, noise: np.ndarray, h: np.ndarray, previous: np.ndarray,
            out: np.ndarray, temperature: float, record: np.ndarray | None = None) -> None:
        """`_steps` with this model's weights (see there for the arrays)."""
        record = np.zeros((0, 1, 2, LEVELS), np.float32) if record is None else record
        _steps(cond, self.model.hop, start, noise, h, previous, out, np.float32(temperature), self.sample_w,
               self.kernel == SPARSE, self.rec_wt, self.rec_b, self.starts, self.row_blocks, self.values,
               self.fine_w, *self.outputs, record)

    @torch.inference_mode()
    def generate(self, mel: torch.Tensor, *, generator: torch.Generator | None = None, temperature: float = 1.0,
                 logits: torch.Tensor | None = None) -> torch.Tensor:
        """Samples [batch, frames * hop] like `model.generate(mel, generator=..., temperature=...)`, from
        the same Gumbel noise. `logits`, if given, a float32 tensor [batch, L, 2, 256], receives the
        coarse and fine logits of every step."""
        if not temperature > 0:
            raise InvalidArgumentError(f"temperature must be > 0, got {temperature}")
        model = self.model
        cond = _array(model.frame_conditioning(mel) + model.sample_input.bias)  # [batch, frames, 3N]
        batch, length = mel.shape[0], cond.shape[1] * model.hop
        if logits is not None and (logits.shape != (batch, length, 2, LEVELS) or logits.dtype != torch.float32):
            raise InvalidArgumentError(f"logits must be float32 [{batch}, {length}, 2, {LEVELS}], "
                                       f"got {logits.dtype} {tuple(logits.shape)}")
        h = np.zeros((batch, model.hidden), np.float32)
        silence = np.float32([SILENCE // LEVELS, SILENCE % LEVELS]) / np.float32(127.5) - np.float32(1.0)
        previous = np.repeat(silence[None], batch, 0)
        out = np.empty((batch, length), np.int64)
        for start in range(0, length, _GumbelNoise.CHUNK):  # model.generate's noise chunks, drawn alike
            steps = min(_GumbelNoise.CHUNK, length - start)
            noise = gumbel_noise(generator, (steps, batch, 1, 2, LEVELS), mel.device).reshape(steps, batch, 2, LEVELS)
            record = None if logits is None else np.empty((steps, batch, 2, LEVELS), np.float32)
            self.run(cond, start, noise.numpy(), h, previous, out, temperature, record)
            if record is not None:
                logits[:, start: start + steps] = torch.from_numpy(record).transpose(0, 1)
        return torch.from_numpy(out)


# Dense or sparse: measured -------------------------------------------------------------------------

def _timed_call(loop: FusedLoop):
    """A function running TIMING_STEPS steps of `loop` at batch 1 on fixed inputs."""
    rng = np.random.default_rng(0)
    cond = rng.standard_normal((1, TIMING_STEPS, 3 * loop.model.hidden)).astype(np.float32)
    noise = rng.gumbel(size=(TIMING_STEPS, 1, 2, LEVELS)).astype(np.float32)
    out = np.empty((1, TIMING_STEPS * loop.model.hop), np.int64)

    def call() -> None:
        loop.run(cond, 0, noise, np.zeros((1, loop.model.hidden), np.float32), np.zeros((1, 2), np.float32),
                 out, 1.0)
    return call


def kernel_signature(recurrent: nn.Linear) -> str:
    """The cache key of the fused loop's times for a recurrent matrix: its shape and pattern of zeros
    (`compress.sparse_kernels.signature`) and numba's version."""
    return f"wavernn fused step, numba {numba.__version__}: {signature(recurrent, 1)}"


def recurrent_kernel(model: WaveRNN, margin: float = MARGIN) -> tuple[str, dict[str, float] | None]:
    """The recurrent kernel for `model`'s fused loop on this machine and the seconds per TIMING_STEPS
    steps it was chosen by: 'blocks16x1' where it is `margin` times faster than dense in the loop
    (`compress.sparse_kernels.choose`), else 'dense'. A matrix with under `MIN_SPARSITY` zeros, or whose
    rows 16x1 blocks do not tile, stays dense unmeasured (None). The times come from the kernel cache file
    when it has them for this machine and matrix, else are measured and added to it."""
    recurrent = _dense_recurrent(model.recurrent)
    weight = recurrent.weight.detach()
    if weight.shape[0] % BLOCK or float((weight == 0).float().mean()) < MIN_SPARSITY:
        return DENSE, None
    path, key, sig = cache_path(), machine_key(), kernel_signature(recurrent)
    stored = (read_cache(path, "kernel") if path is not None else {}).get(key, {}).get(sig)
    if isinstance(stored, dict) and all(isinstance(stored.get(k), float) and stored[k] > 0 for k in KERNELS):
        return choose(stored, (SPARSE,), margin), stored
    seconds = {kernel: _seconds_per_call(_timed_call(FusedLoop(model, kernel))) for kernel in KERNELS}
    if path is not None:
        content = read_cache(path, "kernel")  # again: another process may have added to it meanwhile
        content.setdefault(key, {})[sig] = seconds
        atomic_write_json(path, content, indent=1, sort_keys=True)
    return choose(seconds, (SPARSE,), margin), seconds


def _fingerprint(model: nn.Module) -> tuple:
    return tuple((t.data_ptr(), t._version, tuple(t.shape)) for t in (*model.parameters(), *model.buffers()))


_LOOPS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def fused_loop(model: WaveRNN) -> FusedLoop:
    """`model`'s FusedLoop with the measured recurrent kernel (`recurrent_kernel`), built on first use and
    reused while the model's tensors stay the same ones, unchanged."""
    fingerprint = _fingerprint(model)
    cached = _LOOPS.get(model)
    if cached is not None and cached[0] == fingerprint:
        return cached[1]
    loop = FusedLoop(model, recurrent_kernel(model)[0])
    _LOOPS[model] = (fingerprint, loop)
    return loop


def generate(model: nn.Module, mel: torch.Tensor, *, generator: torch.Generator | None = None,
             temperature: float = 1.0) -> torch.Tensor:
    """Samples audio [batch, frames * hop] from mel frames: in the fused loop where it runs the model
    (`fused_unsupported`), else in `model.generate`; both draw the same Gumbel noise from `generator`."""
    if fused_unsupported(model) is None:
        return fused_loop(model).generate(mel, generator=generator, temperature=temperature)
    return model.generate(mel, generator=generator, temperature=temperature)

