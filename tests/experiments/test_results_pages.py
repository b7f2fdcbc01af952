"""The results pages' tables and figure notes are what scripts/gen_results.py writes from the
committed runs: a stale row, a table typed outside a generated block, or a figure older than its
runs fails here."""

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def gen_results():
    spec = importlib.util.spec_from_file_location("gen_results", ROOT / "scripts" / "gen_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def at_root(monkeypatch):
    monkeypatch.chdir(ROOT)  # the pages name their runs relative to the repository root


PAGES = ["docs/results/when-federation-helps.md", "docs/results/cifar10.md", "docs/results/nlp.md",
         "docs/results/open-questions.md", "docs/results/privacy.md"]


@pytest.mark.parametrize("page", PAGES)
def test_every_generated_block_matches_its_runs(gen_results, page):
    stale = gen_results.stale_blocks(page)
    assert not stale, (f"{page}: blocks {stale} differ from what the committed runs give; "
                       "run `python scripts/gen_results.py` and commit the result")


@pytest.mark.parametrize("page", PAGES)
def test_no_table_is_typed_outside_a_generated_block(gen_results, page):
    assert not gen_results.tables_outside_blocks(page), f"{page}: table rows outside <!-- NAME: start/end -->"


@pytest.mark.parametrize("page", PAGES)
def test_every_figure_on_the_page_says_what_it_was_drawn_from(gen_results, page):
    text = Path(page).read_text()
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", text)
    assert figures
    for figure in figures:
        assert (Path(page).parent / figure).is_file(), figure
        # the figure's note block follows its image; it carries the digest of the runs it was drawn from
        after = text[text.index(f"({figure})") + len(figure) + 2:]
        note = re.match(r"\s*<!-- (figure [^:]+): start -->\n(.*?)\n<!-- figure", after, re.S)
        assert note and "runs digest" in note.group(2), f"{page}: {figure} has no figure note block after it"


def test_a_changed_run_makes_the_page_stale(gen_results, tmp_path, monkeypatch):
    page = tmp_path / "page.md"
    page.write_text("x\n<!-- t: start -->\nold\n<!-- t: end -->\n")
    monkeypatch.setitem(gen_results.PAGES, str(page), {"t": lambda: "new"})
    assert gen_results.stale_blocks(str(page)) == ["t"]
    page.write_text(gen_results.render(str(page)))
    assert gen_results.stale_blocks(str(page)) == []
    page.write_text(page.read_text() + "| a typed | row |\n")
    assert gen_results.tables_outside_blocks(str(page)) == [5]


def test_the_figure_digest_changes_with_a_run(gen_results, tmp_path):
    import shutil

    from pfedlora.experiments.records import load_run

    source = ROOT / "docs/results/nlp/standalone/seed0"
    copy = tmp_path / "standalone" / "seed0"
    shutil.copytree(source, copy)
    before = gen_results.digest([load_run(copy)])
    (copy / "metrics.csv").write_text((copy / "metrics.csv").read_text() + "\n")
    assert gen_results.digest([load_run(copy)]) != before
