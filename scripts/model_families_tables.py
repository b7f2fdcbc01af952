"""The generated blocks of the model-family pages: what each family member costs (from the code) and
the 20-client HtFE-img-8 measurement (from the committed run directories).

    python scripts/model_families_tables.py           # rewrite the blocks
    python scripts/model_families_tables.py --check   # exit 1 naming every block whose committed text differs

Blocks (``<!-- NAME: start -->`` ... ``<!-- NAME: end -->``):

* docs/guide/models.md ``families``: every family and its members (pfedlora.models.families);
  ``members``: every member's parameters, forward FLOPs per sample and fp32 state (weights and
  buffers), built here on the input its family reads.
* docs/results/model-families.md ``htfe-img-8``: ``pfedlora compare``'s tables for the runs of
  scripts/model_families.sh (docs/results/model-families/htfe-img-8).
* docs/guide/performance.md ``model families``: seconds per round, peak memory (``/usr/bin/time -v``)
  and the machine's load for the same runs, and the clients' resident states per algorithm.
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
from collections.abc import Callable
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from page_blocks import fill  # noqa: E402

RUNS = Path("docs/results/model-families/htfe-img-8")
ORDER = ["standalone", "pfedlora", "fedproto", "fedmrl"]
RUN_ORDER = ["standalone", "fedproto", "fedmrl", "pfedlora"]  # scripts/model_families.sh runs them in this order
NAMES = {"standalone": "Standalone", "pfedlora": "pFedLoRA", "fedproto": "FedProto", "fedmrl": "FedMRL"}
# the input each family kind reads here: (input shape, classes, text spec arguments)
INPUTS = {"image": ((3, 32, 32), 10, "CIFAR-10 (3 x 32 x 32, 10 classes)"),
          "text": ((32,), 2, "token ids (MiniLM vocabulary 30,522, 32 tokens, 2 classes)"),
          "sensor": ((9, 1, 128), 6, "UCI-HAR windows (9 x 1 x 128, 6 classes)"),
          "vector": ((5000, 1, 1), 2, "5,000 features (Amazon reviews, 2 classes)")}


def families_block() -> str:
    from pfedlora.models.families import FAMILIES, family_pool

    lines = ["| family | kind | clients get, in turn (client i: entry i mod k) |", "|---|---|---|"]
    for name, family in FAMILIES.items():
        pool = ", ".join(f"`{member}`" for member in family_pool(name))
        lines.append(f"| `{name}` | {family.kind} | {pool} |")
    return "\n".join(lines)


@functools.cache
def _member_rows() -> list[tuple[str, str, int, int, int]]:
    from pfedlora.models.families import FAMILIES

    return _rows_of(tuple(dict.fromkeys(m for name in FAMILIES for m in _plain_pool(name))))


def _rows_of(members: tuple[str, ...]) -> list[tuple[str, str, int, int, int]]:
    """(name, kind, parameters, forward FLOPs per sample, fp32 state bytes) of each member."""
    from pfedlora.data.text import TextSpec
    from pfedlora.federation.footprint import state_bytes
    from pfedlora.metrics.flops import forward_flops
    from pfedlora.models.families import member_kind
    from pfedlora.models.registry import build_model, parameter_count

    rows = []
    for name in members:
        kind = member_kind(name)
        shape, classes, _ = INPUTS[kind]
        torch.manual_seed(0)
        if kind == "text":
            text = TextSpec(vocab_size=30522, max_length=shape[0], pad_id=0)
            model, x = build_model(name, 0, classes, 0, text=text), torch.ones(1, shape[0], dtype=torch.long)
        else:
            model, x = build_model(name, shape[0], classes, shape[-1]), torch.zeros(1, *shape)
        rows.append((name, kind, parameter_count(model), forward_flops(model, x), state_bytes(model.state_dict())))
    return rows


def _plain_pool(family: str) -> list[str]:
    from pfedlora.models.families import FAMILIES, Member

    return [Member(arch).name for arch in FAMILIES[family].members]


def members_block() -> str:
    lines = ["| member | reads | parameters | forward FLOPs per sample | fp32 state |", "|---|---|---:|---:|---:|"]
    for name, kind, params, flops, size in _member_rows():
        lines.append(f"| `{name}` | {kind} | {params:,} | {flops / 1e6:,.1f} M | {size / 1e6:,.1f} MB |")
    return "\n".join(lines)


def family_memory_block(num_clients: int = 20) -> str:
    """Per family: what ``num_clients`` clients' local models hold (fp32 weights and buffers) and cost."""
    from pfedlora.models.families import FAMILIES, family_pool

    rows = {name: (params, flops, size) for name, _, params, flops, size in _member_rows()}
    lines = [f"| family | parameters of its {num_clients} clients | their states (memory store) "
             "| mean forward FLOPs per sample |", "|---|---:|---:|---:|"]
    for family in FAMILIES:
        pool = family_pool(family)  # with the HtC families' own heads
        rows.update({row[0]: row[2:] for row in _rows_of(tuple(n for n in pool if n not in rows))})
        clients = [pool[i % len(pool)] for i in range(num_clients)]
        params = sum(rows[m][0] for m in clients)
        size = sum(rows[m][2] for m in clients)
        flops = sum(rows[m][1] for m in clients) / num_clients
        lines.append(f"| `{family}` | {params / 1e6:,.1f} M | {size / 1e9:,.2f} GB | {flops / 1e6:,.1f} M |")
    return "\n".join(lines)


