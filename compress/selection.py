"""Exact selection of the k-th smallest magnitude, by whichever method is fastest on this machine.

Global magnitude pruning needs one exact threshold over all weights: the k-th smallest of the flat |w|.
Several exact methods (`METHODS`) find it, and which is fastest depends on the CPU (numpy's partition is
vectorized with AVX-512 but not everywhere), on torch's thread count and on whether another process
shares the cores (two torch threads are many times slower when one core is busy). So `select_kth` times
the candidates on the first input of each size class, on slices of that real input, and keeps the
fastest for the rest of the process. The measurements are also kept in a JSON file (see `cache_path`),
keyed by the CPU model, the torch and numpy versions and torch's thread count, so that later processes
on the same machine skip them. The method never changes the result, only the time: every candidate returns
the same exact (k-th value, number of values strictly below it).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from zoo.atomic import atomic_write_json

from zoo.errors import InvalidArgumentError

Selection = tuple[float, int]  # the k-th smallest value and how many values lie strictly below it
Method = Callable[[torch.Tensor, int], Selection]

# Bracketing: the quantile of an evenly strided sample bounds the answer, a counting pass checks that it
# does, and only the values inside the bracket are selected exactly.
_TORCH_SAMPLE = 1 << 18
_NUMPY_SAMPLE = 1 << 16
_MIN_SAMPLE = 1 << 12  # smaller inputs (under 32K values) are selected directly
_CHUNK = 1 << 18  # the numpy scan works chunk by chunk so that its several passes stay in cache


def _bracket(n: int, k: int, sample_size: int) -> tuple[int, int]:
    """Indices in a sorted sample of `sample_size` whose values hold the k-th smallest of n with
    overwhelming probability (6 binomial standard deviations on each side, plus 2 ranks)."""
    q = k / n
    margin = 6.0 * math.sqrt(q * (1 - q) / sample_size) + 2.0 / sample_size
    return math.floor((q - margin) * sample_size), math.ceil((q + margin) * sample_size)


def partition_float(values: torch.Tensor, k: int) -> Selection:
    """`np.partition` of all the values (vectorized with x86-simd-sort where numpy's build and the CPU
    allow it, introselect elsewhere)."""
    a = values.numpy()
    kth = np.partition(a, k - 1)[k - 1]
    return float(kth), int(np.count_nonzero(a < kth))


_BITS = {2: np.int16, 4: np.int32, 8: np.int64}


def partition_bits(values: torch.Tensor, k: int) -> Selection:
    """`np.partition` of the values' bit patterns as signed integers: for non-negative floats (and NaN,
    whose bits come after +inf's) the integer order is the float order, and integers may compare faster."""
    a = values.numpy()
    bits = a.view(_BITS[a.itemsize])
    kth = np.partition(bits, k - 1)[k - 1 : k].view(a.dtype)[0]
    return float(kth), int(np.count_nonzero(a < kth))


def kthvalue(values: torch.Tensor, k: int) -> Selection:
    """`torch.kthvalue` of all the values."""
    kth = values.kthvalue(k).values
    return float(kth), int(torch.count_nonzero(values < kth))


