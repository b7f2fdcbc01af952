"""Every generated table and figure of the results pages, from the committed run directories.

    python scripts/gen_results.py           # rewrite the pages' generated blocks, redraw their figures
    python scripts/gen_results.py --check   # exit 1 naming every block whose committed text differs

A generated block sits between ``<!-- NAME: start -->`` and ``<!-- NAME: end -->`` on its page and
is written only here (tests/experiments/test_results_pages.py regenerates every block and fails when
the committed text differs, and fails on a table outside a block). A figure's block says which runs
it was drawn from and carries a digest of those runs' summary.json and metrics.csv: when the runs
change, the block changes, and the check fails until this command has redrawn the figure.

Reads only what is committed (summary.json, metrics.csv, config.yaml of each run); runs nothing.
Differences are paired by seed against a reference (pfedlora.experiments.stats); a difference is a
gain or a loss only where its 95% interval excludes 0.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import re
import sys
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import federation_map  # noqa: E402
import long_budget  # noqa: E402
import open_questions_tables as oq  # noqa: E402
import privacy_table  # noqa: E402
from page_blocks import block_pattern, fill  # noqa: E402
import tuning_table  # noqa: E402

from pfedlora.experiments.compare import (  # noqa: E402
    comparison_markdown, difference_text, summarize_comparison, write_comparison_csv,
)
from pfedlora.experiments.records import RunRecord, human, load_run  # noqa: E402
from pfedlora.experiments.report import ALGORITHM_ORDER, write_report  # noqa: E402
from pfedlora.experiments.stats import paired_difference, seeds_for_difference  # noqa: E402
from pfedlora.metrics.run_dir import write_atomic  # noqa: E402

RESULTS = Path("docs/results")
NAMES = federation_map.NAMES

# the CIFAR-10 20-round table: pFedLoRA's re-run at today's defaults, every other algorithm's runs
N10_TUNED = ["docs/results/cifar10/n10-tuned-pfedlora-tuned:pfedlora",
             "docs/results/cifar10/n10-tuned:standalone,lg_fedavg,fd,fedproto,fml,fedkd,fedgh,fedtgp,fedmrl,fedl2g,fedgen"]
N10_LONG = ["docs/results/cifar10/n10-long"]
NLP = ["docs/results/nlp"]
# the 20-round table when every algorithm ran at lr 0.02 (history): seeds 0-2 as then
HISTORY = ["docs/results/cifar10/n10-tuned:pfedlora,standalone,lg_fedavg,fml#0,1,2", "docs/results/cifar10/n10-lr0.02"]


def runs(specs: list[str]) -> list[RunRecord]:
    """The finished runs of ``DIR[:ALG,...][#SEED,...]`` specs (``DIR/<algorithm>/seed<k>``), in the
    library's algorithm order, then by seed."""
    found = []
    for spec in specs:
        spec, _, seeds = spec.partition("#")
        directory, _, only = spec.partition(":")
        wanted = set(only.split(",")) if only else None
        kept = {int(k) for k in seeds.split(",")} if seeds else None
        for summary in Path(directory).glob("*/seed*/summary.json"):
            seed = int(summary.parent.name.removeprefix("seed"))
            if (wanted is None or summary.parent.parent.name in wanted) and (kept is None or seed in kept):
                found.append(load_run(summary.parent))
    order = {name: i for i, name in enumerate(ALGORITHM_ORDER)}
    return sorted(found, key=lambda r: (order.get(r.algorithm, len(order)), r.seed))


def digest(records: list[RunRecord]) -> str:
    """12 hex digits of the runs' summary.json and metrics.csv: changes whenever a run does."""
    hasher = hashlib.sha256()
    for record in sorted(records, key=lambda r: r.path.as_posix()):
        hasher.update(record.path.as_posix().encode())
        for name in ("summary.json", "metrics.csv"):
            hasher.update((record.path / name).read_bytes())
    return hasher.hexdigest()[:12]


def seeds_text(records: list[RunRecord]) -> str:
    per = {}
    for r in records:
        per.setdefault(r.algorithm, []).append(r.seed)
    counts = sorted({len(v) for v in per.values()})
    return f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}"


