"""Classification accuracy of a client's personalized model on its own test split."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from pfedlora.config import Config


# Rows per forward of an inference pass over a client's data on CPU (evaluation, the class
# statistics of FD, FedProto, FedGH and FedTGP). In the run's own process one forward of CNN-2..5
# over 500 rows took 66-72 ms against 39-46 ms in parts of at most 256 (benchmarks/README.md; in the
# workers, which keep freed memory, the difference was not measurable).
# A row's output does not depend on the rows beside it once a forward holds a few dozen rows (bit
# for bit for CNN-1..5 from 37 rows up; 1-7 rows take other kernels and differ in the last bits:
# tests/metrics/test_accuracy.py), so a configured batch above this is cut into near-equal parts of
# at least half of it, and the numbers stay those of the configured batch. On an accelerator the
# configured batch runs as it is.
CPU_PASS_ROWS = 256


def pass_slices(n: int, batch_size: int, x: torch.Tensor) -> Iterator[slice]:
    """The row ranges of one pass over ``n`` rows of ``x`` in batches of ``batch_size``: each batch as it
    is, or on CPU, where it holds more than ``CPU_PASS_ROWS`` rows, cut into that many rows or fewer
    (near-equal parts of at least half of ``CPU_PASS_ROWS``)."""
    for start in range(0, n, batch_size):
        stop = min(start + batch_size, n)
        parts = -(-(stop - start) // CPU_PASS_ROWS) if x.device.type == "cpu" else 1
        bounds = [start + (stop - start) * i // parts for i in range(parts + 1)]
        for low, high in zip(bounds, bounds[1:]):
            yield slice(low, high)


@torch.inference_mode()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024,
             normalize: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float | None:
    """Top-1 accuracy in percent (0..100); None for an empty test split (nothing to measure).
    ``normalize`` turns a batch of stored rows (raw uint8 images) into model input."""
    n = int(y.shape[0])
    if n == 0:
        return None
    was_training = model.training
    model.eval()
    correct = 0
    for rows in pass_slices(n, batch_size, x):
        logits = model(normalize(x[rows]) if normalize is not None else x[rows])
        correct += int((logits.argmax(dim=1) == y[rows]).sum())
    model.train(was_training)
    return 100.0 * correct / n


def measured(accuracies: list[float | None]) -> list[float]:
    """The accuracies of clients that have a test split (None marks one without)."""
    return [a for a in accuracies if a is not None]


def summarize(accuracies: list[float | None]) -> dict[str, float]:
    """Mean, population std, min and max over the clients that have a test split.

    A client with an empty test split (None) is left out rather than counted as 0%;
    :func:`run_summary` says how many were left out.
    """
    accuracies = measured(accuracies)
    if not accuracies:
        nan = float("nan")
        return {"mean_acc": nan, "std_acc": nan, "min_acc": nan, "max_acc": nan}
    return {
        "mean_acc": statistics.fmean(accuracies),
        "std_acc": statistics.pstdev(accuracies) if len(accuracies) > 1 else 0.0,
        "min_acc": min(accuracies),
        "max_acc": max(accuracies),
    }


def mean_metrics(per_client: list[dict[str, float]]) -> dict[str, float]:
    """The mean of each key over the clients' diagnostics (an algorithm's ``evaluation_metrics``), in
    the order the keys first appear; {} when no client reported any."""
    keys = list(dict.fromkeys(key for metrics in per_client for key in metrics))
    return {key: statistics.fmean(float(m[key]) for m in per_client if key in m) for key in keys}


def diagnostics_summary(final: dict[str, float]) -> dict:
    """summary.json's part for the last evaluated round's diagnostics: ``final_<key>`` for each, and
    ``evaluation_metrics``, their names (``compare`` shows them as columns); {} when there are none."""
    if not final:
        return {}
    return {f"final_{key}": value for key, value in final.items()} | {"evaluation_metrics": list(final)}


def run_summary(config: Config, history: list[dict], client_accuracies: list[float], wall_seconds: float) -> dict:
    """The accuracy part of summary.json, shared by every runtime (``history``: metrics rows)."""
    best = max(history, key=lambda row: row["mean_acc"])
    return {
        "algorithm": config.algorithm,
        "dataset": config.dataset.name,
        "num_clients": config.num_clients,
        "rounds": config.rounds,
        "seed": config.seed,
        "final_accuracy": history[-1]["mean_acc"],
        "final_std": history[-1]["std_acc"],
        "best_accuracy": best["mean_acc"],
        "best_round": int(best["round"]),
        "wall_seconds": wall_seconds,
        "client_accuracies": client_accuracies,
        # clients left out of every mean: their test split is empty (their entry above is null)
        "clients_without_test": sum(a is None for a in client_accuracies),
    }
