"""The model-family pages' generated tables match the code and the committed runs
(scripts/model_families_tables.py writes them; docs/guide/models.md, docs/results/model-families.md,
docs/guide/performance.md)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_generated_blocks_are_current():
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "model_families_tables.py"), "--check"],
                          capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stdout + done.stderr + "\nrun: python scripts/model_families_tables.py"


def test_every_family_is_on_the_models_page():
    from pfedlora.models.families import FAMILIES

    page = (ROOT / "docs" / "guide" / "models.md").read_text()
    assert all(f"| `{family}` |" in page for family in FAMILIES)