def bracket_torch(values: torch.Tensor, k: int) -> Selection:
    """Bracketing with torch operations (multi-threaded): a sorted strided sample (2^18 values, or an
    eighth of a smaller input) gives [lo, hi], two counting passes check that it holds the k-th value,
    `kthvalue` selects inside. Inputs too small to sample, and brackets that miss (an adversarial
    layout), take `partition_float`."""
    n = values.numel()
    size = min(_TORCH_SAMPLE, n // 8)
    if size >= _MIN_SAMPLE:
        sample, _ = values[:: n // size][:size].sort()
        lo_index, hi_index = _bracket(n, k, size)
        # past the sample's ends the bracket is open: the sample's extremes are rarely the tensor's
        lo = float(sample[lo_index]) if lo_index > 0 else -math.inf
        hi = float(sample[hi_index]) if hi_index < size - 1 else math.inf
        n_below_lo = int(torch.count_nonzero(values < lo))
        n_upto_hi = int(torch.count_nonzero(values <= hi))
        if n_below_lo < k <= n_upto_hi:
            if lo == hi:
                return lo, n_below_lo
            inside = values[(values >= lo) & (values <= hi)]
            kth = inside.kthvalue(k - n_below_lo).values
            return float(kth), n_below_lo + int(torch.count_nonzero(inside < kth))
    return partition_float(values, k)


def bracket_numpy(values: torch.Tensor, k: int) -> Selection:
    """Bracketing with numpy (one thread, so unaffected by a busy second core): a strided sample (2^16
    values, or an eighth of a smaller input) gives [lo, hi], one chunked pass counts the values below lo
    and gathers those inside, and `np.partition` selects among the few inside. Inputs too small to
    sample, and brackets that miss (an adversarial layout), take `partition_float`."""
    a = values.numpy()
    n = a.size
    size = min(_NUMPY_SAMPLE, n // 8)
    if size >= _MIN_SAMPLE:
        sample = a[:: n // size][:size].copy()
        lo_index, hi_index = _bracket(n, k, size)
        lo_index, hi_index = max(lo_index, 0), min(hi_index, size - 1)
        sample.partition([lo_index, hi_index])
        # past the sample's ends the bracket is open: the sample's extremes are rarely the array's
        lo = sample[lo_index] if lo_index > 0 else a.dtype.type(-np.inf)
        hi = sample[hi_index] if hi_index < size - 1 else a.dtype.type(np.inf)
        n_below_lo, parts = 0, []
        below, upto = np.empty(min(_CHUNK, n), bool), np.empty(min(_CHUNK, n), bool)
        for start in range(0, n, _CHUNK):
            chunk = a[start : start + _CHUNK]
            is_below, is_upto = below[: chunk.size], upto[: chunk.size]
            np.less(chunk, lo, out=is_below)
            n_below_lo += int(np.count_nonzero(is_below))
            np.less_equal(chunk, hi, out=is_upto)
            np.logical_not(is_below, out=is_below)
            is_upto &= is_below
            parts.append(np.compress(is_upto, chunk))
        inside = np.concatenate(parts)
        if n_below_lo < k <= n_below_lo + inside.size:
            j = k - n_below_lo - 1
            kth = np.partition(inside, j)[j]
            return float(kth), n_below_lo + int(np.count_nonzero(inside < kth))
    return partition_float(values, k)


# The candidates, in the order that breaks ties between equal measurements.
METHODS: dict[str, Method] = {
    "bracket-numpy": bracket_numpy,
    "bracket-torch": bracket_torch,
    "partition-bits": partition_bits,
    "partition-float": partition_float,
    "kthvalue": kthvalue,
}

# Inputs of up to SMALL values take SMALL_METHOD unmeasured: any method selects among them in about a
# millisecond, less than measuring would cost. Larger inputs fall in size classes, one per power of two
# up to 2^(LARGE_CLASS - 1) values and one for all larger inputs. An input is measured on its leading
# MEASURE_SIZE values, after a screening on its leading SCREEN_SIZE values that drops the methods more
# than SCREEN_RATIO times slower than the fastest there (timing a method 10x slower on the larger slice
# would cost more than the choice can save). Times are per value: a selection is linear in the number
# of values.
SMALL = 1 << 17
SMALL_METHOD = "partition-float"
LARGE_CLASS = 21
MEASURE_SIZE = 3 << 19
SCREEN_SIZE = 1 << 17
SCREEN_RATIO = 4.0
CONTENDER_RATIO = 2.0  # methods within this factor of the fastest first time are timed once more


@dataclasses.dataclass(frozen=True)
class Measurement:
    """Seconds per value of each method: `finalists` timed on `measured_on` values, `screened_out` only
    on the `screened_on` values of the screening."""

    finalists: dict[str, float]
    screened_out: dict[str, float]
    measured_on: int
    screened_on: int

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, entry: dict) -> Measurement:
        """Raises KeyError, TypeError, ValueError or AttributeError on a malformed entry."""
        finalists = {str(name): float(s) for name, s in entry["finalists"].items()}
        screened_out = {str(name): float(s) for name, s in entry["screened_out"].items()}
        return cls(finalists, screened_out, int(entry["measured_on"]), int(entry["screened_on"]))

    def complete(self) -> bool:
        """Whether it covers exactly the current candidates, each once, with sensible times."""
        names = [*self.finalists, *self.screened_out]
        times = [*self.finalists.values(), *self.screened_out.values()]
        return (sorted(names) == sorted(METHODS) and bool(self.finalists)
                and all(math.isfinite(s) and s >= 0 for s in times))


@dataclasses.dataclass(frozen=True)
class Choice:
    """The method chosen for one size class, the measurement it was chosen from, and whether that was
    made in this process (`source` "measured") or read from the cache file ("cache file")."""

    size_class: int
    method: str
    measurement: Measurement
    source: str

    def seconds(self, n: int) -> dict[str, float]:
        """Every method's measured time extrapolated to n values, screened-out ones included."""
        per_value = {**self.measurement.screened_out, **self.measurement.finalists}
        return {name: per_value[name] * n for name in METHODS if name in per_value}


_CHOICES: dict[int, Choice] = {}


def size_class(n: int) -> int:
    """The size class of an input of n values: ceil(log2 n), capped at LARGE_CLASS."""
    return min(max(n - 1, 0).bit_length(), LARGE_CLASS)


def choose(measurement: Measurement) -> str:
    """The fastest finalist; ties go to the earlier one in METHODS. Deterministic given the measurement."""
    known = [name for name in METHODS if name in measurement.finalists]
    if not known:
        raise InvalidArgumentError(f"no known selection method among {sorted(measurement.finalists)}")
    return min(known, key=lambda name: (measurement.finalists[name], list(METHODS).index(name)))


def cpu_model() -> str:
    """The CPU's model name with its family, model and stepping (a bare "AMD EPYC" names several
    generations), from /proc/cpuinfo where there is one."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        return platform.processor() or platform.machine()
    details = ", ".join(f"{key} {fields[key]}" for key in ("cpu family", "model", "stepping") if key in fields)
    name = fields.get("model name") or platform.processor() or platform.machine()
    return f"{name} ({details})" if details else name


def machine_key() -> str:
    """What a cached measurement is valid for: CPU model, torch and numpy versions, torch threads."""
    return f"{cpu_model()} | torch {torch.__version__} | numpy {np.__version__} | {torch.get_num_threads()} threads"


def cache_path() -> Path | None:
    """The JSON file of measurements: `$ZOO_SELECTION_CACHE`, or `~/.cache/zoo/selection.json` when it is
    unset; None (no file) when it is set to an empty string."""
    setting = os.environ.get("ZOO_SELECTION_CACHE")
    if setting == "":
        return None
    return Path(setting or "~/.cache/zoo/selection.json").expanduser()


def read_cache(path: Path, what: str = "selection") -> dict:
    """A JSON file of measurements keyed by `machine_key` (this module's, or another's such as
    `compress.sparse_kernels`, named `what` in warnings); {} when there is none, and {} with a warning
    when it is unreadable or malformed (it is then measured again and rewritten)."""
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        warnings.warn(f"ignoring the {what} cache {path}: {err}", stacklevel=4)
        return {}
    if not isinstance(content, dict) or not all(isinstance(v, dict) for v in content.values()):
        warnings.warn(f"ignoring the {what} cache {path}: not a mapping of machines", stacklevel=4)
        return {}
    return content


def _cached_choice(content: dict, key: str, cls: int) -> Choice | None:
    """The choice stored for this machine and size class; None when there is none or it does not cover
    exactly the current candidates (then it is measured again)."""
    entry = content.get(key, {}).get(str(cls))
    if entry is None:
        return None
    try:
        measurement = Measurement.from_json(entry)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        warnings.warn(f"ignoring a malformed entry of the selection cache: {err!r}", stacklevel=4)
        return None
    if not measurement.complete():
        return None
    return Choice(cls, choose(measurement), measurement, "cache file")


def _write_cache(path: Path, key: str, choice: Choice) -> None:
    """Adds `choice`'s measurement to the file, atomically (a temporary file renamed over it)."""
    content = read_cache(path)
    content.setdefault(key, {})[str(choice.size_class)] = choice.measurement.to_json()
    atomic_write_json(path, content, indent=1, sort_keys=True)


def _per_value(names: list[str], values: torch.Tensor, q: float) -> dict[str, float]:
    """Seconds per value of the named methods selecting quantile q of `values`: each timed once, those
    within CONTENDER_RATIO of the fastest once more (a passing load, or a first call's warm-up, must not
    decide between close methods); the fastest time of each counts."""
    n = values.numel()
    k = min(max(1, round(q * n)), n)

    def timed(name: str) -> float:
        start = time.perf_counter()
        METHODS[name](values, k)
        return time.perf_counter() - start

    seconds = {name: timed(name) for name in names}
    fastest = min(seconds.values())
    for name in names:
        if seconds[name] <= CONTENDER_RATIO * fastest:
            seconds[name] = min(seconds[name], timed(name))
    return {name: s / n for name, s in seconds.items()}


def measure(values: torch.Tensor, k: int) -> Measurement:
    """Times every method at the quantile k / n of `values`: screening on the leading SCREEN_SIZE
    values, then the methods that pass it on the leading MEASURE_SIZE values."""
    n = values.numel()
    q = k / n
    screen = values[:SCREEN_SIZE]
    if screen.numel() == values[:MEASURE_SIZE].numel():
        return Measurement(_per_value(list(METHODS), screen, q), {}, screen.numel(), screen.numel())
    screened = _per_value(list(METHODS), screen, q)
    fastest = min(screened.values())
    passed = [name for name in METHODS if screened[name] <= SCREEN_RATIO * fastest]
    probe = values[:MEASURE_SIZE]
    return Measurement(_per_value(passed, probe, q), {name: s for name, s in screened.items() if name not in passed},
                       probe.numel(), screen.numel())


def choice_for(values: torch.Tensor, k: int) -> Choice:
    """The method for inputs of this size: this process's earlier choice, else the cache file's, else
    measured now on `values` at the same quantile (`measure`) and stored in both."""
    cls = size_class(values.numel())
    if cls in _CHOICES:
        return _CHOICES[cls]
    path = cache_path()
    key = machine_key()
    choice = _cached_choice(read_cache(path), key, cls) if path is not None else None
    if choice is None:
        measurement = measure(values, k)
        choice = Choice(cls, choose(measurement), measurement, "measured")
        if path is not None:
            _write_cache(path, key, choice)
    _CHOICES[cls] = choice
    return choice


def chosen() -> dict[int, Choice]:
    """The choices made so far in this process, by size class."""
    return dict(_CHOICES)


def forget_choices() -> None:
    """Drops this process's choices (the file is left alone): the next selection chooses again."""
    _CHOICES.clear()


def select_kth(magnitudes: torch.Tensor, k: int, method: str | None = None) -> Selection:
    """The k-th smallest (1-based) of a flat tensor of non-negative values, exactly, and how many values
    lie strictly below it, by `method` (one of METHODS) or else by the one chosen for this machine and
    size (`choice_for`; SMALL_METHOD for inputs of up to SMALL values)."""
    if magnitudes.dim() != 1:
        raise InvalidArgumentError(f"select_kth takes a flat tensor, got shape {tuple(magnitudes.shape)}")
    n = magnitudes.numel()
    if not 1 <= k <= n:
        raise InvalidArgumentError(f"k must be in [1, {n}], got {k}")
    if method is not None and method not in METHODS:
        raise InvalidArgumentError(f"unknown selection method {method!r} (known: {', '.join(METHODS)})")
    if magnitudes.dtype not in (torch.float32, torch.float64):
        magnitudes = magnitudes.float()  # exact for half and bfloat16; numpy has no bfloat16
    magnitudes = magnitudes.contiguous()
    name = method or (SMALL_METHOD if n <= SMALL else choice_for(magnitudes, k).method)
    return METHODS[name](magnitudes, k)
