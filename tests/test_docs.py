"""The documentation cannot drift from the code: every config field has a description (the config
reference page is generated from them), the generated page lists every key, and the README stays a
front door that links every guide."""

import importlib.util
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _gen_docs():
    spec = importlib.util.spec_from_file_location("gen_docs", ROOT / "scripts" / "gen_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_config_field_has_a_description():
    missing = _gen_docs().missing_descriptions()
    assert not missing, f"config fields without description= ({len(missing)}): {', '.join(missing)}"


def test_the_config_reference_lists_every_key_with_its_description():
    gen = _gen_docs()
    page = gen.config_reference()
    for prefix, _, leaves in gen.config_sections():
        for name, field in leaves:
            key = f"{prefix}.{name}" if prefix else name
            assert f"| `{key}` |" in page, key
    # each algorithm's own settings get a table of their own
    for algorithm in gen.algorithm_sections():
        assert f"algorithm `{algorithm}`" in page or algorithm == "pfedlora", algorithm


def test_a_field_without_description_is_reported(monkeypatch):
    from pydantic import Field

    from pfedlora import config

    gen = _gen_docs()

    class Probe(config._Section):
        documented: int = Field(default=1, description="has one")
        bare: int = 2

    monkeypatch.setattr(gen, "config_sections", lambda: [("probe", Probe, list(Probe.model_fields.items()))])
    assert gen.missing_descriptions() == ["probe.bare"]


def test_readme_is_a_front_door_linking_every_guide():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    assert "make test" in readme  # CI runs the README's test command
    linked = set(re.findall(r"\]\((docs/[^)#]+)", readme))
    for page in sorted((ROOT / "docs" / "guide").glob("*.md")):
        if page.name != "benchmarks.md":  # included from benchmarks/README.md, which the README links
            assert f"docs/guide/{page.name}" in linked, page.name
    for path in linked:
        assert (ROOT / path).is_file(), path
