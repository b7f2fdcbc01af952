"""One version number, `pfedlora --version`, `pfedlora init`, and the changelog (the wheel itself:
tests/test_wheel.py)."""

import re
import tomllib
from pathlib import Path

import pytest
import yaml

import pfedlora
from pfedlora.cli import main, starter_configs
from pfedlora.config import QUICKSTART, build_config, load_config

ROOT = Path(__file__).resolve().parents[1]


def test_the_version_is_single_sourced(capsys):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "pfedlora.__version__"}
    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out.strip() == f"pfedlora {pfedlora.__version__}"
    # the changelog has a section for it, and the install guide names its wheel
    assert f"## [{pfedlora.__version__}] - " in (ROOT / "CHANGELOG.md").read_text()
    assert f"pfedlora-{pfedlora.__version__}-py3-none-any.whl" in (ROOT / "docs" / "guide" / "setup.md").read_text()


def test_the_changelog_keeps_a_changelog_form():
    text = (ROOT / "CHANGELOG.md").read_text()
    assert text.startswith("# Changelog\n") and "## [Unreleased]" in text
    versions = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - (\d{4}-\d{2}-\d{2})$", text, flags=re.M)
    assert versions, "no released version"
    for heading in re.findall(r"^### (.+)$", text, flags=re.M):
        assert heading in {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}, heading
    assert "noise_source: seeded_insecure" in text and "class_stats" in text and "privacy.delta" in text


def test_init_writes_the_quickstart_config_which_runs_as_the_quickstart(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["init"]) == 0
    listed = capsys.readouterr().out.split()
    assert "quickstart" in listed and "cifar10" in listed and "nlp/trec" in listed
    assert main(["init", "quickstart"]) == 0
    written = load_config(tmp_path / "quickstart.yaml")
    assert written.to_dict() == build_config(QUICKSTART).to_dict()
    # a shipped config, byte for byte
    assert main(["init", "nlp/trec", "--out", "t.yaml"]) == 0
    assert (tmp_path / "t.yaml").read_text() == (ROOT / "configs" / "nlp" / "trec.yaml").read_text()
    assert set(starter_configs()) == {"quickstart"} | {
        p.relative_to(ROOT / "configs").with_suffix("").as_posix() for p in (ROOT / "configs").rglob("*.yaml")}


def test_init_keeps_an_existing_file_and_refuses_unknown_names(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cifar10.yaml").write_text("mine\n")
    assert main(["init", "cifar10"]) == 2
    assert (tmp_path / "cifar10.yaml").read_text() == "mine\n"
    assert main(["init", "nope"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2 and "is kept" in errors[0] and "unknown config 'nope'" in errors[1]
    assert yaml.safe_load((ROOT / "configs" / "cifar10.yaml").read_text())  # untouched


def test_results_is_reachable_from_a_plain_import():
    import pfedlora.results as results

    assert pfedlora.results is results and pfedlora.results.load is results.load
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        pfedlora.nope  # noqa: B018
