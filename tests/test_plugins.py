"""Third-party algorithms plug in through the entry-point group ``pfedlora.algorithms``.

The worked example (examples/pfedlora-fedprox) is registered the way pip would register it: a
dist-info directory with an ``entry_points.txt`` on ``sys.path``. The library is not changed.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

from pfedlora import registry
from pfedlora.cli import main

EXAMPLE_SRC = Path(__file__).resolve().parents[1] / "examples" / "pfedlora-fedprox" / "src"


def _install(site: Path, dist: str, entry_points: dict[str, str]) -> None:
    """What ``pip install`` leaves behind for entry points: NAME-VERSION.dist-info/{METADATA,entry_points.txt}."""
    info = site / f"{dist.replace('-', '_')}-0.1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1.0\n")
    lines = "".join(f"{name} = {target}\n" for name, target in entry_points.items())
    (info / "entry_points.txt").write_text(f"[pfedlora.algorithms]\n{lines}")


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A fresh site directory on sys.path; the registry looks again on the way in and out."""
    directory = tmp_path / "site"
    directory.mkdir()
    monkeypatch.syspath_prepend(str(directory))
    monkeypatch.syspath_prepend(str(EXAMPLE_SRC))
    registry.refresh()
    yield directory
    monkeypatch.undo()
    registry.refresh()
    registry.forget("fedprox")
    sys.modules.pop("pfedlora_fedprox", None)  # the next test imports (and so registers) it afresh


TINY = ["--set", "model_pool=[cnn3]", "--set", "rounds=2", "--set", "num_clients=5",
        "--set", "dataset.max_train_samples=300", "--set", "dataset.max_test_samples=90"]


def test_an_installed_plugin_runs_through_the_cli(site, tmp_path, capsys):
    _install(site, "pfedlora-fedprox", {"fedprox": "pfedlora_fedprox"})
    assert "fedprox" in registry.names(imported=False)
    out = tmp_path / "run"
    assert main(["run", "--set", "algorithm=fedprox", "--set", "fedprox.mu=0.1", *TINY, "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["algorithm"] == "fedprox" and summary["rounds"] == 2
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["fedprox"] == {"mu": 0.1}
    assert len((out / "metrics.csv").read_text().strip().splitlines()) == 3  # header + 2 rounds


def test_a_plugins_settings_are_validated_like_a_built_ins(site, tmp_path, capsys):
    _install(site, "pfedlora-fedprox", {"fedprox": "pfedlora_fedprox"})
    out = tmp_path / "run"
    assert main(["run", "--set", "algorithm=fedprox", "--set", "fedprox.mu=-1", *TINY, "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert "fedprox.mu: Input should be greater than or equal to 0" in error and "\n" not in error
    assert main(["run", "--set", "algorithm=fedprox", "--set", "fedprox.nu=1", *TINY, "--out", str(out)]) == 2
    assert "unknown key 'fedprox.nu'; valid keys here: mu" in capsys.readouterr().err
    assert main(["run", "--set", "algorithm=fedprox", "--set", "model_pool=[cnn1, cnn2]", "--out", str(out)]) == 2
    assert "fedprox shares the whole model" in capsys.readouterr().err
    assert not out.exists()


def test_a_plugin_cannot_take_a_built_in_name(site, tmp_path, capsys):
    _install(site, "evil-fedavg", {"fedavg": "pfedlora_fedprox"})
    out = tmp_path / "run"
    assert main(["run", "--set", "algorithm=fedavg", "--set", "model_pool=[cnn3]", "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert "clashes with the built-in algorithm 'fedavg'" in error and "evil-fedavg" in error and "\n" not in error
    assert not out.exists()


def test_a_plugin_that_registers_nothing_or_fails_to_import_is_named(site, tmp_path, capsys):
    (site / "not_an_algorithm.py").write_text("X = 1\n")
    _install(site, "broken", {"nothing": "not_an_algorithm", "missing": "no_such_module_here"})
    for name, message in (("nothing", "did not register an algorithm named 'nothing'"),
                          ("missing", "cannot be loaded: ModuleNotFoundError")):
        assert main(["run", "--set", f"algorithm={name}", "--out", str(tmp_path / name)]) == 2
        error = capsys.readouterr().err.strip()
        assert message in error and "\n" not in error


def test_unknown_algorithms_list_the_installed_plugins(site, tmp_path, capsys):
    _install(site, "pfedlora-fedprox", {"fedprox": "pfedlora_fedprox"})
    assert main(["run", "--set", "algorithm=fedfoo", "--out", str(tmp_path / "r")]) == 2
    error = capsys.readouterr().err
    assert "unknown algorithm 'fedfoo'" in error and ", fedprox (got 'fedfoo')" in error


def test_a_plugin_compares_and_exports_like_a_built_in(site, tmp_path, capsys):
    import pfedlora

    _install(site, "pfedlora-fedprox", {"fedprox": "pfedlora_fedprox"})
    out = tmp_path / "cmp"
    args = ["compare", "--algorithms", "fedavg,fedprox", "--seeds", "0", *TINY, "--set", "rounds=1", "--out", str(out)]
    assert main(args) == 0
    assert "fedprox" in (out / "comparison.md").read_text()
    run_dir = out / "fedprox" / "seed0"
    assert main(["export", str(run_dir), "--clients", "0", "--out", str(tmp_path / "exported")]) == 0
    model = pfedlora.load_personalized(tmp_path / "exported")
    document = json.loads((tmp_path / "exported" / "client-0.json").read_text())
    assert document["algorithm"] == "fedprox" and model.run_accuracy == document["run"]["accuracy"]
