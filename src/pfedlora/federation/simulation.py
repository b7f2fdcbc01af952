"""The in-process federated simulator.

It owns the loop (sample clients, run their updates, aggregate, evaluate, log) and moves payloads
between the algorithm's functions; it never names an algorithm. Randomness is derived from
(seed, round, client) so results do not depend on the order clients are processed in.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pfedlora.algorithms import get_algorithm
from pfedlora.algorithms.base import Algorithm, ClientData, FederationContext, Payload, State, Upload, derive_seed
from pfedlora.config import Config
from pfedlora.data import load_dataset, partition_clients, partition_counts
from pfedlora.data.datasets import ArrayDataset
from pfedlora.metrics.accuracy import accuracy, summarize
from pfedlora.metrics.run_dir import MetricsWriter, prepare_run_dir, write_json, write_yaml


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        from pfedlora.errors import UserError

        raise UserError("device: 'cuda' requested but no CUDA device is available; use 'auto' or 'cpu'")
    return torch.device(name)


def sample_clients(config: Config, round_index: int) -> list[int]:
    """The clients selected in ``round_index`` (1-based): ``max(1, round(fraction * N))`` of them."""
    count = max(1, int(round(config.fraction * config.num_clients)))
    rng = np.random.default_rng(derive_seed(config.seed, "round", round_index))
    return sorted(int(k) for k in rng.choice(config.num_clients, size=count, replace=False))


def client_generator(config: Config, round_index: int, client_id: int) -> torch.Generator:
    return torch.Generator().manual_seed(derive_seed(config.seed, "train", round_index, client_id))


@dataclass
class Federation:
    """Everything a runtime needs for one configured federation, built once."""

    config: Config
    dataset: ArrayDataset
    clients: list[ClientData]
    context: FederationContext
    algorithm: Algorithm
    partition: dict[str, Any]

    @classmethod
    def build(cls, config: Config) -> Federation:
        device = resolve_device(config.device)
        dataset = load_dataset(
            config.dataset.name,
            config.dataset.path,
            cache_dir=config.dataset.cache_dir,
            download=config.dataset.download,
            seed=config.seed,
            tokenizer=config.dataset.tokenizer,
            max_length=config.dataset.max_length,
            max_train_samples=config.dataset.max_train_samples,
            max_test_samples=config.dataset.max_test_samples,
        )
        splits = partition_clients(
            dataset.train_y.numpy(),
            dataset.test_y.numpy(),
            dataset.num_classes,
            config.num_clients,
            kind=config.partition.kind,
            classes_per_client=config.partition.classes_per_client,
            alpha=config.partition.alpha,
            share_low=config.partition.share_low,
            share_high=config.partition.share_high,
            min_samples=config.partition.min_samples,
            seed=config.seed,
        )
        clients = [
            ClientData(
                train_x=dataset.train_x[torch.as_tensor(split.train_idx, dtype=torch.long)].to(device),
                train_y=dataset.train_y[torch.as_tensor(split.train_idx, dtype=torch.long)].to(device),
                test_x=dataset.test_x[torch.as_tensor(split.test_idx, dtype=torch.long)].to(device),
                test_y=dataset.test_y[torch.as_tensor(split.test_idx, dtype=torch.long)].to(device),
            )
            for split in splits
        ]
        context = FederationContext(config, dataset.input_shape, dataset.num_classes, device, text=dataset.text)
        counts = partition_counts(splits, dataset.train_y.numpy(), dataset.test_y.numpy(), dataset.num_classes)
        return cls(config, dataset, clients, context, get_algorithm(config.algorithm), counts)

    def parameter_counts(self) -> dict[str, Any]:
        """Parameters of every local model architecture in use, plus the algorithm's own facts."""
        archs = sorted({self.context.client_arch(k) for k in range(self.config.num_clients)})
        facts = {"local_model_parameters": {arch: self.context.model_parameters(arch) for arch in archs}}
        facts.update(self.algorithm.describe(self.context))
        return facts


class ClientStore:
    """Client states by id, created lazily by the algorithm's ``init_client``."""

    def __init__(self, federation: Federation) -> None:
        self._federation = federation
        self._states: dict[int, State] = {}

    def get(self, client_id: int) -> State:
        if client_id not in self._states:
            fed = self._federation
            self._states[client_id] = fed.algorithm.init_client(fed.context, client_id)
        return self._states[client_id]

    def put(self, client_id: int, state: State) -> None:
        self._states[client_id] = state


