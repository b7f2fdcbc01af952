"""The comparison table of the runs that have finished in a ``pfedlora compare`` directory.

``pfedlora compare`` starts every missing run before it tabulates; this tabulates what is there
(runs with a summary.json), e.g. while a long comparison is still under way, and writes
``comparison.md``, ``comparison.csv`` and the report plots into the directory.
    python scripts/tabulate_finished.py docs/results/cifar10/n10-long
"""

from __future__ import annotations

import sys
from pathlib import Path

from pfedlora.experiments.compare import comparison_markdown, load_run, summarize_comparison, write_comparison_csv
from pfedlora.experiments.report import ALGORITHM_ORDER, write_report
from pfedlora.metrics.run_dir import write_atomic


def main(directory: Path) -> None:
    finished = [p.parent for p in directory.glob("*/seed*/summary.json")]
    order = {name: i for i, name in enumerate(ALGORITHM_ORDER)}
    finished.sort(key=lambda p: (order.get(p.parent.name, len(order)), p.name))
    records = [load_run(p) for p in finished]
    table = summarize_comparison(records)
    write_comparison_csv(table, directory / "comparison.csv")
    write_atomic(directory / "comparison.md", comparison_markdown(table))
    write_report([r.path for r in records], directory, title="Comparison runs")
    print(comparison_markdown(table))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
