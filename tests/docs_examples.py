"""The code blocks of README.md and docs/**/*.md, as tests (tests/test_docs_examples.py runs them).

Every fenced block is found automatically. What the suite does with it:

* ``bash`` / ``sh`` / ``shell`` / ``console``: every command is **parsed** (``pfedlora`` by its own
  argparse parser, ``--config`` / ``--set`` / ``--set-for`` / ``--grid`` / ``--algorithms`` by the config
  model and the registry; ``make`` by the Makefile's targets; ``pip install -e ".[extra]"`` by
  pyproject.toml's extras; scripts by their existence; Flower's CLIs by their ``--help``), then the
  block is **run** with bash in a scratch folder that has the repository's ``configs/``, ``scripts/``,
  ``examples/`` and ``benchmarks/``, the virtualenv's ``pfedlora`` on PATH, and ``HOME`` inside it.
* ``python``: run with the virtualenv's Python in the same folder (a ``file=`` block is written instead).
* ``text`` starting with ``$ COMMAND``: the output of a run. The command runs and every line of the
  block that does not depend on timing (no wall time, elapsed, ETA, run-directory timestamp; ``...``
  skips lines) must appear in its output, in order.
* ``yaml``: validated by the config model (``file=NAME`` also writes it for later blocks); ``toml``:
  parsed.

An invisible marker right above a block says how (``;``-separated)::

    <!-- docs-test: run=--set rounds=1; compare=--seeds 0 --set rounds=1 -->

``run=ARGS`` / ``compare=`` / ``sweep=`` / ``export=``: arguments appended to that ``pfedlora``
sub-command (small settings); ``parse``: parse only (the block needs a cluster, a GPU, the network or
hours: the page says so visibly next to it); ``fixture=NAME,...``: stand-ins for a user's own files
(:data:`FIXTURES`); ``cifar10``: the block needs the CIFAR-10 archive (``{cifar10}`` in the arguments
is its path; absent: parse only); ``text-mirror``: ``dataset.download`` fetches the TREC/SST files from
a server on 127.0.0.1 holding the shared copies; ``replace=OLD->NEW``: a placeholder such as
``RUN_DIR``; ``file=NAME``: write the block to NAME; ``skip-output``: a ``text`` block that is not
checked (illustrative output); ``module=PATH``: a Python block quoting a module of the repository (its
lines must be in that file, which is run). Blocks of docs/results/ pages (the reproduction commands
beside published numbers, hours each) are parsed only.

Two shims stand in for set-up the test environment already did: ``pip install`` (every extra is
installed; ``pip install -e examples/PKG`` is done as pip leaves it, offline: :func:`install_example`)
and ``make run ARGS=...`` (``pfedlora run ARGS``; ``make test`` / ``make docs`` are this suite).

``runs/my-run`` (and ``RUN_DIR`` with ``replace``) is the quickstart's run directory: one full
quickstart (``pfedlora run``, 15 rounds) per session, whose output also checks README's output block.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
SHELL_LANGS = {"bash", "sh", "shell", "console"}
# generated pages: their blocks are the parser's own help (docs/reference/cli.md)
GENERATED = {"docs/reference/cli.md", "docs/reference/config.md"}
# the published runs' own files (raw `pfedlora compare` output and reports), not pages people type from
RUN_OUTPUT = re.compile(r"^docs/results/.+/(comparison|report|sweep)\.md$")
MARKER = re.compile(r"^\s*<!--\s*docs-test:\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")


def pages() -> list[str]:
    """README.md and every page under docs/, relative to the repository."""
    found = ["README.md"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))
    return [p for p in found if p not in GENERATED and not RUN_OUTPUT.match(p)]


@dataclass
class Block:
    page: str
    line: int  # of the opening fence, 1-based
    lang: str
    text: str
    directives: dict[str, str] = field(default_factory=dict)
    before: list[str] = field(default_factory=list)  # the visible lines above it (up to the previous block)

    @property
    def name(self) -> str:
        return f"{self.page}:{self.line}"

    def args_for(self, command: str) -> list[str]:
        return shlex.split(self.directives.get(command, ""))


def parse_directives(text: str) -> dict[str, str]:
    out = {}
    for part in text.split(";"):
        part = part.strip()
        if part:
            key, _, value = part.partition("=")
            out[key.strip()] = value.strip()
    return out


def blocks(page: str) -> list[Block]:
    lines = (ROOT / page).read_text().splitlines()
    found: list[Block] = []
    i, visible_start = 0, 0
    while i < len(lines):
        match = FENCE.match(lines[i])
        if not match:
            i += 1
            continue
        indent, fence, lang = match.groups()
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            j += 1
        body = [line[len(indent):] if line.startswith(indent) else line.lstrip() for line in lines[i + 1:j]]
        k, directives = i - 1, {}
        while k >= 0 and not lines[k].strip():
            k -= 1
        if k >= 0 and MARKER.match(lines[k]):
            directives = parse_directives(MARKER.match(lines[k]).group(1))
        before = [line for line in lines[visible_start:i] if not MARKER.match(line)]
        found.append(Block(page, i + 1, lang.lower(), "\n".join(body) + "\n", directives, before))
        i, visible_start = j + 1, j + 1
    return found


# --------------------------------------------------------------------------- shell commands


def shell_commands(text: str) -> list[str]:
    """A shell block's commands: continuation lines joined, comments and heredoc bodies kept with
    their command, blank lines dropped."""
    commands, current, heredoc = [], "", None
    for line in text.splitlines():
        if heredoc is not None:
            current += "\n" + line
            if line.strip() == heredoc:
                commands.append(current)
                current, heredoc = "", None
            continue
        if not current and (not line.strip() or line.lstrip().startswith("#")):
            continue
        current = f"{current} {line.strip()}" if current else line.strip()
        if current.endswith("\\"):
            current = current[:-1].rstrip()
            continue
        match = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", current)
        if match:
            heredoc = match.group(1)
            continue
        commands.append(current)
        current = ""
    if current:
        commands.append(current)
    return commands


def words(command: str) -> list[str]:
    """The words of a command's first line, comments dropped, leading VAR=value assignments skipped."""
    first = command.split("\n", 1)[0]
    try:
        parts = shlex.split(first, comments=True)
    except ValueError:
        parts = first.split()
    while parts and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", parts[0]):
        parts = parts[1:]
    return parts


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z][\w-]*):", text, flags=re.M))


