"""Pages of the documentation site generated from the code, so they cannot drift from it.

    python scripts/gen_docs.py            # (re)writes the files below; `make docs` runs it before mkdocs

* ``docs/reference/config.md``: every config key with its type, default, bounds and description, one
  table per section, read from the pydantic models (:class:`pfedlora.config.Config`), including each
  algorithm's own settings (:func:`algorithm_sections`).
* ``docs/reference/cli.md``: ``pfedlora --help`` and every sub-command's help, from the argparse parser.
* Facts in prose, between ``<!-- gen:NAME -->`` and ``<!-- /gen -->`` in README.md and the pages
  (:data:`FACT_PAGES`): counts and names of the built-in algorithms (the registry), the Python version
  (pyproject.toml) and the torch version (the Makefile's ``TORCH_SPEC``) (:func:`facts`).
* The table between the ``settings`` markers of ``docs/guide/algorithms.md``: every built-in
  baseline's settings, key, default and description, from its settings model (:func:`settings_table`).
* ``docs/guide/algorithm_flows.png`` and the table between the ``flows`` markers of
  ``docs/guide/algorithms.md``: what each algorithm uploads and broadcasts, measured by running its
  ``init_server`` / ``init_client`` / ``client_update`` on a two-client toy federation
  (:func:`measure_flows`).
"""

from __future__ import annotations

import re
import sys
import types
import typing
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from pydantic import BaseModel  # noqa: E402
from pydantic.fields import FieldInfo  # noqa: E402

DOCS = ROOT / "docs"
CONFIG_PAGE = DOCS / "reference" / "config.md"
CLI_PAGE = DOCS / "reference" / "cli.md"
FLOWS_PAGE = DOCS / "guide" / "algorithms.md"
FLOWS_FIGURE = DOCS / "guide" / "algorithm_flows.png"
FLOWS_START, FLOWS_END = "<!-- flows:start (scripts/gen_docs.py) -->", "<!-- flows:end -->"
SETTINGS_START, SETTINGS_END = "<!-- settings:start (scripts/gen_docs.py) -->", "<!-- settings:end -->"
FACT_PAGES = [ROOT / "README.md", DOCS / "index.md", DOCS / "write-your-own-algorithm.md", DOCS / "guide" / "setup.md",
              DOCS / "guide" / "algorithms.md"]
FACT = re.compile(r"<!-- gen:(\w+) -->(.*?)<!-- /gen -->", re.S)
_NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
                 "sixteen seventeen eighteen nineteen twenty").split()


# --------------------------------------------------------------------------- facts in prose


def facts() -> dict[str, str]:
    """What prose states about the code, from the code: ``baselines`` (a number word: the built-in
    algorithms other than pFedLoRA), ``Baselines`` (capitalised), ``algorithm_count``, ``builtins``
    (every built-in's name, in code style), ``python`` (pyproject's minimum), ``torch`` (the pinned
    version the Makefile installs)."""
    from pfedlora import registry

    names = list(registry.BUILTIN_MODULES)
    baselines = len(names) - 1
    word = _NUMBER_WORDS[baselines] if baselines < len(_NUMBER_WORDS) else str(baselines)
    pyproject = (ROOT / "pyproject.toml").read_text()
    makefile = (ROOT / "Makefile").read_text()
    return {
        "baselines": word, "Baselines": word.capitalize(), "algorithm_count": str(len(names)),
        "builtins": ", ".join(f"`{name}`" for name in names),
        "python": re.search(r'requires-python\s*=\s*">=\s*([\d.]+)"', pyproject).group(1),
        "torch": re.search(r"^TORCH_SPEC \?= torch==([\w.+]+)", makefile, flags=re.M).group(1),
    }


def render_facts(text: str, values: dict[str, str] | None = None) -> str:
    """``text`` with every ``<!-- gen:NAME -->...<!-- /gen -->`` span holding the current fact."""
    values = facts() if values is None else values

    def fill(match: re.Match[str]) -> str:
        if match.group(1) not in values:
            raise KeyError(f"unknown fact {match.group(1)!r} (known: {', '.join(values)})")
        return f"<!-- gen:{match.group(1)} -->{values[match.group(1)]}<!-- /gen -->"

    return FACT.sub(fill, text)


