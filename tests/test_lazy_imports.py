"""Importing the zoo is light and acyclic: `import zoo`, listing the entries and `zoo --help` import no
family's model, task or data code (nor torch, torchmetrics or transformers), core modules never import a
family at module level, and every family module imports first in a fresh interpreter."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

from zoo.families import FAMILY_MODULES, RUNTIME_MODULES

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "torchmetrics", "transformers", "timm")
FAMILY_CODE = tuple(f"{package}.{module}" for package in FAMILY_MODULES.values() for module in RUNTIME_MODULES)


def imported_after(code: str) -> set[str]:
    """The modules a fresh interpreter has imported after running `code`."""
    probe = f"import json, sys\n{code}\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout.splitlines()[-1]))


def test_import_zoo_imports_no_family_code_and_no_heavy_library() -> None:
    modules = imported_after("import zoo")
    assert not modules & {*HEAVY, *FAMILY_CODE}, sorted(modules & {*HEAVY, *FAMILY_CODE})


def test_listing_and_describing_entries_imports_only_the_entries_modules() -> None:
    modules = imported_after("import zoo\nentries = zoo.list_entries()\nassert len(entries) > 30\n"
                             "zoo.info('resnet18.zoo_digits'); zoo.get_entry('wavernn.zoo_espeak')")
    assert not modules & {*HEAVY, *FAMILY_CODE}, sorted(modules & {*HEAVY, *FAMILY_CODE})
    assert {f"{package}.entries" for package in FAMILY_MODULES.values()} <= modules


def test_cli_help_and_list_import_no_torch() -> None:
    for args in (["--help"], ["list"]):
        code = f"from zoo.cli import main\ntry:\n    main({args!r})\nexcept SystemExit:\n    pass"
        modules = imported_after(code)
        assert not modules & {*HEAVY, *FAMILY_CODE}, (args, sorted(modules & {*HEAVY, *FAMILY_CODE}))


def test_a_family_is_imported_when_its_entry_is_first_built() -> None:
    modules = imported_after("import zoo\nfrom zoo.models import build_model\n"
                             "build_model(zoo.get_entry('test_irn.zoo_skimage'))")
    invertible = {f"zoo.families.invertible.{m}" for m in RUNTIME_MODULES}
    assert invertible <= modules
    assert not modules & (set(FAMILY_CODE) - invertible), "only the family that was asked for"


def _module_level_imports(path: Path) -> set[str]:
    """Modules a file imports at module level (not inside functions or `if TYPE_CHECKING:`)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def _zoo_module_files() -> dict[str, Path]:
    files = {}
    for path in (ROOT / "zoo").rglob("*.py"):
        parts = path.relative_to(ROOT).with_suffix("").parts
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return files


def test_core_modules_never_import_a_family_at_module_level() -> None:
    for name, path in _zoo_module_files().items():
        if name.startswith("zoo.families.") or name == "zoo.families":
            continue
        families = {m for m in _module_level_imports(path) if m.startswith("zoo.families")}
        assert not families, f"{name} imports {sorted(families)} at module level"


