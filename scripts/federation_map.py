"""Tables, heatmaps and the bytes figure of docs/results/when-federation-helps.md (issue #29).

Reads only the committed run summaries (``metrics.csv`` of every ``<setting>/<algorithm>/seed<k>``
that scripts/federation_map.sh wrote under docs/results/map), so the page regenerates without
running anything:
    python scripts/federation_map.py               # = python scripts/gen_results.py (every results page)
    python scripts/federation_map.py --choose-lr   # after `federation_map.sh lr`: each algorithm's lr
                                                   #   per data size, written to lr-check/chosen-n<N>.txt
Gains are paired by seed: for each seed, the algorithm's final mean client accuracy minus
Standalone's in the same setting (same partition, same models); the tables give their mean, the
95% Student t interval and the number of seeds (pfedlora.experiments.stats.paired_difference), in
bold where the interval excludes 0; the summary aggregates the six cells as rliable does
(pfedlora.experiments.stats.aggregate_gain). ``scripts/gen_results.py`` calls these functions for
every results page.
"""

from __future__ import annotations

import argparse
import csv
import sys
import re
import statistics
from pathlib import Path

from pfedlora.experiments.report import ALGORITHM_ORDER, BAND_TITLE, algorithm_colour
from pfedlora.experiments.stats import PairedDifference, aggregate_gain, paired_difference, t_interval

MAP = Path("docs/results/map")
PAGE = Path("docs/results/when-federation-helps.md")
SETTINGS = {"path2": "pathological, 2 classes per client", "dir0.1": "Dirichlet α = 0.1",
            "dir0.5": "Dirichlet α = 0.5"}
PER_CLIENT = (50, 250)
NAMES = {"pfedlora": "pFedLoRA", "standalone": "Standalone", "lg_fedavg": "LG-FedAvg", "fd": "FD",
         "fedproto": "FedProto", "fml": "FML", "fedkd": "FedKD", "fedgh": "FedGH", "fedavg": "FedAvg",
         "fedmrl": "FedMRL", "fedgen": "FedGen", "fedtgp": "FedTGP", "fedl2g": "FedL2G"}
# the existing 10-client pathological results (docs/results/cifar10.md) as further columns: they
# match the map's partition but not its clients (10, not 20) or rounds (20 and 50, not 30)
EXTRA_COLUMNS = {
    "500†": [Path("docs/results/cifar10/n10-tuned"), Path("docs/results/cifar10/n10-tuned-pfedlora-active")],
    "5,000‡": [Path("docs/results/cifar10/n10-long")],
}


def history(run: Path) -> list[dict[str, float]]:
    with open(run / "metrics.csv", newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]


def final_by_seed(directories: list[Path]) -> dict[str, dict[int, float]]:
    """algorithm -> seed -> final mean client accuracy, over the finished runs in ``directories``."""
    found: dict[str, dict[int, float]] = {}
    for directory in directories:
        for summary in sorted(directory.glob("*/seed*/summary.json")):
            run = summary.parent
            rows = history(run)
            if rows:
                found.setdefault(run.parent.name, {})[int(run.name.removeprefix("seed"))] = rows[-1]["mean_acc"]
    return found


def gains(finals: dict[str, dict[int, float]]) -> dict[str, list[float]]:
    """algorithm -> per-seed gains over Standalone (seeds both have)."""
    base = finals.get("standalone", {})
    return {alg: [acc[s] - base[s] for s in sorted(acc) if s in base]
            for alg, acc in finals.items() if alg != "standalone"}


def paired(finals: dict[str, dict[int, float]]) -> dict[str, PairedDifference]:
    """algorithm -> its paired difference to Standalone (seeds both have)."""
    base = finals.get("standalone", {})
    return {alg: paired_difference(base, acc) for alg, acc in finals.items()
            if alg != "standalone" and set(acc) & set(base)}


def ordered(algorithms) -> list[str]:
    return sorted(algorithms, key=lambda a: ALGORITHM_ORDER.index(a) if a in ALGORITHM_ORDER else 99)


