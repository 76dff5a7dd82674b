"""Shared pytest setup: makes helper modules in tests/ importable under --import-mode=importlib
(which leaves sys.path alone) and registers the olah Hub-mirror fixture (`olah_hub`)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

pytest_plugins = ["olah_server"]
