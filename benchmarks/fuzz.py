"""Fuzzes the zoo's readers of untrusted files: every input must end in the model or a typed ZooError.

    OMP_NUM_THREADS=1 python benchmarks/fuzz.py [--inputs 100000] [--seconds 600] [--targets decoder,model,...]

Targets (each starts from valid files the zoo wrote, mutated by `random.Random(seed)`):

- ``decoder``: a checkpoint's `model.safetensors` (every plain, zstd, N:M and packed low-bit encoding),
  mutated in its bytes, its safetensors header, its tensor metas or its tensors' data, with config.json's
  SHA-256 updated to match (a tamperer's file: the hash passes), read by `load_checkpoint`.
- ``model``: a tiny entry's checkpoint (test_resnet, 10 classes) mutated in its tensors (dtype, shape,
  names) and its config (arch, model_kwargs, architecture), built by `zoo.api._from_checkpoint` and run
  on the entry's example input.
- ``config``: a pushed repo's `config.json`, mutated as JSON and as bytes, read by `check_config` and the
  Hub-id reader (`zoo.hub_ids.read_zoo_repo`), as `zoo pull` / `zoo.load("org/name")` do.
- ``report``: a `report.json`, mutated, read by `VariantReport.from_json`.
- ``recipe``: a recipe in JSON and YAML (with anchors, aliases, tags, deep nesting, invalid UTF-8
  spliced in), read by `Recipe.from_json` / `Recipe.from_yaml`.

Per target it prints (and writes as JSON with --out) the inputs run, how many ended typed (ZooError) or
accepted, the untyped errors by type with an example, hangs (an input over --hang-seconds, stopped by
SIGALRM), the slowest input's time, and the process's peak RSS. tests/test_fuzz.py runs the same
mutators under hypothesis at a CI budget.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import os
import random
import resource
import shutil
import signal
import struct
import sys
import tempfile
import time
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zoo.compress.checkpoint import CONFIG_FILE, METAS_KEY, WEIGHTS_FILE, check_config, load_checkpoint, save_checkpoint
from zoo.compress.formats import DTYPES, ENCODINGS
from zoo.compress.recipe import Recipe
from zoo.errors import ZooError
from zoo.evaluate.report import VariantReport

ENTRY = "test_resnet.zoo_digits"
SAFETENSORS_DTYPES = ("BOOL", "U8", "I8", "I16", "U16", "I32", "U32", "I64", "U64", "F16", "BF16", "F32", "F64",
                      "F8_E4M3", "F8_E5M2", "C64", "X9")
_HUGE = (0, 1, 2, 3, 7, 255, 256, 2**31, 2**32 + 1, 2**63 - 1, 2**64, 2**70, -1)


# Mutations of JSON values ------------------------------------------------------------------------------

def random_json(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value: scalars of every kind (huge and negative numbers, odd strings), lists, objects,
    and now and then a deeply nested list."""
    roll = rng.random()
    if roll < 0.03:
        return json.loads("[" * 200 + "]" * 200)  # deeper than any bound
    if depth > 3 or roll < 0.6:
        return rng.choice([None, True, False, 0, -1, 1, 0.5, 1.5, -0.0, 1e308, rng.choice(_HUGE), "", "x", "lots",
                           "\u202e", "int8", "bitmask", "nm-int4", "float8_e4m3fn", "float64", "../../x",
                           "a" * rng.randint(0, 300)])
    if roll < 0.8:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {rng.choice(["a", "type", "shape", "dtype", "encoding", "nm", "config"]): random_json(rng, depth + 1)
            for _ in range(rng.randint(0, 3))}


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(value, dict):
        for key, child in value.items():
            out += _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            out += _paths(child, (*prefix, i))
    return out


def mutate_json(rng: random.Random, value: Any, special: Callable[[random.Random], Any] | None = None) -> Any:
    """`value` with 1 to 3 edits at random places: a value replaced (by `special(rng)` or `random_json`),
    a key deleted or added, a list emptied, or a number scaled past its range."""
    value = copy.deepcopy(value)
    for _ in range(rng.randint(1, 3)):
        path = rng.choice(_paths(value))
        if not path:
            if rng.random() < 0.1:
                return random_json(rng)
            continue
        parent = value
        for key in path[:-1]:
            parent = parent[key]
        last = path[-1]
        op = rng.random()
        if op < 0.15 and isinstance(parent, dict):
            del parent[last]
        elif op < 0.25 and isinstance(parent, dict):
            parent[rng.choice(["extra", "nm", "files", "report", "architecture", "x"])] = random_json(rng)
        elif op < 0.45 and type(parent[last]) in (int, float):
            parent[last] = rng.choice([-parent[last], parent[last] * 1000, parent[last] + 1, 2**70, -1, 1.5])
        else:
            parent[last] = special(rng) if special is not None and rng.random() < 0.5 else random_json(rng)
    return value


