"""Print the tuning table of a tuning directory (``<dir>/<algorithm>/<label>/<algorithm>/seed0``).

One row per algorithm: the final validation accuracy of every value tried (in the knob's order when
there is one knob), the chosen (highest) one in bold, and whether the choice sits at the grid's edge.
    python scripts/tuning_table.py docs/results/cifar10/tuning-v2
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _values(runs: list[tuple[str, float, float]]) -> list[float] | None:
    """The knob's values when every label is ``key=number`` of one key, else None."""
    try:
        keys = {label.split("=", 1)[0] for label, _, _ in runs}
        values = [float(label.split("=", 1)[1]) for label, _, _ in runs]
    except (IndexError, ValueError):
        return None
    return values if len(keys) == 1 else None


def main(root: Path) -> None:
    print("| algorithm | values tried (final validation accuracy %, run wall time) | chosen | at the grid's edge |")
    print("|---|---|---|---|")
    for algorithm_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        algorithm = algorithm_dir.name
        runs = []
        for label_dir in sorted(algorithm_dir.iterdir(), key=lambda p: p.stat().st_mtime):
            summary_path = label_dir / algorithm / "seed0" / "summary.json"
            if summary_path.is_file():
                summary = json.loads(summary_path.read_text())
                runs.append((label_dir.name, summary["final_accuracy"], summary["wall_seconds"]))
        if not runs:
            continue
        numeric = _values(runs)
        if numeric is not None:  # one knob: in the order of its values, and the edge is meaningful
            runs = [run for _, run in sorted(zip(numeric, runs))]
        best = max(runs, key=lambda r: r[1])
        cells = ", ".join(f"{'**' if r is best else ''}{r[0]}: {r[1]:.2f}{'**' if r is best else ''} ({r[2]:.0f} s)"
                          for r in runs)
        edge = ("yes" if best in (runs[0], runs[-1]) else "no") if numeric is not None else "n/a (several knobs)"
        print(f"| {algorithm} | {cells} | {best[0]} | {edge} |")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "docs/results/cifar10/tuning-v2"))
