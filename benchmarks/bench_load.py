"""`zoo.load` of a cached 90 %-sparse variant against loading the dense safetensors file into the same
model, side by side in one process (ResNet-50, 25.6M parameters, random weights: speed does not depend
on their values).

    python benchmarks/bench_load.py [--repeats 7]

Rows, each the median of `--repeats` interleaved runs with the files warm in the page cache:
- dense, as users do: `timm.create_model("resnet50")` then `load_state_dict(load_file(...))`;
- dense, built on the meta device and assigned (`zoo.load` of the dense base from the local hub);
- `zoo.load("resnet50.a1_in1k", sparsity=0.9, method="oneshot")` from the variant cache: SHA-256
  check, bitmask decode, meta build, assign.
Target: the sparse load <= 1.5x the dense load.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import timm
import torch
from safetensors.torch import load_file, save_file

import zoo
from zoo.hub import LocalHub
from zoo.store import Store

NAME = "resnet50.a1_in1k"


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
        sparse_bytes = sum(p.stat().st_size for p in sparse.zoo.path.iterdir())

        def timm_dense() -> None:
            model = timm.create_model("resnet50")
            model.load_state_dict(load_file(str(dense_file)))

        def zoo_dense() -> None:
            assert zoo.load(NAME, store=store, progress=False).zoo.source == "hub"

        def zoo_sparse() -> None:
            assert zoo.load(NAME, sparsity=0.9, method="oneshot", store=store, progress=False).zoo.source == "cache"

        runs = {"timm dense (create_model + load_state_dict)": timm_dense,
                "zoo.load dense base (meta build + assign)": zoo_dense,
                "zoo.load 90% sparse, cached": zoo_sparse}
        times: dict[str, list[float]] = {name: [] for name in runs}
        for fn in runs.values():
            fn()  # warm-up: page cache, imports, first-call allocations
        for _ in range(args.repeats):
            for name, fn in runs.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        medians = {name: statistics.median(ts) for name, ts in times.items()}
        sparse_time = medians["zoo.load 90% sparse, cached"]
        print(f"ResNet-50, {torch.get_num_threads()} threads; dense file {dense_file.stat().st_size:,} bytes, "
              f"sparse checkpoint {sparse_bytes:,} bytes\n")
        print("| load | ms (median) | sparse / this |\n|---|---|---|")
        for name, seconds in medians.items():
            print(f"| {name} | {1000 * seconds:.1f} | {sparse_time / seconds:.2f} |")
        baseline = medians["timm dense (create_model + load_state_dict)"]
        print(f"\ntarget sparse <= 1.5x dense: {'met' if sparse_time <= 1.5 * baseline else 'NOT met'} "
              f"({sparse_time / baseline:.2f}x timm dense; "
              f"{sparse_time / medians['zoo.load dense base (meta build + assign)']:.2f}x the meta-built dense load)")


if __name__ == "__main__":
    main()