def pyproject_extras() -> set[str]:
    import tomllib

    document = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return set(document["project"].get("optional-dependencies", {}))


def check_pfedlora_args(argv: list[str], workdir: Path) -> None:
    """Parse ``pfedlora ARGV`` with the CLI's parser and check its config keys, values, algorithms and
    files as the command would (without running it). Raises AssertionError naming what is wrong."""
    import contextlib
    import io

    from pfedlora.cli import build_parser
    from pfedlora.config import load_config
    from pfedlora.errors import UserError

    argv = [a for a in argv if a != "..."]  # an elided part of a command, e.g. "pfedlora compare ... --executor ray"
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            args = build_parser().parse_args(argv)
    except SystemExit:
        raise AssertionError(f"pfedlora {' '.join(argv)}: {stderr.getvalue().strip().splitlines()[-1]}") from None
    command = argv[0] if argv else ""
    if command not in ("run", "compare", "sweep"):
        return
    if getattr(args, "resume", None) is not None:
        return
    config = getattr(args, "config", None)
    if config is not None:
        path = workdir / config if not Path(config).is_absolute() else Path(config)
        assert path.is_file() or (ROOT / config).is_file(), f"pfedlora {' '.join(argv)}: no config file {config}"
        config = str(path if path.is_file() else ROOT / config)
    overrides = list(args.overrides)
    try:
        load_config(config, overrides)
        if command in ("compare", "sweep") and getattr(args, "algorithms", None):
            from pfedlora.experiments.compare import resolve_algorithms

            if args.algorithms.strip() != "all":
                resolve_algorithms(args.algorithms)
        for scoped in getattr(args, "set_for", []) or []:
            algorithm, _, override = scoped.partition(":")
            from pfedlora.experiments.compare import parse_algorithm_overrides

            parse_algorithm_overrides([scoped])
            load_config(config, [*overrides, f"algorithm={algorithm}", override])
        for grid in getattr(args, "grid", []) or []:
            key, _, values = grid.partition("=")
            import yaml

            first = (yaml.safe_load(values) or [None])[0]
            load_config(config, [*overrides, f"{key}={first}"])
    except UserError as exc:
        raise AssertionError(f"pfedlora {' '.join(argv)}: {exc}") from None