def mutate_bytes(rng: random.Random, data: bytes) -> bytes:
    """1 to 8 byte edits: flips, inserted or deleted runs, a truncation, invalid UTF-8, a copied block."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if not out:
            out += bytes([rng.randrange(256)])
        op, i = rng.random(), rng.randrange(len(out))
        if op < 0.4:
            out[i] ^= 1 << rng.randrange(8)
        elif op < 0.55:
            out[i:i] = rng.choice([b"\xff\xfe", b"\xc3", b"[", b"{", b'"', b"\x00", bytes(rng.randrange(256) for _ in range(8))])
        elif op < 0.7:
            del out[i:i + rng.randint(1, 16)]
        elif op < 0.8:
            del out[i:]
        else:
            j = rng.randrange(len(out))
            out[i:i] = out[j:j + rng.randint(1, 64)]
    return bytes(out)


# The decoder -------------------------------------------------------------------------------------------

def decoder_state_dict() -> dict[str, torch.Tensor]:
    """One tensor per kind of encoding: dense, bitmask, int8 (+ bitmask), zstd-coded ones, N:M (float and
    int8), packed int4 / uint2 (dense, bitmask), integer buffers, an empty tensor."""
    g = torch.Generator().manual_seed(0)
    sd: dict[str, torch.Tensor] = {}
    sparse = torch.randn(64, 32, generator=g)
    sd["sparse.weight"] = torch.where(torch.rand(64, 32, generator=g) < 0.9, 0.0, sparse)
    q = torch.randint(-127, 128, (32, 16), generator=g).to(torch.int8)
    q[torch.rand(32, 16, generator=g) < 0.7] = 0
    scale = torch.rand(32, generator=g) / 100
    sd["int8.weight"], sd["int8.weight_scale"] = q.float() * scale[:, None], scale
    nm = torch.randn(16, 32, generator=g)
    nm.view(16, 8, 4)[..., 2:] = 0
    sd["nm.weight"] = nm
    q4 = torch.randint(-8, 8, (16, 64), generator=g).to(torch.int8)
    s4 = torch.rand(16, generator=g) / 10
    sd["low.weight"], sd["low.weight_scale"], sd["low.weight_bits"] = q4.float() * s4[:, None], s4, torch.tensor(4)
    q2 = torch.randint(0, 4, (8, 16), generator=g).to(torch.int8)
    zp = torch.full((8,), 1, dtype=torch.int8)
    s2 = torch.rand(8, generator=g) / 10
    sd["two.weight"] = (q2 - zp[:, None]).float() * s2[:, None]
    sd["two.weight_scale"], sd["two.weight_zero_point"], sd["two.weight_bits"] = s2, zp, torch.tensor(2)
    sd["zeros"] = torch.zeros(2000)
    sd["dense.bias"] = torch.randn(7, generator=g)
    sd["count"] = torch.tensor(12, dtype=torch.int64)
    sd["empty"] = torch.zeros(0, 4)
    return sd


CONFIG = {"name": "fuzz", "base_model": "fuzz", "arch": "test_resnet", "model_kwargs": {}, "recipe": None}


def split_safetensors(data: bytes) -> tuple[dict[str, Any], bytes]:
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def join_safetensors(header: dict[str, Any], body: bytes) -> bytes:
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + body


def _special_meta(rng: random.Random) -> Any:
    return rng.choice([
        rng.choice(list(ENCODINGS)), rng.choice(list(DTYPES)), [rng.choice(_HUGE) for _ in range(rng.randint(0, 3))],
        [2**70], [0], [], [1, 2], [2, 4], [4, 2], [1, 256], [3, 4, 5, 6],
    ])


def mutate_weights(rng: random.Random, data: bytes) -> bytes:
    """A safetensors file of the zoo mutated in its bytes, header, metas or tensors' data."""
    header, body = split_safetensors(data)
    names = [k for k in header if k != "__metadata__"]
    op = rng.random()
    if op < 0.2:
        return mutate_bytes(rng, data)
    if op < 0.55:  # the tensor metas
        meta = header["__metadata__"]
        metas = json.loads(meta[METAS_KEY])
        if rng.random() < 0.05:
            meta[METAS_KEY] = mutate_bytes(rng, meta[METAS_KEY].encode()).decode("utf-8", "replace")
        else:
            meta[METAS_KEY] = json.dumps(mutate_json(rng, metas, _special_meta))
        return join_safetensors(header, body)
    if op < 0.75:  # the safetensors header: dtype, shape, offsets of one tensor; or one dropped / renamed
        name = rng.choice(names)
        info = header[name]
        kind = rng.random()
        if kind < 0.3:
            info["dtype"] = rng.choice(SAFETENSORS_DTYPES)
        elif kind < 0.6:
            info["shape"] = rng.choice([[0], [1], [2**40], [2**70], [-1], [3, 5], info["shape"][::-1], []])
        elif kind < 0.75:
            info["data_offsets"] = [rng.choice([0, 1, len(body), 2**64]), rng.choice([0, len(body), 2**63])]
        elif kind < 0.9:
            header[name + rng.choice([".values", ".bitmask", "_scale", "x"])] = header.pop(name)
        else:
            del header[name]
        return join_safetensors(header, body)
    # a tensor's data overwritten: -128 int8 codes, inf / NaN / huge floats, random bytes
    name = rng.choice(names)
    start, end = header[name]["data_offsets"]
    if end <= start:
        return mutate_bytes(rng, data)
    chunk = bytearray(body[start:end])
    fill = rng.choice([b"\x80", b"\x00\x00\x80\x7f", b"\x00\x00\xc0\x7f", b"\xff", b"\x00", bytes([rng.randrange(256)])])
    i = rng.randrange(len(chunk))
    for j in range(i, min(len(chunk), i + rng.randint(1, 64)), len(fill)):
        chunk[j:j + len(fill)] = fill[: len(chunk) - j]
    return join_safetensors(header, body[:start] + bytes(chunk) + body[end:])


