"""Per-class statistics exchanged by FD, FedProto, FedGH, FedTGP and FedL2G.

In FD, FedProto and FedGH a client's per-class quantity travels as a ``[num_classes, d]`` tensor of
means plus a ``[num_classes]`` tensor of sample counts; count 0 means the client has no sample of
that class (its row is zero and carries no information). FedTGP and FedL2G use no counts beyond
"held or not", so they send only the held rows and their class indices (:func:`held_rows`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from pfedlora.algorithms.base import TrainStats, Upload
from pfedlora.metrics import flops as flop_count
from pfedlora.metrics.accuracy import pass_slices


@torch.inference_mode()
def class_means(
    features: Callable[[torch.Tensor], torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    num_classes: int,
    batch_size: int = 1024,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class means of ``features(x)`` and per-class counts, in one pass over ``x``."""
    sums: torch.Tensor | None = None
    counts = torch.zeros(num_classes, dtype=torch.float64, device=y.device)
    # index_add_ adds the rows one by one in order, so the sums do not depend on the chunking
    for rows in pass_slices(int(y.shape[0]), batch_size, x):
        values = features(x[rows]).to(torch.float64)
        labels = y[rows]
        if sums is None:
            sums = torch.zeros(num_classes, values.shape[1], dtype=torch.float64, device=values.device)
        sums.index_add_(0, labels, values)
        counts += torch.bincount(labels, minlength=num_classes).to(torch.float64)
    if sums is None:
        raise ValueError("class means of an empty dataset")
    means = sums / counts.clamp(min=1).unsqueeze(1)
    return means.to(torch.float32), counts.to(torch.float32)


class ClassSums:
    """Per-class sums of values a training loss computes anyway (FD's logits, FedProto's
    representations), recorded during the last local epoch only: the statistics the authors collect
    while training, without a pass over the data after it.

    Each sample contributes its value as computed in its mini-batch's forward pass of the last epoch
    (the model as it was just before that mini-batch's update), in float64. Pass :meth:`epoch_started`
    as ``train_epochs(on_epoch=...)`` and call :meth:`record` from the loss.
    """

    def __init__(self, num_classes: int, last_epoch: int) -> None:
        self.num_classes, self.last_epoch = num_classes, last_epoch
        self.active = False
        self.sums: torch.Tensor | None = None
        self.counts: torch.Tensor | None = None

    def epoch_started(self, epoch: int) -> None:
        self.active = epoch == self.last_epoch

    @torch.no_grad()
    def record(self, values: torch.Tensor, labels: torch.Tensor) -> None:
        if not self.active:
            return
        values = values.detach().to(torch.float64)
        if self.sums is None:
            self.sums = torch.zeros(self.num_classes, values.shape[1], dtype=torch.float64, device=values.device)
            self.counts = torch.zeros(self.num_classes, dtype=torch.float64, device=values.device)
        self.sums.index_add_(0, labels, values)
        self.counts += torch.bincount(labels, minlength=self.num_classes).to(torch.float64)

    def means(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(means, counts) as :func:`class_means` returns them; None when nothing was recorded."""
        if self.sums is None or self.counts is None:
            return None
        means = self.sums / self.counts.clamp(min=1).unsqueeze(1)
        return means.to(torch.float32), self.counts.to(torch.float32)


def average_class_means(
    uploads: Iterable[Upload],
    means_key: str,
    counts_key: str,
    *,
    by_samples: bool,
    previous: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average per-class means over the uploads that hold each class.

    ``by_samples=True`` weights a client's mean of class c by its count of c (the mean over all
    samples of c); ``False`` weights every client that holds c equally. Classes no upload holds get
    count 0 and a zero row, or keep their row from ``previous`` (means, counts) when given.
    Returned counts are the total samples of each class behind the average.
    """
    total: torch.Tensor | None = None
    weights: torch.Tensor | None = None
    counts: torch.Tensor | None = None
    for upload in uploads:
        means = upload.payload[means_key].to(torch.float64)
        class_counts = upload.payload[counts_key].to(torch.float64)
        weight = class_counts if by_samples else (class_counts > 0).to(torch.float64)
        if total is None:
            total, weights, counts = torch.zeros_like(means), torch.zeros_like(weight), torch.zeros_like(weight)
        total += means * weight.unsqueeze(1)
        weights += weight
        counts += class_counts
    if total is None:
        if previous is None:
            raise ValueError("class means of no uploads")
        return previous
    average = total / weights.clamp(min=1e-12).unsqueeze(1)
    average, counts = average.to(torch.float32), counts.to(torch.float32)
    absent = counts <= 0
    if previous is not None:
        average[absent], counts[absent] = previous[0][absent], previous[1][absent]
    else:
        average[absent] = 0.0
    return average, counts


def class_rows_problem(rows: torch.Tensor, counts: torch.Tensor, rows_name: str, counts_name: str) -> str | None:
    """Why a per-class upload is malformed, or None: counts must be whole numbers >= 0, and a class
    with count 0 (the client has nothing of it) must carry an all-zero row."""
    if bool((counts < 0).any()) or not torch.equal(counts, counts.round()):
        return f"{counts_name} must be whole numbers >= 0"
    if bool(rows[counts == 0].ne(0).any()):
        return f"{rows_name} has a non-zero row for a class with count 0"
    return None


def held_rows(rows: torch.Tensor, counts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows of the classes with count > 0 and their class indices (int64, ascending): what a
    client sends instead of all ``[num_classes, d]`` rows when the others carry nothing (FedTGP, FedL2G)."""
    held = (counts > 0).nonzero().flatten()
    return rows[held].contiguous(), held.to(torch.int64)


def held_rows_problem(rows: torch.Tensor, classes: torch.Tensor, num_classes: int, rows_name: str,
                      classes_name: str) -> str | None:
    """Why an upload of held rows is malformed, or None: one class index per row, each in
    [0, num_classes), strictly ascending (no class twice)."""
    if int(classes.shape[0]) != int(rows.shape[0]):
        return f"{classes_name} has {int(classes.shape[0])} entries for {int(rows.shape[0])} rows of {rows_name}"
    if classes.numel() and (int(classes.min()) < 0 or int(classes.max()) >= num_classes):
        return f"{classes_name} must be class indices in [0, {num_classes})"
    if bool((classes[1:] <= classes[:-1]).any()):
        return f"{classes_name} must be strictly ascending (each class once)"
    return None


def client_class_means(recorder: ClassSums | None, features: Callable[[torch.Tensor], torch.Tensor],
                       x: torch.Tensor, y: torch.Tensor, num_classes: int, batch_size: int,
                       stats: TrainStats) -> tuple[torch.Tensor, torch.Tensor]:
    """A client's per-class means of ``features``: what ``recorder`` summed during the last local
    epoch, or (no recorder, or nothing recorded) one pass over ``x`` with the trained model, whose
    forward FLOPs are added to ``stats`` (it is the client's work too)."""
    recorded = recorder.means() if recorder is not None else None
    if recorded is not None:
        return recorded
    stats.flops += flop_count.evaluation_flops(features, x, batch_size)
    return class_means(features, x, y, num_classes, batch_size)

