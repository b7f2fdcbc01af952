"""The import contracts cover every built-in algorithm: a new one added to the registry but not to the
forbidden contract would let a runtime import it unnoticed."""

import tomllib
from pathlib import Path

from pfedlora.registry import BUILTIN_MODULES


def test_the_forbidden_contract_names_every_built_in_algorithm():
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    contracts = pyproject["tool"]["importlinter"]["contracts"]
    forbidden = next(c for c in contracts if c["type"] == "forbidden")
    assert set(forbidden["forbidden_modules"]) == set(BUILTIN_MODULES.values())
    assert {"pfedlora.federation", "pfedlora.experiments", "pfedlora.export"} <= set(forbidden["source_modules"])


def test_every_built_in_algorithm_has_its_own_colour():
    from pfedlora.experiments.report import algorithm_colour

    colours = [algorithm_colour(name) for name in BUILTIN_MODULES]
    assert len(set(colours)) == len(colours)
