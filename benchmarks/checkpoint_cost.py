"""Size and write time of one checkpoint for a config (default: the digits quickstart).

    PYTHONPATH=src python benchmarks/checkpoint_cost.py [--set KEY=VALUE ...]

Builds the federation, initialises the server and every client (as after the first evaluation,
when every client state exists), writes a checkpoint three times and prints size and median time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from pfedlora.config import load_config
from pfedlora.federation.checkpoint import CHECKPOINT_NAME, save_checkpoint
from pfedlora.federation.simulation import ClientStore, Federation


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    args = parser.parse_args()
    config = load_config(args.config, args.overrides)
    federation = Federation.build(config)
    store = ClientStore(federation)
    server_state, broadcast = federation.algorithm.init_server(federation.context)
    for client_id in range(config.num_clients):
        # a trained client also holds its adapter: add it so the size is the steady-state one
        store.put(client_id, store.get(client_id) | {f"adapter.{k}": v for k, v in broadcast.items()})
    state = {"round": 1, "server_state": server_state, "broadcast": broadcast, "client_states": store.states(),
             "history": [], "client_accuracies": [], "pending": {}, "elapsed": 0.0}
    with tempfile.TemporaryDirectory() as tmp:
        times = []
        for _ in range(3):
            started = time.perf_counter()
            save_checkpoint(tmp, config, state)
            times.append(time.perf_counter() - started)
        size = (Path(tmp) / CHECKPOINT_NAME).stat().st_size
    print(f"{config.algorithm} {config.dataset.name}, {config.num_clients} clients, pool {config.model_pool}: "
          f"checkpoint {size / 1e6:.1f} MB, write {statistics.median(times) * 1000:.0f} ms (median of 3)")


if __name__ == "__main__":
    main()