def settings_table() -> str:
    """Every built-in baseline's settings (pFedLoRA's adapter has its own table): key, default, meaning."""
    lines = ["| key | default | meaning |", "|---|---|---|"]
    for algorithm, (section, settings) in algorithm_sections().items():
        if algorithm == "pfedlora":
            continue
        for name, field in settings.model_fields.items():
            description = " ".join((field.description or "").split()).replace("|", "\\|")
            lines.append(f"| `{section}.{name}` | {_default_text(field)} | {description} |")
    return "\n".join(lines)


def _between(text: str, start: str, end: str, body: str) -> str:
    head, tail = text.index(start) + len(start), text.index(end)
    return text[:head] + "\n" + body + "\n" + text[tail:]


# --------------------------------------------------------------------------- config reference


def algorithm_sections() -> dict[str, tuple[str, type[BaseModel]]]:
    """Algorithm name -> (its config section, its settings class), from the algorithm registry
    (:mod:`pfedlora.registry`). pFedLoRA's section is ``adapter``. Built-ins only: an installed plugin
    documents its own settings, and the page must not depend on what happens to be installed."""
    from pfedlora import registry

    sections: dict[str, tuple[str, type[BaseModel]]] = {}
    for registration in registry.builtins():
        name = registration.name
        if registration.settings is not None and registration.section is not None:
            sections[name] = (registration.section, registration.settings)
    return sections


def _type_text(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:  # e.g. ModelName: a str checked against the model registry
        base, *meta = typing.get_args(annotation)
        checked = any(getattr(getattr(m, "func", None), "__name__", "") == "known_model" for m in meta)
        return "model name" if checked else _type_text(base)
    if origin is typing.Literal:
        return " \\| ".join(f"`{value}`" for value in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_text(arg) for arg in typing.get_args(annotation))
    if origin in (list, dict):
        inner = ", ".join(_type_text(arg) for arg in typing.get_args(annotation))
        return f"{origin.__name__}[{inner}]"
    if annotation is type(None):
        return "null"
    if annotation is typing.Any:
        return "any"
    return getattr(annotation, "__name__", str(annotation))


def _bounds_text(field: FieldInfo) -> str:
    symbols = {"ge": "≥", "gt": ">", "le": "≤", "lt": "<", "min_length": "length ≥", "max_length": "length ≤"}
    parts = []
    for item in field.metadata:
        for attribute, symbol in symbols.items():
            value = getattr(item, attribute, None)
            if value is not None:
                parts.append(f"{symbol} {value:g}" if isinstance(value, float) else f"{symbol} {value}")
    return ", ".join(parts)


def _default_text(field: FieldInfo) -> str:
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    else:
        value = field.default
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f"`{value}`"
    if isinstance(value, list):
        return "`[" + ", ".join(map(str, value)) + "]`"
    if isinstance(value, dict):
        return "`{}`" if not value else f"`{value}`"
    return f"`{value}`"


def _is_section(field: FieldInfo) -> bool:
    return isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)


def config_sections() -> list[tuple[str, type[BaseModel], list[tuple[str, FieldInfo]]]]:
    """(dotted section, its model, its leaf fields) for ``Config`` and every nested section, in order."""
    from pfedlora.config import Config

    out: list[tuple[str, type[BaseModel], list[tuple[str, FieldInfo]]]] = []

    def walk(prefix: str, model: type[BaseModel]) -> None:
        leaves = [(name, field) for name, field in model.model_fields.items() if not _is_section(field)]
        out.append((prefix, model, leaves))
        for name, field in model.model_fields.items():
            if _is_section(field):
                walk(f"{prefix}.{name}" if prefix else name, field.annotation)  # type: ignore[arg-type]

    walk("", Config)
    # each algorithm's settings: config sections that exist only through the registry
    for section, settings in algorithm_sections().values():
        walk(section, settings)
    return out


def missing_descriptions() -> list[str]:
    """Dotted keys of every config field (sections included) without a ``description``."""
    missing = []
    for prefix, model, _ in config_sections():
        for name, field in model.model_fields.items():
            if not (field.description or "").strip():
                missing.append(f"{prefix}.{name}" if prefix else name)
    return missing


def _doc_of(model: type[BaseModel]) -> str:
    doc = (model.__doc__ or "").strip()
    return " ".join(doc.split()) if doc and not doc.startswith("A base class") else ""


