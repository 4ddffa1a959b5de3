"""Distillation losses shared by prompt transfer, layer distillation and context compression.

One formula each, so every user of "match the teacher's outputs" computes the same quantity:

* :func:`kl_distillation`: Hinton et al. (2015) soft-target loss,
  ``T^2 * mean_n KL(softmax(t_n / T) || softmax(s_n / T))``, the loss of POST's
  ``absolute_transfer`` (``nn.KLDivLoss(reduction="batchmean")`` on ``[N, V]`` rows times ``T^2``,
  ``sprintml/POST`` ``utils/transfer.py``) and of DistilBERT-style layer distillation.
* :func:`mse_distillation`: POST's ``MSE`` option, ``nn.MSELoss()`` (mean over every element).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _check_pair(student: torch.Tensor, teacher: torch.Tensor) -> None:
    if student.shape != teacher.shape:
        raise ValueError(f"student {tuple(student.shape)} and teacher {tuple(teacher.shape)} must have the same shape")
    if student.ndim != 2:
        raise ValueError(f"expected [N, V] rows (one per position), got {tuple(student.shape)}")


def kl_distillation(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 2.0
) -> torch.Tensor:
    """``T^2`` times the mean over rows of ``KL(teacher || student)`` at temperature ``T``.

    Args:
        student_logits: ``[N, V]`` logits of the model being trained (one row per position).
        teacher_logits: ``[N, V]`` target logits (detached by the caller, or not: both get gradients).
        temperature: ``T > 0``; 2 in POST, 1 for plain answer-token distillation.

    Returns:
        Scalar in nats (times ``T^2``, which keeps gradient magnitudes comparable across
        temperatures); 0 for ``N = 0`` rows, with a graph.

    Raises:
        ValueError: Shapes differ or are not ``[N, V]``; ``temperature <= 0``.
    """
    _check_pair(student_logits, teacher_logits)
    if not temperature > 0:
        raise ValueError(f"temperature={temperature!r} must be > 0")
    if student_logits.shape[0] == 0:
        return student_logits.sum() * 0.0
    log_p_student = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    kl = F.kl_div(log_p_student, log_p_teacher, reduction="batchmean", log_target=True)
    return kl * temperature**2


def mse_distillation(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every element of ``[N, D]`` rows (hidden states or logits).

    Raises:
        ValueError: Shapes differ or are not ``[N, D]``.
    """
    _check_pair(student, teacher)
    if student.shape[0] == 0:
        return student.sum() * 0.0
    return F.mse_loss(student.float(), teacher.float())
