"""The package as users install it: ``python -m build`` gives an sdist and a wheel that ``twine check``
accepts; the wheel, installed into a fresh virtual environment with the CPU torch and nothing of
the repository, runs ``pfedlora --version``, ``pfedlora init`` and the quickstart.

Slow (minutes: the build, a venv, the wheel's dependencies); torch comes from the same spec as
``make`` (``TORCH_SPEC``, default torch==2.13.0), so pip reuses the wheel it already downloaded."""

import os
import shlex
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest

import pfedlora

ROOT = Path(__file__).resolve().parents[1]


def _run(command: list[str], cwd: Path, timeout: float = 1800) -> str:
    # nothing of the repository or of this test's environment leaks into the fresh one
    env = {key: value for key, value in os.environ.items()
           if key not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "PIP_REQUIRE_VIRTUALENV")}
    done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(command)} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.mark.slow
def test_the_wheel_installs_into_a_fresh_venv_and_runs_the_quickstart(tmp_path):
    dist = tmp_path / "dist"
    _run([sys.executable, "-m", "build", "--outdir", str(dist), str(ROOT)], cwd=tmp_path)
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    assert len(wheels) == 1 and len(sdists) == 1
    assert wheels[0].name == f"pfedlora-{pfedlora.__version__}-py3-none-any.whl"  # one version number
    _run([sys.executable, "-m", "twine", "check", "--strict", str(wheels[0]), str(sdists[0])], cwd=tmp_path)
    names = zipfile.ZipFile(wheels[0]).namelist()
    assert "pfedlora/configs/cifar10.yaml" in names and "pfedlora/configs/nlp/trec.yaml" in names
    assert not any(name.startswith(("tests/", "docs/")) for name in names)

    environment = tmp_path / "venv"
    venv.create(environment, with_pip=True)
    python = str(environment / "bin" / "python")
    torch_spec = shlex.split(os.environ.get("TORCH_SPEC", "torch==2.13.0"))
    _run([python, "-m", "pip", "install", "--quiet", *torch_spec], cwd=tmp_path)
    _run([python, "-m", "pip", "install", "--quiet", str(wheels[0])], cwd=tmp_path)

    work = tmp_path / "work"  # outside the repository: only the installed package is there
    work.mkdir()
    command = str(environment / "bin" / "pfedlora")
    assert _run([command, "--version"], cwd=work).strip() == f"pfedlora {pfedlora.__version__}"
    _run([command, "init", "nlp/trec"], cwd=work)
    assert (work / "trec.yaml").read_text() == (ROOT / "configs" / "nlp" / "trec.yaml").read_text()
    where = _run([python, "-c", "import pfedlora; print(pfedlora.__file__)"], cwd=work).strip()
    assert Path(where).is_relative_to(environment)
    output = _run([command, "run", "--out", "quickstart"], cwd=work)
    assert "final accuracy" in output
    rows = (work / "quickstart" / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 15  # header + the quickstart's 15 rounds
    assert (work / "quickstart" / "summary.json").is_file()