def _records():
    from pfedlora.experiments.records import load_run

    found = [load_run(p.parent) for p in sorted(RUNS.glob("*/seed*/summary.json"))]
    return sorted(found, key=lambda r: (ORDER.index(r.algorithm) if r.algorithm in ORDER else 99, r.seed))


def results_block() -> str:
    from pfedlora.experiments.compare import comparison_markdown, summarize_comparison

    records = _records()
    if not records:
        return "*(no finished runs yet under docs/results/model-families/htfe-img-8)*"
    lines = comparison_markdown(summarize_comparison(records, reference="standalone")).splitlines()[2:]
    lines = [f"**{line[3:]}:**" if line.startswith("## ") else line for line in lines]
    while lines and (not lines[-1].strip() or lines[-1].startswith("Numbers:")):
        lines.pop()
    return "\n".join(lines)


def _peak_rss(algorithm: str) -> float | None:
    path = RUNS / f"time-{algorithm}.txt"
    if not path.is_file():
        return None
    match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", path.read_text())
    return None if match is None else int(match.group(1)) * 1024


def _load(name: str) -> str:
    path = RUNS / name
    if not path.is_file():
        return "?"
    match = re.search(r"load average: ([\d.]+)", path.read_text())
    return "?" if match is None else match.group(1)


def _client_states(algorithm: str, config) -> float:
    """Bytes of the 20 clients' initial states (what the memory store holds), as the run header states."""
    from pfedlora.algorithms import get_algorithm
    from pfedlora.algorithms.base import FederationContext
    from pfedlora.federation.footprint import client_state_bytes

    ctx = FederationContext(config, (3, 32, 32), 10, torch.device("cpu"))
    algo = get_algorithm(algorithm)
    archs = [config.client_model(k) for k in range(config.num_clients)]
    sizes = client_state_bytes(archs, lambda k: algo.init_client(ctx, k))
    return sum(count * size for count, size in sizes.values())


def performance_block() -> str:
    from pfedlora.config import load_config

    records = sorted(_records(), key=lambda r: RUN_ORDER.index(r.algorithm) if r.algorithm in RUN_ORDER else 99)
    if not records:
        return "*(no finished runs yet under docs/results/model-families/htfe-img-8)*"
    lines = ["| algorithm (in the order run) | rounds | wall time | seconds per round | training per client-round "
             "| client states (20 clients) | peak memory (RSS) | load average before → after |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    previous = "load-start.txt"
    for record in records:
        config = load_config(record.path / "config.yaml")
        wall, rounds = record.summary["wall_seconds"], record.summary["rounds"]
        work = record.summary["train_flops_per_client_round"]
        rss = _peak_rss(record.algorithm)
        after = f"load-after-{record.algorithm}.txt"
        lines.append(f"| {NAMES.get(record.algorithm, record.algorithm)} | {rounds} | {wall / 60:,.1f} min | "
                     f"{wall / rounds:,.1f} s | {work / 1e9:,.1f} GFLOP | "
                     f"{_client_states(record.algorithm, config) / 1e9:.2f} GB | "
                     f"{'?' if rss is None else f'{rss / 1e9:.2f} GB'} | {_load(previous)} → {_load(after)} |")
        previous = after
    return "\n".join(lines)


PAGES: dict[str, dict[str, Callable[[], str]]] = {
    "docs/guide/models.md": {"families": families_block, "members": members_block},
    "docs/results/model-families.md": {"htfe-img-8": results_block},
    "docs/guide/performance.md": {"model families": performance_block, "family memory": family_memory_block},
}


def render(page: str) -> str:
    return fill((ROOT / page).read_text(), PAGES[page], page)


def main() -> int:
    import os

    os.chdir(ROOT)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 naming every stale block")
    parser.add_argument("--page", action="append", help="only this page (repeatable)")
    args = parser.parse_args()
    stale = []
    for page in args.page or PAGES:
        rendered = render(page)
        if args.check:
            if rendered != (ROOT / page).read_text():
                stale.append(page)
                print(f"stale: {page}")
        else:
            (ROOT / page).write_text(rendered)
            print(f"wrote {page}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
