"""Fused kernels behind one dispatcher each: Triton on CUDA tensors, plain torch elsewhere.

The dispatchers below are the only place in fastadv that looks at the device to pick a path.
Until the Triton kernels land (fast-path issue) every device uses the reference.
"""

from __future__ import annotations

import torch

from fastadv.kernels.reference import (
    label_augmented_ce_reference,
    label_augmented_target,
    pgd_update_reference,
    random_start_reference,
)

__all__ = [
    "label_augmented_ce",
    "label_augmented_target",
    "pgd_update",
    "random_start",
]


def pgd_update(x_adv: torch.Tensor, x: torch.Tensor, grad: torch.Tensor, alpha, eps) -> torch.Tensor:
    """x_adv <- clip(clip(x_adv + alpha sign(grad), x - eps, x + eps), 0, 1) (REFERENCE.md §2)."""
    return pgd_update_reference(x_adv, x, grad, alpha, eps)


def random_start(x: torch.Tensor, eps, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform random start inside the eps-ball, clipped to [0, 1]."""
    return random_start_reference(x, eps, generator)


def label_augmented_ce(
    logits: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    op_index=None,
    delta=0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Label-augmented cross-entropy over K+M logits; delta = 0 is plain cross-entropy."""
    return label_augmented_ce_reference(logits, target, num_classes, op_index, delta, reduction)
