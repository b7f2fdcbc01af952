"""Time the first (decoding) and the cached load of a CIFAR archive, each in a fresh process.

    python benchmarks/data_load.py [PATH] [--name cifar10]

Prints the two timings and, as its last line, one JSON object.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

CODE = (
    "import sys, time\n"
    "from pfedlora.data import load_dataset\n"
    "t = time.perf_counter()\n"
    "d = load_dataset(sys.argv[1], sys.argv[2], cache_dir=sys.argv[3])\n"
    "print(time.perf_counter() - t)\n"
)


def timed_load(name: str, path: str, cache: str) -> float:
    out = subprocess.run([sys.executable, "-c", CODE, name, path, cache], capture_output=True, text=True, check=True)
    return float(out.stdout.split()[-1])


def main() -> None:
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("path", nargs="?", default=str(default))
    parser.add_argument("--name", default="cifar10")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as cache:
        first = timed_load(args.name, args.path, cache)
        cached = sorted(timed_load(args.name, args.path, cache) for _ in range(3))[1]
    print(f"first load (decode + cache write): {first:.2f} s")
    print(f"cached load (median of 3 fresh processes): {cached:.2f} s")
    print(json.dumps({"dataset": args.name, "first_load_s": round(first, 3), "cached_load_s": round(cached, 3)}))


if __name__ == "__main__":
    main()
