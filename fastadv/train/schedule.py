"""The learning-rate schedule: linear warm-up, then cosine annealing, per optimizer step."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from fastadv.config import OptimConfig


def cosine_lr(step: int, total_steps: int, base_lr: float, min_ratio: float, warmup_steps: int = 0) -> float:
    """Linear warm-up, then cosine annealing from base_lr to base_lr * min_ratio (per step)."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    floor = base_lr * min_ratio
    return floor + 0.5 * (base_lr - floor) * (1 + math.cos(math.pi * progress))


def lr_at(step: int, total_steps: int, base_lr: float, cfg: OptimConfig, steps_per_epoch: int = 0) -> float:
    """The learning rate of optimizer step `step` (0-based): warm-up of optim.warmup_steps, or of
    optim.warmup_epochs x steps_per_epoch when warmup_steps is 0, then cosine to min_lr_ratio."""
    warmup = cfg.warmup_steps or round(cfg.warmup_epochs * steps_per_epoch)
    return cosine_lr(step, total_steps, base_lr, cfg.min_lr_ratio, warmup)
