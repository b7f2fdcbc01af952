"""Tables and the plot of docs/results/privacy.md from the runs of scripts/privacy_experiments.sh.

    PYTHONPATH=src python scripts/privacy_table.py [docs/results/privacy]

Prints two markdown tables (tuning on the validation split; test accuracy against epsilon) and
writes OUT/accuracy_vs_epsilon.png: final test accuracy (mean over clients) against the epsilon
actually spent, one colour per algorithm, log x axis, each algorithm's no-DP run as a horizontal
dashed line of its colour.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from pfedlora.experiments.report import algorithm_colour  # noqa: E402

COLOURS = {"pfedlora": "tab:blue", "lg_fedavg": "tab:orange", "fml": "tab:green"}


def _runs(root: Path, pattern: str) -> list[tuple[str, str, dict]]:
    """(algorithm, setting, summary) of every finished run under root/<algorithm>/<setting>/<algorithm>/seed0."""
    found = []
    for summary in sorted(root.glob(f"*/{pattern}/*/seed0/summary.json")):
        algorithm, setting = summary.parents[3].name, summary.parents[2].name
        found.append((algorithm, setting, json.loads(summary.read_text())))
    return found


def _number(setting: str) -> float:
    match = re.search(r"=([0-9.e+-]+)$", setting)
    return float(match.group(1)) if match else float("inf")


def main(out: Path) -> None:
    print("Tuning (validation split, target epsilon 10): final accuracy (%)\n")
    tuning = _runs(out / "tuning", "clip=*")
    algorithms = list(dict.fromkeys(a for a, _, _ in tuning))
    clips = sorted({_number(s) for _, s, _ in tuning})
    print("| algorithm | " + " | ".join(f"clip {c:g}" for c in clips) + " | chosen |")
    print("|---" * (len(clips) + 2) + "|")
    for algorithm in algorithms:
        scores = {_number(s): summary["final_accuracy"] for a, s, summary in tuning if a == algorithm}
        best = max(scores, key=scores.get)
        cells = [f"**{scores[c]:.2f}**" if c == best else (f"{scores[c]:.2f}" if c in scores else "–") for c in clips]
        print(f"| {algorithm} | " + " | ".join(cells) + f" | {best:g} |")

    test = _runs(out / "test", "*")
    algorithms = list(dict.fromkeys(a for a, _, _ in test))
    print("\nTest split, after 20 rounds (accuracy: mean over clients, %)\n")
    print("| algorithm | clip | target ε | ε spent | noise multiplier σ | final acc | best acc | final − no DP | wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for algorithm in sorted(algorithms, key=lambda a: list(COLOURS).index(a) if a in COLOURS else 99):
        runs = {s: summary for a, s, summary in test if a == algorithm}
        dp_runs = sorted(((_number(s), summary) for s, summary in runs.items() if s != "no-dp"), key=lambda r: r[0])
        clip = dp_runs[0][1]["privacy"]["clip_norm"] if dp_runs else float("nan")
        plain = runs.get("no-dp")
        if plain:
            print(f"| {algorithm} | – | no DP | – | – | {plain['final_accuracy']:.2f} | {plain['best_accuracy']:.2f} "
                  f"| – | {plain['wall_seconds']:.0f} |")
        for target, summary in dp_runs:
            delta = f"{summary['final_accuracy'] - plain['final_accuracy']:+.2f}" if plain else "–"
            print(f"| {algorithm} | {clip:g} | {target:g} | {summary['epsilon']:.3g} | "
                  f"{summary['privacy']['noise_multiplier']:.3g} | {summary['final_accuracy']:.2f} | "
                  f"{summary['best_accuracy']:.2f} | {delta} | {summary['wall_seconds']:.0f} |")
        colour = algorithm_colour(algorithm)  # the project's one colour per algorithm
        ax.plot([s["epsilon"] for _, s in dp_runs], [s["final_accuracy"] for _, s in dp_runs], "o-", color=colour,
                label=f"{algorithm} (DP, clip {clip:g})")
        if plain:
            ax.axhline(plain["final_accuracy"], color=colour, linestyle="--", linewidth=1,
                       label=f"{algorithm} without DP")
    ax.set_xscale("log")
    ax.set_xlabel("ε spent after 20 rounds (δ = 0.1, RDP accountant; log scale)")
    ax.set_ylabel("final test accuracy, mean over clients (%)")
    ax.set_title("CIFAR-10, 10 clients, all sampled, 20 rounds (seed 0)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "accuracy_vs_epsilon.png", dpi=120)
    print(f"\nplot: {out / 'accuracy_vs_epsilon.png'}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/results/privacy"))