@dataclass
class RoundResult:
    round: int
    selected: list[int]
    uploads: list[Upload]
    train_loss: float
    stats: dict[int, list] = field(default_factory=dict)


def run_round(federation: Federation, store: ClientStore, server_state: State, broadcast: Payload,
              round_index: int) -> tuple[State, Payload, RoundResult]:
    """One round: selected clients update from ``broadcast``; the server aggregates their uploads."""
    algorithm, ctx, config = federation.algorithm, federation.context, federation.config
    selected = sample_clients(config, round_index)
    uploads: list[Upload] = []
    losses: list[float] = []
    stats: dict[int, list] = {}
    for client_id in selected:
        result = algorithm.client_update(
            ctx, client_id, store.get(client_id), broadcast, federation.clients[client_id],
            client_generator(config, round_index, client_id),
        )
        store.put(client_id, result.state)
        uploads.append(Upload(client_id, result.upload, result.weight))
        stats[client_id] = result.stats
        losses.extend(s.mean_loss for s in result.stats if s.num_steps)
    server_state, broadcast = algorithm.aggregate(ctx, server_state, uploads)
    train_loss = float(np.mean(losses)) if losses else float("nan")
    return server_state, broadcast, RoundResult(round_index, selected, uploads, train_loss, stats)


def evaluate_clients(federation: Federation, store: ClientStore, broadcast: Payload) -> list[float]:
    """Every client's personalized model on its own test split (accuracy in percent)."""
    algorithm, ctx = federation.algorithm, federation.context
    batch = federation.config.train.eval_batch_size
    accuracies = []
    for client_id, data in enumerate(federation.clients):
        model = algorithm.personalized_model(ctx, client_id, store.get(client_id), broadcast)
        accuracies.append(accuracy(model, data.test_x, data.test_y, batch))
    return accuracies


def run(config: Config, out_dir: str | Path, *, overwrite: bool = False,
        progress: Callable[[int, int, dict], None] | None = None,
        log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run a whole federation, writing the run directory; returns the summary dict."""
    out = prepare_run_dir(out_dir, overwrite=overwrite)
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    federation = Federation.build(config)
    write_yaml(out / "config.yaml", config.to_dict())
    write_json(out / "partition.json", federation.partition)
    counts = federation.parameter_counts()
    for arch, n in counts["local_model_parameters"].items():
        log(f"local model {arch}: {n:,} parameters")
    for key, value in counts.items():
        if key != "local_model_parameters":
            log(f"{key}: {value:,}" if isinstance(value, int) else f"{key}: {value}")

    store = ClientStore(federation)
    server_state, broadcast = federation.algorithm.init_server(federation.context)
    metrics = MetricsWriter(out / "metrics.csv")
    history: list[dict[str, Any]] = []
    client_accuracies: list[float] = []
    for round_index in range(1, config.rounds + 1):
        server_state, broadcast, result = run_round(federation, store, server_state, broadcast, round_index)
        if round_index % config.eval_every == 0 or round_index == config.rounds:
            client_accuracies = evaluate_clients(federation, store, broadcast)
            row = {"round": round_index, **summarize(client_accuracies), "train_loss": result.train_loss,
                   "wall_s": time.perf_counter() - started}
            metrics.write(row)
            history.append(row)
            if progress is not None:
                progress(round_index, config.rounds, row)
        elif progress is not None:
            progress(round_index, config.rounds, {})

    best = max(history, key=lambda row: row["mean_acc"])
    summary = {
        "algorithm": config.algorithm,
        "dataset": config.dataset.name,
        "num_clients": config.num_clients,
        "rounds": config.rounds,
        "seed": config.seed,
        "final_accuracy": history[-1]["mean_acc"],
        "final_std": history[-1]["std_acc"],
        "best_accuracy": best["mean_acc"],
        "best_round": int(best["round"]),
        "wall_seconds": time.perf_counter() - started,
        **counts,
        "client_accuracies": client_accuracies,
    }
    write_json(out / "summary.json", summary)
    return summary
