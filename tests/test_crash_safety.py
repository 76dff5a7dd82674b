"""Issue 13, items 5 to 7: kills between the steps of a checkpoint swap, a cache write and a push leave the
previous state loadable and the next call recovers; leftovers are swept and never counted, listed or
pushed; N processes loading one missing variant derive it once; a variant's name is unique per recipe."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import zoo.atomic
from tiny_zoo import BASE, SHORT, assert_bit_equal, one_torch_thread, store_with_base
from zoo.atomic import is_leftover, leftover_target
from zoo.compress.checkpoint import CONFIG_FILE, load_checkpoint, read_config, save_checkpoint
from zoo.errors import InvalidArgumentError
from zoo.hub import LocalHub
from zoo.locks import scratch_folder, sweep_scratch
from zoo.models import get_entry
from zoo.store import Store
from zoo.variants import VariantSpec, named_sparsity, resolve

ROOT = Path(__file__).resolve().parents[1]
CONFIG = {"name": "t", "base_model": None, "arch": "mlp", "model_kwargs": {}, "recipe": None}
OLD = {"w": torch.arange(6, dtype=torch.float32)}
NEW = {"w": -torch.arange(6, dtype=torch.float32)}


def _python(code: str, *, env: dict[str, str] | None = None) -> subprocess.Popen:
    full = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env=full,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _die_after_first_rename(folder: Path) -> None:
    """Saves NEW over `folder` in a child process that exits (no cleanup, as a kill) right after the swap's
    first rename: the old checkpoint moved aside, the new one not in yet."""
    child = _python(f"""
        import os, torch
        from zoo.compress.checkpoint import save_checkpoint
        real = os.replace
        def dying(src, dst):
            real(src, dst)
            if ".old-" in str(dst):
                os._exit(9)
        os.replace = dying
        save_checkpoint({str(folder)!r}, {{"w": -torch.arange(6, dtype=torch.float32)}}, config={CONFIG!r})
    """)
    _, err = child.communicate(timeout=120)
    assert child.returncode == 9, err


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# The checkpoint swap --------------------------------------------------------------------------------------

def test_a_kill_between_the_swaps_renames_is_recovered_by_the_next_read(tmp_path: Path) -> None:
    folder = tmp_path / "ck"
    save_checkpoint(folder, OLD, config=CONFIG)
    _die_after_first_rename(folder)
    assert not folder.exists() and any(".ck.old-" in n for n in _names(tmp_path))  # the window itself
    assert any(".ck.tmp-" in n for n in _names(tmp_path))
    state, _ = load_checkpoint(folder)  # the next read puts the previous checkpoint back
    assert_bit_equal(state, OLD)
    assert _names(tmp_path) == [".ck.lock", "ck"]  # and sweeps the new one's unfinished copy


def test_a_kill_between_the_swaps_renames_is_recovered_by_the_next_write(tmp_path: Path) -> None:
    folder = tmp_path / "ck"
    save_checkpoint(folder, OLD, config=CONFIG)
    _die_after_first_rename(folder)
    save_checkpoint(folder, NEW, config=CONFIG)
    assert_bit_equal(load_checkpoint(folder)[0], NEW)
    assert _names(tmp_path) == [".ck.lock", "ck"]
    _die_after_first_rename(folder)
    assert read_config(folder)["name"] == "t"  # read_config recovers as well


def test_an_exception_in_the_second_rename_puts_the_old_folder_back(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "ck"
    save_checkpoint(folder, OLD, config=CONFIG)
    real = os.replace

    def failing(src, dst):
        if Path(dst) == folder and ".tmp-" in str(src):
            raise OSError("disk gone")
        return real(src, dst)

    monkeypatch.setattr(zoo.atomic.os, "replace", failing)
    with pytest.raises(OSError, match="disk gone"):
        save_checkpoint(folder, NEW, config=CONFIG)
    monkeypatch.undo()
    assert_bit_equal(load_checkpoint(folder)[0], OLD)
    assert _names(tmp_path) == [".ck.lock", "ck"]


def test_sigkill_at_random_points_of_repeated_saves_always_leaves_a_loadable_checkpoint(tmp_path: Path) -> None:
    folder = tmp_path / "ck"
    save_checkpoint(folder, OLD, config=CONFIG)
    rng = random.Random(13)
    for _ in range(3):
        child = _python(f"""
            import sys, torch
            from zoo.compress.checkpoint import save_checkpoint
            print("ready", flush=True)
            for i in range(10**6):
                save_checkpoint({str(folder)!r}, {{"w": torch.full((6,), float(i % 2))}}, config={CONFIG!r})
        """)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.05, 0.4))
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=60)
        state, _ = load_checkpoint(folder)  # the previous or the new checkpoint, whole
        assert torch.equal(state["w"], torch.zeros(6)) or torch.equal(state["w"], torch.ones(6)) \
            or torch.equal(state["w"], OLD["w"])
        save_checkpoint(folder, OLD, config=CONFIG)  # the next save sweeps what the killed one left
        assert _names(tmp_path) == [".ck.lock", "ck"]


def test_leftover_names() -> None:
    assert is_leftover(".abc.tmp-0123456789ab") and leftover_target(".abc.old-0123456789ab") == "abc"
    assert is_leftover(".abc.lock") and leftover_target(".abc.lock") is None
    assert not is_leftover("abc") and not is_leftover("trained-0123456789abcdef")


# The cache: leftovers never counted, listed or pushed ---------------------------------------------------

def _leave_leftovers(entry: Path) -> tuple[Path, Path]:
    """Copies of a cache entry as a killed save leaves them: an unfinished `.tmp-` (complete files, not
    renamed yet) and a `.old-` one."""
    import shutil

    tmp = entry.parent / f".{entry.name}.tmp-0123456789ab"
    old = entry.parent / f".{entry.name}.old-ba9876543210"
    shutil.copytree(entry, tmp)
    shutil.copytree(entry, old)
    return tmp, old


def test_leftovers_are_not_cache_entries_and_are_swept(tmp_path_factory: pytest.TempPathFactory,
                                                      tmp_path: Path) -> None:
    store = store_with_base(tmp_path_factory, tmp_path)
    (entry,) = store.cached_entries(BASE)
    tmp, old = _leave_leftovers(entry)
    assert store.cached_entries(BASE) == [entry]
    assert not tmp.exists() and not old.exists()  # swept: no save of that key is in flight
    _leave_leftovers(entry)
    entry.rename(entry.parent / f".{entry.name}.old-ffffffffffff")  # killed mid-swap: the entry aside
    assert store.cached_entries(BASE) == [entry]  # put back, once
    assert read_config(entry)["name"] == BASE


def test_leftovers_are_not_listed_and_a_variant_of_them_is_not_pushed(tmp_path_factory: pytest.TempPathFactory,
                                                                      tmp_path: Path) -> None:
    import shutil

    import zoo
    from zoo.catalog import catalog
    from zoo.publish import push

    store = store_with_base(tmp_path_factory, tmp_path)
    with one_torch_thread():
        model = zoo.load(BASE, sparsity=0.5, method="oneshot", store=store, progress=False)
    name = model.zoo.name
    # Only a `.tmp-` copy of the variant in the cache (a first save killed before its rename): not a variant.
    shutil.move(model.zoo.path, model.zoo.path.parent / f".{model.zoo.path.name}.tmp-0123456789ab")
    assert store.cached_entries(name) == []
    assert name not in [row.name for row in catalog(store)]
    with pytest.raises(InvalidArgumentError, match="neither cached nor published"):
        push(name, store=store)
    assert store.hub.list_repos() == []


# A push -----------------------------------------------------------------------------------------------------

def test_a_killed_push_leaves_no_copy_once_the_next_push_ran(tmp_path: Path) -> None:
    root = tmp_path / "staging"
    child = _python(f"""
        import os
        from pathlib import Path
        from zoo.locks import scratch_folder
        with scratch_folder(Path({str(root)!r}), "push-") as folder:
            (folder / "model.safetensors").write_bytes(b"x" * 1000)
            os._exit(9)
    """)
    child.communicate(timeout=60)
    assert [p for p in root.iterdir() if p.is_dir()]  # what the killed push assembled
    with scratch_folder(root, "push-") as mine:  # the next push sweeps it, not its own folder
        assert [p for p in root.iterdir() if p.is_dir()] == [mine]
        assert sweep_scratch(root, "push-") == []
    assert [p for p in root.iterdir()] == []


def test_a_live_push_folder_is_not_swept(tmp_path: Path) -> None:
    root = tmp_path / "staging"
    child = _python(f"""
        import time
        from pathlib import Path
        from zoo.locks import scratch_folder
        with scratch_folder(Path({str(root)!r}), "push-") as folder:
            print(folder, flush=True)
            time.sleep(120)
    """)
    live = Path(child.stdout.readline().strip())
    try:
        assert sweep_scratch(root, "push-") == [] and live.is_dir()
    finally:
        child.kill()
        child.communicate(timeout=60)
    assert sweep_scratch(root, "push-") == [live] and not live.exists()


def test_zoo_push_assembles_under_the_local_hub(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    import zoo
    import zoo.publish
    from zoo.publish import push

    store = store_with_base(tmp_path_factory, tmp_path)
    with one_torch_thread():
        zoo.load(BASE, sparsity=0.5, method="oneshot", store=store, progress=False)
    seen: list[Path] = []
    real = zoo.publish.repo_folder

    def spy(model, card, family, folder):
        seen.append(folder)
        return real(model, card, family, folder)

    monkeypatch.setattr(zoo.publish, "repo_folder", spy)
    with one_torch_thread():
        result = push(f"{BASE}_os50", store=store)
    assert store.hub.has(result.repo_id)
    assert seen[0].is_relative_to(store.hub.staging_root) and not seen[0].exists()
    assert "zoo/" + f"{BASE}_os50" in LocalHub(store.hub.root).list_repos()


# Many processes, one derivation ---------------------------------------------------------------------------

_LOADER = """
    import hashlib, json, os, sys
    import torch
    import zoo, zoo.api
    from zoo.compress.recipe import Recipe
    from zoo.hub import LocalHub
    from zoo.options import TrainOptions
    from zoo.store import Store

    torch.set_num_threads(1)
    root, marks = sys.argv[1], sys.argv[2]
    def marked(kind, fn):
        def wrapper(*args, **kwargs):
            with open(os.path.join(marks, f"{kind}-{os.getpid()}"), "x"):
                pass
            return fn(*args, **kwargs)
        return wrapper
    Recipe.apply = marked("derive", Recipe.apply)
    zoo.api.train_base_model = marked("train", zoo.api.train_base_model)
    from pathlib import Path
    store = Store(hub=LocalHub(Path(root) / "hub"), cache_root=Path(root) / "cache",
                  options=TrainOptions.parse(sys.argv[3]))
    model = zoo.load(sys.argv[4], sparsity=0.5, method="oneshot", store=store, progress=False)
    digest = hashlib.sha256(b"".join(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                                     for t in model.state_dict().values())).hexdigest()
    print(json.dumps({"digest": digest, "source": model.zoo.source}))
