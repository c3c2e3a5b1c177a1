"""The loss every l_inf attack maximizes, and the eps type: below linf.py and early_stop.py, which both use them."""

from __future__ import annotations

import torch

from fastadv import kernels

Eps = float | torch.Tensor  # a scalar, or one eps per sample ([B], class-wise methods)


def attack_loss(logits: torch.Tensor, y: torch.Tensor, num_classes: int, head: str, temperature: float = 1.0) -> torch.Tensor:
    """Mean cross-entropy the attack maximizes: over the K class logits or over all K+M logits.

    temperature != 1 divides the logits first (Temperature-PGD, docs/reference/methods.md).
    """
    if head == "k":
        logits = logits[:, :num_classes]
    if temperature != 1.0:
        logits = logits / temperature
    return kernels.label_augmented_ce(logits, y, num_classes)
