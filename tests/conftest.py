"""Shared pytest setup: makes helper modules in tests/ importable under --import-mode=importlib
(which leaves sys.path alone) and registers the olah Hub-mirror fixture (`olah_hub`) and the fixtures of
the tiny transformers repo it serves (`tiny_bert`, `hub_env`)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

pytest_plugins = ["olah_server", "tiny_bert_repo"]

# One intra-op thread: the suite's tensors are small, and two torch threads on a shared 2-core machine
# were measured 10x slower than one when anything else ran beside the tests.
import torch  # noqa: E402

torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _machine_caches_in_a_temporary_folder(tmp_path_factory: pytest.TempPathFactory):
    """The per-machine measurement caches (threshold selection, sparse kernels) go to a folder of this
    session, not the user's ~/.cache: a test run neither reads nor leaves measurements there."""
    folder = tmp_path_factory.mktemp("machine-caches")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ZOO_SELECTION_CACHE", str(folder / "selection.json"))
        mp.setenv("ZOO_KERNEL_CACHE", str(folder / "sparse_kernels.json"))
        yield
