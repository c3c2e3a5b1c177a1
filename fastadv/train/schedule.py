"""The learning-rate schedule: linear warm-up, then cosine annealing, per optimizer step."""

from __future__ import annotations

import math


def cosine_lr(step: int, total_steps: int, base_lr: float, min_ratio: float, warmup_steps: int = 0) -> float:
    """Linear warm-up, then cosine annealing from base_lr to base_lr * min_ratio (per step)."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    floor = base_lr * min_ratio
    return floor + 0.5 * (base_lr - floor) * (1 + math.cos(math.pi * progress))