def cell(difference: PairedDifference | None) -> str:
    """``**+4.05 [+1.24, +6.86]** (5)``: mean [95% t interval] (seeds), bold where it excludes 0."""
    if difference is None:
        return "–"
    if difference.ci_low is None:
        return f"{difference.mean:+.2f} (1 seed)"
    text = f"{difference.mean:+.2f} [{difference.ci_low:+.2f}, {difference.ci_high:+.2f}]"
    return (f"**{text}**" if difference.excludes_zero else text) + f" ({difference.n})"


def columns(setting: str) -> dict[str, dict[str, dict[int, float]]]:
    cols = {str(n): final_by_seed([MAP / f"{setting}-n{n}"]) for n in PER_CLIENT}
    if setting == "path2":
        cols.update({label: final_by_seed(dirs) for label, dirs in EXTRA_COLUMNS.items()})
    return cols


def table(setting: str) -> str:
    cols = columns(setting)
    algorithms = ordered({a for finals in cols.values() for a in finals} - {"standalone"})
    head = "| algorithm | " + " | ".join(f"{c} images/client" for c in cols) + " |"
    lines = [head, "|---" * (len(cols) + 1) + "|"]
    stand = []
    for finals in cols.values():
        accs = list(finals.get("standalone", {}).values())
        stand.append(f"{statistics.mean(accs):.2f}% ({len(accs)} seed{'s' if len(accs) > 1 else ''})" if accs else "–")
    lines.append("| Standalone (accuracy) | " + " | ".join(stand) + " |")
    per_col = {c: paired(f) for c, f in cols.items()}
    for alg in algorithms:
        lines.append(f"| {NAMES.get(alg, alg)} | " + " | ".join(cell(per_col[c].get(alg)) for c in cols) + " |")
    return "\n".join(lines)