# ---------------------------------------------------------------- tables


def comparison_block(specs: list[str], reference: str = "standalone") -> str:
    """``pfedlora compare``'s tables (accuracy and costs, diagnostics, paired differences) for the runs."""
    table = summarize_comparison(runs(specs), reference=reference)
    lines = comparison_markdown(table).splitlines()
    lines = lines[2:]  # no "# Comparison" title: the page has its own heading, and no sub-heading either
    lines = [f"**{line[3:]}:**" if line.startswith("## ") else line for line in lines]
    while lines and (not lines[-1].strip() or lines[-1].startswith("Numbers:")):
        lines.pop()
    return "\n".join(lines)


def per_seed_block(specs: list[str], reference: str = "standalone", of: str = "pfedlora") -> str:
    """Final accuracy per seed; ``of`` − each algorithm, paired by seed, with its 95% interval."""
    records = runs(specs)
    finals: dict[str, dict[int, float]] = {}
    for r in records:
        finals.setdefault(r.algorithm, {})[r.seed] = r.summary["final_accuracy"]
    seeds = sorted({r.seed for r in records})
    name = NAMES.get(of, of)
    lines = ["| algorithm | " + " | ".join(f"seed {s}" for s in seeds) + f" | mean | {name} − it [95% CI] (n) |",
             "|---" * (len(seeds) + 3) + "|"]
    for algorithm, by_seed in finals.items():
        cells = [f"{by_seed[s]:.2f}" if s in by_seed else "" for s in seeds]
        mean = sum(by_seed.values()) / len(by_seed)
        diff = "" if algorithm == of else difference_text(paired_difference(by_seed, finals[of]))
        label = f"**{NAMES.get(algorithm, algorithm)}**" if algorithm == of else NAMES.get(algorithm, algorithm)
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {mean:.2f} ({len(by_seed)}) | {diff} |")
    return "\n".join(lines)


