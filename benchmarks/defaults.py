"""Which engine.threads / engine.workers to default to: seconds per round, idle and with one core busy.

    python benchmarks/defaults.py [--config configs/paper/cifar10_n10.yaml] [--algorithms standalone,pfedlora]
                                  [--rounds 4] [--settings 1x1,2x1,1x2] [--repeats 1]

Every setting ``TxW`` (torch threads x engine workers) runs ``pfedlora run`` for each algorithm in a
fresh process, twice: on the machine as it is ("as_is": idle when nothing else runs; the load averages are printed) and while a busy loop
holds one core ("one core busy", what another job or user does to a shared machine). Seconds per
round are the median of the rounds after the first (which pays for start-up and FLOP counting),
read from the run's own metrics.csv. Prints a table and, as its last line, one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = "import sys; sys.path.insert(0, 'src'); from pfedlora.cli import main; sys.exit(main(sys.argv[1:]))"


def seconds_per_round(config: str, algorithm: str, rounds: int, threads: int, workers: int, out: Path) -> float:
    subprocess.run([sys.executable, "-c", RUN, "run", "--config", config, "--set", f"algorithm={algorithm}",
                    "--set", f"rounds={rounds}", "--set", "eval_every=1", "--set", f"engine.threads={threads}",
                    "--set", f"engine.workers={workers}", "--out", str(out), "--overwrite"],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with (out / "metrics.csv").open(newline="") as handle:
        walls = [float(row["wall_s"]) for row in csv.DictReader(handle)]
    return statistics.median(b - a for a, b in zip(walls, walls[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/paper/cifar10_n10.yaml")
    parser.add_argument("--algorithms", default="standalone,pfedlora")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--settings", default="1x1,2x1,1x2", help="comma-separated THREADSxWORKERS")
    args = parser.parse_args()
    settings = [tuple(int(v) for v in s.split("x")) for s in args.settings.split(",")]
    algorithms = args.algorithms.split(",")
    results: dict[str, dict[str, float]] = {}
    load_before = [round(x, 2) for x in os.getloadavg()]
    print(f"cores {len(os.sched_getaffinity(0))}, load {load_before}", flush=True)
    with tempfile.TemporaryDirectory() as scratch:
        for condition in ("as_is", "one_core_busy"):
            busy = (subprocess.Popen([sys.executable, "-c", "while True: pass"])
                    if condition == "one_core_busy" else None)
            try:
                for threads, workers in settings:
                    for algorithm in algorithms:
                        key = f"{algorithm} threads={threads} workers={workers}"
                        value = seconds_per_round(args.config, algorithm, args.rounds, threads, workers,
                                                  Path(scratch) / "run")
                        results.setdefault(key, {})[condition] = round(value, 3)
                        print(f"{condition:>14}  {key:<40} {value:6.2f} s/round", flush=True)
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()
    print(json.dumps({"seconds_per_round": results, "load_before": load_before,
                      "load_after": [round(x, 2) for x in os.getloadavg()]}))


if __name__ == "__main__":
    main()