@functools.lru_cache(maxsize=None)
def _help_text(program: str, sub: tuple[str, ...]) -> str:
    result = subprocess.run([program, *sub, "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=120, env={**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}"})
    return result.stdout


def check_command(command: str, workdir: Path) -> None:
    """Parse one shell command (see the module's docstring). Raises AssertionError."""
    parts = words(command)
    if not parts:
        return
    program, rest = parts[0], parts[1:]
    if program == "pfedlora":
        check_pfedlora_args(rest, workdir)
    elif program == "make":
        targets = [w for w in rest if "=" not in w and not w.startswith("-")] or ["run"]
        for target in targets:
            assert target in make_targets(), f"{command}: the Makefile has no target {target!r}"
        for word in rest:
            if word.startswith("ARGS="):
                argv = shlex.split(word[len("ARGS="):])
                check_pfedlora_args(["run", *argv], workdir)
    elif program in ("pip", "pip3") or parts[:3] == ["python", "-m", "pip"]:
        for word in rest:
            match = re.match(r"^(.*)\[([\w,-]+)\]$", word)
            if match:
                missing = set(match.group(2).split(",")) - pyproject_extras()
                assert match.group(1) not in (".", "") or not missing, f"{command}: pyproject.toml has no extra {missing}"
            elif "/" in word or word.startswith("."):  # a local path (other words are package names)
                assert (ROOT / word).exists() or (workdir / word).exists(), f"{command}: no {word} in the repository"
    elif program in ("python", "python3", "bash", "sh") or program.startswith(("scripts/", "./scripts/", "benchmarks/")):
        script = program if program.startswith(("scripts/", "./scripts/", "benchmarks/")) else \
            next((w for w in rest if not w.startswith("-")), None)
        if script is not None and rest and rest[0] not in ("-c", "-m") and script.endswith((".py", ".sh")):
            assert (ROOT / script).is_file(), f"{command}: no {script} in the repository"
    elif program.startswith(("flwr", "flower-")):
        assert (BIN / program).exists() or shutil.which(program), f"{command}: {program} is not installed"
        sub = [w for w in rest[:2] if not w.startswith("-") and w.isidentifier()][:1] if program == "flwr" else []
        if program == "flwr" and rest[:1] == ["supernode"]:
            sub = rest[:2]
        helptext = _help_text(str(BIN / program) if (BIN / program).exists() else program, tuple(sub))
        for flag in (w.split("=", 1)[0] for w in rest if w.startswith("--")):
            assert flag in helptext, f"{command}: {program} {' '.join(sub)} has no option {flag}"


# --------------------------------------------------------------------------- output blocks

TIMING = re.compile(r"wall time|elapsed|ETA|\bs/round\b|\d+(\.\d+)? s\b|\d+ min\b|it/s|load ~?\d")
RUN_STAMP = re.compile(r"\d{8}-\d{6}")


def output_lines(block: Block) -> tuple[str, list[str]]:
    """(the command after ``$``, the lines its output must contain in order: timing lines left out)."""
    lines = block.text.rstrip("\n").splitlines()
    command = lines[0][1:].strip()
    expected = [line.rstrip() for line in lines[1:] if line.strip() and line.strip() != "..." and not TIMING.search(line)]
    return command, expected


def check_output(expected: list[str], actual: str) -> None:
    """Each expected line appears in ``actual`` after the previous one (run-directory stamps match any)."""
    got = [line.strip() for line in actual.splitlines()]
    position = 0
    for line in expected:
        pattern = re.compile(r"\d{8}-\d{6}".join(re.escape(piece) for piece in RUN_STAMP.split(line.strip())))
        for k in range(position, len(got)):
            if pattern.fullmatch(got[k]):
                position = k + 1
                break
        else:
            raise AssertionError(f"output line not found (in order): {line!r}")


# --------------------------------------------------------------------------- local packages