def config_reference() -> str:
    owner = {cls: name for name, (_, cls) in algorithm_sections().items()}
    lines = [
        "# Config reference",
        "",
        "<!-- generated by scripts/gen_docs.py from the pydantic models in pfedlora.config: do not edit -->",
        "",
        "A run is configured by one YAML file (`--config FILE`) plus `--set KEY=VALUE` overrides (values are",
        "parsed as YAML: `--set model_pool=[cnn1,cnn3]`). Unknown keys and bad values stop the run with one",
        "line naming the key and the valid choices (exit code 2). This page is generated from the config",
        "models by `scripts/gen_docs.py` (run by `make docs`), so it lists exactly what the code accepts;",
        "the guides explain what the keys do together.",
        "",
    ]
    for prefix, model, leaves in config_sections():
        if not leaves:
            continue
        title = "Run (top level)" if not prefix else f"`{prefix}`"
        lines += [f"## {title}", ""]
        algorithm = owner.get(model)
        if algorithm is not None:
            lines += [f"Settings of the algorithm `{algorithm}` (used only when `algorithm: {algorithm}`)."
                      if algorithm != "pfedlora" else "Settings of `pfedlora`'s adapter.", ""]
        doc = _doc_of(model)
        if doc and prefix:
            lines += [doc, ""]
        lines += ["| key | type | default | bounds | description |", "|---|---|---|---|---|"]
        for name, field in leaves:
            key = f"{prefix}.{name}" if prefix else name
            description = " ".join((field.description or "").split()).replace("|", "\\|")
            lines.append(f"| `{key}` | {_type_text(field.annotation)} | {_default_text(field)} | "
                         f"{_bounds_text(field)} | {description} |")
        lines.append("")
    return "\n".join(lines)


# --------------------------------------------------------------------------- CLI reference


