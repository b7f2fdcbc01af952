"""Throughput of the secure DP noise (ChaCha20 keystream -> Box-Muller, sum of four) against torch's
seeded ``randn`` (the ``seeded_insecure`` path), at payload sizes this library sends: pFedLoRA's
adapter (13,690 values), a CNN-5 (~0.3M) and a CNN-1 (2.6M, FedAvg's whole model). Medians of 7.

    python benchmarks/secure_noise.py
"""

from __future__ import annotations

import statistics
import time

import torch

from pfedlora.federation.secure_noise import secure_gaussian


def median_seconds(draw, repeats: int = 7) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        draw()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    torch.set_num_threads(1)
    generator = torch.Generator().manual_seed(0)
    print(f"{'values':>10} {'secure s':>10} {'M values/s':>11} {'seeded s':>10} {'ratio':>6}")
    for count in (13_690, 300_000, 2_620_758):
        secure = median_seconds(lambda: secure_gaussian((count,), 1.0))
        seeded = median_seconds(lambda: torch.randn(count, generator=generator, dtype=torch.float64))
        print(f"{count:>10,} {secure:>10.4f} {count / secure / 1e6:>11.1f} {seeded:>10.4f} {secure / seeded:>6.1f}")


if __name__ == "__main__":
    main()
