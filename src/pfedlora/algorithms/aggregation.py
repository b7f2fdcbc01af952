"""Server-side reductions over uploads."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from pfedlora.algorithms.base import FederationContext, Payload, State, Upload


class WeightedMean:
    """A streaming weighted mean of payloads: add one upload at a time, never hold them all."""

    def __init__(self) -> None:
        self._sums: dict[str, torch.Tensor] = {}
        self._total = 0.0

    def add(self, payload: Payload, weight: float) -> None:
        if weight <= 0:
            return
        for name, tensor in payload.items():
            contribution = tensor.detach().to(torch.float64) * weight
            if name in self._sums:
                self._sums[name] += contribution
            else:
                self._sums[name] = contribution
        self._total += weight

    @property
    def total_weight(self) -> float:
        return self._total

    def result(self, like: Payload | None = None) -> Payload:
        """The mean; dtypes follow ``like`` (default float32)."""
        if self._total <= 0:
            raise ValueError("weighted mean of no uploads")
        out = {}
        for name, total in self._sums.items():
            dtype = like[name].dtype if like is not None and name in like else torch.float32
            out[name] = (total / self._total).to(dtype)
        return out


def weighted_mean(uploads: Iterable[Upload], like: Payload | None = None) -> Payload:
    """FedAvg: the mean of the uploads' payloads weighted by their sample counts."""
    mean = WeightedMean()
    for upload in uploads:
        mean.add(upload.payload, upload.weight)
    return mean.result(like)


def fedavg_aggregate(ctx: FederationContext, server_state: State, uploads: list[Upload]) -> tuple[State, Payload]:
    """``aggregate`` for algorithms whose server state is the FedAvg of the uploads (and the broadcast).

    No uploads: the previous global state is kept.
    """
    if not uploads:
        return server_state, dict(server_state)
    averaged = weighted_mean(uploads, like=server_state)
    return averaged, dict(averaged)