def write_with_hash(folder: Path, weights: bytes, config: dict[str, Any]) -> None:
    """`weights` as the folder's model.safetensors, config.json recording its SHA-256 (a tamperer's edit)."""
    (folder / WEIGHTS_FILE).write_bytes(weights)
    files = {WEIGHTS_FILE: {"sha256": hashlib.sha256(weights).hexdigest(), "bytes": len(weights)}}
    (folder / CONFIG_FILE).write_text(json.dumps({**config, "files": files}))


@dataclass
class Target:
    """A fuzz target: its seed inputs, how to mutate one, how to run one (ZooError or success)."""

    name: str
    seeds: list[Any]
    mutate: Callable[[random.Random, Any], Any]
    run: Callable[[Any], Any]
    cleanup: list[Path] = field(default_factory=list)


def decoder_target(workdir: Path) -> Target:
    seed_dir = save_checkpoint(workdir / "decoder-seed", decoder_state_dict(), config=CONFIG)
    config = json.loads((seed_dir / CONFIG_FILE).read_text())
    plain = save_checkpoint(workdir / "decoder-plain", decoder_state_dict(), config=CONFIG, entropy_coding=False)
    folder = workdir / "decoder"
    folder.mkdir()
    seeds = [(seed_dir / WEIGHTS_FILE).read_bytes(), (plain / WEIGHTS_FILE).read_bytes()]

    def run(weights: bytes) -> Any:
        write_with_hash(folder, weights, {k: v for k, v in config.items() if k != "files"})
        return load_checkpoint(folder)

    return Target("decoder", seeds, mutate_weights, run)


# The model built from a hashed-but-hostile checkpoint ----------------------------------------------------

