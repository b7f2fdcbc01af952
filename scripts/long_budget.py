"""Does the map's ranking hold with more training? (issue #38, docs/results/when-federation-helps.md)

Reads the runs of ``bash scripts/federation_map.sh long CELL ROUNDS`` (docs/results/map/long/
<cell>-r<rounds>/<algorithm>/seed<k>): the map's five named algorithms in one cell at the values
tuned for 30 rounds, run for ROUNDS rounds and evaluated every 5. Each run's accuracy at round 30
and at its last round come from the same run (the learning rate is constant, so its first 30
rounds are a 30-round run's). ``scripts/gen_results.py`` calls these functions.
"""

from __future__ import annotations

import statistics
from pathlib import Path

import federation_map
from federation_map import NAMES, SETTINGS, cell, history, ordered

from pfedlora.experiments.stats import paired_difference

LONG = federation_map.MAP / "long"
AT = 30  # the map's budget
FLAT_WINDOW = 25  # rounds: a curve is flat when its mean over the last window is within FLAT_POINTS
FLAT_POINTS = 1.0  # points of its mean over the window before


def cells() -> list[Path]:
    return sorted(p for p in LONG.glob("*-r*") if p.is_dir())


def cell_label(directory: Path) -> str:
    name, _, rounds = directory.name.rpartition("-r")
    setting, _, per_client = name.rpartition("-n")
    return f"{SETTINGS.get(setting, setting)}, {per_client} images/client, {rounds} rounds"


def curves(directory: Path) -> dict[str, dict[int, dict[int, float]]]:
    """algorithm -> seed -> {round: mean client accuracy} of the finished runs."""
    found: dict[str, dict[int, dict[int, float]]] = {}
    for summary in sorted(directory.glob("*/seed*/summary.json")):
        run = summary.parent
        found.setdefault(run.parent.name, {})[int(run.name.removeprefix("seed"))] = {
            int(row["round"]): row["mean_acc"] for row in history(run)}
    return found


def at_round(by_seed: dict[int, dict[int, float]], round_index: int | None) -> dict[int, float]:
    """seed -> accuracy at ``round_index`` (None: the run's last evaluated round)."""
    return {seed: rows[max(rows) if round_index is None else round_index] for seed, rows in by_seed.items()
            if round_index is None or round_index in rows}


def window_change(by_seed: dict[int, dict[int, float]]) -> float:
    """The seed-mean curve's mean over the last FLAT_WINDOW rounds minus its mean over the window before."""
    last = max(min(max(rows) for rows in by_seed.values()), 1)
    def window_mean(low: int, high: int) -> float:
        return statistics.fmean(acc for rows in by_seed.values() for r, acc in rows.items() if low < r <= high)
    return window_mean(last - FLAT_WINDOW, last) - window_mean(last - 2 * FLAT_WINDOW, last - FLAT_WINDOW)


def ranks(finals: dict[str, dict[int, float]]) -> dict[str, int]:
    """1 = the highest mean accuracy."""
    means = {a: statistics.fmean(v.values()) for a, v in finals.items() if v}
    return {a: i for i, a in enumerate(sorted(means, key=means.get, reverse=True), 1)}


def table(directory: Path) -> str:
    data = curves(directory)
    start = {a: at_round(v, AT) for a, v in data.items()}
    end = {a: at_round(v, None) for a, v in data.items()}
    last = max((max(rows) for v in data.values() for rows in v.values()), default=0)
    rank_start, rank_end = ranks(start), ranks(end)
    lines = [f"| algorithm | seeds | accuracy at round {AT} | gain over Standalone at {AT} [95% CI] (n) "
             f"| accuracy at round {last} | gain at {last} [95% CI] (n) | rank at {AT} → {last} "
             f"| last {FLAT_WINDOW} rounds − the {FLAT_WINDOW} before |", "|---|---|---|---|---|---|---|---|"]
    for algorithm in ordered(data):
        def gain(finals: dict[str, dict[int, float]]) -> str:
            if algorithm == "standalone" or not set(finals[algorithm]) & set(finals.get("standalone", {})):
                return "–"
            return cell(paired_difference(finals["standalone"], finals[algorithm]))
        lines.append(f"| {NAMES.get(algorithm, algorithm)} | {len(data[algorithm])} "
                     f"| {statistics.fmean(start[algorithm].values()):.2f} | {gain(start)} "
                     f"| {statistics.fmean(end[algorithm].values()):.2f} | {gain(end)} "
                     f"| {rank_start[algorithm]} → {rank_end[algorithm]} | {window_change(data[algorithm]):+.2f} |")
    return "\n".join(lines)