def heatmaps(out: Path) -> None:
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import TwoSlopeNorm
    from matplotlib.patches import Rectangle

    data = {s: columns(s) for s in SETTINGS}
    algorithms = ordered({a for cols in data.values() for f in cols.values() for a in f} - {"standalone"})
    pairs = {s: {c: paired(f) for c, f in cols.items()} for s, cols in data.items()}
    means = {s: {c: {a: d.mean for a, d in ps.items()} for c, ps in cols.items()} for s, cols in pairs.items()}
    limit = max([abs(v) for s in means.values() for c in s.values() for v in c.values()] or [1.0])
    norm = TwoSlopeNorm(vcenter=0.0, vmin=-limit, vmax=limit)  # one scale for every panel, white at 0
    widths = [len(data[s]) for s in SETTINGS]
    fig, axes = plt.subplots(1, len(SETTINGS), figsize=(4.0 + 1.6 * sum(widths), 0.42 * len(algorithms) + 2.2),
                             gridspec_kw={"width_ratios": widths}, sharey=True)
    image = None
    for ax, setting in zip(axes, SETTINGS):
        cols = list(data[setting])
        grid = np.full((len(algorithms), len(cols)), np.nan)
        for j, c in enumerate(cols):
            for i, a in enumerate(algorithms):
                grid[i, j] = means[setting][c].get(a, np.nan)
        image = ax.imshow(grid, cmap="RdBu", norm=norm, aspect="auto")
        for (i, j), value in np.ndenumerate(grid):
            if not np.isnan(value):
                d = pairs[setting][cols[j]][algorithms[i]]
                bound = lambda b: f"{b:+.2f}" if abs(b) < 0.05 else f"{b:+.1f}"  # noqa: E731 (no "-0.0")
                text = f"{value:+.1f}" + (f"\n[{bound(d.ci_low)}, {bound(d.ci_high)}]" if d.ci_low is not None else "\n(1 seed)")
                ax.text(j, i, text, ha="center", va="center", fontsize=6.5,
                        fontweight="bold" if d.excludes_zero else "normal",
                        color="white" if abs(value) > 0.6 * limit else "black")
                if not d.excludes_zero:  # the interval includes 0: hatched, no gain or loss shown
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="///", edgecolor="0.55",
                                           linewidth=0))
        seeds = []
        for c in cols:  # the seed counts of the column's cells (n of each paired difference)
            counts = sorted({d.n for d in pairs[setting][c].values()})
            seeds.append(f"{counts[0]}" if len(counts) == 1 else f"{counts[0]}-{counts[-1]}")
        ax.set_xticks(range(len(cols)), [f"{c}\n(n = {k})" for c, k in zip(cols, seeds)])
        ax.set_xlabel("training images per client (n: seeds)")
        ax.set_title(SETTINGS[setting], fontsize=10)
        ax.set_yticks(range(len(algorithms)), [NAMES.get(a, a) for a in algorithms])
    fig.colorbar(image, ax=list(axes), label="final accuracy minus Standalone's (points)", shrink=0.9)
    fig.suptitle("Gain over training alone (points): mean and 95% t interval over seeds; hatched: the interval "
                 "includes 0, bold: it excludes 0.\nCIFAR-10, 20 clients, CNN-1..5, 30 rounds (†, ‡: 10 clients, see text)",
                 fontsize=10)
    fig.savefig(out / "gain_heatmaps.png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def bytes_figure(out: Path, per_client: int = 50) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(SETTINGS), figsize=(15, 4.4), sharey=True)
    for ax, setting in zip(axes, SETTINGS):
        directory = MAP / f"{setting}-n{per_client}"
        for alg in ordered({p.parent.parent.name for p in directory.glob("*/seed*/summary.json")}):
            runs = [history(p.parent) for p in sorted(directory.glob(f"{alg}/seed*/summary.json"))]
            colour = algorithm_colour(alg)
            rounds = sorted(set.intersection(*({int(r["round"]) for r in h} for h in runs)))
            at = [{int(r["round"]): r for r in h} for h in runs]
            ys = [[h[k]["mean_acc"] for h in at] for k in rounds]
            mean = [statistics.mean(y) for y in ys]
            label = f"{NAMES.get(alg, alg)} ({len(runs)} seed{'s' if len(runs) > 1 else ''})"
            if alg == "standalone":  # sends nothing: its final accuracy as a line across
                ax.axhline(mean[-1], color=colour, linestyle="--", linewidth=1.3, label=label + ", 0 B: final accuracy")
                continue
            xs = [statistics.mean(h[k]["cum_up_bytes"] + h[k]["cum_down_bytes"] for h in at) / 20 for k in rounds]
            ax.plot(xs, mean, color=colour, marker=".", linewidth=2.0 if alg == "pfedlora" else 1.3, label=label)
            if len(runs) > 1:  # the 95% t interval of the mean over seeds
                bands = [t_interval(y) for y in ys]
                ax.fill_between(xs, [b[0] for b in bands], [b[1] for b in bands], color=colour, alpha=0.15, linewidth=0)
        ax.set_xscale("log")
        ax.set(xlabel="bytes sent and received per client (cumulative, B)", title=SETTINGS[setting])
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("mean client test accuracy (%)")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.0, 0.92), frameon=False, fontsize="small",
               title=BAND_TITLE, title_fontsize="small")
    fig.suptitle(f"Accuracy against communication, {per_client} training images per client (one point every 3 rounds)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(out / f"accuracy_vs_bytes_n{per_client}.png", dpi=110, bbox_inches="tight")
    plt.close(fig)


def late_mean(rows: list[dict[str, float]]) -> float:
    """Mean validation accuracy of the last three evaluations (rounds 24, 27, 30): with ~10 validation
    images per client at 50 images per client, one round's value swings by 2-3 points."""
    return statistics.mean(r["mean_acc"] for r in rows[-3:])


def choose_lr(per_client: int, write: bool = True) -> str:
    """Each algorithm's better of its tuned lr and 0.05 on the validation split; a table (and, with
    ``write``, lr-check/chosen-n<N>.txt)."""
    tuned = MAP / "lr-check" / f"n{per_client}-tuned"
    other = MAP / "lr-check" / f"n{per_client}-lr0.05"
    lines = ["| algorithm | tuned lr | val. acc. (tuned) | val. acc. (lr 0.05) | chosen | rounds 21 → 30 (chosen) |",
             "|---|---|---|---|---|---|"]
    chosen = []
    for alg in ordered({p.parent.parent.name for p in tuned.glob("*/seed0/summary.json")}):
        a, b = history(tuned / alg / "seed0"), history(other / alg / "seed0")
        lr = re.search(r"^  lr: (\S+)", (tuned / alg / "seed0" / "config.yaml").read_text(), re.M).group(1)
        better, best = (b, "0.05") if late_mean(b) > late_mean(a) else (a, lr)
        chosen.append(f"{alg}:train.lr={best}")
        drift = better[-1]["mean_acc"] - better[-4]["mean_acc"]  # rounds 21 -> 30 (evaluated every 3)
        lines.append(f"| {NAMES.get(alg, alg)} | {lr} | {late_mean(a):.2f} | {late_mean(b):.2f} | {best} "
                     f"| {drift:+.2f} |")
    if write:
        (MAP / "lr-check" / f"chosen-n{per_client}.txt").write_text("\n".join(chosen) + "\n")
    return "\n".join(lines)


def lr_tables(write: bool = False) -> str:
    """The learning-rate check's tables, one per data size (the page's ``lr`` block)."""
    return "\n\n".join(f"**{n} images per client** (Dirichlet α = 0.1, validation split, seed 0; accuracy: "
                        f"mean of rounds 24, 27, 30)\n\n{choose_lr(n, write)}" for n in PER_CLIENT)


def fedavg_table() -> str:
    lines = ["| setting | images/client | Standalone (CNN-1..5, seed 0) | " +
             " | ".join(f"FedAvg, all CNN-{k}" for k in range(1, 6)) + " |", "|---" * 8 + "|"]
    for setting in SETTINGS:
        for n in PER_CLIENT:
            stand = final_by_seed([MAP / f"{setting}-n{n}"]).get("standalone", {}).get(0)
            cells = []
            for k in range(1, 6):
                run = next(iter((MAP / "fedavg" / f"{setting}-n{n}").glob(f"model_pool-_cnn{k}/fedavg/seed0/summary.json")),
                           None)
                cells.append(f"{history(run.parent)[-1]['mean_acc']:.2f}" if run else "–")
            lines.append(f"| {SETTINGS[setting]} | {n} | {f'{stand:.2f}' if stand is not None else '–'} | "
                         + " | ".join(cells) + " |")
    return "\n".join(lines)


def map_finals() -> dict[str, dict[str, dict[int, float]]]:
    """cell -> algorithm -> seed -> final accuracy, for the six map cells (20 clients)."""
    return {f"{setting}-n{n}": final_by_seed([MAP / f"{setting}-n{n}"]) for setting in SETTINGS for n in PER_CLIENT}


def summary_table() -> str:
    """Per algorithm over the six map cells (20 clients), against Standalone: the mean over cells of
    the mean paired gain with its stratified bootstrap 95% interval, the probability of improvement
    with its interval (rliable), the paired t interval of all per-seed gains pooled, and the cells
    whose own interval excludes 0."""
    cells = map_finals()
    algorithms = ordered({a for finals in cells.values() for a in finals} - {"standalone"})
    rows = []
    for alg in algorithms:
        ref = {c: f["standalone"] for c, f in cells.items() if alg in f and "standalone" in f}
        agg = aggregate_gain(ref, {c: cells[c][alg] for c in ref})
        per_cell = [paired_difference(ref[c], cells[c][alg]) for c in ref]
        rows.append((agg, alg, per_cell))
    rows.sort(key=lambda row: -row[0].mean_gain)
    lines = ["| algorithm | mean gain over the cells [95% CI] | P(improvement) [95% CI] | all per-seed gains pooled "
             "[95% t CI] (pairs) | cells: gain / loss / indistinguishable | seeds per cell |",
             "|---|---|---|---|---|---|"]
    for agg, alg, per_cell in rows:
        gain = f"{agg.mean_gain:+.2f} [{agg.mean_gain_low:+.2f}, {agg.mean_gain_high:+.2f}]"
        pooled = agg.pooled
        pooled_text = f"{pooled.mean:+.2f} [{pooled.ci_low:+.2f}, {pooled.ci_high:+.2f}] ({pooled.n})"
        verdicts = [d.verdict for d in per_cell]
        counts = sorted({d.n for d in per_cell})
        lines.append(f"| {NAMES.get(alg, alg)} | {f'**{gain}**' if agg.excludes_zero else gain} "
                     f"| {agg.probability_of_improvement:.2f} [{agg.probability_low:.2f}, {agg.probability_high:.2f}] "
                     f"| {f'**{pooled_text}**' if pooled.excludes_zero else pooled_text} "
                     f"| {verdicts.count('gain')} / {verdicts.count('loss')} / {verdicts.count('indistinguishable')} "
                     f"| {counts[0] if len(counts) == 1 else f'{counts[0]}-{counts[-1]}'} |")
    return "\n".join(lines)


def activity_table() -> str:
    """pFedLoRA's adapter activity at the last round, mean over seeds, per setting."""
    lines = ["| setting | images/client | adapter_share (%) | adapter_flips (%) | seeds |", "|---|---|---|---|---|"]
    for setting in SETTINGS:
        for n in PER_CLIENT:
            runs = [history(p.parent)[-1] for p in sorted((MAP / f"{setting}-n{n}").glob("pfedlora/seed*/summary.json"))]
            runs = [r for r in runs if "adapter_share" in r]
            if runs:
                share = statistics.mean(r["adapter_share"] for r in runs)
                flips = statistics.mean(r["adapter_flips"] for r in runs)
                lines.append(f"| {SETTINGS[setting]} | {n} | {share:.2f} | {flips:.2f} | {len(runs)} |")
    return "\n".join(lines)


def time_table() -> str:
    """Each group's runs and their wall times (a run's own clock, from metrics.csv), and the logged
    wall time and load of every command of scripts/federation_map.sh."""
    lines = ["| runs | count | median wall time per run | sum of the runs' wall times |", "|---|---|---|---|"]
    groups = [(f"{SETTINGS[s]}, {n} images/client", MAP / f"{s}-n{n}", "*/seed*/summary.json")
              for s in SETTINGS for n in PER_CLIENT]
    groups += [(f"lr check, {n} images/client", MAP / "lr-check", f"n{n}-*/*/seed*/summary.json") for n in PER_CLIENT]
    groups += [("FedAvg reference", MAP / "fedavg", "**/summary.json")]
    for label, directory, pattern in groups:
        walls = [history(p.parent)[-1]["wall_s"] for p in sorted(directory.glob(pattern))]
        if walls:
            lines.append(f"| {label} | {len(walls)} | {statistics.median(walls):.0f} s | {sum(walls) / 60:.0f} min |")
    lines += ["", "The last column adds each run's own clock. `--jobs auto` ran two runs at once on the 2 cores, so "
              "the machine time is about half of it; the commands' own wall times below are machine time."]
    log = MAP / "wall_times.txt"
    if log.exists():
        lines += ["", "Each command as logged (`wall_times.txt`; a command that reused finished runs takes seconds; "
                  "`issue36` lines: scripts/seeds_to_five.sh):", "",
                  "```", log.read_text().strip(), "```"]
    return "\n".join(lines)


def replace_block(text: str, name: str, body: str) -> str:
    start, end = f"<!-- {name}: start -->", f"<!-- {name}: end -->"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise SystemExit(f"{PAGE}: no {start} ... {end} block to fill")
    return pattern.sub(lambda _: f"{start}\n{body}\n{end}", text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--choose-lr", action="store_true", help="write lr-check/chosen-n<N>.txt and print the table")
    args, _ = parser.parse_known_args()
    if args.choose_lr:  # the table goes into the page too
        text = PAGE.read_text()
        body = lr_tables(write=True)
        PAGE.write_text(replace_block(text, "lr", body))
        print(body)
        return
    # the page's tables and figures are written with every other results page's
    import gen_results

    sys.exit(gen_results.main())


if __name__ == "__main__":
    main()