def install_example(site: Path, package: str) -> Path:
    """What ``pip install -e examples/PACKAGE`` leaves behind, without the network (its build backend
    would be fetched): the package's entry points as a dist-info directory in ``site``, and a .pth line
    for its sources. Returns its source folder (for sys.path / PYTHONPATH)."""
    import tomllib

    root = ROOT / package
    project = tomllib.loads((root / "pyproject.toml").read_text())["project"]
    info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\nVersion: {project['version']}\n")
    groups = project.get("entry-points", {})
    (info / "entry_points.txt").write_text("".join(
        f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in items.items()) for group, items in groups.items()))
    return root / "src"


@contextlib.contextmanager
def examples_installed(packages: list[str], site: Path) -> Iterator[None]:
    """In this process: the example packages installed (install_example) and registered, for parsing
    the commands that use them; forgotten afterwards."""
    import importlib

    from pfedlora import registry

    if not packages:
        yield
        return
    sources = [str(install_example(site, package)) for package in packages]
    sys.path[:0] = [str(site), *sources]
    registry.refresh()
    before = set(sys.modules)
    try:
        yield
    finally:
        for entry in [str(site), *sources]:
            sys.path.remove(entry)
        importlib.invalidate_caches()
        registry.refresh()
        for name in set(sys.modules) - before:
            sys.modules.pop(name)  # the next use imports (and so registers) it afresh
        for package in packages:
            import tomllib

            project = tomllib.loads((ROOT / package / "pyproject.toml").read_text())["project"]
            for name in project.get("entry-points", {}).get("pfedlora.algorithms", {}):
                registry.forget(name)


def local_installs(text: str) -> list[str]:
    """``examples/...`` packages a block installs with pip."""
    return re.findall(r"pip3? install (?:-e )?(examples/[\w.-]+)", text)


# --------------------------------------------------------------------------- stand-ins for a user's files


def _digits_png_folder(root: Path, per_class: int = 6, size: int = 28) -> None:
    """DIR/{train,test}/<digit>/<i>.png from scikit-learn's digits, 8-bit, scaled up to size x size
    (MNIST's 28 by default: a user's images are not 8x8)."""
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    bunch = load_digits()
    for label in range(10):
        index = np.flatnonzero(bunch.target == label)
        for split, rows in (("train", index[:per_class]), ("test", index[per_class:per_class + 3])):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            for i in rows:
                image = Image.fromarray(np.round(bunch.images[i] * 255 / 16).astype(np.uint8))
                image.resize((size, size), Image.BILINEAR).save(folder / f"{i:04d}.png")


def _hospitals(root: Path) -> None:
    for k in range(4):
        _digits_png_folder(root / f"hospital{k}", per_class=3)


def _notes(path: Path) -> None:
    import csv

    words = {"flu": ["fever", "cough", "aches", "chills"], "fracture": ["bone", "cast", "swelling", "xray"]}
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["note", "diagnosis", "hospital"])
        for i in range(64):
            label = "flu" if i % 2 else "fracture"
            writer.writerow([f"patient {i} with {words[label][i % 4]} and {words[label][(i + 1) % 4]}", label,
                             f"h{i % 4}"])


