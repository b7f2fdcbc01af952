"""Mean client accuracy against round, one panel per budget, one colour per algorithm.

Each panel reads a ``pfedlora compare`` directory (``<dir>/<algorithm>/seed<k>/metrics.csv``): a
line for the mean over seeds and a band of its 95% t interval (no band with one seed).
    python scripts/plot_budgets.py OUT.png "20 rounds, 5,000 images=DIR" "50 rounds, 50,000 images=DIR"
``TITLE=DIR#0,1,2`` keeps only those seeds, and only the algorithms that ran every one of them.
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from pfedlora.experiments.compare import load_run  # noqa: E402
from pfedlora.experiments.report import ALGORITHM_ORDER, algorithm_colour, integer_ticks, mean_band  # noqa: E402

# the library's colour of each algorithm, as in every report plot
ALGORITHMS = [a for a in ALGORITHM_ORDER if a != "fedavg"]


def curves(compare_dir: Path, seeds: list[int] | None = None
           ) -> dict[str, tuple[list[tuple[float, float, float, float]], int]]:
    """algorithm -> ((round, mean, 95% interval low, high) at the rounds every seed evaluated, number of seeds),
    over the finished runs. ``seeds``: only these seeds, and only algorithms that finished every one of
    them (so means compare like with like when some algorithms ran more seeds than others)."""
    out = {}
    for algorithm in ALGORITHMS:
        finished = sorted(p.parent for p in (compare_dir / algorithm).glob("seed*/summary.json"))
        if seeds is not None:
            finished = [p for p in finished if int(p.name.removeprefix("seed")) in seeds]
            if len(finished) < len(seeds):
                continue
        if finished:
            records = [load_run(p) for p in finished]
            out[algorithm] = (mean_band(records, lambda row: row["round"]), len(records))
    return out


def main(out: Path, panels: list[tuple[str, Path, list[int] | None]]) -> None:
    legend_width = 2.8  # inches kept free on the right for the legend
    width = 6.2 * len(panels) + legend_width
    fig, axes = plt.subplots(1, len(panels), figsize=(width, 4.6), squeeze=False)
    shown = {}
    band = False
    for ax, (title, directory, only) in zip(axes[0], panels):
        for algorithm, (curve, seeds) in curves(directory, only).items():
            colour = algorithm_colour(algorithm)
            rounds, mean, low, high = ([point[i] for point in curve] for i in range(4))
            line, = ax.plot(rounds, mean, color=colour, linewidth=2.2 if algorithm == "pfedlora" else 1.4)
            if seeds > 1:
                band = True
                ax.fill_between(rounds, low, high, color=colour, alpha=0.18, linewidth=0)
            shown[algorithm] = line
        ax.set(title=title, xlabel="round", ylabel="mean client test accuracy (%)")
        integer_ticks(ax.xaxis)
        ax.grid(alpha=0.3)
    order = [a for a in ALGORITHMS if a in shown]
    fig.legend([shown[a] for a in order], order, loc="center right", title="algorithm\n(band: 95% t interval\nof the mean over seeds)" if band else "algorithm",
               frameon=False)
    fig.tight_layout(rect=(0, 0, 1 - legend_width / width, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=130)
    print(out)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    panels = []
    for spec in sys.argv[2:]:
        title, _, where = spec.partition("=")
        directory, _, seed_list = where.partition("#")
        panels.append((title, Path(directory), [int(k) for k in seed_list.split(",")] if seed_list else None))
    main(Path(sys.argv[1]), panels)
