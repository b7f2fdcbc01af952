"""One benchmark at several commits, run alternately in the same invocation, with medians per commit.

    python benchmarks/commits.py --commits cd07257,main [--repeats 3] [--field samples_per_s] \\
        -- benchmarks/engine.py --workload W2 --no-reference --no-eval --data ../shared/data/cifar10-jpeg.tar.gz

Each commit is checked out into its own temporary ``git worktree`` and the benchmark script is that
commit's own file, run with that checkout's ``src`` first on ``PYTHONPATH`` (the installed
environment supplies the dependencies). Runs alternate between the commits, the order reversed
every repeat, so a change of the machine's load hits all of them alike. Relative paths among the
benchmark's arguments that exist in this checkout (a dataset) are made absolute. Every run's last
stdout line must be one JSON object (as ``engine.py`` and ``per_round.py`` print); ``--field``
names the figure summarised. Prints one JSON line per run, then one per commit with the median and
its ratio to the first commit's median.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True).stdout.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commits", required=True, help="comma-separated commits (anything git rev-parse takes)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--field", default="samples_per_s", help="the JSON figure to summarise")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- script.py [its arguments]")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        raise SystemExit("give the benchmark after --, e.g. -- benchmarks/engine.py --workload W2 --no-reference")
    script, rest = command[0], [str((ROOT / a).resolve()) if (ROOT / a).exists() and not a.startswith("-") else a
                                for a in command[1:]]
    commits = [(name, _git("rev-parse", "--short", name)) for name in args.commits.split(",")]
    figures: dict[str, list[float]] = {sha: [] for _, sha in commits}
    with tempfile.TemporaryDirectory(prefix="pfedlora-commits-") as scratch:
        trees = {}
        for _, sha in commits:
            trees[sha] = Path(scratch) / sha
            _git("worktree", "add", "--detach", "--force", str(trees[sha]), sha)
        try:
            for repeat in range(args.repeats):
                order = commits if repeat % 2 == 0 else list(reversed(commits))
                for name, sha in order:
                    tree = trees[sha]
                    env = dict(os.environ, PYTHONPATH=str(tree / "src"))
                    load = [round(x, 2) for x in os.getloadavg()]
                    result = subprocess.run([sys.executable, str(tree / script), *rest], cwd=tree, env=env,
                                            capture_output=True, text=True)
                    if result.returncode != 0:
                        raise SystemExit(f"{name} ({sha}) failed:\n{result.stderr[-3000:]}")
                    line = json.loads(result.stdout.strip().splitlines()[-1])
                    figures[sha].append(float(line[args.field]))
                    print(json.dumps({"commit": sha, "name": name, "repeat": repeat, "load_before": load,
                                      args.field: line[args.field], "result": line}), flush=True)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                               capture_output=True)
    first = statistics.median(figures[commits[0][1]])
    for name, sha in commits:
        median = statistics.median(figures[sha])
        print(json.dumps({"commit": sha, "name": name, "field": args.field, "median": round(median, 4),
                          "values": figures[sha], "ratio_to_first": round(median / first, 4)}), flush=True)


if __name__ == "__main__":
    main()