def walls_block(specs: list[str]) -> str:
    """Each run's own wall time (summary.json ``wall_seconds``), per algorithm and seed."""
    records = runs(specs)
    seeds = sorted({r.seed for r in records})
    by_algorithm: dict[str, dict[int, float]] = {}
    for r in records:
        by_algorithm.setdefault(r.algorithm, {})[r.seed] = r.summary.get("wall_seconds")
    lines = ["| algorithm | " + " | ".join(f"seed {s}" for s in seeds) + " |", "|---" * (len(seeds) + 1) + "|"]
    for algorithm, walls in by_algorithm.items():
        cells = ["" if walls.get(s) is None else f"{walls[s]:,.0f} s" for s in seeds]
        lines.append(f"| {NAMES.get(algorithm, algorithm)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


ADAPTER_SEARCH = [  # (run label under cifar10/adapter-search/, what it changes on top of the tuned configuration)
    ("reference", "reference: the tuned configuration"),
    ("branch,lr_scale=10,wd=0", "1. adapter step lr × 10, no weight decay on it (`adapter.lr_scale: 10`, `adapter.weight_decay: 0`)"),
    ("branch,mu=4,wd=0", "2. output scale μ = 4, no adapter weight decay"),
    ("branch,epochs=3,lr_scale=5,wd=0", "3. 3 adapter epochs, lr × 5, no adapter weight decay"),
    ("head,mu=1,lr_scale=10,wd=0", "4. on the local model's representation: head LoRA rank 8, μ = 1, lr × 10, no adapter weight decay"),
    ("branch,convex,random-init,mu=0.3", "5. the paper's convex mix, random initial adapter, μ = 0.3"),
    ("branch,convex,random-init,mu=0.1", "6. the paper's convex mix, random initial adapter, μ = 0.1"),
]
SEARCH_BASELINES = [("standalone", "train.lr=0.02", "Standalone, lr 0.02 (its tuned value)"),
                    ("fedkd", "fedkd.temperature=16", "FedKD, T = 16 (the best baseline on validation)"),
                    ("fd", "fd.gamma=0.03", "FD, γ = 0.03"), ("fedproto", "fedproto.lam=10", "FedProto, λ = 10")]


def activity_word(share: float, flips: float) -> str:
    """inert: share and flips below 1%; barely: flips below 2%; else active."""
    if share < 1 and flips < 1:
        return "inert"
    return "barely" if flips < 2 else "yes"


def adapter_search_block() -> str:
    """pFedLoRA's adapter search on the validation split (seed 0) beside the tuned baselines."""
    def last3(record: RunRecord) -> float:
        return sum(row["mean_acc"] for row in record.history[-3:]) / 3

    lines = ["| configuration (on top of the tuned one) | final val. acc | last 3 | adapter_share | adapter_flips "
             "| active? | wall |", "|---|---|---|---|---|---|---|"]
    for label, description in ADAPTER_SEARCH:
        r = load_run(Path("docs/results/cifar10/adapter-search") / label / "pfedlora" / "seed0")
        share, flips = r.summary["final_adapter_share"], r.summary["final_adapter_flips"]
        lines.append(f"| {description} | {r.summary['final_accuracy']:.2f} | {last3(r):.2f} | {share:.2f} | {flips:.2f} "
                     f"| {activity_word(share, flips)} | {r.summary['wall_seconds']:.0f} s |")
    for algorithm, label, description in SEARCH_BASELINES:
        r = load_run(Path("docs/results/cifar10/tuning-v2") / algorithm / label / algorithm / "seed0")
        lines.append(f"| *{description}* | {r.summary['final_accuracy']:.2f} | {last3(r):.2f} | – | – | – | |")
    return "\n".join(lines)


PFEDLORA_TUNING = [("head,mu=1", "head LoRA rank 8, μ = 1"), ("head,mu=0.3", "head LoRA rank 8, μ = 0.3"),
                   ("head,mu=0.05", "head LoRA rank 8, μ = 0.05"),
                   ("branch,additive,mu=0.5", "branch, reduced rank 8 on the 2×-pooled image, additive, zero-init, μ = 0.5"),
                   ("branch,additive,mu=0.05", "same, μ = 0.05"),
                   ("branch,convex,mu=0.05", "same but convex (the paper's mix), μ = 0.05")]


def pfedlora_tuning_block() -> str:
    """pFedLoRA's 6 tuning runs (validation split, seed 0, lr 0.01); the best in bold."""
    records = [(description, load_run(Path("docs/results/cifar10/tuning-v2/pfedlora") / label / "pfedlora" / "seed0"))
               for label, description in PFEDLORA_TUNING]
    best = max(r.summary["final_accuracy"] for _, r in records)
    lines = ["| pFedLoRA configuration | adapter | validation accuracy (%) |", "|---|---|---|"]
    for description, r in records:
        s = r.summary
        adapter = (f"{s['adapter_parameters']:,} parameters, "
                   f"{human(s['up_bytes_per_client_round'] + s['down_bytes_per_client_round'], 'B')} / client / round")
        accuracy = f"{s['final_accuracy']:.2f}"
        lines.append(f"| {description} | {adapter} | {f'**{accuracy}**' if s['final_accuracy'] == best else accuracy} |")
    return "\n".join(lines)


def living_adapter_block() -> str:
    """pFedLoRA tuned (inert) and active against the 20-round table's Standalone, FedProto and FD."""
    sources = [("pFedLoRA, tuned (inert), re-measured", "docs/results/cifar10/n10-tuned-pfedlora-tuned:pfedlora"),
               ("pFedLoRA, active (lr × 10, no adapter weight decay)", "docs/results/cifar10/n10-tuned-pfedlora-active:pfedlora"),
               ("Standalone", "docs/results/cifar10/n10-tuned:standalone"),
               ("FedProto", "docs/results/cifar10/n10-tuned:fedproto"),
               ("FD", "docs/results/cifar10/n10-tuned:fd")]
    reference = {r.seed: r.summary["final_accuracy"] for r in runs([sources[2][1]])}
    lines = ["| algorithm | final acc (seeds) | per seed | − Standalone [95% CI] (n) | adapter_share | adapter_flips "
             "| compute / client / round | comm / client / round |", "|---|---|---|---|---|---|---|---|"]
    for label, spec in sources:
        records = runs([spec])
        finals = {r.seed: r.summary["final_accuracy"] for r in records}
        mean = sum(finals.values()) / len(finals)
        share = [r.summary.get("final_adapter_share") for r in records]
        flips = [r.summary.get("final_adapter_flips") for r in records]

        def activity(values: list[float | None]) -> str:
            if any(v is None for v in values):
                return "–"
            return f"{sum(values) / len(values):.2f} (" + " / ".join(f"{v:.2f}" for v in values) + ")"

        diff = "" if label == "Standalone" else difference_text(paired_difference(reference, finals))
        s = records[0].summary
        lines.append(f"| {label} | {mean:.2f} ({len(finals)}) | " + " / ".join(f"{finals[k]:.2f}" for k in sorted(finals))
                     + f" | {diff} | {activity(share)} | {activity(flips)} "
                     f"| {human(s['train_flops_per_client_round'], 'FLOP')} "
                     f"| {human(s['up_bytes_per_client_round'] + s['down_bytes_per_client_round'], 'B')} |")
    return "\n".join(lines)


def key_comparisons_block(specs: list[str], pairs: list[tuple[str, str]]) -> str:
    """For the comparisons a page's findings rest on: the paired difference, its interval, the
    spread of the per-seed differences and the seeds a 1-point difference would need at that spread."""
    records = runs(specs)
    finals: dict[str, dict[int, float]] = {}
    for r in records:
        finals.setdefault(r.algorithm, {})[r.seed] = r.summary["final_accuracy"]
    lines = ["| comparison | difference [95% CI] (n) | verdict | std of the per-seed differences "
             "| seeds for a 1-point difference to exclude 0 |", "|---|---|---|---|---|"]
    for candidate, reference in pairs:
        d = paired_difference(finals[reference], finals[candidate])
        needed = seeds_for_difference(d.std)
        lines.append(f"| {NAMES.get(candidate, candidate)} − {NAMES.get(reference, reference)} | {d.text()} "
                     f"| {d.verdict} | {'–' if d.std is None else f'{d.std:.2f}'} | {'–' if needed is None else needed} |")
    return "\n".join(lines)


def map_key_comparisons_block(algorithms: list[str]) -> str:
    """The map's key comparisons: every cell's paired gain over Standalone, its spread and the seeds
    a 1-point difference would need at it."""
    lines = ["| algorithm | cell | gain [95% CI] (n) | std of the per-seed gains | seeds for a 1-point gain to exclude 0 |",
             "|---|---|---|---|---|"]
    for algorithm in algorithms:
        for cell, finals in federation_map.map_finals().items():
            if algorithm in finals and "standalone" in finals:
                d = paired_difference(finals["standalone"], finals[algorithm])
                needed = seeds_for_difference(d.std)
                lines.append(f"| {NAMES.get(algorithm, algorithm)} | {cell} | {d.text()} "
                             f"| {'–' if d.std is None else f'{d.std:.2f}'} | {'–' if needed is None else needed} |")
    return "\n".join(lines)


def _names(items: list[str]) -> str:
    return ", ".join(items) if items else "none"


def map_verdicts_block() -> str:
    """The map's findings as the numbers give them: per cell, the gains and losses whose 95% interval
    excludes 0; over the cells, rliable's aggregate and the pooled per-seed gains."""
    cells = federation_map.map_finals()
    label = {f"{s}-n{n}": f"{federation_map.SETTINGS[s]}, {n} images" for s in federation_map.SETTINGS
             for n in federation_map.PER_CLIENT}
    gains, losses, seeds = [], [], set()
    for cell, finals in cells.items():
        for algorithm, d in federation_map.paired(finals).items():
            seeds.add(d.n)
            if d.excludes_zero:
                text = f"{NAMES.get(algorithm, algorithm)} ({label[cell]}: {d.text()})"
                (gains if d.mean > 0 else losses).append(text)
    aggregates = []
    algorithms = federation_map.ordered({a for f in cells.values() for a in f} - {"standalone"})
    for algorithm in algorithms:
        ref = {c: f["standalone"] for c, f in cells.items() if algorithm in f and "standalone" in f}
        aggregates.append((algorithm, federation_map.aggregate_gain(ref, {c: cells[c][algorithm] for c in ref})))
    def both(g, sign: int) -> bool:  # the stratified bootstrap and the pooled t interval agree
        if sign > 0:
            return g.mean_gain_low > 0 and g.pooled.verdict == "gain"
        return g.mean_gain_high < 0 and g.pooled.verdict == "loss"

    def text(a: str, g) -> str:
        return (f"{NAMES.get(a, a)} ({g.mean_gain:+.2f} [{g.mean_gain_low:+.2f}, {g.mean_gain_high:+.2f}]; pooled "
                f"{g.pooled.text()})")

    up = [text(a, g) for a, g in aggregates if both(g, 1)]
    down = [text(a, g) for a, g in aggregates if both(g, -1)]
    bootstrap_only = [text(a, g) for a, g in aggregates if g.excludes_zero and not both(g, 1) and not both(g, -1)]
    return "\n".join([
        f"* **Cells where a gain over Standalone excludes 0** (95% t interval of the paired per-seed gains; "
        f"{min(seeds)}-{max(seeds)} seeds per cell): {_names(gains)}.",
        f"* **Cells where a loss excludes 0:** {_names(losses)}.",
        "* **Every other cell is indistinguishable from Standalone** with the seeds it has (the tables below).",
        "* **Over the six cells**, where both the stratified bootstrap interval of the mean gain and the paired t "
        f"interval of all per-seed gains pooled exclude 0: a gain for {_names(up)}; a loss for {_names(down)}.",
        f"* **Only the bootstrap interval excludes 0** (with {min(seeds)}-{max(seeds)} seeds per cell a resample has few distinct means, so "
        f"that interval is too narrow; no claim is made): {_names(bootstrap_only)}. Every other algorithm is "
        "indistinguishable from Standalone over the six cells.",
    ])


def comparison_verdicts_block(specs: list[str], reference: str = "standalone") -> str:
    """A comparison's findings as the numbers give them: who gains or loses against ``reference``
    with a 95% interval excluding 0, and who is indistinguishable with how many seeds."""
    table = summarize_comparison(runs(specs), reference=reference)
    ref = NAMES.get(reference, reference)
    gains, losses, tied = [], [], []
    for row in table["rows"]:
        d = row.get("final_diff_object")
        if d is None:
            continue
        name = NAMES.get(row["algorithm"], row["algorithm"])
        if d.verdict == "gain":
            gains.append(f"{name} ({d.text()})")
        elif d.verdict == "loss":
            losses.append(f"{name} ({d.text()})")
        else:
            tied.append(f"{name} ({d.n})")
    return "\n".join([
        f"* **Final accuracy above {ref}, 95% interval excluding 0:** {_names(gains)}.",
        f"* **Below {ref}, interval excluding 0:** {_names(losses)}.",
        f"* **Indistinguishable from {ref}** (seeds in brackets): {_names(tied)}.",
    ])


def tuning_block(root: str, algorithms: list[str] | None = None) -> str:
    """scripts/tuning_table.py's table of a tuning directory (only ``algorithms``' rows if given)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        tuning_table.main(Path(root))
    lines = out.getvalue().strip().splitlines()
    if algorithms is not None:
        lines = lines[:2] + [line for line in lines[2:] if line.split("|")[1].strip() in algorithms]
    return "\n".join(lines)


# ---------------------------------------------------------------- figures


def figure_note(records: list[RunRecord], sources: list[str],
                shows: str = "Bands: 95% t interval of the mean over seeds.") -> str:
    where = ", ".join(f"`{s}`" for s in sources)
    return (f"*Figure drawn by `python scripts/gen_results.py` from {len(records)} runs ({where}; runs digest "
            f"`{digest(records)}`). {shows}*")


def map_runs(per_client: tuple[int, ...] = federation_map.PER_CLIENT) -> list[RunRecord]:
    return runs([str(federation_map.MAP / f"{s}-n{n}") for s in federation_map.SETTINGS for n in per_client])


def heatmap_runs() -> list[RunRecord]:
    extra = [str(d) for dirs in federation_map.EXTRA_COLUMNS.values() for d in dirs]
    return map_runs() + runs(extra)


def long_runs() -> list[RunRecord]:
    return runs([str(d) for d in long_budget.cells()])


def budget_runs() -> list[RunRecord]:
    return runs(N10_TUNED) + [r for r in runs(N10_LONG) if r.seed in (0, 1, 2)]


def draw_budgets() -> None:
    """Mean accuracy against round at both budgets, one colour per algorithm, 95% bands."""
    import matplotlib.pyplot as plt

    from pfedlora.experiments.report import BAND_TITLE, algorithm_colour, integer_ticks, mean_band

    panels = [("20 rounds, 5,000 training images", runs(N10_TUNED)),
              ("50 rounds, 50,000 training images (seeds 0-2)", [r for r in runs(N10_LONG) if r.seed in (0, 1, 2)])]
    fig, axes = plt.subplots(1, 2, figsize=(15.2, 4.6))
    shown = {}
    for ax, (title, records) in zip(axes, panels):
        by_algorithm: dict[str, list[RunRecord]] = {}
        for r in records:
            by_algorithm.setdefault(r.algorithm, []).append(r)
        for algorithm, group in by_algorithm.items():
            curve = mean_band(group, lambda row: row["round"])
            colour = algorithm_colour(algorithm)
            xs = [p[0] for p in curve]
            line, = ax.plot(xs, [p[1] for p in curve], color=colour, linewidth=2.2 if algorithm == "pfedlora" else 1.4)
            if len(group) > 1:
                ax.fill_between(xs, [p[2] for p in curve], [p[3] for p in curve], color=colour, alpha=0.15, linewidth=0)
            shown[algorithm] = line
        seeds = seeds_text(records)
        ax.set(title=f"{title}, {seeds} seeds per algorithm", xlabel="round", ylabel="mean client test accuracy (%)")
        integer_ticks(ax.xaxis)
        ax.grid(alpha=0.3)
    order = [a for a in ALGORITHM_ORDER if a in shown]
    fig.legend([shown[a] for a in order], [NAMES.get(a, a) for a in order], loc="center left",
               bbox_to_anchor=(0.86, 0.5), frameon=False, title="band: 95% t interval\nof the mean over seeds", fontsize="small")
    fig.tight_layout(rect=(0, 0, 0.86, 1))
    fig.savefig("docs/results/cifar10/budgets_accuracy_vs_round.png", dpi=110)
    plt.close(fig)


def redraw_compare_dir(specs: list[str], out: Path, title: str = "Comparison runs") -> None:
    """A comparison directory's comparison.md/.csv and report (plots) from its runs."""
    records = runs(specs)
    table = summarize_comparison(records)
    write_comparison_csv(table, out / "comparison.csv")
    write_atomic(out / "comparison.md", comparison_markdown(table))
    write_report([r.path for r in records], out, title=title)


# ---------------------------------------------------------------- pages

PAGES: dict[str, dict[str, Callable[[], str]]] = {
    "docs/results/when-federation-helps.md": {
        **{f"table {s}": (lambda s=s: federation_map.table(s)) for s in federation_map.SETTINGS},
        "fedavg": federation_map.fedavg_table,
        "lr": federation_map.lr_tables,
        "activity": federation_map.activity_table,
        "summary": federation_map.summary_table,
        "verdicts": map_verdicts_block,
        "key comparisons": lambda: map_key_comparisons_block(["fedproto", "pfedlora"]),
        "time": federation_map.time_table,
        "long verdicts": long_budget.verdicts,
        "long tables": long_budget.tables,
        "figure long": lambda: figure_note(long_runs(), [f"map/long/{d.name}" for d in long_budget.cells()],
                                           "Bands: 95% t interval of the mean over seeds; the dotted line marks round 30, "
                                           "the map's budget."),
        "figure heatmaps": lambda: figure_note(heatmap_runs(), ["map/<setting>-n<N>", "cifar10/n10-tuned",
                                                                "cifar10/n10-tuned-pfedlora-active", "cifar10/n10-long"],
                                                "Each cell: the mean gain and its 95% t interval over the seeds (n under "
                                                "each column); hatched where the interval includes 0, bold where it "
                                                "excludes 0."),
        "figure bytes": lambda: figure_note(map_runs((50,)), ["map/<setting>-n50"]),
    },
    "docs/results/privacy.md": {
        "privacy tuning": privacy_table.tuning_table,
        "privacy test": privacy_table.test_table,
        "figure privacy": lambda: figure_note([load_run(p) for p in privacy_table.test_records()],
                                              ["privacy/test/<algorithm>/<setting>"],
                                              "One seed (0) per point: no band."),
        "privacy noise": privacy_table.noise_table,
        "privacy secagg": privacy_table.secagg_table,
    },
    "docs/results/open-questions.md": {
        "oq base": lambda: oq.paired_table("base"),
        "oq answer q1": lambda: oq.design_verdicts("q1"),
        "oq q1": lambda: oq.design_table("q1", early=5),
        "oq answer q2": lambda: oq.design_verdicts("q2"),
        "oq q2": lambda: oq.design_table("q2"),
        "oq answer q3": lambda: oq.design_verdicts("q3"),
        "oq q3": lambda: oq.design_table("q3"),
        "oq answer q4": lambda: oq.paired_verdicts("q4"),
        "oq q4": lambda: oq.paired_table("q4"),
        "oq answer q5": lambda: oq.paired_verdicts("q5-noise") + "\n" + oq.paired_verdicts("q5-imbalance"),
        "oq q5-noise": lambda: oq.paired_table("q5-noise"),
        "oq q5-imbalance": lambda: oq.paired_table("q5-imbalance"),
        "oq walls": oq.walls,
        "figure oq": lambda: figure_note(oq.all_runs(), ["open-questions/<stage>/..."],
                                         "Bars: 95% t interval of the paired per-seed differences; a cell with one seed "
                                         "has a point and no bar."),
    },
    "docs/results/cifar10.md": {
        "table n10-tuned": lambda: comparison_block(N10_TUNED),
        "verdicts n10-tuned": lambda: comparison_verdicts_block(N10_TUNED),
        "verdicts n10-long": lambda: comparison_verdicts_block(N10_LONG),
        "key comparisons n10-tuned": lambda: key_comparisons_block(
            N10_TUNED, [("pfedlora", "standalone"), ("fedproto", "standalone"), ("fml", "standalone"),
                        ("fedmrl", "standalone"), ("pfedlora", "fedproto")]),
        "adapter search": adapter_search_block,
        "living adapter": living_adapter_block,
        "pfedlora tuning": pfedlora_tuning_block,
        "table history": lambda: comparison_block(HISTORY),
        "walls n10-long": lambda: walls_block(N10_LONG),
        "table n10-long": lambda: comparison_block(N10_LONG),
        "seeds n10-long": lambda: per_seed_block(N10_LONG),
        "key comparisons n10-long": lambda: key_comparisons_block(
            N10_LONG, [("pfedlora", "fedproto"), ("pfedlora", "fedgh"), ("pfedlora", "standalone"),
                       ("fedproto", "standalone"), ("fedgh", "standalone")]),
        "tuning": lambda: tuning_block("docs/results/cifar10/tuning-v2",
                                       ["standalone", "lg_fedavg", "fd", "fedproto", "fml", "fedkd", "fedgh"]),
        "tuning new": lambda: tuning_block("docs/results/cifar10/tuning-v2"),
        "figure budgets": lambda: figure_note(budget_runs(), ["cifar10/n10-tuned", "cifar10/n10-tuned-pfedlora-tuned",
                                                             "cifar10/n10-long (seeds 0-2)"]),
    },
    "docs/results/nlp.md": {
        "table nlp": lambda: comparison_block(NLP),
        "verdicts nlp": lambda: comparison_verdicts_block(NLP),
        "figure nlp": lambda: figure_note(runs(NLP), ["nlp"], "One seed per algorithm: no band."),
    },
}


def draw_figures() -> None:
    federation_map.heatmaps(federation_map.MAP)
    federation_map.bytes_figure(federation_map.MAP)
    draw_budgets()
    privacy_table.figure()
    oq.figure()
    long_budget.figure(federation_map.MAP / "long_accuracy_vs_round.png")
    redraw_compare_dir(N10_TUNED, Path("docs/results/cifar10/n10-tuned-v2"))
    for directory in ("docs/results/cifar10/n10-tuned", "docs/results/cifar10/n10-tuned-pfedlora-tuned"):
        redraw_compare_dir([directory], Path(directory))  # `compare` of a subset rewrote them with that subset
    redraw_compare_dir(NLP, Path("docs/results/nlp"))
    for setting in federation_map.SETTINGS:  # each cell's own comparison and report
        for n in federation_map.PER_CLIENT:
            directory = federation_map.MAP / f"{setting}-n{n}"
            redraw_compare_dir([str(directory)], directory)


def render(page: str) -> str:
    """The page with every generated block rewritten."""
    return fill(Path(page).read_text(), PAGES[page], page)


def stale_blocks(page: str) -> list[str]:
    """The names of the blocks whose committed text differs from the regenerated one."""
    committed = Path(page).read_text()
    regenerated = render(page)
    return [name for name in PAGES[page]
            if (m := block_pattern(name).search(committed)) and m.group(0) != block_pattern(name).search(regenerated).group(0)]


def tables_outside_blocks(page: str) -> list[int]:
    """Line numbers of table rows (``| ...``) that no generated block holds."""
    inside, lines = False, []
    for number, line in enumerate(Path(page).read_text().splitlines(), 1):
        if re.match(r"<!-- .+: start -->", line):
            inside = True
        elif re.match(r"<!-- .+: end -->", line):
            inside = False
        elif line.startswith("|") and not inside:
            lines.append(number)
    return lines


def main() -> int:
    import os

    os.chdir(ROOT)  # the pages name their runs relative to the repository root
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 naming every stale block")
    args = parser.parse_args()
    if args.check:
        stale = [f"{page}: {name}" for page in PAGES for name in stale_blocks(page)]
        for line in stale:
            print(f"stale: {line}")
        return 1 if stale else 0
    draw_figures()
    for page in PAGES:
        Path(page).write_text(render(page))
        print(f"wrote {page}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