def tables() -> str:
    parts = []
    for directory in cells():
        parts += [f"**{cell_label(directory)}** (`{directory.as_posix()}`):", "", table(directory), ""]
    if not parts:
        return "No longer-budget runs yet."
    return "\n".join(parts).rstrip()


def verdicts() -> str:
    """One line per cell: whose gain over Standalone excludes 0 at round 30 and at the end, and the ranks."""
    lines = []
    for directory in cells():
        data = curves(directory)
        line = []
        for label, round_index in ((f"round {AT}", AT), ("the last round", None)):
            finals = {a: at_round(v, round_index) for a, v in data.items()}
            gains = [a for a in ordered(finals) if a != "standalone" and "standalone" in finals
                     and paired_difference(finals["standalone"], finals[a]).verdict == "gain"]
            losses = [a for a in ordered(finals) if a != "standalone" and "standalone" in finals
                      and paired_difference(finals["standalone"], finals[a]).verdict == "loss"]
            order = " > ".join(NAMES.get(a, a) for a in sorted(ranks(finals), key=ranks(finals).get))
            line.append(f"at {label}: gain {', '.join(NAMES.get(a, a) for a in gains) or 'none'}; "
                        f"loss {', '.join(NAMES.get(a, a) for a in losses) or 'none'}; order of the means {order}")
        flat = [NAMES.get(a, a) for a, v in data.items() if abs(window_change(v)) >= FLAT_POINTS]
        seeds = sorted({len(v) for v in data.values()})
        line.append("every curve flat (within "
                    f"{FLAT_POINTS:g} point over the last {FLAT_WINDOW} rounds)" if not flat else
                    f"still moving by {FLAT_POINTS:g} point or more over the last {FLAT_WINDOW} rounds: {', '.join(flat)}")
        lines.append(f"* **{cell_label(directory)}** ({'-'.join(map(str, seeds[::len(seeds) - 1] if len(seeds) > 1 else seeds))} "
                     f"seeds): " + "; ".join(line) + ".")
    return "\n".join(lines) or "No longer-budget runs yet."


def figure(out: Path) -> None:
    """Each algorithm's gain over Standalone against round, paired by seed (mean and 95% t band over
    seeds), one panel per cell, one colour per algorithm, round 30 marked."""
    import matplotlib.pyplot as plt

    from pfedlora.experiments.report import algorithm_colour
    from pfedlora.experiments.stats import t_interval

    directories = cells()
    if not directories:
        return
    fig, axes = plt.subplots(1, len(directories), figsize=(6.2 * len(directories) + 2.6, 4.6), squeeze=False)
    shown = {}
    for ax, directory in zip(axes[0], directories):
        data = curves(directory)
        standalone = data.get("standalone", {})
        for algorithm in ordered(data):
            if algorithm == "standalone":
                continue
            seeds = [s for s in data[algorithm] if s in standalone]
            if not seeds:
                continue
            rounds = sorted(set.intersection(*(set(data[algorithm][s]) & set(standalone[s]) for s in seeds)))
            gains = [[data[algorithm][s][r] - standalone[s][r] for s in seeds] for r in rounds]
            colour = algorithm_colour(algorithm)
            line, = ax.plot(rounds, [statistics.fmean(g) for g in gains], color=colour,
                            linewidth=2.2 if algorithm == "pfedlora" else 1.4)
            if len(seeds) > 1:
                bands = [t_interval(g) for g in gains]
                ax.fill_between(rounds, [b[0] for b in bands], [b[1] for b in bands], color=colour, alpha=0.12,
                                linewidth=0)
            shown[algorithm] = line
        ax.axhline(0, color=algorithm_colour("standalone"), linewidth=1.2)
        ax.axvline(AT, color="0.4", linestyle=":", linewidth=1)
        ax.text(AT, 0.02, f" round {AT}: the map's budget", transform=ax.get_xaxis_transform(), fontsize="small",
                color="0.3")
        counts = sorted({len(v) for v in data.values()})
        ax.set(title=f"{cell_label(directory)}\n{'-'.join(map(str, counts))} seeds per algorithm",
               xlabel="round", ylabel="gain over Standalone (accuracy points)")
        ax.grid(alpha=0.3)
    order = ordered(shown)
    fig.legend([shown[a] for a in order], [NAMES.get(a, a) for a in order], loc="center right", frameon=False,
               title="paired by seed;\nband: 95% t interval\nover seeds;\n0 = Standalone", fontsize="small")
    fig.tight_layout(rect=(0, 0, 1 - 2.5 / fig.get_figwidth(), 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)
