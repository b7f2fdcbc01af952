"""Print the upload size (bytes per client per round) of every algorithm on the digits federation.

    PYTHONPATH=src python benchmarks/baseline_payloads.py [--rounds 2] [--clients 5]

For FedKD it also prints the size of the dense student update it replaces, i.e. what the SVD
compression saves.
"""

from __future__ import annotations

import argparse

from pfedlora.algorithms import algorithm_names
from pfedlora.config import build_config
from pfedlora.federation.simulation import ClientStore, Federation, run_round


def nbytes(payload: dict) -> int:
    return sum(t.numel() * t.element_size() for t in payload.values())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--clients", type=int, default=5)
    args = parser.parse_args()
    for name in algorithm_names():
        document = {"algorithm": name, "num_clients": args.clients, "rounds": args.rounds, "train": {"batch_size": 32}}
        if name == "fedavg":
            document["model_pool"] = ["cnn5"]
        federation = Federation.build(build_config(document))
        store = ClientStore(federation)
        server_state, broadcast = federation.algorithm.init_server(federation.context)
        for round_index in range(1, args.rounds + 1):
            server_state, broadcast, result = run_round(federation, store, server_state, broadcast, round_index)
            sizes = [nbytes(u.payload) for u in result.uploads]
            line = f"{name:11s} round {round_index}: upload mean {sum(sizes) / len(sizes):12,.0f} B/client"
            if name == "fedkd":
                dense = nbytes({k: v for k, v in broadcast.items() if k != "svd_energy"})
                line += f"  (dense student update {dense:,} B: {sum(sizes) / len(sizes) / dense:.1%})"
            print(line, flush=True)


if __name__ == "__main__":
    main()
