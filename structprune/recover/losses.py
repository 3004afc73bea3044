"""Losses of recovery: cross-entropy with label smoothing, and knowledge distillation from the dense
model (Hinton et al. 2015): KL(softmax(t / T) ‖ softmax(s / T)) · T², mixed with the task loss."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def distillation_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL divergence of the student's softened distribution from the teacher's, times T² so its
    gradients keep their scale as T changes (batch mean).

    >>> logits = torch.randn(4, 10)
    >>> float(distillation_loss(logits, logits, 4.0))
    0.0
    """
    log_student = F.log_softmax(student_logits / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher_logits / temperature, dim=-1)
    kl = F.kl_div(log_student, log_teacher, reduction="batchmean", log_target=True)
    return kl * temperature ** 2


@dataclass(frozen=True)
class RecoveryLoss:
    """(1 − w)·CE(label smoothing) + w·distillation when teacher logits are given, else CE alone."""

    label_smoothing: float = 0.0
    distill_weight: float = 0.0
    temperature: float = 4.0

    def __call__(self, logits: torch.Tensor, targets: torch.Tensor,
                 teacher_logits: torch.Tensor | None = None) -> torch.Tensor:
        task = F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        if teacher_logits is None or self.distill_weight == 0.0:
            return task
        kd = distillation_loss(logits, teacher_logits.detach(), self.temperature)
        return (1.0 - self.distill_weight) * task + self.distill_weight * kd