def _scans(root: Path) -> None:
    import csv

    _digits_png_folder(root / "images", per_class=6)
    with (root / "train.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "finding"])
        for png in sorted((root / "images").rglob("*.png")):
            writer.writerow([str(png.relative_to(root)), f"digit{png.parent.name}"])


def _banking77(root: Path) -> None:
    import csv

    intents = {"card_arrival": "when will my card arrive", "lost_card": "i lost my card",
               "top_up": "how do i top up my account"}
    for split, count in (("train", 30), ("test", 6)):  # configs/nlp/trec.yaml: 6 clients, >= 10 rows each
        root.mkdir(parents=True, exist_ok=True)
        with (root / f"{split}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["text", "category"])
            for i in range(count):
                for intent, text in intents.items():
                    writer.writerow([f"{text} please {i}", intent])


FIXTURES = {
    "mnist_png": lambda work: _digits_png_folder(work / "mnist_png"),
    "hospitals": lambda work: _hospitals(work / "hospitals"),
    "notes.csv": lambda work: _notes(work / "notes.csv"),
    "scans": lambda work: _scans(work / "scans"),
    "banking77": lambda work: _banking77(work / "banking77"),
}


def cifar10_archive() -> Path | None:
    env = os.environ.get("PFEDLORA_DATA_DIR")
    base = Path(env) if env else ROOT / ".." / "shared" / "data"
    path = (base / "cifar10-jpeg.tar.gz").resolve()
    return path if path.is_file() else None


def sentence_archive() -> Path | None:
    env = os.environ.get("PFEDLORA_DATA_DIR")
    base = Path(env) if env else ROOT / ".." / "shared" / "data"
    path = (base / "sentence-classification.tar.gz").resolve()
    return path if path.is_file() else None


# --------------------------------------------------------------------------- running


def workdir_env(workdir: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '')}", "HOME": str(workdir / "home"),
           "PYTHONUNBUFFERED": "1", "NO_COLOR": "1", "TQDM_DISABLE": "1"}
    # the user's own cache of decoded datasets, not a fresh one per scratch HOME
    env.setdefault("PFEDLORA_CACHE", str(Path.home() / ".cache" / "pfedlora"))
    # local example packages (install_example): their dist-info in site/, their sources beside
    sources = [str(src) for src in sorted((ROOT / "examples").glob("*/src"))]
    env["PYTHONPATH"] = os.pathsep.join([str(workdir / "site"), *sources, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra or {})
    return env


def prepare_workdir(workdir: Path) -> None:
    for name in ("configs", "scripts", "examples", "benchmarks", "src", "pyproject.toml", "Makefile"):
        link = workdir / name
        if not link.exists():
            link.symlink_to(ROOT / name)
    (workdir / "home").mkdir(exist_ok=True)
    (workdir / "site").mkdir(exist_ok=True)
    (workdir / "runs").mkdir(exist_ok=True)


def pfedlora_wrapper(block: Block, substitutions: dict[str, str]) -> str:
    """A bash function named pfedlora that appends the block's small settings to each sub-command."""
    cases = []
    for sub in ("run", "compare", "sweep", "report", "export"):
        extra = block.directives.get(sub)
        if extra:
            for old, new in substitutions.items():
                extra = extra.replace(old, new)
            cases.append(f"    {sub}) command pfedlora \"$@\" {extra} ;;")
    body = "\n".join(cases)
    # pip: the test environment has every extra already; a local example package is installed the way
    # pip leaves it (install_example) into the scratch folder's site/, which PYTHONPATH names
    pip = ('pip() { for word in "$@"; do case "$word" in examples/*) '
           f'"{BIN / "python"}" -c "import sys; sys.path.insert(0, \'{Path(__file__).parent}\'); '
           'import docs_examples as d, pathlib; d.install_example(pathlib.Path(\'site\').resolve(), sys.argv[1])" '
           '"$word" ;; esac; done; echo "(docs test: pip $*: installed)"; }\n')
    # make: `make run ARGS=...` is `pfedlora run ARGS` once .venv exists (the Makefile's recipe); the other
    # targets (test, docs) are what runs this suite
    make = ('make() { local target=run; local -a args=(); for word in "$@"; do case "$word" in '
            'ARGS=*) eval "args=(${word#ARGS=})" ;; *=*|-*) ;; *) target="$word" ;; esac; done; '
            'if [ "$target" = run ]; then pfedlora run "${args[@]}"; '
            'else echo "(docs test: make $target: the suite itself)"; fi; }\n')
    return pip + make + f"pfedlora() {{\n  case \"$1\" in\n{body}\n    *) command pfedlora \"$@\" ;;\n  esac\n}}\n"


def run_shell(block: Block, text: str, workdir: Path, env: dict[str, str], substitutions: dict[str, str],
              timeout: int = 1800) -> str:
    script = "set -euo pipefail\n" + pfedlora_wrapper(block, substitutions) + text
    result = subprocess.run(["bash", "-c", script], cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=timeout)
    output = result.stdout
    if result.returncode != 0:
        raise AssertionError(f"{block.name}: exit code {result.returncode}\n{output[-4000:]}")
    return output


def run_python(block: Block, text: str, workdir: Path, env: dict[str, str], timeout: int = 900) -> str:
    result = subprocess.run([str(BIN / "python"), "-c", text], cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=timeout)
    output = result.stdout
    if result.returncode != 0:
        raise AssertionError(f"{block.name}: exit code {result.returncode}\n{output[-4000:]}")
    return output
