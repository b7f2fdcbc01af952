"""The tables of docs/results/open-questions.md (issue #38), from the runs scripts/open_questions.sh wrote.

Every pFedLoRA variant is paired by seed with Standalone at the same data and partition: for
questions 1-3 the base's Standalone (its runs do not read the adapter keys the questions vary), for
questions 4-5 the Standalone run beside it. Questions 1-3 also pair each variant with the base
configuration (configs/paper/cifar10_n10_active.yaml), the contrast the question asks about.
``scripts/gen_results.py`` calls these functions.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import yaml
from federation_map import cell as _cell  # mean [95% t interval] (n), bold where it excludes 0

from pfedlora.experiments.records import RunRecord, human, load_run
from pfedlora.experiments.stats import PairedDifference, paired_difference

OQ = Path("docs/results/open-questions")


def _runs(directory: Path) -> list[RunRecord]:
    return [load_run(p.parent) for p in sorted(directory.glob("seed*/summary.json"))]


def _finals(records: list[RunRecord], round_index: int | None = None) -> dict[int, float]:
    """seed -> final accuracy (or the accuracy at ``round_index``)."""
    if round_index is None:
        return {r.seed: r.summary["final_accuracy"] for r in records}
    return {r.seed: row["mean_acc"] for r in records for row in r.history if int(row["round"]) == round_index}


def _base_runs() -> list[RunRecord]:
    return _runs(OQ / "base" / "pfedlora")


def _diff(reference: dict[int, float], candidate: dict[int, float]) -> PairedDifference | None:
    return paired_difference(reference, candidate) if set(reference) & set(candidate) else None


def _mean(values: list[float | None]) -> str:
    values = [v for v in values if v is not None]
    return f"{statistics.fmean(values):.2f}" if values else "–"


def _accuracy(records: list[RunRecord]) -> str:
    finals = _finals(records)
    return f"{statistics.fmean(finals.values()):.2f} ({len(finals)})" if finals else "–"


def _activity(records: list[RunRecord]) -> tuple[str, str]:
    return (_mean([r.summary.get("final_adapter_share") for r in records]),
            _mean([r.summary.get("final_adapter_flips") for r in records]))


def _costs(records: list[RunRecord]) -> tuple[str, str]:
    s = records[0].summary
    return (human(s["train_flops_per_client_round"], "FLOP"),
            human(s["up_bytes_per_client_round"] + s["down_bytes_per_client_round"], "B"))


def base_standalone() -> dict[int, float]:
    return _finals(_runs(OQ / "base" / "standalone"))


def base_pfedlora() -> dict[int, float]:
    return _finals(_runs(OQ / "base" / "pfedlora"))


def _adapter(point: Path) -> dict:
    config = next(iter(sorted(point.glob("pfedlora/seed*/config.yaml"))), None)
    return yaml.safe_load(config.read_text())["adapter"] if config else {}


def variant_label(question: str, adapter: dict) -> str:
    if question == "q1":
        if adapter.get("schedule") == "synchronous":
            return "synchronous: one step over both, adapter at train.lr with train.weight_decay"
        if adapter.get("lr_scale", 1) != 1:
            decay = adapter.get("weight_decay")
            decay = "train.weight_decay" if decay is None else "no weight decay" if decay == 0 else f"weight decay {decay:g}"
            return f"iterative, adapter step at {adapter['lr_scale']:g} × lr with {decay} (the base)"
        return "iterative, adapter step at train.lr with train.weight_decay"
    if question == "q2":
        return f"{adapter.get('construction')}, rank {adapter.get('rank')}"
    return f"{adapter.get('placement')}, μ = {adapter.get('mu'):g}"


def short_label(question: str, adapter: dict) -> str:
    """The variant in a few words (the figure's axis)."""
    if question == "q1":
        if adapter.get("schedule") == "synchronous":
            return "synchronous"
        return "iterative, adapter at 10 × lr (base)" if adapter.get("lr_scale", 1) != 1 else "iterative, adapter at lr"
    return variant_label(question, adapter)


def _points(question: str) -> list[Path]:
    points = [p for p in sorted((OQ / question).glob("*")) if p.is_dir() and any(p.glob("pfedlora/seed*/summary.json"))]
    if question == "q2":
        points.sort(key=lambda p: (_adapter(p).get("construction"), _adapter(p).get("rank")))
    if question == "q3":
        points.sort(key=lambda p: (_adapter(p).get("placement"), _adapter(p).get("mu")))
    return points


def design_table(question: str, early: int | None = None) -> str:
    """Questions 1-3: each pFedLoRA variant against the base's Standalone and against the base;
    ``early``: also the accuracy at that round and the difference to the base there."""
    standalone, base = base_standalone(), base_pfedlora()
    early_head = f" accuracy at round {early} % | − the base at round {early} [95% CI] (n) |" if early else ""
    lines = ["| variant | final accuracy % (seeds) | − Standalone [95% CI] (n) | − the base [95% CI] (n) |" + early_head
             + " adapter_share % | adapter_flips % | adapter parameters | compute / client / round | comm / client / round |",
             "|---|---|---|---|" + ("---|---|" if early else "") + "---|---|---|---|---|"]
    if standalone:
        early_cells = f" {_mean(list(_finals(_runs(OQ / 'base' / 'standalone'), early).values()))} | |" if early else ""
        lines.append(f"| Standalone (the reference) | {statistics.fmean(standalone.values()):.2f} ({len(standalone)}) "
                     "| | |" + early_cells + " | | | | 0 B |")
    for point in _points(question):
        records = _runs(point / "pfedlora")
        finals = _finals(records)
        adapter = _adapter(point)
        is_base = finals == {s: base[s] for s in finals if s in base} and bool(finals)
        share, flips = _activity(records)
        flops, comm = _costs(records)
        label = variant_label(question, adapter)
        early_cells = ""
        if early:
            at = _finals(records, early)
            early_cells = (f"| {_mean(list(at.values()))} "
                           f"| {'(the base)' if is_base else _cell(_diff(_finals(_base_runs(), early), at))} ")
        lines.append(f"| {'**' + label + '**' if is_base else label} | {_accuracy(records)} "
                     f"| {_cell(_diff(standalone, finals))} | {'(the base)' if is_base else _cell(_diff(base, finals))} "
                     f"{early_cells}| {share} | {flips} | {records[0].summary.get('adapter_parameters', 0):,} | {flops} | {comm} |")
    return "\n".join(lines)


def settings(question: str) -> list[tuple[str, Path]]:
    """(label, directory with standalone/ and pfedlora/) for the base and questions 4 and 5."""
    if question == "base":
        return [("the base: pathological, 2 classes per client", OQ / "base")]
    if question == "q5-noise":
        return [("0% (the base)", OQ / "base")] + [(f"{float(p.name.split('-')[-1]):.0%}", p)
                                                   for p in sorted((OQ / "q5-noise").glob("label_noise-*"))]
    if question == "q5-imbalance":
        return [(f"Dirichlet α = {p.name.split('-')[-1]}, long-tailed sizes", p)
                for p in sorted((OQ / "q5-imbalance").glob("alpha-*"))]
    return [(_q4_label(p.name), p) for p in sorted((OQ / "q4").glob("clients-*"))]


def _q4_label(name: str) -> str:
    _, clients, pool = name.split("-")
    return f"{int(clients):,} clients, {10 / int(clients):.0%} a round; {'CNN-1..5' if pool == 'five' else '10 architectures'}"


def paired_table(question: str) -> str:
    """Questions 4-5: Standalone and pFedLoRA side by side at each setting, paired by seed."""
    head = {"base": "setting", "q5-noise": "symmetric label noise", "q5-imbalance": "partition",
            "q4": "clients and pool"}[question]
    lines = [f"| {head} | Standalone % (seeds) | pFedLoRA % (seeds) | pFedLoRA − Standalone [95% CI] (n) | adapter_share % "
             "| adapter_flips % | clients ever selected | comm / client / round |", "|---|---|---|---|---|---|---|---|"]
    for label, directory in settings(question):
        standalone, pfedlora = _runs(directory / "standalone"), _runs(directory / "pfedlora")
        if not pfedlora:
            continue
        share, flips = _activity(pfedlora)
        selected = pfedlora[0].summary.get("clients_ever_selected")
        clients = pfedlora[0].summary["num_clients"]
        lines.append(f"| {label} | {_accuracy(standalone)} "
                     f"| {_accuracy(pfedlora)} | {_cell(_diff(_finals(standalone), _finals(pfedlora)))} | {share} "
                     f"| {flips} | {'–' if selected is None else f'{selected:,} of {clients:,}'} "
                     f"| {_costs(pfedlora)[1]} |")
    return "\n".join(lines)


def _verdict_words(d: PairedDifference | None) -> str:
    if d is None:
        return "not run"
    if d.ci_low is None:
        return f"{d.mean:+.2f} with one seed (no interval)"
    word = {"gain": "a gain", "loss": "a loss"}.get(d.verdict, f"indistinguishable with {d.n} seeds")
    return f"{word}, {d.text()}"


def design_verdicts(question: str) -> str:
    """One line per variant: its verdict against Standalone and against the base."""
    standalone, base = base_standalone(), base_pfedlora()
    lines = []
    for point in _points(question):
        finals = _finals(_runs(point / "pfedlora"))
        is_base = bool(finals) and all(base.get(s) == v for s, v in finals.items())
        against_base = "" if is_base else f"; against the base: {_verdict_words(_diff(base, finals))}"
        lines.append(f"* {variant_label(question, _adapter(point))}: against Standalone "
                     f"{_verdict_words(_diff(standalone, finals))}{against_base}.")
    return "\n".join(lines) or "Not run yet."


def paired_verdicts(question: str) -> str:
    lines = []
    for label, directory in settings(question):
        standalone, pfedlora = _finals(_runs(directory / "standalone")), _finals(_runs(directory / "pfedlora"))
        if pfedlora:
            lines.append(f"* {label}: pFedLoRA against Standalone "
                         f"{_verdict_words(_diff(standalone, pfedlora))}.")
    return "\n".join(lines) or "Not run yet."


def walls() -> str:
    log = OQ / "wall_times.txt"
    return ("```\n" + log.read_text().strip() + "\n```") if log.exists() else "No runs logged yet."


def all_runs() -> list[RunRecord]:
    return [load_run(p.parent) for p in sorted(OQ.glob("**/seed*/summary.json"))]


def figure(out: Path = OQ / "gains_over_standalone.png") -> None:
    """Every pFedLoRA cell's paired difference from Standalone with its 95% t interval, by question."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pfedlora.experiments.report import algorithm_colour

    standalone = base_standalone()
    rows: list[tuple[str, str, PairedDifference | None]] = []
    titles = {"q1": "1. schedule", "q2": "2. construction × rank", "q3": "3. placement × μ", "q4": "4. scale",
              "q5-noise": "5a. label noise", "q5-imbalance": "5b. Dirichlet, long-tailed"}
    for question in ("q1", "q2", "q3"):
        for point in _points(question):
            finals = _finals(_runs(point / "pfedlora"))
            rows.append((titles[question], short_label(question, _adapter(point)), _diff(standalone, finals)))
    for question in ("q4", "q5-noise", "q5-imbalance"):
        for label, directory in settings(question):
            pf, st = _finals(_runs(directory / "pfedlora")), _finals(_runs(directory / "standalone"))
            if pf:
                rows.append((titles[question], label.replace(", long-tailed sizes", "").replace(" (the base)", ""),
                             _diff(st, pf)))
    if not rows:
        return
    fig, ax = plt.subplots(figsize=(10, 0.32 * len(rows) + 1.9))
    colour = algorithm_colour("pfedlora")
    ys = list(range(len(rows)))[::-1]
    for y, (group, label, d) in zip(ys, rows):
        if d is None:
            continue
        if d.ci_low is not None:
            ax.plot([d.ci_low, d.ci_high], [y, y], color=colour, linewidth=2.2 if d.excludes_zero else 1.2)
        ax.plot([d.mean], [y], "o", color=colour, markersize=5, markerfacecolor=colour if d.excludes_zero else "white")
        ax.text(1.01, y, f"n={d.n}", transform=ax.get_yaxis_transform(), va="center", fontsize="x-small", color="0.3")
    ax.axvline(0, color="0.3", linewidth=1)
    ax.set_yticks(ys, [f"{group}: {label}" for group, label, _ in rows], fontsize="small")
    ax.set_xlabel("pFedLoRA − Standalone, final test accuracy (percentage points)\nbar: 95% t interval of the "
                  "paired differences over seeds; filled: the interval excludes 0")
    ax.set_title("The five questions: each pFedLoRA cell against Standalone")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
