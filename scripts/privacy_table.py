"""Tables and the plot of docs/results/privacy.md from the runs of scripts/privacy_experiments.sh.

    PYTHONPATH=src python scripts/privacy_table.py [docs/results/privacy]

Prints the page's markdown tables (tuning on the validation split; test accuracy against epsilon;
the noise's norm; SecAgg+'s cost from secagg_cost.json) and writes OUT/accuracy_vs_epsilon.png: final test accuracy (mean over clients) against the epsilon
actually spent, one colour per algorithm, log x axis, each algorithm's no-DP run as a horizontal
dashed line of its colour. ``scripts/gen_results.py`` writes the tables into the page's generated
blocks and redraws the plot.
"""

from __future__ import annotations

import json
import re
import statistics
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


PRIVACY = Path("docs/results/privacy")


def tuning_table(out: Path = PRIVACY) -> str:
    """Final validation accuracy per clip norm at target epsilon 10, the chosen one in bold."""
    tuning = _runs(out / "tuning", "clip=*")
    algorithms = list(dict.fromkeys(a for a, _, _ in tuning))
    clips = sorted({_number(s) for _, s, _ in tuning})
    lines = ["| algorithm | " + " | ".join(f"clip {c:g}" for c in clips) + " | chosen |", "|---" * (len(clips) + 2) + "|"]
    for algorithm in algorithms:
        scores = {_number(s): summary["final_accuracy"] for a, s, summary in tuning if a == algorithm}
        best = max(scores, key=scores.get)
        cells = [f"**{scores[c]:.2f}**" if c == best else (f"{scores[c]:.2f}" if c in scores else "–") for c in clips]
        lines.append(f"| {algorithm} | " + " | ".join(cells) + f" | {best:g} |")
    return "\n".join(lines)


def _test_runs(out: Path) -> dict[str, tuple[dict | None, list[tuple[float, dict]]]]:
    """algorithm -> (its no-DP summary, [(target epsilon, summary)] sorted)."""
    test = _runs(out / "test", "*")
    found = {}
    for algorithm in sorted(dict.fromkeys(a for a, _, _ in test), key=lambda a: list(COLOURS).index(a) if a in COLOURS else 99):
        runs = {s: summary for a, s, summary in test if a == algorithm}
        dp_runs = sorted(((_number(s), summary) for s, summary in runs.items() if s != "no-dp"), key=lambda r: r[0])
        found[algorithm] = (runs.get("no-dp"), dp_runs)
    return found


def test_table(out: Path = PRIVACY) -> str:
    """Test accuracy against epsilon; seed 0 only, so a difference to no DP carries no interval."""
    lines = ["| algorithm | clip | target ε | ε spent | noise multiplier σ | final acc | best acc "
             "| final − no DP (1 seed: no interval) | wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for algorithm, (plain, dp_runs) in _test_runs(out).items():
        clip = dp_runs[0][1]["privacy"]["clip_norm"] if dp_runs else float("nan")
        if plain:
            lines.append(f"| {algorithm} | – | no DP | – | – | {plain['final_accuracy']:.2f} | {plain['best_accuracy']:.2f} "
                         f"| – | {plain['wall_seconds']:.0f} |")
        for target, summary in dp_runs:
            delta = f"{summary['final_accuracy'] - plain['final_accuracy']:+.2f}" if plain else "–"
            lines.append(f"| {algorithm} | {clip:g} | {target:g} | {summary['epsilon']:.3g} | "
                         f"{summary['privacy']['noise_multiplier']:.3g} | {summary['final_accuracy']:.2f} | "
                         f"{summary['best_accuracy']:.2f} | {delta} | {summary['wall_seconds']:.0f} |")
    return "\n".join(lines)


def noise_table(out: Path = PRIVACY, epsilon: float = 10.0) -> str:
    """The noise's norm relative to the clip, sigma * sqrt(d) / n, for each algorithm's upload of d floats."""
    runs = {a: next((s for t, s in dp if t == epsilon), None) for a, (_, dp) in _test_runs(out).items()}
    runs = {a: s for a, s in runs.items() if s}
    if not runs:
        return "No DP runs."
    first = next(iter(runs.values()))
    sigma, clients = first["privacy"]["noise_multiplier"], first["num_clients"]
    uploads = {a: round(s["up_bytes_per_client_round"] / 4) for a, s in runs.items()}  # float32 values
    lines = [f"| at ε = {epsilon:g} (σ = {sigma:.3g}), n = {clients} | "
             + " | ".join(f"{a} ({d:,})" for a, d in uploads.items()) + " |", "|---" * (len(uploads) + 1) + "|",
             "| noise norm / C = σ·√d / n | " + " | ".join(
                 f"{runs[a]['privacy']['noise_multiplier'] * d ** 0.5 / s['num_clients']:.0f}"
                 for (a, d), s in zip(uploads.items(), runs.values())) + " |"]
    return "\n".join(lines)


def secagg_table(out: Path = PRIVACY) -> str:
    """Plaintext against SecAgg+ per round, from secagg_cost.json (scripts/secagg_cost.py)."""
    data = json.loads((out / "secagg_cost" / "secagg_cost.json").read_text())
    plain, secure = data["plaintext"], data["secagg"]

    def ratio(a: float, b: float) -> str:
        return f"{b / a:.2f}×"

    up = (statistics.median(plain["up_bytes_per_round"]), statistics.median(secure["up_bytes_per_round"]))
    down = (statistics.median(plain["down_bytes_per_round"]), statistics.median(secure["down_bytes_per_round"]))
    same = "same" if plain["final_accuracy"] == secure["final_accuracy"] else "differs"
    return "\n".join([
        "| per round | plaintext | SecAgg+ | ratio |", "|---|---|---|---|",
        f"| time, training round + evaluation (median of rounds 2–4) | {plain['median_round_seconds']:.1f} s "
        f"| {secure['median_round_seconds']:.1f} s | {ratio(plain['median_round_seconds'], secure['median_round_seconds'])} |",
        f"| bytes up (3 clients) | {up[0]:,.0f} | {up[1]:,.0f} | {ratio(*up)} |",
        f"| bytes down (3 clients) | {down[0]:,.0f} | {down[1]:,.0f} | {ratio(*down)} |",
        f"| final accuracy after 4 rounds | {plain['final_accuracy']:.6f}% | {secure['final_accuracy']:.6f}% | {same} |"])


def figure(out: Path = PRIVACY) -> None:
    """OUT/accuracy_vs_epsilon.png: final test accuracy against the epsilon spent, no DP dashed."""
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for algorithm, (plain, dp_runs) in _test_runs(out).items():
        clip = dp_runs[0][1]["privacy"]["clip_norm"] if dp_runs else float("nan")
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
    plt.close(fig)


def test_records(out: Path = PRIVACY) -> list[Path]:
    """The run directories the test table and the figure read."""
    return sorted(p.parent for p in (out / "test").glob("*/*/*/seed0/summary.json"))


def main(out: Path) -> None:
    print("Tuning (validation split, target epsilon 10): final accuracy (%)\n")
    print(tuning_table(out))
    print("\nTest split, after 20 rounds (accuracy: mean over clients, %)\n")
    print(test_table(out))
    print()
    print(noise_table(out))
    print()
    print(secagg_table(out))
    figure(out)
    print(f"\nplot: {out / 'accuracy_vs_epsilon.png'}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/results/privacy"))
