"""`zoo.load` of a cached 90 %-sparse variant against loading the dense safetensors file into the same
model, side by side in one process (ResNet-50, 25.6M parameters, random weights: speed does not depend
on their values).

    python benchmarks/bench_load.py [--repeats 7]

Rows, each the median of `--repeats` interleaved runs with the files warm in the page cache:
- dense, as users do: `timm.create_model("resnet50")` then `load_state_dict(load_file(...))`;
- dense, built on the meta device and assigned (`zoo.load` of the dense base from the local hub);
- `zoo.load("resnet50.a1_in1k", sparsity=0.9, method="oneshot")` from the variant cache: SHA-256
  check, decode (entropy-coded masks and values, format version 2), meta build, assign;
- the same variant re-saved with the plain encodings (format version 1, what the zoo wrote before the
  entropy coding) in a copy of the cache, loaded the same way;
- the steps of the cached sparse load, timed alone: SHA-256 of the weight file, reading the stored
  tensors, `decompress_state_dict`, and building the model from the decoded state dict.
Targets: the sparse load <= 1.5x timm's dense load, and <= 1.2x the zoo's own (meta-built) dense load.
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file, save_file

import zoo
from zoo import api
from zoo.compress import checkpoint as ckpt
from zoo.compress.formats import decompress_state_dict
from zoo.evaluate.machine import current_machine
from zoo.hub import LocalHub
from zoo.models import get_entry
from zoo.store import Store

NAME = "resnet50.a1_in1k"
SPARSE = "zoo.load 90% sparse, cached (zstd, v2)"
ZOO_DENSE = "zoo.load dense base (meta build + assign)"


def plain_copy(tmp: Path, store: Store, folder: Path) -> Store:
    """A copy of `store`'s cache in which the variant at `folder` is re-saved with the plain (version-1)
    encodings; its report is kept, so loading it measures nothing."""
    root = tmp / "cache-plain"
    shutil.copytree(store.cache_root, root)
    plain = root / folder.relative_to(store.cache_root)
    state_dict, config = ckpt.load_checkpoint(plain)
    report = (plain / api.REPORT_FILE).read_bytes()
    body = {k: v for k, v in config.items() if k not in ckpt.RESERVED_CONFIG_KEYS}
    ckpt.save_checkpoint(plain, state_dict, config=body, entropy_coding=False)
    (plain / api.REPORT_FILE).write_bytes(report)
    assert ckpt.read_config(plain)["format_version"] == 1
    return Store(hub=store.hub, cache_root=root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        store = Store(hub=LocalHub(tmp / "hub"), cache_root=tmp / "cache")
        torch.manual_seed(0)
        dense = timm.create_model("resnet50")
        repo = tmp / "repo"
        repo.mkdir()
        save_file({k: v.contiguous() for k, v in dense.state_dict().items()}, str(repo / "model.safetensors"))
        (repo / "config.json").write_text(json.dumps({"architecture": "resnet50", "num_classes": 1000}))
        store.hub.push(f"timm/{NAME}", repo, message="random ResNet-50 weights for the load benchmark")
        dense_file = store.hub.file(f"timm/{NAME}", "model.safetensors")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # no ImageNet here: the task metric is not measured
            sparse = zoo.load(NAME, sparsity=0.9, method="oneshot", store=store, progress=False)
        folder = sparse.zoo.path
        sparse_bytes = (folder / ckpt.WEIGHTS_FILE).stat().st_size
        plain_store = plain_copy(tmp, store, folder)
        plain_folder = plain_store.cache_root / folder.relative_to(store.cache_root)
        plain_bytes = (plain_folder / ckpt.WEIGHTS_FILE).stat().st_size
        weights = folder / ckpt.WEIGHTS_FILE
        stored, metas = ckpt._read_weights(weights, ckpt.read_config(folder)["format_version"])
        decoded = decompress_state_dict(stored, metas)
        entry = get_entry(NAME)

        def timm_dense() -> None:
            model = timm.create_model("resnet50")
            model.load_state_dict(load_file(str(dense_file)))

        def zoo_dense() -> None:
            assert zoo.load(NAME, store=store, progress=False).zoo.source == "hub"

        def zoo_sparse() -> None:
            assert zoo.load(NAME, sparsity=0.9, method="oneshot", store=store, progress=False).zoo.source == "cache"

        def zoo_sparse_plain() -> None:
            model = zoo.load(NAME, sparsity=0.9, method="oneshot", store=plain_store, progress=False)
            assert model.zoo.source == "cache" and model.zoo.path == plain_folder

        runs = {"timm dense (create_model + load_state_dict)": timm_dense,
                ZOO_DENSE: zoo_dense,
                SPARSE: zoo_sparse,
                "zoo.load 90% sparse, cached (plain bitmask, v1)": zoo_sparse_plain,
                "  step: SHA-256 of the weight file": lambda: ckpt.sha256_file(weights),
                "  step: read the stored tensors (safetensors)": lambda: ckpt._read_weights(weights, 2),
                "  step: decompress_state_dict": lambda: decompress_state_dict(stored, metas),
                "  step: build the model and assign (api.instantiate)": lambda: api.instantiate(entry, decoded)}
        times: dict[str, list[float]] = {name: [] for name in runs}
        for fn in runs.values():
            fn()  # warm-up: page cache, imports, first-call allocations
        for _ in range(args.repeats):
            for name, fn in runs.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        medians = {name: statistics.median(ts) for name, ts in times.items()}
        sparse_time = medians[SPARSE]
        print(f"ResNet-50, {current_machine().cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}; "
              f"dense file {dense_file.stat().st_size:,} bytes, sparse checkpoint {sparse_bytes:,} bytes "
              f"(plain encodings: {plain_bytes:,})\n")
        print("| load | ms (median) | zstd sparse / this |\n|---|---:|---:|")
        for name, seconds in medians.items():
            print(f"| {name} | {1000 * seconds:.1f} | {sparse_time / seconds:.2f} |")
        baseline = medians["timm dense (create_model + load_state_dict)"]
        zoo_dense_time = medians[ZOO_DENSE]
        print(f"\ntarget sparse <= 1.5x timm dense: {'met' if sparse_time <= 1.5 * baseline else 'NOT met'} "
              f"({sparse_time / baseline:.2f}x); target sparse <= 1.2x the zoo's dense load: "
              f"{'met' if sparse_time <= 1.2 * zoo_dense_time else 'NOT met'} ({sparse_time / zoo_dense_time:.2f}x)")


if __name__ == "__main__":
    main()
