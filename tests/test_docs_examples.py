"""Every code block of README.md and docs/**/*.md runs (or, labelled, is parsed) in the test suite
(issue 37). How each kind of block is checked and the invisible markers: tests/docs_examples.py.

One test per page, its blocks in order in one scratch folder per session (a block may use what an
earlier one wrote); the quickstart runs once and its run directory is shared (``runs/my-run``).
"""

from __future__ import annotations

import http.server
import re
import tarfile
import threading
from pathlib import Path

import pytest

import docs_examples as dx

PAGES = dx.pages()
PAGE_NOTE = re.compile(r"test suite (only )?parses", re.I)
VISIBLE_NOTE = re.compile(r"\b(needs?|requires?|takes? (about |~)?\d|hours?|a cluster|GPU|network|download)", re.I)


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("docs-examples")
    dx.prepare_workdir(work)
    return work


@pytest.fixture(scope="session")
def quickstart(workdir: Path) -> str:
    """The quickstart, run once as README shows it (`pfedlora run`, no arguments); its output."""
    import subprocess

    result = subprocess.run([str(dx.BIN / "pfedlora"), "run"], cwd=workdir, env=dx.workdir_env(workdir),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=1800)
    output = result.stdout
    assert result.returncode == 0, output[-3000:]
    run_dir = re.search(r"^results: (runs/\S+)$", output, flags=re.M).group(1)
    (workdir / "runs" / "my-run").symlink_to((workdir / run_dir).resolve())
    return output


@pytest.fixture(scope="session")
def text_mirror(tmp_path_factory: pytest.TempPathFactory):
    """The TREC/SST files of the shared sentence archive served on 127.0.0.1 (None when it is absent)."""
    archive = dx.sentence_archive()
    if archive is None:
        yield None
        return
    folder = tmp_path_factory.mktemp("text-mirror")
    with tarfile.open(archive) as tar:
        for member in tar.getmembers():
            if member.isfile():
                (folder / Path(member.name).name).write_bytes(tar.extractfile(member).read())

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, directory=str(folder), **kwargs)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()


def _needs_quickstart(block: dx.Block) -> bool:
    return "runs/my-run" in block.text or "runs/my-run" in block.directives.get("replace", "") or \
        block.text.startswith("$ pfedlora run\n")


def _substitutions(block: dx.Block) -> dict[str, str]:
    subs = {}
    for item in filter(None, block.directives.get("replace", "").split(",")):
        old, _, new = item.partition("->")
        subs[old.strip()] = new.strip()
    archive = dx.cifar10_archive()
    if archive is not None:
        subs["{cifar10}"] = str(archive)
    return subs


def _parse_only_reason(block: dx.Block, mirror: str | None) -> str | None:
    if "parse" in block.directives:
        return block.directives["parse"] or "labelled parse-only"
    if block.page.startswith("docs/results/"):
        # the reproduction recipes beside published numbers: hours of CPU each, their wall times stated there
        return "a results page's reproduction command"
    if "cifar10" in block.directives and dx.cifar10_archive() is None:
        return "the CIFAR-10 archive is absent (../shared/data or PFEDLORA_DATA_DIR)"
    if "text-mirror" in block.directives and mirror is None:
        return "the sentence-classification archive is absent (../shared/data or PFEDLORA_DATA_DIR)"
    return None


