"""Seconds per round, first-round seconds and process-tree memory, per algorithm, on one config.

    python benchmarks/per_round.py [--config configs/bench/peer_round.yaml]
                                   [--algorithms standalone,lg_fedavg,fd,fedproto,fml,fedkd,fedgh]
                                   [--rounds 6] [--repeats 1] [--set KEY=VALUE ...] [--ref PATH]
                                   [--evaluate]

Every (algorithm, checkout) runs ``pfedlora``'s simulator in a fresh process whose ``PYTHONPATH`` is
that checkout's ``src``. A round is one call of ``simulation.run_round`` (client training and
aggregation: what a round of another library times; evaluation is left out). Figures:

* ``s_per_round``: median of rounds 2..N;
* ``cpu_s_per_round``: median of rounds 2..N of the CPU seconds (user + system) the run's process tree
  spent in the round; a loaded machine stretches the wall seconds far more than this;
* ``first_round_s``: round 1 (it pays for whatever the code does lazily: worker start-up, FLOP counting);
* ``eval_s`` (with ``--evaluate``: every round is evaluated, outside the round's time): median of
  evaluations 2..N of every client's personalized model on its test split;
* ``startup_s``: from the call of ``simulation.run`` to the start of round 1 (dataset load, federation
  build, anything a checkout does up front), so moving work out of round 1 into start-up shows;
* ``tree_pss_mb``: the peak, sampled every 0.1 s, of the proportional set size summed over the run's
  process and all its descendants (``/proc/<pid>/smaps_rollup``, as ``smem`` sums it): shared pages
  (forked workers' copy-on-write dataset, the page cache of memory-mapped files) count once in total.
  Sampled in a second run of ``--pss-rounds`` rounds, not in the timed one: the sampling itself
  costs the CPU the workers need.

With ``--ref PATH`` (another checkout, e.g. a ``git worktree`` of main) every algorithm runs on both
checkouts alternately, the order flipping each time, so a change of the machine's load hits both;
each line then also carries ``ref_s_per_round`` and ``speedup`` (reference over this checkout). One
JSON line per algorithm (and repeat); the load averages are on every line.
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
ALGORITHMS = "standalone,lg_fedavg,fd,fedproto,fml,fedkd,fedgh"

# runs in the child, whose sys.path starts with the checkout's src
CHILD = r"""
import json, os, sys, threading, time
from pathlib import Path

sys.path.insert(0, "benchmarks")  # the measuring helpers of this checkout (cwd), whichever src is measured
from proc_tree import tree_cpu_s, tree_pss_kb

args = json.loads(sys.argv[1])
from pfedlora.config import load_config
from pfedlora.federation import simulation

config = load_config(args["config"], args["overrides"])
marks = []
original = simulation.run_round

cpu = []

def timed_round(*a, **k):
    began, cpu_began = time.perf_counter(), tree_cpu_s()
    result = original(*a, **k)
    marks.append((began, time.perf_counter()))
    cpu.append(tree_cpu_s() - cpu_began)
    return result

simulation.run_round = timed_round
evaluations, original_evaluate = [], simulation.evaluate_clients

def timed_evaluation(*a, **k):
    began = time.perf_counter()
    result = original_evaluate(*a, **k)
    evaluations.append(time.perf_counter() - began)
    return result

simulation.evaluate_clients = timed_evaluation
peak, done = [0], threading.Event()

def sample():
    while not done.is_set():
        peak[0] = max(peak[0], tree_pss_kb(os.getpid()))
        done.wait(0.1)

sampler = threading.Thread(target=sample, daemon=True)
if args["sample_pss"]:
    sampler.start()
started = time.perf_counter()
summary = simulation.run(config, args["out"], overwrite=True, log=lambda line: None)
done.set()
if args["sample_pss"]:
    sampler.join()
print(json.dumps({"rounds_s": [b - a for a, b in marks], "cpu_s": cpu, "startup_s": marks[0][0] - started,
                  "tree_pss_mb": peak[0] / 1024, "final_accuracy": summary.get("final_accuracy"),
                  "evaluations_s": evaluations}))
