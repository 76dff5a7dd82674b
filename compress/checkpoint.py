"""The zoo's compressed checkpoint: a folder with `model.safetensors` and `config.json`.

    folder/
      model.safetensors   the encoded tensors (see zoo.compress.formats); the per-tensor metas as JSON
                          under the header metadata key "zoo.tensor_metas"
      config.json         {"format": "zoo-compressed", "format_version": 1 to 4, "name", "base_model",
                          "arch", "model_kwargs", "recipe", <caller's extra keys>,
                          "files": {"model.safetensors": {"sha256", "bytes"}},
                          "report": {"sha256", "bytes"} (once report.json is written)}
      report.json         the evaluator's measurements, written by `write_report`

Version 2 added the entropy-coded (zstd) tensor encodings, version 3 the N:M ones (and the "nm" key of
their tensor metas), version 4 the packed low-bit ones (4- and 2-bit codes, `int4`, `uint2`, ...); a
checkpoint records the lowest version that holds all its encodings, so one without them stays readable
by the older readers, and every checkpoint of versions 1 to 3 loads unchanged. A file that names an encoding newer than its recorded version is refused.

Saving is atomic: the folder is written beside the target (`.<name>.tmp-<random>`) and renamed into
place, so an interrupted save never leaves a partial checkpoint. Replacing an existing checkpoint takes
two renames (the old folder aside to `.<name>.old-<random>`, the new one in); a kill between them leaves
no folder at the path for an instant, and the next read or write of the path (`load_checkpoint`,
`read_config`, `save_checkpoint`, `recover_checkpoint`) moves the previous checkpoint back first. Saves
and that recovery hold the folder's lock (`zoo.locks.folder_lock`, the file `.<name>.lock` beside it),
and each save sweeps the `.tmp-`/`.old-` leftovers of killed saves; `zoo.atomic.is_leftover` tells them
apart from checkpoints. Loading checks the format name and version and every file's SHA-256 before decoding. Only
safetensors and JSON are read: never pickle.

Everything read is validated before use: config.json against its schema (`check_config`: the types of
its keys, a sparsity in [0, 1], JSON within `zoo.parsing`'s size and depth bounds), the tensor metas
and the decoded size (`zoo.compress.formats`), and report.json against its checksum in config.json and
its schema (`read_report`). A report.json that config.json does not record (checkpoints written before
the zoo recorded it) is not trusted: `read_report` warns and returns None, so the variant counts as not
measured (a cached one is measured again and its report recorded).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import warnings
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from zoo.compress.dense import QUANT_BUFFERS, dense_state_dict
from zoo.compress.formats import (
    TensorMeta,
    compress_state_dict,
    decompress_state_dict,
    metas_from_json,
    metas_to_json,
    unshared,
)

from zoo.atomic import (
    atomic_path, atomic_write_json, atomic_write_text, fsync_path, recover_folder, staging_folder, swap_in,
    tidy_locked,
)
from zoo.errors import CheckpointError, ChecksumError, InvalidArgumentError
from zoo.locks import folder_lock
from zoo.parsing import load_json

FORMAT_NAME = "zoo-compressed"
FORMAT_VERSION = 4  # the newest this code writes; see the module docstring
SUPPORTED_VERSIONS = (1, 2, 3, 4)
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
REPORT_FILE = "report.json"  # zoo.store.REPORT_FILE
REPORT_KEY = "report"  # config.json's record of report.json: {"sha256", "bytes"}
METAS_KEY = "zoo.tensor_metas"
REQUIRED_CONFIG_KEYS = ("name", "base_model", "arch", "model_kwargs", "recipe")
RESERVED_CONFIG_KEYS = ("format", "format_version", "files", REPORT_KEY)
MAX_CONFIG_BYTES = 4 << 20  # a config is a few KB (the recipe, the entry record)
QUANT_BUFFER_SUFFIXES = QUANT_BUFFERS  # the quantized layers' buffers a dense export leaves out
_CHUNK = 1 << 20


def save_checkpoint(
    folder: str | os.PathLike[str], state_dict: Mapping[str, torch.Tensor], *, config: dict[str, Any],
    entropy_coding: bool = True, nm_coding: bool = True,
) -> Path:
    """Writes `state_dict` compressed, with `config` (name, base_model, arch, model_kwargs, recipe and
    any extra JSON metadata), into `folder`, atomically replacing a checkpoint already there.

    `nm_coding=False` leaves out the N:M encodings (at most a version-2 checkpoint), and with
    `entropy_coding=False` as well it keeps to the plain encodings: a version-1 checkpoint, which zoo
    versions before the entropy-coded encodings can read."""
    folder = Path(folder)
    body = _checked_config(config)
    stored, metas = compress_state_dict(state_dict, entropy_coding=entropy_coding, nm_coding=nm_coding)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(folder):
        tidy_locked(folder, complete=CONFIG_FILE)
        _check_replaceable(folder)
        tmp = staging_folder(folder)
        try:
            weights = tmp / WEIGHTS_FILE
            save_file(stored, str(weights), metadata={"format": "pt", METAS_KEY: metas_to_json(metas)})
            fsync_path(weights)
            files = {WEIGHTS_FILE: {"sha256": sha256_file(weights), "bytes": weights.stat().st_size}}
            version = max((meta.codec.since for meta in metas.values()), default=1)
            header = {"format": FORMAT_NAME, "format_version": version, **body, "files": files}
            atomic_write_json(tmp / CONFIG_FILE, header)
            swap_in(tmp, folder)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        fsync_path(folder.parent)
    return folder


def recover_checkpoint(folder: str | os.PathLike[str], *, blocking: bool = True) -> bool:
    """Puts back the previous checkpoint at `folder` when a save was killed between its two renames and
    sweeps the leftovers of killed saves (`zoo.atomic.recover_folder`; with `blocking=False`, nothing
    while a save of it is in flight). Returns whether `folder` now holds a config.json."""
    return recover_folder(folder, complete=CONFIG_FILE, blocking=blocking)


def load_checkpoint(
    folder: str | os.PathLike[str], *, verify: bool = True,
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Reads a checkpoint folder: (the original state dict, config.json as a dict).

    With `verify`, every file listed in config.json is hashed and a mismatch raises ChecksumError
    (before any error the damaged file itself causes); without it only the file sizes are compared
    (CheckpointError on a difference). Hashing runs on a thread beside the decode, which it would
    otherwise add to (hashlib releases the GIL): zoo.load pays for the check about once, not twice.
    """
    folder = Path(folder)
    config = read_config(folder)  # puts back a checkpoint a killed save moved aside
    for fname, entry in config["files"].items():
        path = folder / fname
        if not path.is_file():
            raise CheckpointError(f"{path}: listed in {CONFIG_FILE} but missing")
        if not verify and path.stat().st_size != entry["bytes"]:
            raise CheckpointError(f"{path}: {path.stat().st_size} bytes on disk, {entry['bytes']} recorded in {CONFIG_FILE}")
    with ThreadPoolExecutor(max_workers=1) as pool:
        digests = {fname: pool.submit(sha256_file, folder / fname) for fname in config["files"]} if verify else {}
        try:
            tensors, metas = _read_weights(folder / WEIGHTS_FILE, config["format_version"])
            state_dict, failure = decompress_state_dict(tensors, metas), None
        except Exception as error:  # a damaged file: its checksum error, if any, is the one to report
            state_dict, failure = {}, error
        for fname, digest in digests.items():
            _check_digest(folder / fname, digest.result(), config["files"][fname])
    if failure is not None:
        raise failure
    return state_dict, config


