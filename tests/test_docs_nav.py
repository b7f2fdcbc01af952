"""The site's navigation (issue 37): grouped as tutorials, how-to guides, reference, explanations and
results, every page reachable, and "When does federating help?" on the home page's first screen."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent


def _nav() -> list:
    # mkdocs.yml may hold python tags in other sections; the nav is plain YAML
    text = (ROOT / "mkdocs.yml").read_text()
    return yaml.safe_load(text[text.index("\nnav:\n"):])["nav"]


def _pages(items: list) -> list[str]:
    out = []
    for item in items:
        for value in item.values() if isinstance(item, dict) else [item]:
            out += _pages(value) if isinstance(value, list) else [value]
    return out


def test_nav_is_grouped_by_kind_of_page() -> None:
    sections = [next(iter(item)) for item in _nav()]
    assert sections == ["Home", "Tutorials", "How-to guides", "Reference", "Explanations", "Results"]
    groups = {next(iter(item)): _pages(next(iter(item.values()))) for item in _nav()[1:]}
    assert groups["Tutorials"] == ["guide/setup.md", "guide/data.md", "write-your-own-algorithm.md"]
    assert {"pfedlora-adapter.md", "guide/threat-model.md", "guide/performance.md"} <= set(groups["Explanations"])
    assert {"reference/config.md", "reference/cli.md", "reference/api.md"} <= set(groups["Reference"])
    assert groups["Results"][0] == "results/when-federation-helps.md"


def test_every_page_is_in_the_nav() -> None:
    listed = set(_pages(_nav()))
    for page in (ROOT / "docs").rglob("*.md"):
        relative = str(page.relative_to(ROOT / "docs"))
        if relative.startswith("results/") and relative.count("/") > 1:
            continue  # run directories' report.md files, linked from the results pages
        assert relative in listed, f"{relative} is not in mkdocs.yml's nav"


def test_when_federating_helps_is_on_the_home_pages_first_screen() -> None:
    first_screen = "\n".join((ROOT / "docs" / "index.md").read_text().splitlines()[:12])
    assert re.search(r"\[When does federating help\?\]\(results/when-federation-helps\.md\)", first_screen)