def test_the_module_level_import_graph_of_the_zoo_has_no_cycle() -> None:
    files = _zoo_module_files()
    graph = {name: {m for m in _module_level_imports(path) if m in files and m != name} for name, path in files.items()}
    for name in graph:  # a package's __init__ runs before its modules: `a.b` depends on `a`
        parent = name.rpartition(".")[0]
        if parent in graph and parent != "zoo":
            graph[name].add(parent)
    state: dict[str, int] = {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == 2:
            return
        assert state.get(name) != 1, f"import cycle: {' -> '.join(path + [name])}"
        state[name] = 1
        for dep in sorted(graph[name]):
            visit(dep, path + [name])
        state[name] = 2

    for name in sorted(graph):
        visit(name, [])


# One interpreter imports the third-party libraries once (torch alone takes seconds), then forks a child
# per family module; each child has no zoo module loaded, so it imports that module first.
_FORK_EACH = """
import importlib, os, sys, traceback
for heavy in ("torch", "torchmetrics", "transformers", "timm"):
    importlib.import_module(heavy)
assert not [m for m in sys.modules if m == "zoo" or m.startswith("zoo.")]
failed = []
for module in sys.argv[1:]:
    pid = os.fork()
    if pid == 0:
        try:
            importlib.import_module(module)
        except BaseException:
            traceback.print_exc()
            os._exit(1)
        os._exit(0)
    if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0:
        failed.append(module)
print("FAILED", *failed)
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs os.fork")
def test_every_family_module_imports_first_in_a_fresh_interpreter() -> None:
    modules = [f"{package}.{m}" for package in FAMILY_MODULES.values() for m in ("entries", *RUNTIME_MODULES)]
    result = subprocess.run([sys.executable, "-c", _FORK_EACH, *modules], capture_output=True, text=True, cwd=ROOT,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["FAILED"], result.stderr[-3000:]


@pytest.mark.parametrize("family", sorted(FAMILY_MODULES))
def test_each_family_provides_what_its_entries_module_declares(family: str) -> None:
    from zoo.data import DATASETS
    from zoo.families import ensure_family, entries_module
    from zoo.models import FAMILIES, list_entries
    from zoo.tasks import TASKS

    ensure_family(family)
    declared = entries_module(family)
    assert set(declared.MODEL_FAMILIES) <= set(FAMILIES)
    assert set(declared.TASKS) <= set(TASKS)
    assert set(declared.DATASETS) <= set(DATASETS)
    from zoo.repo_readers import REPO_READERS

    mine = [e for e in list_entries() if e.family in declared.MODEL_FAMILIES]
    readers = [name for name, reader in REPO_READERS.items() if reader.__module__ == declared.__name__]
    assert mine or readers  # registry entries, or a reader that makes them from Hub repos
    assert all(e.task in declared.TASKS for e in mine)
    data = {e.eval_data.name for e in mine} | {e.train.data.name for e in mine if e.train is not None}
    assert data <= set(declared.DATASETS)


def test_quant_scheme_names_match_the_quantizers() -> None:
    from zoo.compress import lowbit
    from zoo.compress.quantization import QUANT_SCHEMES as int8_schemes
    from zoo import quant_schemes

    assert int8_schemes == (quant_schemes.INT8,)
    assert set(quant_schemes.WEIGHT_BITS_CODES.values()) == set(lowbit.WEIGHT_BITS)
    assert set(quant_schemes.ACT_BITS) | {lowbit.NO_ACT_QUANT} == set(lowbit.ACT_BITS)
    assert set(quant_schemes.PROXY_CODES) == set(lowbit.STE_PROXIES)


def test_train_options_parse_their_text_form_and_refuse_bad_values() -> None:
    from zoo.errors import InvalidArgumentError
    from zoo.options import TrainOptions

    short = TrainOptions(epochs=1, finetune_epochs=2, latency_seconds=0.05)
    assert TrainOptions.parse(short.to_text()) == short
    assert TrainOptions.parse("") == TrainOptions() and TrainOptions().cache_key() == ""
    assert short.cache_key() != TrainOptions(epochs=1).cache_key() != ""
    for bad in ("epochs=0", "epochs=1.5", "steps=3", "epochs", "latency_seconds=-1"):
        with pytest.raises(InvalidArgumentError):
            TrainOptions.parse(bad)


def test_finetune_epochs_shorten_the_default_gradual_recipe() -> None:
    import zoo
    from zoo.options import TrainOptions
    from zoo.variants import VariantSpec

    spec = VariantSpec(zoo.get_entry("test_resnet.zoo_digits"), sparsity=0.5)
    assert spec.recipe().steps[0].epochs == 5  # half the entry's 10
    assert spec.recipe(TrainOptions(finetune_epochs=1)).steps[0].epochs == 1
