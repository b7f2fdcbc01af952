"""Time of `privacy.accountant: pld` with `target_epsilon` (issue 30, item 6): the noise multiplier
search must finish in seconds even where the answer is a small sigma (large target, few rounds).

    PYTHONPATH=src python benchmarks/pld_calibration.py

Prints, per setting, the sigma found, its PLD epsilon (the accounting a run reports), the seconds the
search took (budget: 30 s each on one core), and the PLD epsilon at 0.998 x sigma, which must exceed
the target (the sigma found is the smallest within the search's tolerance). Settings: (num_clients, fraction, rounds, target_epsilon), delta 1e-5, central mode.
"""

from __future__ import annotations

import time

from pfedlora.config import build_config
from pfedlora.federation import privacy

SETTINGS = [(10, 1.0, 5, 50.0), (10, 1.0, 1, 20.0), (100, 0.1, 20, 8.0), (100, 0.1, 100, 30.0)]
BUDGET_S = 30.0


def main() -> None:
    print(f"{'clients':>7} {'fraction':>8} {'rounds':>6} {'target':>6} {'sigma':>8} {'epsilon':>8} {'seconds':>8} {'eps@0.998':>9}")
    for clients, fraction, rounds, target in SETTINGS:
        config = build_config({"num_clients": clients, "fraction": fraction, "rounds": rounds, "algorithm": "fedavg", "model_pool": ["cnn5"],
                               "privacy": {"mode": "central", "clip_norm": 1.0, "target_epsilon": target,
                                           "delta": 1e-5, "accountant": "pld"}})
        privacy._calibrate.cache_clear()
        privacy._epsilon.cache_clear()
        started = time.perf_counter()
        sigma = privacy.resolved_noise_multiplier(config)
        seconds = time.perf_counter() - started
        eps = privacy.epsilon(config, rounds, sigma)
        below = privacy.epsilon(config, rounds, sigma * 0.998)
        flag = "" if seconds <= BUDGET_S else "  OVER BUDGET"
        flag += "" if eps <= target < below else "  NOT THE SMALLEST SIGMA REACHING THE TARGET"
        print(f"{clients:>7} {fraction:>8} {rounds:>6} {target:>6g} {sigma:>8.4f} {eps:>8.3f} {seconds:>8.2f} {below:>9.3f}{flag}")


if __name__ == "__main__":
    main()
