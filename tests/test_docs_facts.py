"""Numbers and names in the docs come from the code (issue 37): counts and lists of the built-in
algorithms (the registry), metric column names (a real run's metrics.csv and summary.json), the
Python version (pyproject.toml) and the torch version (the Makefile). Generated spans
(``<!-- gen:NAME -->``, scripts/gen_docs.py) must be current; prose outside them is compared here."""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest

from pfedlora import registry

ROOT = Path(__file__).resolve().parent.parent
# the pages people read for how the library is now (results pages quote the runs they were made with)
PAGES = ["README.md", *sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md")
                              if "results" not in p.parts and "reference" not in p.parts)]


def _gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _prose(page: str) -> str:
    """The page without code blocks and without generated spans."""
    text = (ROOT / page).read_text()
    text = re.sub(r"```.*?```", "", text, flags=re.S)
    return re.sub(r"<!-- gen:\w+ -->.*?<!-- /gen -->", "", text, flags=re.S)


def test_generated_facts_are_current() -> None:
    gen = _gen_docs()
    values = gen.facts()
    assert values["algorithm_count"] == str(len(registry.BUILTIN_MODULES))
    for page in gen.FACT_PAGES:
        text = page.read_text()
        assert gen.render_facts(text, values) == text, f"{page.name}: stale facts; run python scripts/gen_docs.py"
    algorithms = gen.FLOWS_PAGE.read_text()
    assert gen.settings_table() in algorithms, "algorithms.md: stale settings table; run python scripts/gen_docs.py"


def test_a_stale_fact_is_rewritten() -> None:
    gen = _gen_docs()
    text = "and <!-- gen:baselines -->eight<!-- /gen --> baselines, Python >= <!-- gen:python -->3.10<!-- /gen -->"
    rendered = gen.render_facts(text, {"baselines": "twelve", "python": "3.11"})
    assert rendered == "and <!-- gen:baselines -->twelve<!-- /gen --> baselines, Python >= <!-- gen:python -->3.11<!-- /gen -->"
    with pytest.raises(KeyError):
        gen.render_facts("<!-- gen:nothing -->x<!-- /gen -->", {})


def test_counts_of_algorithms_in_prose_match_the_registry() -> None:
    words = _gen_docs()._NUMBER_WORDS
    baselines = len(registry.BUILTIN_MODULES) - 1
    for page in PAGES:
        prose = _prose(page)
        for match in re.finditer(r"\b(\w+) (?:built-in )?baselines\b", prose, flags=re.I):
            word = match.group(1).lower()
            number = words.index(word) if word in words else int(word) if word.isdigit() else None
            assert number in (None, baselines), f"{page}: {match.group(0)!r}, the registry has {baselines} baselines"
        for match in re.finditer(r"\b(\d+|\w+) built-in algorithms\b", prose, flags=re.I):
            word = match.group(1).lower()
            number = words.index(word) if word in words else int(word) if word.isdigit() else None
            assert number in (None, 1, len(registry.BUILTIN_MODULES)), \
                f"{page}: {match.group(0)!r}, the registry has {len(registry.BUILTIN_MODULES)} algorithms"


def test_the_config_names_every_builtin() -> None:
    from pfedlora.config import Config

    description = Config.model_fields["algorithm"].description
    for name in registry.BUILTIN_MODULES:
        assert name in description, name


def test_algorithms_guide_covers_every_builtin() -> None:
    text = (ROOT / "docs" / "guide" / "algorithms.md").read_text()
    paragraph = next(p for p in text.split("\n\n") if "evaluate each" in " ".join(p.split()))  # what each evaluates
    for name in registry.BUILTIN_MODULES:
        assert f"| `{name}` |" in text, f"algorithms.md: no row for {name}"
        assert f"`{name}`" in paragraph, f"algorithms.md: the evaluation paragraph does not say what {name} evaluates"


def test_versions_in_prose_match_pyproject_and_the_makefile() -> None:
    python = re.search(r'requires-python\s*=\s*">=\s*([\d.]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    torch = re.search(r"^TORCH_SPEC \?= torch==([\w.+]+)", (ROOT / "Makefile").read_text(), flags=re.M).group(1)
    for page in PAGES:
        text = re.sub(r"<!--.*?-->", "", (ROOT / page).read_text(), flags=re.S)
        for found in re.findall(r"Python\s*(?:>=|≥)\s*([\d.]+)", text):
            assert found == python, f"{page}: Python >= {found}, pyproject.toml says {python}"
        for found in re.findall(r"\btorch==([\w.+]+)", text):
            assert found == torch, f"{page}: torch=={found}, the Makefile installs {torch}"


def test_metric_names_in_the_docs_are_the_ones_a_run_writes(tmp_path: Path) -> None:
    from pfedlora.config import build_config
    from pfedlora.federation.simulation import run

    config = build_config({"rounds": 1, "num_clients": 2, "partition": {"kind": "iid"}, "model_pool": ["cnn5"],
                           "dataset": {"max_train_samples": 60, "max_test_samples": 20}})
    run(config, tmp_path / "run", log=lambda _: None)
    columns = set((tmp_path / "run" / "metrics.csv").read_text().splitlines()[0].split(","))
    summary = set(json.loads((tmp_path / "run" / "summary.json").read_text()))
    written = columns | summary | {f"final_{c}" for c in columns}
    assert {"up_bytes", "down_bytes"} <= columns
    for page in PAGES:
        for name in re.findall(r"`(\w+_(?:bytes|flops))`", (ROOT / page).read_text()):
            if name.startswith(("total_", "cum_", "up_", "down_", "train_", "eval_", "server_")) or \
                    name in ("bytes_up", "bytes_down"):
                assert name in written, f"{page}: `{name}` is not a metrics.csv column or summary.json key"