def model_target(workdir: Path) -> Target:
    from zoo.api import _from_checkpoint
    from zoo.models import build_model, get_entry
    from zoo.tasks import task_of

    entry = get_entry(ENTRY)
    torch.manual_seed(0)
    sd = build_model(entry).state_dict()
    conv = next(k for k, v in sd.items() if k.endswith(".weight") and v.dim() == 4)
    sd[conv] = torch.where(sd[conv].abs() > sd[conv].abs().quantile(0.7), sd[conv], 0.0)
    config = {"name": ENTRY, "base_model": ENTRY, "arch": entry.arch, "model_kwargs": dict(entry.model_kwargs),
              "recipe": None, "sparsity": 0.0, "quant": None}
    seed_dir = save_checkpoint(workdir / "model-seed", sd, config=config)
    seeds = [((seed_dir / WEIGHTS_FILE).read_bytes(), json.loads((seed_dir / CONFIG_FILE).read_text()))]
    folder = workdir / "model"
    folder.mkdir()
    example = task_of(entry).example_input(entry)
    special_config = lambda rng: rng.choice([  # noqa: E731
        "resnet18", "test_vit", {"num_classes": "x"}, {"num_classes": -1}, {"num_classes": 2**40}, {"in_chans": 0},
        {"drop_rate": "a"}, {"layers": [1]}, {"widths": {"fc": 3}}, [1], None])

    def mutate(rng: random.Random, seed: tuple[bytes, dict]) -> tuple[bytes, dict]:
        weights, cfg = seed
        cfg = {k: v for k, v in cfg.items() if k != "files"}
        roll = rng.random()
        if roll < 0.6:
            header, body = split_safetensors(weights)
            metas = json.loads(header["__metadata__"][METAS_KEY])
            name = rng.choice(list(metas))
            kind = rng.random()
            if kind < 0.35:
                metas[name]["dtype"] = rng.choice(["float16", "float64", "bfloat16", "int64", "bool", "float8_e4m3fn"])
            elif kind < 0.6:
                metas[name]["shape"] = rng.choice([[], [1], [3, 3], metas[name]["shape"][::-1],
                                                   [d + 1 for d in metas[name]["shape"]]])
            elif kind < 0.8:
                metas[rng.choice(["x", name + "_scale", name.replace("weight", "bias"), "fc.weight_bits"])] = metas.pop(name)
            else:
                del metas[name]
            header["__metadata__"][METAS_KEY] = json.dumps(metas)
            # tensors re-encoded consistently with the edited metas are out of reach here: the decoder
            # refuses most, and what it accepts reaches the model
            return join_safetensors(header, body), cfg
        if roll < 0.75:
            return mutate_weights(rng, weights), cfg
        key = rng.choice(["arch", "model_kwargs", "architecture", "base_model", "name", "sparsity", "quant", "recipe"])
        cfg[key] = special_config(rng) if rng.random() < 0.6 else random_json(rng)
        return weights, cfg

    def run(item: tuple[bytes, dict]) -> Any:
        weights, cfg = item
        write_with_hash(folder, weights, cfg)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = _from_checkpoint(entry, folder, source="cache")
        with torch.inference_mode():
            return model(example)

    return Target("model", seeds, mutate, run)