def run_block(block: dx.Block, workdir: Path, request: pytest.FixtureRequest, mirror: str | None) -> str | None:
    """Check one block; the reason when it was only parsed."""
    subs = _substitutions(block)
    text = block.text
    for old, new in subs.items():
        text = text.replace(old, new)
    reason = _parse_only_reason(block, mirror)
    if block.lang == "yaml":
        import yaml

        from pfedlora.config import build_config

        document = yaml.safe_load(text)
        build_config(document)  # every key and value valid
        if "file" in block.directives:
            (workdir / block.directives["file"]).write_text(text)
        return None
    if block.lang == "toml":
        import tomllib

        tomllib.loads(text)
        return None
    if block.lang == "python":
        compile(text, block.name, "exec")
        if "module" in block.directives:  # the block quotes a module: its lines are there, and the module runs
            module = dx.ROOT / block.directives["module"]
            source = module.read_text()
            for line in filter(None, (line.strip() for line in text.splitlines())):
                assert line in source, f"{block.name}: {line!r} is not in {block.directives['module']}"
            dx.run_python(block, f"import runpy; runpy.run_path({str(module)!r})", workdir, dx.workdir_env(workdir))
            return None
        if "file" in block.directives:
            (workdir / block.directives["file"]).write_text(text)
            return None
        if reason is not None:
            return reason
        if _needs_quickstart(block):
            request.getfixturevalue("quickstart")
        dx.run_python(block, text, workdir, dx.workdir_env(workdir))
        return None
    if block.lang == "text" and text.startswith("$ ") and "skip-output" not in block.directives:
        command, expected = dx.output_lines(block)
        if command == "pfedlora run":  # the quickstart: one run per session
            actual = request.getfixturevalue("quickstart")
        else:
            dx.check_command(command, workdir)
            if reason is not None:
                return reason
            actual = dx.run_shell(block, command + "\n", workdir, dx.workdir_env(workdir), subs)
        dx.check_output(expected, actual)
        return None
    if block.lang not in dx.SHELL_LANGS:
        return None  # listings and usage synopses: nothing to run
    for name in filter(None, block.directives.get("fixture", "").split(",")):
        dx.FIXTURES[name.strip()](workdir)
    with dx.examples_installed(dx.local_installs(text), workdir / "site-parse"):
        for command in dx.shell_commands(text):
            dx.check_command(command, workdir)
    if reason is not None:
        return reason
    if _needs_quickstart(block):
        request.getfixturevalue("quickstart")
    env = dx.workdir_env(workdir, {"PFEDLORA_DATA_MIRROR": mirror} if "text-mirror" in block.directives and mirror else None)
    dx.run_shell(block, text, workdir, env, subs)
    return None


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES)
def test_page_examples_run(page: str, workdir: Path, request: pytest.FixtureRequest, text_mirror) -> None:
    found = dx.blocks(page)
    if not found:
        pytest.skip("no code blocks")
    parsed = []
    for block in found:
        reason = run_block(block, workdir, request, text_mirror)
        if reason is not None:
            parsed.append(f"{block.name} ({reason})")
    if parsed:
        print("parsed only: " + "; ".join(parsed))


@pytest.mark.parametrize("page", PAGES)
def test_page_examples_parse(page: str, tmp_path: Path) -> None:
    """The fast half, run on every `pytest`: every command parses, its config keys exist, every YAML
    config validates, every Python block compiles; a parse-only block says visibly what it needs."""
    dx.prepare_workdir(tmp_path)
    visible_text = re.sub(r"<!--.*?-->", "", (dx.ROOT / page).read_text(), flags=re.S)
    for block in dx.blocks(page):
        if block.lang in dx.SHELL_LANGS:
            with dx.examples_installed(dx.local_installs(block.text), tmp_path / "site"):
                for command in dx.shell_commands(block.text):
                    dx.check_command(command.replace("{cifar10}", "x.tar.gz"), tmp_path)
        elif block.lang == "python":
            compile(block.text, block.name, "exec")
        elif block.lang == "yaml":
            import yaml

            from pfedlora.config import build_config

            build_config(yaml.safe_load(block.text))
            if "file" in block.directives:
                (tmp_path / block.directives["file"]).write_text(block.text)
        if "parse" in block.directives and not page.startswith("docs/results/"):
            # results pages state each reproduction's wall time beside it; elsewhere a note says why,
            # next to the block or once for the page ("the test suite parses the ... blocks of this page")
            nearby = "\n".join(block.before[-6:]) + "\n" + block.text
            assert VISIBLE_NOTE.search(nearby) or PAGE_NOTE.search(visible_text), \
                f"{block.name}: parse-only without a visible note of what it needs"


def test_markers_are_known() -> None:
    known = {"run", "compare", "sweep", "report", "export", "parse", "fixture", "cifar10", "text-mirror", "replace",
             "file", "skip-output", "module"}
    for page in PAGES:
        for block in dx.blocks(page):
            unknown = set(block.directives) - known
            assert not unknown, f"{block.name}: unknown docs-test directives {unknown}"
            for name in filter(None, block.directives.get("fixture", "").split(",")):
                assert name.strip() in dx.FIXTURES, f"{block.name}: unknown fixture {name}"


def test_the_harness_finds_blocks_and_checks_output() -> None:
    found = dx.blocks("README.md")
    assert any(b.lang == "bash" for b in found) and any(b.lang == "python" for b in found)
    assert dx.shell_commands("a \\\n  b  # c\n\n# d\ncat > f <<'X'\n1\nX\ne\n") == ["a b  # c", "cat > f <<'X'\n1\nX", "e"]
    dx.check_output(["results: runs/20261205-091500-x", "final accuracy 1%"],
                    "x\nresults: runs/20991231-235959-x\ny\nfinal accuracy 1%\n")
    with pytest.raises(AssertionError):
        dx.check_output(["b", "a"], "a\nb\n")  # order matters
    with pytest.raises(AssertionError, match="unrecognized arguments: --no-such-flag"):
        dx.check_command("pfedlora run --no-such-flag", Path("."))
    with pytest.raises(AssertionError, match="no_such_key"):
        dx.check_command("pfedlora run --set no_such_key=1", Path("."))
    with pytest.raises(AssertionError, match="no target"):
        dx.check_command("make no-such-target", Path("."))