"""


def load_in_processes(n: int, root: Path, marks: Path) -> list[dict]:
    """`n` processes started at once, each loading `BASE`'s missing os50 variant into the store at `root`."""
    marks.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    code = textwrap.dedent(_LOADER)
    children = [subprocess.Popen([sys.executable, "-c", code, str(root), str(marks), SHORT.to_text(), BASE],
                                 cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for _ in range(n)]
    results = []
    for child in children:
        out, err = child.communicate(timeout=600)
        assert child.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def test_four_processes_loading_one_missing_variant_derive_it_once(tmp_path_factory: pytest.TempPathFactory,
                                                                  tmp_path: Path) -> None:
    store_with_base(tmp_path_factory, tmp_path)  # the base is cached: the variant is what is missing
    marks = tmp_path / "marks"
    results = load_in_processes(4, tmp_path, marks)
    assert len([p for p in marks.iterdir() if p.name.startswith("derive-")]) == 1
    assert [p for p in marks.iterdir() if p.name.startswith("train-")] == []
    assert len({r["digest"] for r in results}) == 1
    assert sorted(r["source"] for r in results) == ["cache", "cache", "cache", "derived"]
    assert len(Store(cache_root=tmp_path / "cache", hub=LocalHub(tmp_path / "hub")).cached_entries(f"{BASE}_os50")) == 1


# Names, one per recipe ------------------------------------------------------------------------------------

@pytest.mark.parametrize("sparsity", [0.1234561, 0.1234564, 1e-7, 1 / 3, 0.9999999])
def test_a_sparsity_a_name_cannot_hold_is_refused(sparsity: float) -> None:
    entry = get_entry(BASE)
    with pytest.raises(InvalidArgumentError, match="cannot be named"):
        VariantSpec(entry, sparsity=sparsity, method="oneshot")
    with pytest.raises(InvalidArgumentError, match="cannot be named"):
        resolve(BASE, sparsity=sparsity, method="oneshot")


@pytest.mark.parametrize("sparsity", [1e-6, 0.123456, 0.5, 0.9, 0.975, 1 - 0.1, 0.1 + 0.2, 0.999999])
@pytest.mark.parametrize("method", ["oneshot", "gmp", "rigl"])
def test_every_named_sparsity_round_trips(sparsity: float, method: str) -> None:
    spec = VariantSpec(get_entry(BASE), sparsity=sparsity, method=method)
    assert resolve(spec.name) == spec
    assert not resolve(spec.name).is_base
    assert spec.sparsity == named_sparsity(sparsity)


def test_names_of_distinct_sparsities_differ() -> None:
    entry = get_entry(BASE)
    names = {VariantSpec(entry, sparsity=k / 10**6, method="oneshot").name for k in range(1, 2001)}
    assert len(names) == 2000
    assert VariantSpec(entry, sparsity=1e-6, method="oneshot").name == f"{BASE}_os0p0001"
    assert VariantSpec(entry, sparsity=0.123456, method="oneshot").name == f"{BASE}_os12p3456"
