"""Classification accuracy of a client's personalized model on its own test split."""

from __future__ import annotations

import statistics
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from pfedlora.config import Config


@torch.inference_mode()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Top-1 accuracy in percent (0..100); 0 for an empty test split."""
    n = int(y.shape[0])
    if n == 0:
        return 0.0
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, n, batch_size):
        logits = model(x[start : start + batch_size])
        correct += int((logits.argmax(dim=1) == y[start : start + batch_size]).sum())
    model.train(was_training)
    return 100.0 * correct / n


def summarize(accuracies: list[float]) -> dict[str, float]:
    """Mean, population std, min and max over clients."""
    return {
        "mean_acc": statistics.fmean(accuracies),
        "std_acc": statistics.pstdev(accuracies) if len(accuracies) > 1 else 0.0,
        "min_acc": min(accuracies),
        "max_acc": max(accuracies),
    }


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
    }
