"""``pfedlora report``: plots of one or more run directories and a report.md embedding them.

Plots (PNG, matplotlib's Agg backend): mean accuracy vs round, vs cumulative
bytes (up + down) and vs cumulative FLOPs (training + server), and the distribution of the final
per-client accuracies. Runs of one algorithm that differ only by seed (``<out>/<algorithm>/seed<k>``)
are drawn as their mean with a band of the 95% Student t interval of the mean over the seeds; every
algorithm keeps one colour in every figure (:func:`algorithm_colour`) and the legend sits outside
the data. Cost axes are logarithmic because algorithms differ by orders of magnitude; an algorithm
whose cost is zero (``standalone`` sends nothing) cannot sit on a log axis, so it is drawn as a
dashed line at its final accuracy with a marker at the axis' left edge, labelled with its 0 cost.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pfedlora.errors import UserError
from pfedlora.experiments.records import RunRecord, human, load_run
from pfedlora.metrics.run_dir import write_atomic

PLOTS = {
    "accuracy_vs_round.png": "Mean accuracy vs round",
    "accuracy_vs_bytes.png": "Mean accuracy vs cumulative communication",
    "accuracy_vs_flops.png": "Mean accuracy vs cumulative computation",
    "client_accuracy.png": "Final per-client accuracy",
}


def _labels(records: Sequence[RunRecord]) -> list[str]:
    labels = [f"{r.algorithm} seed {r.seed}" for r in records]
    if len(set(labels)) < len(labels):  # same algorithm and seed under different configs
        labels = [f"{label} ({r.path.name})" for label, r in zip(labels, records)]
    if len(set(labels)) < len(labels):  # e.g. a sweep's <point>/<algorithm>/seed0: name the differing part
        import os

        common = Path(os.path.commonpath([r.path.resolve() for r in records]))
        parts = [r.path.resolve().relative_to(common).parts for r in records]
        labels = [f"{r.algorithm} seed {r.seed} ({p[0] if p else r.path.name})" for r, p in zip(records, parts)]
    return labels


def _cumulative(row: dict[str, float], kind: str) -> float | None:
    keys = ("cum_up_bytes", "cum_down_bytes") if kind == "bytes" else ("cum_train_flops", "cum_server_flops")
    if keys[0] not in row:
        return None
    return sum(row.get(key, 0.0) for key in keys)


def write_report(run_dirs: Sequence[str | Path], out: str | Path, title: str = "pfedlora report") -> Path:
    """Write the four plots and ``report.md`` into ``out``; returns the report path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not run_dirs:
        raise UserError("report needs at least one run directory")
    records = [load_run(path) for path in run_dirs]
    labels = _labels(records)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {str(out)!r} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    left_out: dict[str, list[str]] = {"bytes": [], "flops": []}

    groups = _seed_groups(records)
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    for group in groups:
        curve = mean_band(group.records, lambda row: row["round"])
        _draw(ax, group, curve)
    ax.set(xlabel="round", ylabel="mean client accuracy (%)", title=PLOTS["accuracy_vs_round.png"])
    integer_ticks(ax.xaxis)  # rounds are whole numbers: no tick at round 2.5
    band = any(len(group.records) > 1 for group in groups)
    _finish(fig, ax, out / "accuracy_vs_round.png", band=band)

    for kind, unit in (("bytes", "bytes (up + down)"), ("flops", "FLOPs (training + server)")):
        fig, ax = plt.subplots(figsize=(8.5, 4.5))
        at_zero = []
        for group in groups:
            curve = mean_band(group.records, lambda row: _cumulative(row, kind))
            positive = [point for point in curve if point[0] > 0]
            if not positive:
                if curve and all(point[0] == 0 for point in curve):  # costs nothing: drawn at the axis
                    at_zero.append((group, curve[-1]))
                else:
                    left_out[kind].append(group.label)
                continue
            _draw(ax, group, positive)
        ax.set_xscale("log")
        if at_zero:
            _draw_at_zero(ax, at_zero, "0 B" if kind == "bytes" else "0 FLOP")
        # a curve spanning less than a decade gets labelled minor ticks, which overlap: label decades only
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
        ax.set(xlabel=f"cumulative {unit}", ylabel="mean client accuracy (%)",
               title=PLOTS[f"accuracy_vs_{kind}.png"])
        _finish(fig, ax, out / f"accuracy_vs_{kind}.png", band=band)

    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(records) + 2), 4.5))
    # clients without a test split have no accuracy (None): left out of their run's box
    values = [[a for a in r.summary.get("client_accuracies") or [] if a is not None] or [r.history[-1]["mean_acc"]]
              for r in records]
    boxes = ax.boxplot(values, patch_artist=True, medianprops={"color": "black"})
    for box, record in zip(boxes["boxes"], records):  # the algorithm's colour, as in the line plots
        box.set(facecolor=(*algorithm_colour(record.algorithm), 0.35), edgecolor=algorithm_colour(record.algorithm))
    ax.set_xticks(range(1, len(records) + 1), labels, rotation=30, ha="right")
    ax.set(ylabel="client accuracy (%)", title=PLOTS["client_accuracy.png"])
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "client_accuracy.png", dpi=110)
    plt.close(fig)

    report = out / "report.md"
    write_atomic(report, _markdown(title, records, labels, left_out, out))
    return report