def state_dict_target() -> Target:
    """Decoded-looking state dicts (any dtype, shape, extra or missing key) built into the entry's model."""
    from zoo.api import instantiate
    from zoo.models import build_model, get_entry
    from zoo.tasks import task_of

    entry = get_entry(ENTRY)
    sd = build_model(entry).state_dict()
    example = task_of(entry).example_input(entry)

    def mutate(rng: random.Random, seed: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = dict(seed)
        for _ in range(rng.randint(1, 3)):
            name = rng.choice(list(out))
            kind = rng.random()
            if kind < 0.35:
                out[name] = out[name].to(rng.choice([torch.float16, torch.float64, torch.bfloat16, torch.int64, torch.bool]))
            elif kind < 0.6:
                out[name] = torch.zeros(rng.choice([(), (1,), (3, 3), tuple(out[name].shape[::-1])]))
            elif kind < 0.8:
                out[rng.choice([name + "_scale", "fc.weight_bits", "x", name.replace("weight", "act_bits")])] = out[name]
            else:
                del out[name]
        return out

    def run(state: dict[str, torch.Tensor]) -> Any:
        with torch.inference_mode():
            return instantiate(entry, state)(example)

    return Target("state_dict", [sd], mutate, run)


# config.json, report.json, recipes --------------------------------------------------------------------

def config_target() -> Target:
    from zoo.entry import DataSpec  # noqa: F401  (registers what entry records name)
    from zoo.hub_ids import entry_record, read_zoo_repo
    from zoo.models import get_entry
    from zoo.repo_readers import RepoSnapshot

    entry = get_entry(ENTRY)
    config = {"format": "zoo-compressed", "format_version": 2, "name": ENTRY + "_os50", "base_model": ENTRY,
              "arch": entry.arch, "model_kwargs": dict(entry.model_kwargs),
              "recipe": [{"type": "MagnitudePruningConfig", "version": 1, "config": {"sparsity": 0.5}}],
              "sparsity": 0.5, "quant": None, "entry": entry_record(entry),
              "files": {WEIGHTS_FILE: {"sha256": "0" * 64, "bytes": 10}}, "report": {"sha256": "0" * 64, "bytes": 3}}
    seed = json.dumps(config, indent=2).encode()

    def mutate(rng: random.Random, data: bytes) -> bytes:
        if rng.random() < 0.3:
            return mutate_bytes(rng, data)
        return json.dumps(mutate_json(rng, json.loads(data))).encode()

    def run(data: bytes) -> Any:
        from zoo.compress.checkpoint import MAX_CONFIG_BYTES
        from zoo.errors import CheckpointError
        from zoo.parsing import load_json

        parsed = load_json(data, what="config.json", error=CheckpointError, max_bytes=MAX_CONFIG_BYTES)
        check_config(parsed, "config.json")
        return read_zoo_repo(RepoSnapshot("org/fuzz", "a" * 40, parsed, (CONFIG_FILE, WEIGHTS_FILE)))

    return Target("config", [seed], mutate, run)


REPORT = {"name": ENTRY + "_os50", "base_model": ENTRY, "task": "image-classification", "dataset": "digits",
          "split": "test", "metrics": {"top1": 0.9, "top5": 0.99}, "metric_average": "micro", "flops_dense": 1000,
          "flops_sparse": 600, "params_total": 100, "params_nonzero": 50, "bytes_on_disk": 4000, "latency_ms": 0.5,
          "sparsity": 0.5, "quant": None, "recipe": [{"type": "MagnitudePruningConfig", "version": 1, "config": {}}],
          "layers": [{"name": "fc", "op": "aten.addmm", "dense": 10, "sparse": 5}], "flops_uncounted": {"aten.x": 1},
          "machine": {"cpu": "c", "isa": "i", "torch_cpu_capability": "AVX2", "os": "Linux", "arch": "x86_64",
                      "python": "3.11", "torch": "2", "threads": 1, "libraries": {"timm": "1"}},
          "eval_data_missing": None, "latency_by_runtime": {"onnxruntime": 0.3}, "runtime_errors": {"openvino": "x"},
          "int8_path": None, "dense_export": {"max_abs": 0.0, "relative_rms": 0.0, "inputs": "64 examples"},
          "evaluator_version": 6, "user_data": None}


def report_target() -> Target:
    seed = json.dumps(REPORT, indent=2).encode()

    def mutate(rng: random.Random, data: bytes) -> bytes:
        if rng.random() < 0.3:
            return mutate_bytes(rng, data)
        return json.dumps(mutate_json(rng, json.loads(data))).encode()

    return Target("report", [seed], mutate, lambda data: VariantReport.from_json(data, "report.json"))


RECIPE = {"recipe_version": 1, "steps": [
    {"type": "MagnitudePruningConfig", "version": 1, "config": {"sparsity": 0.5}},
    {"type": "Int8PTQConfig", "version": 1, "config": {}},
]}
_YAML_SNIPPETS = ("&a [1, 2]", "*a", "!!python/object:os.system", "!!binary AAAA", "2020-13-45", "{", "[" * 40,
                  "? [a]\n: b", "<<: *a", "!!set {a}", "1e9999", "0x" + "f" * 50, "\t", "- - - - -", "\"\\x\"")


def recipe_target() -> Target:
    seeds = [("json", Recipe.from_json(json.dumps(RECIPE)).to_json().encode()),
             ("yaml", Recipe.from_json(json.dumps(RECIPE)).to_yaml().encode()),
             ("yaml", b"a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
                      b"c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n")]

    def mutate(rng: random.Random, seed: tuple[str, bytes]) -> tuple[str, bytes]:
        kind, data = seed
        roll = rng.random()
        if roll < 0.35:
            return kind, mutate_bytes(rng, data)
        if roll < 0.6 and kind == "yaml":
            lines = data.decode("utf-8", "replace").split("\n")
            i = rng.randrange(len(lines))
            lines[i] = lines[i] + " " + rng.choice(_YAML_SNIPPETS)
            return kind, "\n".join(lines).encode()
        try:
            doc = json.loads(data) if kind == "json" else None
        except ValueError:
            doc = None
        doc = mutate_json(rng, doc if doc is not None else RECIPE)
        return rng.choice(["json", "yaml"]), json.dumps(doc).encode()

    def run(item: tuple[str, bytes]) -> Any:
        kind, data = item
        return Recipe.from_json(data) if kind == "json" else Recipe.from_yaml(data)

    return Target("recipe", seeds, mutate, run)


# Running ----------------------------------------------------------------------------------------------

class Hang(Exception):
    """An input ran past --hang-seconds."""


@dataclass
class Result:
    target: str
    inputs: int = 0
    typed: int = 0
    accepted: int = 0
    untyped: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)
    hangs: int = 0
    slowest_s: float = 0.0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "inputs": self.inputs, "typed": self.typed, "accepted": self.accepted,
                "untyped": sum(self.untyped.values()), "untyped_by_type": dict(self.untyped),
                "untyped_examples": self.examples, "hangs": self.hangs, "slowest_input_s": round(self.slowest_s, 4),
                "seconds": round(self.seconds, 1), "inputs_per_second": round(self.inputs / max(self.seconds, 1e-9), 1)}