def _check_digest(path: Path, actual: str, entry: dict[str, Any]) -> None:
    if actual != entry["sha256"]:
        raise ChecksumError(
            f"{path}: SHA-256 {actual} does not match {entry['sha256']} recorded in {CONFIG_FILE} "
            f"({path.stat().st_size} bytes on disk, {entry['bytes']} recorded): the file is truncated or altered"
        )


def read_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """config.json of a checkpoint, checked: format name and version known, files listed (a checkpoint that
    a killed save moved aside is put back first: `recover_checkpoint`)."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file() and not Path(folder).exists():
        recover_checkpoint(folder)
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: {folder} is not a zoo checkpoint")
    config = load_json(path.read_bytes(), what=str(path), error=CheckpointError, max_bytes=MAX_CONFIG_BYTES)
    check_config(config, str(path))
    return config


def check_config(config: Any, where: str) -> None:
    """Refuses (CheckpointError naming `where`) a checkpoint config that is not a JSON object of the
    zoo's format and a supported version, with `files` (and `report`) entries of {sha256, bytes}, the
    keys save_checkpoint requires of their types (name and arch non-empty strings, base_model a string
    or None, model_kwargs an object, recipe a list of objects or None) and, where present, `sparsity`
    a number in [0, 1], `quant` a string or None, `architecture` an object or None."""
    path = where
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(config).__name__}")
    if config.get("format") != FORMAT_NAME:
        raise CheckpointError(f"{path}: unknown checkpoint format {config.get('format')!r}; supported: {FORMAT_NAME!r}")
    missing = [key for key in REQUIRED_CONFIG_KEYS if key not in config]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}; a zoo checkpoint config has {', '.join(REQUIRED_CONFIG_KEYS)}")
    if type(config.get("format_version")) is not int or config["format_version"] not in SUPPORTED_VERSIONS:
        raise CheckpointError(
            f"{path}: {FORMAT_NAME} version {config.get('format_version')!r} is not supported; "
            f"supported versions: {', '.join(map(str, SUPPORTED_VERSIONS))}"
        )
    files = config.get("files")
    if not isinstance(files, dict) or WEIGHTS_FILE not in files:
        raise CheckpointError(f"{path}: 'files' must list {WEIGHTS_FILE!r} with its sha256 and bytes")
    for fname, entry in files.items():
        if not isinstance(fname, str) or fname != Path(fname).name or fname in ("", ".", ".."):
            raise CheckpointError(f"{path}: file name {fname!r} must be a plain name inside the checkpoint folder")
        if not _is_file_entry(entry):
            raise CheckpointError(f"{path}: entry of {fname!r} must be {{'sha256': str, 'bytes': int}}, got {entry!r}"[:300])
    if REPORT_KEY in config and not _is_file_entry(config[REPORT_KEY]):
        raise CheckpointError(f"{path}: {REPORT_KEY!r} must be {{'sha256': str, 'bytes': int}}, got {config[REPORT_KEY]!r}"[:300])
    checks = {
        "name": lambda v: isinstance(v, str) and bool(v),
        "base_model": lambda v: v is None or isinstance(v, str),
        "arch": lambda v: isinstance(v, str) and bool(v),
        "model_kwargs": lambda v: isinstance(v, dict),
        "recipe": lambda v: v is None or (isinstance(v, list) and all(isinstance(s, dict) for s in v)),
        "sparsity": lambda v: type(v) in (int, float) and math.isfinite(v) and 0 <= v <= 1,
        "quant": lambda v: v is None or isinstance(v, str),
        "architecture": lambda v: v is None or isinstance(v, dict),
    }
    bad = [f"{key}={config[key]!r}"[:60] for key, ok in checks.items() if key in config and not ok(config[key])]
    if bad:
        raise CheckpointError(
            f"{path}: invalid {', '.join(bad)} (name and arch are non-empty strings, base_model a string or null, "
            "model_kwargs an object, recipe a list of objects or null, sparsity a number in [0, 1], quant a string "
            "or null, architecture an object or null)"
        )


def _is_file_entry(entry: Any) -> bool:
    return (isinstance(entry, dict) and set(entry) == {"sha256", "bytes"} and isinstance(entry["sha256"], str)
            and type(entry["bytes"]) is int and entry["bytes"] >= 0)


def write_report(folder: str | os.PathLike[str], data: dict[str, Any]) -> Path:
    """Writes `data` (a VariantReport's dict) as the checkpoint's report.json and records its SHA-256 and
    size in config.json (under "report"), so that an edited report is refused by `read_report`. The
    report is written first, then the config, each atomically; a kill between the two leaves a report
    that the config does not match, refused as altered (ChecksumError) until it is measured again."""
    folder = Path(folder)
    config = read_config(folder)
    text = json.dumps(data, indent=2, allow_nan=False) + "\n"
    raw = text.encode("utf-8")
    atomic_write_text(folder / REPORT_FILE, text)
    atomic_write_json(folder / CONFIG_FILE, {**config, REPORT_KEY: {"sha256": hashlib.sha256(raw).hexdigest(),
                                                                    "bytes": len(raw)}})
    return folder / REPORT_FILE


def read_report(folder: str | os.PathLike[str], config: dict[str, Any] | None = None) -> dict[str, Any] | None:
    """The checkpoint's report.json as a dict, checked against the SHA-256 config.json records for it
    (ChecksumError if it differs); None when there is no report.json (not measured), or, with a warning, when config.json records none (written before the zoo covered the
    report by its checksum: unverified, so not shown as measured). The caller validates its fields
    (`zoo.evaluate.VariantReport.from_dict`)."""
    folder = Path(folder)
    config = read_config(folder) if config is None else config
    path = folder / REPORT_FILE
    entry = config.get(REPORT_KEY)
    if entry is None:
        if path.is_file():
            warnings.warn(f"{path} is not covered by a checksum in {CONFIG_FILE} (written by an older zoo): "
                          "its numbers are unverified and not used; the variant counts as not measured",
                          UserWarning, stacklevel=2)
        return None
    if not path.is_file():  # deleted, or its measurement interrupted: not measured (nothing false is shown)
        return None
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise ChecksumError(f"{path}: {path.stat().st_size} bytes, {entry['bytes']} recorded in {CONFIG_FILE}: altered")
    raw = path.read_bytes()
    _check_digest(path, hashlib.sha256(raw).hexdigest(), entry)
    data = load_json(raw, what=str(path), error=CheckpointError)
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def export_dense(
    folder_or_state_dict: str | os.PathLike[str] | Mapping[str, torch.Tensor],
    out_file: str | os.PathLike[str],
    *,
    drop_suffixes: tuple[str, ...] = QUANT_BUFFER_SUFFIXES,
) -> Path:
    """Writes a plain dense safetensors state dict that timm and `torch.nn.Module.load_state_dict` read
    unchanged, atomically: the weights dequantized, the quantized layers' buffers (`drop_suffixes`: scales,
    zero points, bits, input quantizers) left out (`zoo.compress.dense.dense_state_dict`), so that its keys
    are the plain model's. The input quantization goes with them: the evaluator records how the dense
    model's outputs differ from the quantized model's (`VariantReport.dense_export`)."""
    if isinstance(folder_or_state_dict, (str, os.PathLike)):
        state_dict, _ = load_checkpoint(folder_or_state_dict)
    elif isinstance(folder_or_state_dict, Mapping):
        state_dict = dict(folder_or_state_dict)
    else:
        raise InvalidArgumentError(
            f"export_dense takes a checkpoint folder or a state dict, got {type(folder_or_state_dict).__name__}"
        )
    dense = {name: tensor.detach().cpu().contiguous()
             for name, tensor in dense_state_dict(state_dict, drop_suffixes).items()}
    out = Path(out_file)
    with atomic_path(out) as tmp:
        save_file(unshared(dense), str(tmp), metadata={"format": "pt"})
    return out


def declared_format(folder: str | os.PathLike[str]) -> object:
    """The `format` the folder's config.json declares: FORMAT_NAME for a zoo checkpoint; None when it has no
    config.json or one that is not a JSON object with a format (a timm or transformers repo's)."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        return None
    try:
        data = load_json(path.read_bytes(), what=str(path), error=CheckpointError, max_bytes=MAX_CONFIG_BYTES)
    except CheckpointError:
        return None
    return data.get("format") if isinstance(data, dict) else None


def checkpoint_bytes(folder: str | os.PathLike[str]) -> int:
    """Bytes on disk of a checkpoint: its weight files plus config.json (of a plain upstream repo: its
    model.safetensors and config.json, when it has one)."""
    folder = Path(folder)
    if declared_format(folder) != FORMAT_NAME:
        if not (folder / WEIGHTS_FILE).is_file():
            raise CheckpointError(f"{folder} holds neither a zoo checkpoint nor a {WEIGHTS_FILE}")
        return sum(p.stat().st_size for p in (folder / WEIGHTS_FILE, folder / CONFIG_FILE) if p.is_file())
    config = read_config(folder)
    total = (folder / CONFIG_FILE).stat().st_size
    for fname in config["files"]:
        path = folder / fname
        if not path.is_file():
            raise CheckpointError(f"{path}: listed in {CONFIG_FILE} but missing")
        total += path.stat().st_size
    return total


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    with open(path, "rb") as f:
        while n := f.readinto(buf):
            digest.update(view[:n])
    return digest.hexdigest()


def _checked_config(config: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(config, dict):
        raise InvalidArgumentError(f"config must be a dict, got {type(config).__name__}")
    missing = [k for k in REQUIRED_CONFIG_KEYS if k not in config]
    if missing:
        raise InvalidArgumentError(f"checkpoint config lacks {missing}; required: {list(REQUIRED_CONFIG_KEYS)}")
    reserved = [k for k in RESERVED_CONFIG_KEYS if k in config]
    if reserved:
        raise InvalidArgumentError(f"checkpoint config keys {reserved} are written by save_checkpoint, not the caller")
    checks = {
        "name": isinstance(config["name"], str) and bool(config["name"]),
        "base_model": config["base_model"] is None or isinstance(config["base_model"], str),
        "arch": isinstance(config["arch"], str) and bool(config["arch"]),
        "model_kwargs": isinstance(config["model_kwargs"], dict),
        "recipe": config["recipe"] is None
        or (isinstance(config["recipe"], list) and all(isinstance(s, dict) for s in config["recipe"])),
    }
    bad = [k for k, ok in checks.items() if not ok]
    if bad:
        raise InvalidArgumentError(
            f"checkpoint config has invalid {bad}: name and arch are non-empty strings, base_model a string "
            "or None, model_kwargs a dict, recipe a list of dicts or None"
        )
    try:
        json.dumps(config, allow_nan=False)
    except (TypeError, ValueError) as err:
        raise InvalidArgumentError(f"checkpoint config must be plain JSON: {err}") from None
    return dict(config)


def _check_replaceable(folder: Path) -> None:
    """Only an empty folder or an earlier checkpoint may be replaced: never delete unrelated files."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise InvalidArgumentError(f"{folder} exists and is not a folder")
    if any(folder.iterdir()) and not (folder / CONFIG_FILE).is_file():
        raise InvalidArgumentError(f"{folder} is a non-empty folder without {CONFIG_FILE}; refusing to replace it")


def _read_weights(path: Path, version: int) -> tuple[dict[str, torch.Tensor], dict[str, TensorMeta]]:
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = f.get_tensors()
    except SafetensorError as err:
        raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from None
    if METAS_KEY not in metadata:
        raise CheckpointError(f"{path}: header metadata lacks {METAS_KEY!r}; not a {FORMAT_NAME} weight file")
    metas = metas_from_json(metadata[METAS_KEY])
    newer = sorted({m.encoding.value for m in metas.values() if m.codec.since > version})
    if newer:
        raise CheckpointError(f"{path}: encodings {newer} need a newer format than the recorded version {version}")
    return tensors, metas
