"""Hostile and damaged files and arguments (issue 13, items 2-4): each is refused with a typed, one-line
error before anything is allocated or built, and an edited report.json is refused by its checksum."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

import zoo
from zoo.api import instantiate
from zoo.cli import main
from zoo.compress import Recipe
from zoo.compress.checkpoint import (
    check_config,
    load_checkpoint,
    read_config,
    read_report,
    save_checkpoint,
    write_report,
)
from zoo.compress.formats import decompress_state_dict, metas_from_json
from zoo.errors import CheckpointError, ChecksumError, InvalidArgumentError, RecipeError, UnsupportedModelError
from zoo.evaluate import VariantReport
from zoo.hub_ids import read_zoo_repo
from zoo.models import build_model, get_entry
from zoo.repo_readers import RepoSnapshot

ENTRY = "test_resnet.zoo_digits"
CONFIG = {"name": "n", "base_model": "b", "arch": "test_resnet", "model_kwargs": {}, "recipe": None}
REPORT = {"name": "n", "base_model": "b", "task": "image-classification", "dataset": "digits", "split": "test",
          "metrics": {"top1": 0.9}, "metric_average": "micro", "flops_dense": 10, "flops_sparse": 5,
          "params_total": 4, "params_nonzero": 2, "bytes_on_disk": 100, "latency_ms": 1.5}


def _decode(stored: dict, metas: dict, **kwargs):
    return decompress_state_dict(stored, metas_from_json(json.dumps(metas)), **kwargs)


def _int8(values: torch.Tensor, scale: torch.Tensor, encoding: str = "int8") -> tuple[dict, dict]:
    stored = {"w.weight.values": values, "w.weight_scale": scale}
    metas = {"w.weight": {"encoding": encoding, "shape": list(values.shape), "dtype": "float32"},
             "w.weight_scale": {"encoding": "dense", "shape": list(scale.shape), "dtype": str(scale.dtype)[6:]}}
    return stored, metas


# The decoder -------------------------------------------------------------------------------------------

def test_sizes_are_bounded_before_anything_is_allocated(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(CheckpointError, match="refused before allocating"):  # a shape of 2**70
        _decode({"t": torch.zeros(1)}, {"t": {"encoding": "dense", "shape": [2**70], "dtype": "float32"}})
    # a huge all-zero float64 bitmask: 1 bit per element on disk, 64 decoded
    n = 8 * 2**20
    stored = {"t.bitmask": torch.zeros(n // 8, dtype=torch.uint8), "t.values": torch.zeros(0, dtype=torch.float64)}
    metas = {"t": {"encoding": "bitmask", "shape": [n], "dtype": "float64"}}
    monkeypatch.setenv("ZOO_MAX_DECODED_BYTES", str(n * 8 - 1))
    with pytest.raises(CheckpointError, match="more than .* bytes"):
        _decode(stored, metas)
    monkeypatch.setenv("ZOO_MAX_DECODED_BYTES", str(n * 8))
    assert _decode(stored, metas)["t"].shape == (n,)
    monkeypatch.setenv("ZOO_MAX_DECODED_BYTES", "lots")
    with pytest.raises(CheckpointError, match="ZOO_MAX_DECODED_BYTES"):
        _decode(stored, metas)


@pytest.mark.parametrize("dims", [[1] * 33, [[3]], [-1], [True]])
def test_odd_shapes_are_refused(dims) -> None:
    with pytest.raises(CheckpointError, match="shape"):
        metas_from_json(json.dumps({"t": {"encoding": "dense", "shape": dims, "dtype": "float32"}}))


def test_scales_and_codes_off_the_format_are_refused() -> None:
    with pytest.raises(CheckpointError, match="-128"):
        _decode(*_int8(torch.full((2, 2), -128, dtype=torch.int8), torch.ones(2)))
    with pytest.raises(CheckpointError, match="finite"):
        _decode(*_int8(torch.ones(2, 2, dtype=torch.int8), torch.tensor([1.0, float("inf")])))
    with pytest.raises(CheckpointError, match="float8_e4m3fn"):
        _decode(*_int8(torch.ones(2, 2, dtype=torch.int8), torch.ones(2).to(torch.float8_e4m3fn)))
    empty = _decode(*_int8(torch.zeros(0, dtype=torch.int8), torch.zeros(0)))  # empty int8 with an empty scale
    assert empty["w.weight"].shape == (0,)


def test_empty_low_bit_weight_decodes() -> None:
    stored = {"w.weight.values": torch.zeros(0, dtype=torch.uint8), "w.weight_scale": torch.ones(0),
              "w.weight_bits": torch.tensor(4)}
    metas = {"w.weight": {"encoding": "int4", "shape": [0, 2], "dtype": "float32"},
             "w.weight_scale": {"encoding": "dense", "shape": [0], "dtype": "float32"},
             "w.weight_bits": {"encoding": "dense", "shape": [], "dtype": "int64"}}
    assert _decode(stored, metas)["w.weight"].shape == (0, 2)


def test_deeply_nested_json_is_refused_without_recursion(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="nests 100000 levels"):
        metas_from_json("[" * 100_000 + "]" * 100_000)
    folder = save_checkpoint(tmp_path / "ck", {"w": torch.ones(3)}, config=CONFIG)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "x": 1})[:-1] + ', "y": ' + "[" * 50_000 + "]" * 50_000 + "}")
    with pytest.raises(CheckpointError, match="nests 50001 levels"):
        load_checkpoint(folder)


def test_weights_built_into_the_model_must_fit_it() -> None:
    entry = get_entry(ENTRY)
    state = build_model(entry).state_dict()
    with pytest.raises(CheckpointError, match="float64, the model takes torch.float32"):
        instantiate(entry, {**state, "fc.weight": state["fc.weight"].double()})
    with pytest.raises(CheckpointError, match="float16"):
        instantiate(entry, {**state, "fc.bias": state["fc.bias"].half()})
    with pytest.raises(CheckpointError, match="do not fit"):
        instantiate(entry, {**state, "fc.weight": state["fc.weight"][:3]})
    with pytest.raises(CheckpointError, match="architecture"):
        instantiate(entry, state, {"widths": "narrow"})
    with pytest.raises(CheckpointError):
        instantiate(entry, {k: v for k, v in state.items() if k != "fc.weight"})
    assert instantiate(entry, state)(torch.zeros(1, 1, 8, 8)).shape == (1, 10)


# config.json -----------------------------------------------------------------------------------------

@pytest.fixture
def saved(tmp_path: Path) -> Path:
    return save_checkpoint(tmp_path / "ck", {"w": torch.ones(3)}, config={**CONFIG, "sparsity": 0.5})


@pytest.mark.parametrize(("edit", "message"), [
    ({"sparsity": "lots"}, "sparsity='lots'"), ({"sparsity": 1.5}, "sparsity=1.5"), ({"arch": ""}, "arch"),
    ({"model_kwargs": [1]}, "model_kwargs"), ({"recipe": "prune"}, "recipe"), ({"quant": 8}, "quant"),
    ({"report": {"sha256": 1}}, "report"),
])
def test_config_values_are_checked(saved: Path, edit: dict, message: str) -> None:
    config = {**json.loads((saved / "config.json").read_text()), **edit}
    (saved / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=message):
        read_config(saved)


@pytest.mark.parametrize("raw", [b"\xff\xfe{}", b"[1, 2]", b'"text"', b"{", b'{"format": "zoo-compressed", "a": NaN}'])
def test_config_that_is_not_a_json_object_is_refused(saved: Path, raw: bytes) -> None:
    (saved / "config.json").write_bytes(raw)
    with pytest.raises(CheckpointError):
        read_config(saved)


def test_a_pushed_repo_config_is_validated_before_use(saved: Path) -> None:
    config = json.loads((saved / "config.json").read_text())
    del config["base_model"]
    with pytest.raises(CheckpointError, match="lacks base_model"):
        read_zoo_repo(RepoSnapshot("org/x", "a" * 40, config, ("config.json",)))
    with pytest.raises(CheckpointError, match="sparsity"):
        read_zoo_repo(RepoSnapshot("org/x", "a" * 40, {**config, "base_model": "b", "sparsity": "lots"}, ()))
    bare = {key: value for key, value in config.items() if key != "entry"}
    with pytest.raises(CheckpointError, match="names no base model"):  # found by benchmarks/fuzz.py at 10^5 inputs
        read_zoo_repo(RepoSnapshot("org/x", "a" * 40, {**bare, "base_model": None}, ("config.json",)))


def test_a_recipe_reads_in_a_fresh_interpreter_that_imported_no_step_module() -> None:
    """Found by benchmarks/fuzz.py: `zoo.compress.recipe.Recipe.from_json` before any step module was imported
    knew no config type; reading a recipe now registers them all first."""
    import subprocess
    import sys

    code = ("import json; from zoo.compress.recipe import Recipe; print(Recipe.from_json(json.dumps("
            "{'recipe_version': 1, 'steps': [{'type': 'MagnitudePruningConfig', 'version': 1, "
            "'config': {'sparsity': 0.5}}]})).steps[0].sparsity)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "0.5", done.stderr[-500:]


def test_a_variant_whose_name_or_arch_is_not_the_entrys_is_refused(tmp_path: Path) -> None:
    from zoo.api import _from_checkpoint

    entry = get_entry(ENTRY)
    state = build_model(entry).state_dict()
    config = {"name": ENTRY + "_os50", "base_model": ENTRY, "arch": "test_resnet", "model_kwargs": {}, "recipe": None}
    folder = save_checkpoint(tmp_path / "ok", state, config=config)
    assert _from_checkpoint(entry, folder, source="cache", name=ENTRY + "_os50").zoo.report is None
    with pytest.raises(CheckpointError, match="not 'test_resnet.zoo_digits_os90'"):
        _from_checkpoint(entry, folder, source="cache", name=ENTRY + "_os90")
    folder = save_checkpoint(tmp_path / "arch", state, config={**config, "arch": "resnet18"})
    with pytest.raises(CheckpointError, match="'resnet18' model"):
        _from_checkpoint(entry, folder, source="cache")


# report.json -----------------------------------------------------------------------------------------

def test_report_is_covered_by_the_config_checksum(saved: Path) -> None:
    write_report(saved, REPORT)
    assert read_config(saved)["report"]["bytes"] == (saved / "report.json").stat().st_size
    assert VariantReport.from_dict(read_report(saved)).metrics == {"top1": 0.9}
    edited = json.loads((saved / "report.json").read_text())
    edited["metrics"]["top1"] = 1.0  # a tamperer's 100 %, in range
    (saved / "report.json").write_text(json.dumps(edited, indent=2) + "\n")
    with pytest.raises(ChecksumError, match="report.json"):
        read_report(saved)
    (saved / "report.json").unlink()
    assert read_report(saved) is None  # not measured: nothing false is shown
    load_checkpoint(saved)  # the weights still load: only the report is refused


def test_a_report_the_config_does_not_record_is_unverified(saved: Path) -> None:
    (saved / "report.json").write_text(json.dumps(REPORT))  # as written before the zoo recorded it
    with pytest.warns(UserWarning, match="not covered by a checksum"):
        assert read_report(saved) is None


@pytest.mark.parametrize(("edit", "message"), [
    ({"metrics": {"top1": 1.5}}, "top1=1.5"), ({"flops_dense": -1}, "flops_dense"), ({"latency_ms": float("nan")}, "latency"),
    ({"sparsity": "lots"}, "sparsity"), ({"params_nonzero": 9}, "params_nonzero"), ({"extra": 1}, "unknown keys"),
    ({"layers": [{"name": "fc"}]}, "layers"), ({"machine": {"cpu": 1}}, "machine"),
])
def test_report_values_out_of_range_are_refused(edit: dict, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        VariantReport.from_dict({**REPORT, **edit})
    with pytest.raises(CheckpointError, match="lacks base_model"):
        VariantReport.from_dict({k: v for k, v in REPORT.items() if k != "base_model"})
    with pytest.raises(CheckpointError, match="JSON object"):
        VariantReport.from_json(b"[1]")


# Recipes and zoo.load's arguments ----------------------------------------------------------------------

BILLION_LAUGHS = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))


@pytest.mark.parametrize(("text", "message"), [
    (b"\xff\xfe", "not UTF-8"), ("[" * 10_000, "nests"), ("a:\n" + "".join(" " * i + "b:\n" for i in range(1, 80)), "nests"),
    ("recipe_version: 1\nsteps:\n- {type: [a], version: 1, config: {}}\n", "'type'"),
    (BILLION_LAUGHS, "anchors are not allowed"), ("recipe_version: 1\nsteps: *x\n", "alias"),
    ("recipe_version: 1\nsteps: !!python/object:os.system {}\n", "python/object"),
])
def test_hostile_yaml_recipes_are_refused_quickly(text, message: str) -> None:
    start = time.perf_counter()
    with pytest.raises(RecipeError, match=message):
        Recipe.from_yaml(text)
    assert time.perf_counter() - start < 1.0


def test_hostile_json_recipes_are_refused() -> None:
    for text in (b"\xff", "[" * 10_000, '{"recipe_version": 1, "steps": [{"type": [], "version": 1, "config": {}}]}',
                 '{"recipe_version": 1, "steps": [{"type": "MagnitudePruningConfig", "version": "1", "config": {}}]}'):
        with pytest.raises(RecipeError):
            Recipe.from_json(text)


def test_a_bad_recipe_file_is_one_line_at_the_cli(tmp_path: Path) -> None:
    env = {"ZOO_HUB": str(tmp_path / "hub"), "ZOO_CACHE": str(tmp_path / "cache")}
    for name, content in (("r.yaml", BILLION_LAUGHS.encode()), ("r.json", b"\xff\xfe"), ("r.yml", b"steps: [[[[")):
        (tmp_path / name).write_bytes(content)
        result = CliRunner().invoke(main, ["compress", ENTRY, "--recipe", str(tmp_path / name)], env=env)
        assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
        assert "recipe" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("args", [(None,), (123,), ("",), (ENTRY, {"recipe": "x"}), (ENTRY, {"recipe": {}}),
                                  (ENTRY, {"sparsity": "0.5"}), (ENTRY, {"quant": 8}), (ENTRY, {"revision": None})])
def test_load_refuses_arguments_of_the_wrong_type(tmp_path: Path, args: tuple) -> None:
    name, kwargs = args[0], (args[1] if len(args) > 1 else {})
    store = zoo.store.Store(hub=zoo.hub.LocalHub(tmp_path / "hub"), cache_root=tmp_path / "cache")
    with pytest.raises(InvalidArgumentError):
        zoo.load(name, store=store, progress=False, **kwargs)
    assert not (tmp_path / "cache").exists()


def test_hub_repo_config_that_is_not_utf8_is_typed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from zoo import hub_ids

    folder = tmp_path / "snap"
    folder.mkdir()
    (folder / "config.json").write_bytes(b'{"format": "\xff"}')
    save_file({"w": torch.ones(1)}, str(folder / "model.safetensors"))
    monkeypatch.setattr("zoo.hub.cached_or_download", lambda *a, **k: folder)  # a commit id: read from the cache
    with pytest.raises(UnsupportedModelError, match="not UTF-8"):
        hub_ids.read_repo("org/x", "a" * 40, store=zoo.store.Store(hub=zoo.hub.LocalHub(tmp_path / "hub")))
    check_config(json.loads(json.dumps({**CONFIG, "format": "zoo-compressed", "format_version": 1,
                                         "files": {"model.safetensors": {"sha256": "0", "bytes": 1}}})), "x")


def test_an_edited_report_is_never_shown_as_measured(tmp_path: Path) -> None:
    from zoo.api import _from_checkpoint

    entry = get_entry(ENTRY)
    config = {"name": ENTRY, "base_model": ENTRY, "arch": "test_resnet", "model_kwargs": {}, "recipe": None}
    folder = save_checkpoint(tmp_path / "ck", build_model(entry).state_dict(), config=config)
    write_report(folder, {**REPORT, "name": ENTRY, "base_model": ENTRY})
    assert _from_checkpoint(entry, folder, source="hub").zoo.report.metrics == {"top1": 0.9}
    (folder / "report.json").write_text(json.dumps({**REPORT, "metrics": {"top1": 1.0}}))
    for source in ("hub", "cache"):  # never shown as measured; the cache measures it again (test_load)
        with pytest.warns(UserWarning, match="report.json: SHA-256 .* not measured"):
            assert _from_checkpoint(entry, folder, source=source).zoo.report is None
