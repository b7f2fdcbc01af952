"""What the distillation baselines (FD, FML, FedKD) share: the KL term and a two-model module."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def distillation_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(softmax(teacher/T) || softmax(student/T)) · T², averaged over the batch.

    The teacher is detached: only the student is pulled toward it. T² keeps gradient magnitudes
    comparable across temperatures (Hinton et al., 2015).
    """
    teacher = F.log_softmax(teacher_logits.detach() / temperature, dim=1)
    student = F.log_softmax(student_logits / temperature, dim=1)
    return F.kl_div(student, teacher, reduction="batchmean", log_target=True) * temperature**2


class ModelPair(nn.Module):
    """A client's private ``local_model`` and its copy of the ``shared_model``, trained together.

    ``forward`` is the private model (what a client is evaluated with).
    """

    def __init__(self, local_model: nn.Module, shared_model: nn.Module) -> None:
        super().__init__()
        self.local_model = local_model
        self.shared_model = shared_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.local_model(x)