def cli_reference() -> str:
    import argparse

    from pfedlora.cli import build_parser

    parser = build_parser()
    lines = ["# Command line", "",
             "<!-- generated by scripts/gen_docs.py from pfedlora.cli.build_parser: do not edit -->", "",
             "Every command prints one line and exits with code 2 on bad input (a config key, a path, a",
             "value). The options below are the parser's own help.", "",
             "## `pfedlora`", "", "```text", parser.format_help().rstrip(), "```", ""]
    for action in parser._actions:  # the sub-commands, in the order the parser declares them
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                lines += [f"## `pfedlora {name}`", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------- algorithm flows


def _group(names: list[str]) -> str:
    """Tensor names by their first component: ``adapter.fc1.weight`` ... -> ``adapter.* (6)``."""
    groups: dict[str, int] = {}
    for name in names:
        head = name.split(".")[0]
        groups[head] = groups.get(head, 0) + 1
    return ", ".join(f"`{head}`" if count == 1 and head in names else f"`{head}.*` ({count})"
                     for head, count in groups.items())


def measure_flows() -> list[dict[str, Any]]:
    """Per algorithm: the broadcast and one client's upload (tensor names, float count) and the client's
    local model size, from one round of a two-client toy federation (digits, CNN-5 and CNN-3 clients;
    FedAvg: CNN-5 on both, it needs one architecture)."""
    import torch

    from pfedlora import registry
    from pfedlora.config import build_config
    from pfedlora.federation.simulation import ClientStore, Federation, client_generator

    torch.set_num_threads(1)
    flows = []
    for name in registry.BUILTIN_MODULES:  # built-ins: the figure must not depend on installed plugins
        pool = ["cnn5"] if name == "fedavg" else ["cnn5", "cnn3"]
        config = build_config({"algorithm": name, "num_clients": 2, "model_pool": pool, "rounds": 1,
                               "partition": {"kind": "iid"}, "train": {"batch_size": 64},
                               "dataset": {"max_train_samples": 64, "max_test_samples": 32}})
        federation = Federation.build(config)
        store = ClientStore(federation)
        _, broadcast = federation.algorithm.init_server(federation.context)
        result = federation.algorithm.client_update(federation.context, 0, store.get(0), broadcast,
                                                    federation.clients[0], client_generator(config, 1, 0))
        local = federation.context.model_parameters(config.client_model(0))
        flows.append({
            "algorithm": name,
            "upload": sorted(result.upload), "upload_numel": sum(int(t.numel()) for t in result.upload.values()),
            "broadcast": sorted(broadcast), "broadcast_numel": sum(int(t.numel()) for t in broadcast.values()),
            "local_model": config.client_model(0), "local_numel": local,
        })
    return flows


def flows_table(flows: list[dict[str, Any]]) -> str:
    lines = ["| algorithm | uploaded by a client | floats up | broadcast | floats down | client 0's local model (stays) |",
             "|---|---|---|---|---|---|"]
    for f in flows:
        lines.append(f"| `{f['algorithm']}` | {_group(f['upload']) or 'nothing'} | {f['upload_numel']:,} | "
                     f"{_group(f['broadcast']) or 'nothing'} | {f['broadcast_numel']:,} | "
                     f"{f['local_model']}, {f['local_numel']:,} parameters |")
    return "\n".join(lines)


def flows_figure(flows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pfedlora.experiments.report import algorithm_colour

    fig, ax = plt.subplots(figsize=(10, 0.62 * len(flows) + 1.6))
    rows = list(range(len(flows)))[::-1]
    height = 0.26
    kinds = (("local_numel", "local model (never leaves the client)", -height, "////"),
             ("upload_numel", "uploaded per client per round", 0.0, None),
             ("broadcast_numel", "broadcast to each client per round", height, ".."))
    for key, label, offset, hatch in kinds:
        values = [max(f[key], 0) for f in flows]
        bars = ax.barh([r + offset for r in rows], [v if v > 0 else 0.0 for v in values], height=height,
                       color=[algorithm_colour(f["algorithm"]) for f in flows],
                       alpha=0.35 if key == "local_numel" else 0.9, hatch=hatch, edgecolor="black", linewidth=0.4,
                       label=label)
        for bar, value in zip(bars, values):
            text = f"{value:,}" if value else "0 (nothing sent)"
            ax.text(max(bar.get_width(), 1.0) * 1.15, bar.get_y() + bar.get_height() / 2, text,
                    va="center", fontsize=7.5)
    ax.set_xscale("log")
    ax.set_xlim(1, 3e7)
    ax.set_yticks(rows, [f["algorithm"] for f in flows])
    ax.set_xlabel("floats (tensor elements; log scale)")
    ax.set_title("What each algorithm keeps, uploads and broadcasts\n"
                 "(one round of a 2-client digits federation, client 0 = CNN-5; measured, scripts/gen_docs.py)",
                 fontsize=10)
    ax.grid(True, axis="x", alpha=0.3)
    # the legend explains the three bar kinds (colour = algorithm, as in every figure); outside the data
    # listed top to bottom as the bars of each algorithm are stacked (the largest offset is drawn highest)
    ordered = sorted(kinds, key=lambda kind: -kind[2])
    handles = [plt.Rectangle((0, 0), 1, 1, facecolor="white", edgecolor="black", hatch=hatch or "", linewidth=0.6)
               for _, _, _, hatch in ordered]
    ax.legend(handles, [label for _, label, _, _ in ordered], loc="upper left", bbox_to_anchor=(1.01, 1.0),
              frameon=False, fontsize=8, title="bar (top to bottom)", title_fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


def write_flows(flows: list[dict[str, Any]]) -> None:
    text = FLOWS_PAGE.read_text()
    start, end = text.index(FLOWS_START) + len(FLOWS_START), text.index(FLOWS_END)
    FLOWS_PAGE.write_text(text[:start] + "\n" + flows_table(flows) + "\n" + text[end:])
    flows_figure(flows, FLOWS_FIGURE)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)


def main(argv: list[str]) -> int:
    _write(CONFIG_PAGE, config_reference())
    _write(CLI_PAGE, cli_reference())
    values = facts()
    for page in FACT_PAGES:
        _write(page, render_facts(page.read_text(), values))
    text = FLOWS_PAGE.read_text()
    if SETTINGS_START in text:
        _write(FLOWS_PAGE, _between(text, SETTINGS_START, SETTINGS_END, settings_table()))
    if "--no-flows" not in argv:  # the toy federation takes a few seconds
        write_flows(measure_flows())
    missing = missing_descriptions()
    if missing:
        print(f"config fields without a description ({len(missing)}): {', '.join(missing[:8])}"
              f"{', ...' if len(missing) > 8 else ''}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
