"""The method interface, its no-op hooks, and what the Trainer hands to a method at each epoch end."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol

import torch
from torch import nn


def forward_and_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, op_index: torch.Tensor | None, delta: float,
                     num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The training forward and its (label-augmented) cross-entropy: (loss, logits).

    Module-level with explicit arguments so `fastadv.compiled.call` compiles it as one graph."""
    from fastadv import kernels

    logits = model(x)
    return kernels.label_augmented_ce(logits, y, num_classes, op_index=op_index, delta=delta), logits


class Method(Protocol):
    """`loss, stats = method(model, x, y)`; stats are 0-d tensors (logged) or per-sample tensors."""

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


class MethodBase:
    """Base class of every method: the hooks the Trainer calls unconditionally, as no-ops.

    - on_epoch_end(ctx) -> dict: epoch-end work (e.g. CFA's calibration); a non-empty dict is logged.
    - state_dict() / load_state_dict(state): method state saved in every checkpoint (None: stateless).
    - eval_weights() -> state dict | None: weights evaluation should use (e.g. a weight average).
    - replays: how many optimizer steps the Trainer takes on each minibatch (Free AT: m). The
      Trainer reads it once and runs ceil(optim.epochs / replays) epochs, so the number of
      optimizer steps (and forward/backward passes) matches optim.epochs of plain training.
    - after_backward(): called right after loss.backward() of every step, before the optimizer
      step: the one backward's input gradients are there to read (Free AT updates its delta).
    """

    replays: int = 1

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def on_epoch_end(self, ctx: EpochContext) -> dict[str, Any]:
        return {}

    def state_dict(self) -> dict[str, Any] | None:
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        return None

    def eval_weights(self) -> dict[str, torch.Tensor] | None:
        return None

    def after_backward(self) -> None:
        return None


@dataclass
class EpochContext:
    epoch: int  # epochs completed so far (1 after the first)
    model: nn.Module  # the module that owns the parameters
    run_model: nn.Module  # what to call (possibly compiled)
    device: torch.device
    amp: torch.dtype | None
    holdout: Callable[[], Iterable[Any]] | None  # batches of the held-out split, or None
    all_reduce: Callable[[torch.Tensor], torch.Tensor]  # sum over ranks (identity in one process)