"""


def commit_of(checkout: Path) -> str:
    result = subprocess.run(["git", "-C", str(checkout), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True)
    dirty = subprocess.run(["git", "-C", str(checkout), "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    return (result.stdout.strip() or "?") + ("+dirty" if dirty else "")


def _child(checkout: Path, config: str, algorithm: str, rounds: int, overrides: list[str], out: Path,
           sample_pss: bool, evaluate: bool = False) -> dict:
    payload = {"config": config, "out": str(out), "sample_pss": sample_pss,
               "overrides": [f"algorithm={algorithm}", f"rounds={rounds}", f"eval_every={1 if evaluate else rounds}",
                             "checkpoint_every=0", *overrides]}
    env = dict(os.environ, PYTHONPATH=str(checkout / "src"))
    result = subprocess.run([sys.executable, "-c", CHILD, json.dumps(payload)], cwd=ROOT, env=env,
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{checkout} {algorithm} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_once(checkout: Path, config: str, algorithm: str, rounds: int, overrides: list[str], out: Path,
             pss_rounds: int, evaluate: bool = False) -> dict:
    # timed without the memory sampler: reading smaps_rollup of a ~1 GB process tree ten times a second
    # costs CPU the two cores' workers need (rounds ~15% slower on this machine); PSS gets its own run
    measured = _child(checkout, config, algorithm, rounds, overrides, out, sample_pss=False, evaluate=evaluate)
    if pss_rounds:
        measured["tree_pss_mb"] = _child(checkout, config, algorithm, pss_rounds, overrides, out,
                                         sample_pss=True)["tree_pss_mb"]
    later = measured["rounds_s"][1:]
    return {"s_per_round": round(statistics.median(later), 3) if later else None,
            "cpu_s_per_round": round(statistics.median(measured["cpu_s"][1:]), 3) if later else None,
            "first_round_cpu_s": round(measured["cpu_s"][0], 3),
            "first_round_s": round(measured["rounds_s"][0], 3), "startup_s": round(measured["startup_s"], 3),
            "tree_pss_mb": round(measured["tree_pss_mb"], 1) if pss_rounds else None, "final_accuracy": measured["final_accuracy"],
            "rounds_s": [round(s, 3) for s in measured["rounds_s"]]} | (
        {"eval_s": round(statistics.median(measured["evaluations_s"][1:]), 3) if len(measured["evaluations_s"]) > 1
         else None, "evaluations_s": [round(s, 3) for s in measured["evaluations_s"]]} if evaluate else {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/bench/peer_round.yaml")
    parser.add_argument("--algorithms", default=ALGORITHMS)
    parser.add_argument("--rounds", type=int, default=6, help="rounds per run (the median is of rounds 2..N)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--pss-rounds", type=int, default=3,
                        help="rounds of the separate run that samples the tree's PSS (0: none)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--ref", type=Path, default=None, help="a second checkout, timed interleaved")
    parser.add_argument("--evaluate", action="store_true",
                        help="evaluate every round and time it too (eval_s: median of evaluations 2..N)")
    args = parser.parse_args()
    checkouts = [("this", ROOT)] + ([("ref", args.ref.resolve())] if args.ref else [])
    commits = {name: commit_of(path) for name, path in checkouts}
    flip = False
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for algorithm in args.algorithms.split(","):
                figures = {}
                load = [round(x, 2) for x in os.getloadavg()]
                for name, path in (reversed(checkouts) if flip else checkouts):
                    figures[name] = run_once(path, args.config, algorithm, args.rounds, args.overrides,
                                             Path(scratch) / f"{name}-{algorithm}", args.pss_rounds, args.evaluate)
                flip = not flip
                line = {"algorithm": algorithm, "repeat": repeat, "commit": commits["this"], **figures["this"]}
                if "ref" in figures:
                    ref = figures["ref"]
                    line |= {"ref_commit": commits["ref"], "ref_s_per_round": ref["s_per_round"],
                             "ref_cpu_s_per_round": ref["cpu_s_per_round"], "ref_first_round_cpu_s": ref["first_round_cpu_s"],
                             "cpu_speedup": round(ref["cpu_s_per_round"] / line["cpu_s_per_round"], 3)
                             if line["cpu_s_per_round"] else None,
                             "ref_first_round_s": ref["first_round_s"], "ref_startup_s": ref["startup_s"],
                             "ref_tree_pss_mb": ref["tree_pss_mb"], "ref_final_accuracy": ref["final_accuracy"],
                             "ref_rounds_s": ref["rounds_s"],
                             "speedup": round(ref["s_per_round"] / line["s_per_round"], 3)
                             if line["s_per_round"] else None}
                    if args.evaluate:
                        line |= {"ref_eval_s": ref["eval_s"], "ref_evaluations_s": ref["evaluations_s"],
                                 "eval_speedup": round(ref["eval_s"] / line["eval_s"], 3)
                                 if line["eval_s"] and ref["eval_s"] else None}
                line |= {"load_before": load, "load_after": [round(x, 2) for x in os.getloadavg()]}
                if args.overrides:  # what the run was, beside its figures
                    line["set"] = args.overrides
                print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