# one colour per algorithm in every figure (matplotlib's tab10, in this order), so a reader can
# follow an algorithm from plot to plot; further variants of one algorithm change the line style
ALGORITHM_ORDER = ("pfedlora", "standalone", "lg_fedavg", "fd", "fedproto", "fml", "fedkd", "fedgh", "fedavg", "fedmrl", "fedgen", "fedtgp", "fedl2g")
_LINE_STYLES = ("-", "--", ":", "-.")
_EXTRA_COLOURS = tuple(tuple(int(h[i:i + 2], 16) / 255 for i in (1, 3, 5))
                       for h in ("#000000", "#b8860b", "#000080", "#00a087", "#e7298a"))


def algorithm_colour(algorithm: str) -> tuple[float, float, float]:
    import matplotlib.pyplot as plt

    # tab10 for the first ten (the colours every figure so far used), then five more distinct ones
    colours = (*plt.get_cmap("tab10").colors, *_EXTRA_COLOURS)
    index = ALGORITHM_ORDER.index(algorithm) if algorithm in ALGORITHM_ORDER else len(ALGORITHM_ORDER)
    return colours[index % len(colours)]


@dataclass
class _Group:
    """The runs of one algorithm in one setting that differ only by seed (a mean line and a band)."""

    algorithm: str
    label: str
    style: str
    records: list[RunRecord]


def _seed_groups(records: Sequence[RunRecord]) -> list[_Group]:
    settings: dict[tuple[str, Path], list[RunRecord]] = {}
    for record in records:  # <out>/<algorithm>/seed<k>: runs sharing <out> differ only by seed
        settings.setdefault((record.algorithm, record.path.resolve().parent.parent), []).append(record)
    per_algorithm: dict[str, int] = {}
    groups = []
    for (algorithm, setting), members in settings.items():
        variant = per_algorithm.get(algorithm, 0)
        per_algorithm[algorithm] = variant + 1
        groups.append(_Group(algorithm, algorithm, _LINE_STYLES[variant % len(_LINE_STYLES)], members))
    for group in groups:  # name the setting when an algorithm appears in several
        if per_algorithm[group.algorithm] > 1:
            group.label = f"{group.algorithm} ({group.records[0].path.resolve().parent.parent.name})"
        seeds = len(group.records)
        group.label += f", {seeds} seeds" if seeds > 1 else f" seed {group.records[0].seed}"
    return groups


