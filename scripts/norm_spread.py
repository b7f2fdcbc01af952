"""Measure how far honest update norms spread within a round, and what each rejection rule would do.

Runs a config with the norm rules off (no faults: every client is honest), records the L2 norm of every
upload's update (upload - broadcast, as the server's validator computes it) in every round, and reports
per run the largest ratio of a client's norm to its round's median and the false-rejection rate of the
rules compared in issue #17 (README "Reliability"). The records go to a JSON-lines file, so rules
can be compared again without training:

    python scripts/norm_spread.py --out runs/norm_spread.jsonl --rounds 30 \
        --run quickstart= --run "cifar10_n10=configs/paper/cifar10_n10.yaml"
    python scripts/norm_spread.py --out runs/norm_spread.jsonl --analyse-only

``--run NAME=CONFIG`` (empty CONFIG: the quickstart) may be repeated; ``--algorithms`` lists the
algorithms each one runs (default: the heterogeneous ones that upload: all but standalone and fedavg).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from pfedlora.algorithms import algorithm_names  # noqa: E402
from pfedlora.config import load_config  # noqa: E402
from pfedlora.federation import simulation  # noqa: E402
from pfedlora.federation.validation import UpdateValidator, norm_bound  # noqa: E402


def record(config, records: list[list[float]]) -> float:
    """Run ``config`` with the norm rules off, appending each round's sorted norms; returns wall seconds."""

    class Recording(UpdateValidator):
        def validate(self, uploads, spec, broadcast, check=None):
            report = super().validate(uploads, spec, broadcast, check)
            records.append(sorted(report.norms.values()))
            return report

    original = simulation.validator_for
    simulation.validator_for = lambda cfg: Recording(None, None)
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory() as out:
            simulation.run(config, Path(out) / "run", log=lambda _: None)
    finally:
        simulation.validator_for = original
    return time.perf_counter() - started


def mad_bound(norms: list[float], mad_k: float, floor: float = 10.0) -> float | None:
    """The alternative tried and not adopted: the median x max(floor, exp(mad_k x 1.4826 x MAD of the
    log norms)). Honest spreads are skewed (a few clients still learning, most converged), so the bound
    swings from 10x to 10,000x the median: too loose against attackers and still not loose enough."""
    median = statistics.median(norms)
    if median <= 0:
        return None
    logs = [math.log(n) for n in norms if n > 0]
    centre = statistics.median(logs)
    spread = 1.4826 * statistics.median([abs(v - centre) for v in logs])
    return median * max(floor, math.exp(mad_k * spread))


RULES = {
    "median x10 (old)": lambda norms: norm_bound(norms, 10.0),
    "median x30": lambda norms: norm_bound(norms, 30.0),
    "median x100 (new)": lambda norms: norm_bound(norms, 100.0),
    "log-MAD k=5": lambda norms: mad_bound(norms, 5.0),
}


def analyse(rows: list[dict]) -> None:
    print(f"{'run':<34} {'rounds':>6} {'max/median':>10}  " + "  ".join(f"{name:>20}" for name in RULES))
    totals = {name: [0, 0] for name in RULES}
    for row in rows:
        ratios = [max(norms) / statistics.median(norms) for norms in row["norms"] if len(norms) >= 3
                  and statistics.median(norms) > 0]
        cells = []
        for name, rule in RULES.items():
            false = checked = 0
            for norms in row["norms"]:
                bound = rule(norms)
                checked += len(norms)
                false += sum(n > bound for n in norms) if bound is not None else 0
            totals[name][0] += false
            totals[name][1] += checked
            cells.append(f"{f'{false}/{checked} ({100 * false / max(checked, 1):.1f}%)':>20}")
        label = f"{row['run']}/{row['algorithm']}"
        print(f"{label:<34} {len(row['norms']):>6} {max(ratios, default=float('nan')):>10.1f}  " + "  ".join(cells))
    print(f"{'all':<34} {'':>6} {'':>10}  " + "  ".join(
        f"{f'{f}/{c} ({100 * f / max(c, 1):.2f}%)':>20}" for f, c in totals.values()))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="JSON-lines file of recorded norms (appended)")
    parser.add_argument("--run", action="append", default=[], help="NAME=CONFIG (empty CONFIG: the quickstart)")
    parser.add_argument("--algorithms", default="all")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--set", action="append", default=[], help="KEY=VALUE overrides for every run")
    parser.add_argument("--analyse-only", action="store_true")
    args = parser.parse_args()
    names = [a for a in algorithm_names() if a not in ("standalone", "fedavg")] if args.algorithms == "all" else args.algorithms.split(",")
    if not args.analyse_only:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        for spec in args.run:
            run_name, _, path = spec.partition("=")
            for algorithm in names:
                overrides = [f"algorithm={algorithm}", f"rounds={args.rounds}", f"eval_every={args.rounds}",
                             "checkpoint_every=0", *args.set]
                config = load_config(path or None, overrides)
                norms: list[list[float]] = []
                wall = record(config, norms)
                with args.out.open("a") as handle:
                    handle.write(json.dumps({"run": run_name, "algorithm": algorithm, "rounds": args.rounds,
                                             "wall_s": round(wall, 1), "norms": norms}) + "\n")
                print(f"{run_name}/{algorithm}: {len(norms)} rounds in {wall:.0f} s", flush=True)
    rows = [json.loads(line) for line in args.out.read_text().splitlines() if line.strip()]
    analyse(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
