"""Experiment throughput: one `compare` at --jobs 1 and at --jobs auto (or --jobs N), in one invocation.

    python benchmarks/experiment.py [--config configs/paper/cifar10_n10.yaml] [--algorithms all] [--seeds 0,1]
                                    [--rounds 3] [--jobs auto] [--executor local|ray] [--out DIR] [--set KEY=VALUE ...]

Each compare runs in a fresh process into its own empty directory, serial first. Prints both wall
times and, as its last line, one JSON object: speedup (serial wall / parallel wall), identical
(true when the two comparison.csv files and every run's metrics.csv agree apart from wall-time
columns), peak_rss_mb (the largest single run's peak RSS: the serial compare process, which holds
one run at a time, or the largest job process), the wall times, jobs, cores and load averages.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _child(argv: list[str]) -> None:
    """Run one compare in this process; print the peak RSS of this process and of its children."""
    sys.path.insert(0, str(ROOT / "src"))
    from pfedlora.cli import main

    code = main(argv)
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(json.dumps({"code": code, "rss_self_mb": round(own, 1), "rss_children_mb": round(children, 1)}))
    sys.exit(code)


def _compare(argv: list[str], log: Path) -> dict:
    started = time.perf_counter()
    with log.open("w") as handle:
        done = subprocess.run([sys.executable, __file__, "--child", *argv], stdout=subprocess.PIPE,
                              stderr=handle, text=True, cwd=ROOT)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"experiment.py: compare failed (exit {done.returncode}); see {log}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return {"wall_s": wall, **result}


def _table(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return [{k: v for k, v in row.items() if "wall" not in k} for row in csv.DictReader(handle)]


def identical(first: Path, second: Path) -> bool:
    runs = sorted(p.relative_to(first) for p in first.rglob("metrics.csv"))
    if not runs or runs != sorted(p.relative_to(second) for p in second.rglob("metrics.csv")):
        return False
    return _table(first / "comparison.csv") == _table(second / "comparison.csv") and all(
        _table(first / run) == _table(second / run) for run in runs)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/paper/cifar10_n10.yaml")
    parser.add_argument("--algorithms", default="all")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--jobs", default="auto")
    parser.add_argument("--executor", choices=("local", "ray"), default="local")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--out", help="keep the two comparisons here (default: a temporary directory)")
    args = parser.parse_args()

    base = ["compare", "--config", args.config, "--algorithms", args.algorithms, "--seeds", args.seeds,
            "--set", f"rounds={args.rounds}", *(x for o in args.overrides for x in ("--set", o))]
    scratch = None if args.out else tempfile.TemporaryDirectory(prefix="pfedlora-experiment-")
    out = Path(args.out or scratch.name).resolve()
    out.mkdir(parents=True, exist_ok=True)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load_before = [round(x, 2) for x in os.getloadavg()]
    print(f"cores {cores}, load {load_before}; compare {' '.join(base[1:])}", flush=True)

    serial = _compare([*base, "--out", str(out / "jobs1")], out / "jobs1.log")
    print(f"--jobs 1: {serial['wall_s']:.1f} s", flush=True)
    parallel = _compare([*base, "--out", str(out / "jobsN"), "--jobs", args.jobs, "--executor", args.executor],
                        out / "jobsN.log")
    print(f"--jobs {args.jobs} ({args.executor}): {parallel['wall_s']:.1f} s", flush=True)

    result = {
        "speedup": round(serial["wall_s"] / parallel["wall_s"], 3),
        "identical": identical(out / "jobs1", out / "jobsN"),
        # the serial compare holds one run at a time in its own process; parallel runs live in child processes
        "peak_rss_mb": max(serial["rss_self_mb"], serial["rss_children_mb"], parallel["rss_children_mb"]),
        "peak_rss_serial_process_mb": serial["rss_self_mb"],
        "peak_rss_job_process_mb": parallel["rss_children_mb"],
        "wall_s_jobs1": round(serial["wall_s"], 1),
        "wall_s_parallel": round(parallel["wall_s"], 1),
        "jobs": args.jobs, "executor": args.executor, "cores": cores,
        "load_before": load_before, "load_after": [round(x, 2) for x in os.getloadavg()],
    }
    print(json.dumps(result))
    if scratch is not None:
        scratch.cleanup()


if __name__ == "__main__":
    main()
