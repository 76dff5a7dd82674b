"""Kills at random points, and many processes at once (issue 13, items 5 and 6).

    OMP_NUM_THREADS=1 python benchmarks/bench_kill.py [--trials 100] [--procs 4 8]

1. SIGKILL a checkpoint swap, a push and a derivation at a random point, `--trials` times each: after each
   kill the previous state must load (the checkpoint: the old or the new weights, whole; the hub: `main`
   a complete revision whose files hash to what was pushed; the cache: the base loads and the variant is
   absent or whole), and the next call must recover and sweep what the killed one left. Each trial forks
   a child from this already-imported process (a kill costs milliseconds, not an interpreter start) and
   kills it after a delay drawn uniformly over one run of the operation.
   The push is `LocalHub.push` of a checkpoint folder assembled in `zoo.locks.scratch_folder` under the
   hub's staging root, as `zoo.publish` does (the card and plots, which are only written there, left out).
2. N processes (fresh interpreters) load one missing variant (`test_resnet.zoo_digits` one-shot 50 %,
   short training options) at once: with the base cached, and with an empty cache (the base trained
   too). Counted: derivations and base trainings (marker files the children write), distinct weights.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import zoo  # noqa: E402
from zoo.compress.checkpoint import load_checkpoint, save_checkpoint  # noqa: E402
from zoo.hub import LocalHub  # noqa: E402
from zoo.locks import scratch_folder  # noqa: E402
from zoo.options import TrainOptions  # noqa: E402
from zoo.store import Store  # noqa: E402

BASE = "test_resnet.zoo_digits"
SHORT = TrainOptions(epochs=1, finetune_epochs=1, latency_seconds=0.05, graph_runtimes=())
CONFIG = {"name": "k", "base_model": None, "arch": "mlp", "model_kwargs": {}, "recipe": None}


def forked(work: Callable[[], None]) -> int:
    """`work()` in a forked child; its pid."""
    pid = os.fork()
    if pid == 0:
        try:
            work()
        finally:
            os._exit(0)
    return pid


def kill_at_random(work: Callable[[], None], span: float, rng: random.Random) -> float:
    pid = forked(work)
    delay = rng.uniform(0.0, span)
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return delay


def timed(work: Callable[[], None]) -> float:
    start = time.perf_counter()
    pid = forked(work)
    _, status = os.waitpid(pid, 0)
    if status != 0:
        raise SystemExit(f"the operation itself failed (status {status})")
    return time.perf_counter() - start


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or ".old-" in p.name)


# 1. kills ----------------------------------------------------------------------------------------------

def kill_swaps(root: Path, trials: int, rng: random.Random) -> dict:
    folder = root / "ck"
    states = [{"w": torch.full((256, 256), float(i))} for i in range(2)]
    save_checkpoint(folder, states[0], config=CONFIG)

    def saves() -> None:
        for i in range(10**9):
            save_checkpoint(folder, states[i % 2], config=CONFIG)

    span = timed(lambda: [save_checkpoint(folder, states[i % 2], config=CONFIG) for i in range(20)]) / 2
    loaded = windows = left = 0
    for _ in range(trials):
        kill_at_random(saves, span, rng)
        windows += not folder.exists()  # killed between the two renames
        left += bool(leftovers(root))
        state, _ = load_checkpoint(folder)  # recovers
        loaded += any(torch.equal(state["w"], s["w"]) for s in states)
        save_checkpoint(folder, states[0], config=CONFIG)  # the next save sweeps
        assert leftovers(root) == [], leftovers(root)
    return {"trials": trials, "previous_or_new_loaded": loaded, "killed_between_renames": windows,
            "leftovers_after_kill": left}


def kill_pushes(root: Path, trials: int, rng: random.Random) -> dict:
    hub = LocalHub(root / "hub")
    repo = "zoo/kill-test"
    pushed: set[str] = set()
    contents = []
    for i in range(2):
        source = root / f"src{i}"
        save_checkpoint(source, {"w": torch.full((512, 512), float(i))}, config=CONFIG)
        contents.append(source)
        pushed |= {hashlib.sha256(p.read_bytes()).hexdigest() for p in source.iterdir()}

    def push(i: int) -> None:
        with scratch_folder(hub.staging_root, "push-") as tmp:
            shutil.copytree(contents[i % 2], tmp / "repo")
            (tmp / "repo" / "n.txt").write_text(str(i))  # a new revision every time
            hub.push(repo, tmp / "repo", message=f"push {i}")

    push(0)

    def pushes() -> None:
        for i in range(1, 10**9):
            push(i)

    span = timed(lambda: [push(i) for i in range(1, 11)]) / 5
    whole = 0
    staged = work = 0
    for _ in range(trials):
        kill_at_random(pushes, span, rng)
        staged += any(p.is_dir() for p in hub.staging_root.iterdir())
        repo_dir = next(hub.root.glob("models--zoo--kill-test"))
        work += any(repo_dir.glob(".zoo-push-*"))
        snapshot = hub.snapshot(repo)
        _, config = load_checkpoint(snapshot)
        hashes = {hashlib.sha256((snapshot / f).read_bytes()).hexdigest() for f in ("model.safetensors", "config.json")}
        whole += hashes <= pushed and config["name"] == "k"
        push(0)  # the next push sweeps both
        assert not any(p.is_dir() for p in hub.staging_root.iterdir()) and not any(repo_dir.glob(".zoo-push-*"))
    return {"trials": trials, "main_whole_after_kill": whole, "staging_left_by_kill": staged,
            "work_folder_left_by_kill": work, "revisions": len(hub.revisions(repo))}


def kill_derivations(root: Path, trials: int, rng: random.Random) -> dict:
    store = Store(hub=LocalHub(root / "hub"), cache_root=root / "cache", options=SHORT)
    zoo.load(BASE, store=store, progress=False)  # the base cached: the previous state
    name = f"{BASE}_os50"

    def derive() -> None:
        torch.set_num_threads(1)
        zoo.load(BASE, sparsity=0.5, method="oneshot", store=store, progress=False)

    span = timed(derive)
    folder_of = lambda: store.cache_root / name  # noqa: E731
    shutil.rmtree(folder_of())
    base_loads = absent = whole = recovered = 0
    for trial in range(trials):
        kill_at_random(derive, span, rng)
        base_loads += bool(store.cached_entries(BASE)) and load_checkpoint(store.cached_entries(BASE)[0]) is not None
        entries = store.cached_entries(name)
        absent += not entries
        for entry in entries:
            load_checkpoint(entry)
            whole += 1
        if trial % 10 == 0:  # the next call recovers: it finds or finishes the variant
            pid = forked(derive)
            _, status = os.waitpid(pid, 0)
            recovered += status == 0 and len(store.cached_entries(name)) == 1
        if folder_of().exists():
            shutil.rmtree(folder_of())
    return {"trials": trials, "base_loads": base_loads, "variant_absent": absent, "variant_whole": whole,
            "next_call_ok": recovered, "next_call_checked": (trials + 9) // 10}


# 2. many processes -----------------------------------------------------------------------------------

_LOADER = textwrap.dedent("""
    import hashlib, json, os, sys
    from pathlib import Path
    import torch
    import zoo, zoo.api
    from zoo.compress.recipe import Recipe
    from zoo.hub import LocalHub
    from zoo.options import TrainOptions
    from zoo.store import Store

    torch.set_num_threads(1)
    root, marks = Path(sys.argv[1]), sys.argv[2]
    def marked(kind, fn):
        def wrapper(*args, **kwargs):
            open(os.path.join(marks, f"{kind}-{os.getpid()}"), "x").close()
            return fn(*args, **kwargs)
        return wrapper
    Recipe.apply = marked("derive", Recipe.apply)
    zoo.api.train_base_model = marked("train", zoo.api.train_base_model)
    store = Store(hub=LocalHub(root / "hub"), cache_root=root / "cache", options=TrainOptions.parse(sys.argv[3]))
    model = zoo.load(sys.argv[4], sparsity=0.5, method="oneshot", store=store, progress=False)
    digest = hashlib.sha256(b"".join(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                                     for t in model.state_dict().values())).hexdigest()
    print(json.dumps({"digest": digest, "source": model.zoo.source}))
