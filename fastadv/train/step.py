"""One optimizer step of a method, shared by the Trainer and the benchmark (`make bench` times it)."""

from __future__ import annotations

import torch

from fastadv.errors import NonFiniteLossError
from fastadv.optim import clip_gradients
from fastadv.runtime import autocast


def train_step(method, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               x: torch.Tensor, y: torch.Tensor, device: torch.device, amp: torch.dtype | None,
               where: str = "", clip_grad_norm: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimizer step of `method` (attack included); refuses a NaN/inf loss before the update."""
    model.train()
    with autocast(device, amp):
        loss, stats = method(model, x, y)
    if not torch.isfinite(loss):
        raise NonFiniteLossError(f"the loss became {loss.item()}{where}; training stopped before the update")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    method.after_backward()  # MethodBase hook: this backward's input gradients are readable here (Free AT)
    clip_gradients(optimizer, scaler, clip_grad_norm)  # unscale_ then clip; a no-op at 0
    scaler.step(optimizer)
    scaler.update()
    return loss, stats
