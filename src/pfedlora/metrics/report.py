"""``pfedlora report``: plots of one or more run directories and a report.md embedding them.

Plots (PNG, matplotlib's Agg backend, one line per run): mean accuracy vs round, vs cumulative
bytes (up + down) and vs cumulative FLOPs (training + server), and the distribution of the final
per-client accuracies. Cost axes are logarithmic because algorithms differ by orders of magnitude;
a run whose costs are all zero (e.g. ``standalone`` sends nothing) cannot be placed on them and
is listed under the plot instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pfedlora.errors import UserError
from pfedlora.metrics.compare import RunRecord, human, load_run
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

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for record, label in zip(records, labels):
        ax.plot([r["round"] for r in record.history], [r["mean_acc"] for r in record.history], marker=".", label=label)
    ax.set(xlabel="round", ylabel="mean client accuracy (%)", title=PLOTS["accuracy_vs_round.png"])
    _finish(fig, ax, out / "accuracy_vs_round.png")

    for kind, unit in (("bytes", "bytes (up + down)"), ("flops", "FLOPs (training + server)")):
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for record, label in zip(records, labels):
            points = [(_cumulative(r, kind), r["mean_acc"]) for r in record.history]
            points = [(x, y) for x, y in points if x is not None and x > 0]
            if not points:
                left_out[kind].append(label)
                continue
            ax.plot([x for x, _ in points], [y for _, y in points], marker=".", label=label)
        ax.set_xscale("log")
        ax.set(xlabel=f"cumulative {unit}", ylabel="mean client accuracy (%)",
               title=PLOTS[f"accuracy_vs_{kind}.png"])
        _finish(fig, ax, out / f"accuracy_vs_{kind}.png")

    fig, ax = plt.subplots(figsize=(max(5, 1.2 * len(records) + 2), 4.5))
    ax.boxplot([r.summary.get("client_accuracies") or [r.history[-1]["mean_acc"]] for r in records])
    ax.set_xticks(range(1, len(records) + 1), labels, rotation=30, ha="right")
    ax.set(ylabel="client accuracy (%)", title=PLOTS["client_accuracy.png"])
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "client_accuracy.png", dpi=110)
    plt.close(fig)

    report = out / "report.md"
    write_atomic(report, _markdown(title, records, labels, left_out, out))
    return report


def _finish(fig, ax, path: Path) -> None:
    import matplotlib.pyplot as plt

    ax.grid(True, alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
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
            lines += [f"Not plotted (no {kind} recorded or all zero): {', '.join(left_out[kind])}.", ""]
    return "\n".join(lines)