def _draw_at_zero(ax, at_zero: list[tuple[_Group, tuple[float, float, float, float]]], cost: str) -> None:
    """Algorithms whose cost is 0: a dashed line at their final accuracy and a marker at the left
    edge of the (log) axis, labelled, with their band as an error bar."""
    if not ax.get_lines():  # nothing else drawn: give the axis a decade to show
        ax.set_xlim(1, 10)
    left = ax.get_xlim()[0]
    for group, (_, mean, low, high) in at_zero:
        colour = algorithm_colour(group.algorithm)
        ax.axhline(mean, color=colour, linestyle="--", linewidth=1.0, alpha=0.8)
        ax.errorbar([left], [mean], yerr=[[mean - low], [high - mean]], color=colour, marker="<", markersize=9,
                    capsize=3, clip_on=False, zorder=5, linestyle="none",
                    label=f"{group.label} ({cost}: final accuracy, dashed)")
    ax.set_xlim(left=left)


def mean_band(records: Sequence[RunRecord], x_of) -> list[tuple[float, float, float, float]]:
    """(mean x, mean accuracy, low, high) at each evaluated round all ``records`` share; low and
    high bound the 95% Student t interval of the mean accuracy over the records (the mean itself
    for one record)."""
    from pfedlora.experiments.stats import t_interval

    by_round = [{int(row["round"]): row for row in record.history} for record in records]
    shared = sorted(set.intersection(*(set(rounds) for rounds in by_round)))
    points = []
    for round_index in shared:
        xs = [x_of(rounds[round_index]) for rounds in by_round]
        if any(x is None for x in xs):
            continue
        ys = [rounds[round_index]["mean_acc"] for rounds in by_round]
        mean = sum(ys) / len(ys)
        low, high = t_interval(ys) or (mean, mean)
        points.append((sum(xs) / len(xs), mean, low, high))
    return points


def _draw(ax, group: _Group, curve: list[tuple[float, float, float, float]]) -> None:
    colour = algorithm_colour(group.algorithm)
    xs = [p[0] for p in curve]
    ax.plot(xs, [p[1] for p in curve], color=colour, linestyle=group.style, marker="." if len(curve) < 30 else None,
            linewidth=2.0 if group.algorithm == "pfedlora" else 1.3, label=group.label)
    if len(group.records) > 1:
        ax.fill_between(xs, [p[2] for p in curve], [p[3] for p in curve], color=colour, alpha=0.15, linewidth=0)


def integer_ticks(axis) -> None:
    """Ticks only at whole numbers on ``axis`` (a round axis: a 3-round run gets 1, 2, 3, not 1.25)."""
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


BAND_TITLE = "band: 95% t interval of the mean over seeds"


def _finish(fig, ax, path: Path, *, band: bool) -> None:
    import matplotlib.pyplot as plt

    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # outside the data; says what the band means only when one is drawn
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False,
                  title=BAND_TITLE if band else None, title_fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _relative(path: Path, start: Path) -> str:
    import os

    return Path(os.path.relpath(path.resolve(), start.resolve())).as_posix()


def _markdown(title: str, records: Sequence[RunRecord], labels: Sequence[str],
              left_out: dict[str, list[str]], out: Path) -> str:
    lines = [f"# {title}", "",
             "| run | directory | final acc (%) | best acc (%) | training FLOPs | server FLOPs | bytes up | bytes down |",
             "|---|---|---|---|---|---|---|---|"]
    for record, label in zip(records, labels):
        s = record.summary
        lines.append(
            f"| {label} | `{_relative(record.path, out)}` | {s['final_accuracy']:.2f} | {s['best_accuracy']:.2f} "
            f"| {human(s.get('total_train_flops'), 'FLOP')} | {human(s.get('total_server_flops'), 'FLOP')} "
            f"| {human(s.get('total_up_bytes'), 'B')} | {human(s.get('total_down_bytes'), 'B')} |")
    lines.append("")
    for name, caption in PLOTS.items():
        lines += [f"## {caption}", "", f"![{caption}]({name})", ""]
        kind = "bytes" if "bytes" in name else "flops" if "flops" in name else None
        if kind and left_out[kind]:
            lines += [f"Not plotted (no {kind} recorded): {', '.join(left_out[kind])}.", ""]
    return "\n".join(lines)
