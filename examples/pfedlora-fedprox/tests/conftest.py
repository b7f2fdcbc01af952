import importlib
import sys
from pathlib import Path

import pytest

# run from a source checkout without installing the example
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))


@pytest.fixture(autouse=True)
def fedprox_registered():
    """Importing the module registers ``fedprox`` (another test may have dropped it since)."""
    from pfedlora import registry

    if "fedprox" not in registry.names():
        sys.modules.pop("pfedlora_fedprox", None)
        importlib.import_module("pfedlora_fedprox")