""")


def many_processes(root: Path, n: int, base_cache: Path | None) -> dict:
    if base_cache is not None:
        shutil.copytree(base_cache, root / "cache")
    marks = root / "marks"
    marks.mkdir(parents=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    children = [subprocess.Popen([sys.executable, "-c", _LOADER, str(root), str(marks), SHORT.to_text(), BASE],
                                 env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(n)]
    results = []
    for child in children:
        out, err = child.communicate(timeout=1200)
        if child.returncode != 0:
            raise SystemExit(err[-3000:])
        results.append(json.loads(out.strip().splitlines()[-1]))
    kinds = [p.name.split("-")[0] for p in marks.iterdir()]
    return {"processes": n, "base_cached": base_cache is not None, "derivations": kinds.count("derive"),
            "base_trainings": kinds.count("train"), "distinct_weights": len({r["digest"] for r in results}),
            "sources": sorted(r["source"] for r in results), "seconds": round(time.perf_counter() - start, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=100)
    parser.add_argument("--procs", type=int, nargs="*", default=[4, 8])
    parser.add_argument("--seed", type=int, default=13)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rng = random.Random(args.seed)
    results: dict = {"machine": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                     "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    with tempfile.TemporaryDirectory(prefix="bench-kill-") as tmp:
        root = Path(tmp)
        for name, run in (("swap", kill_swaps), ("push", kill_pushes), ("derivation", kill_derivations)):
            (root / name).mkdir()
            start = time.perf_counter()
            results[f"kill_{name}"] = {**run(root / name, args.trials, rng),
                                       "seconds": round(time.perf_counter() - start, 1)}
            print(json.dumps({f"kill_{name}": results[f"kill_{name}"]}), flush=True)
        base_cache = root / "derivation" / "cache"
        shutil.rmtree(base_cache / f"{BASE}_os50", ignore_errors=True)
        for n in args.procs:
            for cached in (True, False):
                key = f"procs_{n}_{'base_cached' if cached else 'empty_cache'}"
                results[key] = many_processes(root / key, n, base_cache if cached else None)
                print(json.dumps({key: results[key]}), flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
