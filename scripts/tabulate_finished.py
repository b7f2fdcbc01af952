"""The comparison table of the runs that have finished in ``pfedlora compare`` directories.

``pfedlora compare`` starts every missing run before it tabulates; this tabulates what is there
(runs with a summary.json), e.g. while a long comparison is still under way, and writes
``comparison.md``, ``comparison.csv`` and the report plots into the (first, or ``--out``) directory.
``DIR:ALG,ALG`` takes only those algorithms' runs from DIR, so one table can gather rows made by
several commands:
    python scripts/tabulate_finished.py docs/results/cifar10/n10-long
    python scripts/tabulate_finished.py --out docs/results/cifar10/n10-tuned-v2 \\
        docs/results/cifar10/n10-tuned-pfedlora-tuned:pfedlora docs/results/cifar10/n10-tuned:standalone,fd
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pfedlora.experiments.compare import comparison_markdown, load_run, summarize_comparison, write_comparison_csv
from pfedlora.experiments.report import ALGORITHM_ORDER, write_report
from pfedlora.metrics.run_dir import write_atomic


def finished_runs(spec: str) -> list[Path]:
    directory, _, names = spec.partition(":")
    wanted = set(names.split(",")) if names else None
    runs = [p.parent for p in Path(directory).glob("*/seed*/summary.json")]
    return [p for p in runs if wanted is None or p.parent.name in wanted]


def main(specs: list[str], out: Path | None) -> None:
    finished = [run for spec in specs for run in finished_runs(spec)]
    order = {name: i for i, name in enumerate(ALGORITHM_ORDER)}
    finished.sort(key=lambda p: (order.get(p.parent.name, len(order)), p.name))
    directory = out or Path(specs[0].partition(":")[0])
    directory.mkdir(parents=True, exist_ok=True)
    records = [load_run(p) for p in finished]
    table = summarize_comparison(records)
    write_comparison_csv(table, directory / "comparison.csv")
    write_atomic(directory / "comparison.md", comparison_markdown(table))
    write_report([r.path for r in records], directory, title="Comparison runs")
    print(comparison_markdown(table))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("specs", nargs="+", metavar="DIR[:ALG,...]")
    parser.add_argument("--out", type=Path, help="where to write the table and plots (default: the first DIR)")
    arguments = parser.parse_args()
    main(arguments.specs, arguments.out)