def _alarm(signum, frame):
    raise Hang()


def fuzz(target: Target, *, inputs: int, seconds: float, seed: int = 0, hang_seconds: float = 10.0) -> Result:
    """Runs up to `inputs` mutated inputs of `target` (at most `seconds`), each under a SIGALRM of
    `hang_seconds`; counts how each ended."""
    rng = random.Random(seed)
    result = Result(target.name)
    start = time.perf_counter()
    previous = signal.signal(signal.SIGALRM, _alarm)
    try:
        while result.inputs < inputs and time.perf_counter() - start < seconds:
            item = target.mutate(rng, rng.choice(target.seeds))
            t0 = time.perf_counter()
            signal.setitimer(signal.ITIMER_REAL, hang_seconds)
            try:
                target.run(item)
                result.accepted += 1
            except ZooError:
                result.typed += 1
            except Hang:
                result.hangs += 1
            except Exception as error:  # what the fuzz looks for: counted and shown, never hidden
                key = type(error).__name__
                result.untyped[key] += 1
                result.examples.setdefault(key, f"{error!s}"[:300] + f" <- input {repr(item)[:300]}")
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            result.slowest_s = max(result.slowest_s, time.perf_counter() - t0)
            result.inputs += 1
    finally:
        signal.signal(signal.SIGALRM, previous)
    result.seconds = time.perf_counter() - start
    return result


TARGETS = ("decoder", "model", "state_dict", "config", "report", "recipe")


def make_target(name: str, workdir: Path) -> Target:
    return {"decoder": lambda: decoder_target(workdir), "model": lambda: model_target(workdir),
            "state_dict": state_dict_target, "config": config_target, "report": report_target,
            "recipe": recipe_target}[name]()


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=100_000, help="inputs per target (default 10^5)")
    parser.add_argument("--seconds", type=float, default=600.0, help="time budget per target")
    parser.add_argument("--targets", default=",".join(TARGETS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hang-seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    workdir = Path(tempfile.mkdtemp(prefix="zoo-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    results = []
    try:
        for name in args.targets.split(","):
            target = make_target(name, workdir)
            result = fuzz(target, inputs=args.inputs, seconds=args.seconds, seed=args.seed,
                          hang_seconds=args.hang_seconds)
            row = {**result.to_dict(), "peak_rss_mib_so_far": round(peak_rss_mib(), 1)}
            results.append(row)
            print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    summary = {"results": results, "peak_rss_mib": round(peak_rss_mib(), 1), "torch": torch.__version__,
               "numpy": np.__version__, "python": sys.version.split()[0]}
    if args.out is not None:
        args.out.write_text(json.dumps(summary, indent=2) + "\n")
    bad = sum(r["untyped"] + r["hangs"] for r in results)
    print(f"untyped errors + hangs: {bad}; peak RSS {summary['peak_rss_mib']} MiB")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
