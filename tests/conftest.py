"""Shared pytest setup: makes helper modules in tests/ importable under --import-mode=importlib
(which leaves sys.path alone) and registers the olah Hub-mirror fixture (`olah_hub`)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

pytest_plugins = ["olah_server"]

# One intra-op thread: the suite's tensors are small, and two torch threads on a shared 2-core machine
# were measured 10x slower than one when anything else ran beside the tests.
import torch  # noqa: E402

torch.set_num_threads(1)
