"""docs/guide/results-data.md and docs/guide/tracking.md run as written: their shell commands and Python
blocks, top to bottom, in a fresh folder (the tracking page's dashboards and installs excepted: servers
and package installs, which the page says the tests do not run)."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"^```(bash|python)\n(.*?)^```", re.S | re.M)


def blocks(page: Path) -> list[tuple[str, str]]:
    return [(kind, code) for kind, code in BLOCK.findall(page.read_text())]


def run_page(page: Path, cwd: Path, runs_command=lambda command: True) -> list[str]:
    """Run the page's bash commands (those ``runs_command`` admits) and Python blocks in order, each
    Python block on its own (as the docs harness, tests/docs_examples.py, runs them); returns what ran."""
    env = dict(os.environ, PATH=str(Path(sys.executable).parent) + os.pathsep + os.environ["PATH"],
               MLFLOW_TRACKING_URI=f"sqlite:///{cwd / 'mlflow.db'}")
    env.pop("PYTHONPATH", None)
    ran = []
    previous = Path.cwd()
    os.chdir(cwd)
    os.environ["MLFLOW_TRACKING_URI"] = env["MLFLOW_TRACKING_URI"]
    try:
        for kind, code in blocks(page):
            if kind == "bash":
                if not runs_command(code):
                    continue
                done = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=cwd, env=env,
                                      capture_output=True, text=True, timeout=1800)
                assert done.returncode == 0, f"{code}\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}"
            else:
                exec(compile(code, f"{page.name} block", "exec"), {"__name__": "__main__"})
            ran.append(code)
    finally:
        os.chdir(previous)
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    return ran


@pytest.mark.slow
def test_the_results_page_runs_as_written(tmp_path, capsys):
    ran = run_page(ROOT / "docs" / "guide" / "results-data.md", tmp_path)
    assert len(ran) == len(blocks(ROOT / "docs" / "guide" / "results-data.md"))  # every block
    printed = capsys.readouterr().out
    assert re.search(r"^pfedlora: [+-]\d+\.\d\d points \[", printed, re.M)  # the verdict line
    assert "adapter.rank" in printed


@pytest.mark.slow
def test_the_tracking_page_runs_as_written(tmp_path, capsys):
    # the pfedlora commands and the Python blocks; not `pip install`, `tensorboard` or `mlflow ui`
    ran = run_page(ROOT / "docs" / "guide" / "tracking.md", tmp_path,
                   runs_command=lambda command: command.lstrip().startswith("pfedlora "))
    assert sum(code.lstrip().startswith("pfedlora ") for code in ran) == 2
    printed = capsys.readouterr().out
    assert printed.count("(1, ") == 2 and printed.count("(3, ") == 2  # both readers see rounds 1..3
    assert (tmp_path / "runs" / "tracked-compare" / "tracking.json").is_file()
