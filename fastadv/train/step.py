"""One optimizer step of a method, shared by the Trainer and the benchmark (`make bench` times it).

No host sync: the non-finite-loss check is a `FiniteGuard` updated on the device each step
and read where the Trainer syncs anyway (log lines, before every checkpoint save).
"""

from __future__ import annotations

import torch

from fastadv.errors import NonFiniteLossError
from fastadv.train.optim import clip_gradients
from fastadv.runtime import precision
from fastadv.runtime.precision import PrecisionPolicy


class FiniteGuard:
    """Remembers, on the device, the first step whose loss was NaN/inf and that loss.

    `record(loss)` is a few device ops (no sync); `check(where)` reads the flag (one sync) and
    raises NonFiniteLossError naming the first bad step, so a caller that checks before every
    checkpoint save never overwrites the last good checkpoint with a NaN model.
    """

    def __init__(self, first_step: int = 1, records_per_step: int = 1) -> None:
        self.first_step = first_step  # the step number of the first record()
        self.records_per_step = records_per_step  # train_step calls per optimizer-step count (Free AT's replays)
        self._steps = self._first_bad = self._bad_loss = None

    def record(self, loss: torch.Tensor) -> None:
        loss = loss.detach().float().reshape(())
        if self._steps is None:
            self._steps = torch.zeros((), dtype=torch.int64, device=loss.device)
            self._first_bad = torch.full((), -1, dtype=torch.int64, device=loss.device)
            self._bad_loss = torch.zeros((), dtype=torch.float32, device=loss.device)
        new_bad = (~torch.isfinite(loss)) & (self._first_bad < 0)
        self._first_bad = torch.where(new_bad, self._steps, self._first_bad)
        self._bad_loss = torch.where(new_bad, loss, self._bad_loss)
        self._steps = self._steps + 1

    def check(self, where=lambda step: "") -> None:
        """Raise if any recorded loss was non-finite; `where(step)` words the step for the message."""
        if self._first_bad is None:
            return
        first_bad = int(self._first_bad)  # the sync, at a point where the caller syncs anyway
        if first_bad >= 0:
            step = self.first_step + first_bad // self.records_per_step
            raise NonFiniteLossError(f"the loss became {float(self._bad_loss)}{where(step)}; "
                                     "training stopped before the checkpoint was written")


def train_step(method, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               x: torch.Tensor, y: torch.Tensor, device: torch.device, policy: PrecisionPolicy,
               where: str = "", clip_grad_norm: float = 0.0,
               guard: FiniteGuard | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimizer step of `method` (attack included), in the precision `policy` gives each part
    (`fastadv.runtime.precision`: the update's autocast here, the attack's inside the attack loop).

    guard: the non-finite check without a sync (the Trainer's); None: the loss is checked here,
    a host sync, before the update (for callers that check nothing else; `where` words the step).
    """
    model.train()
    with precision.training(policy, device):
        loss, stats = method(model, x, y)
    if guard is not None:
        guard.record(loss)
    elif not torch.isfinite(loss):
        raise NonFiniteLossError(f"the loss became {loss.item()}{where}; training stopped before the update")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    method.after_backward()  # MethodBase hook: this backward's input gradients are readable here (Free AT)
    clip_gradients(optimizer, scaler, clip_grad_norm)  # unscale_ then clip; a no-op at 0
    scaler.step(optimizer)
    scaler.update()
    return loss, stats
