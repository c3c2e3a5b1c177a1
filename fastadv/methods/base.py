"""The method interface and what the Trainer hands to a method at each epoch end."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol

import torch
from torch import nn


class Method(Protocol):
    """`loss, stats = method(model, x, y)`; stats are 0-d tensors (logged) or per-sample tensors.

    Optional hooks, used when a method has them (the Trainer never checks which method runs):
    - on_epoch_end(ctx: EpochContext) -> dict: epoch-end work; the dict is logged (JSONL).
    - state_dict() / load_state_dict(state): method state saved in every checkpoint.
    - eval_weights() -> state dict | None: weights evaluation should use (e.g. an average).
    """

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


@dataclass
class EpochContext:
    epoch: int  # epochs completed so far (1 after the first)
    model: nn.Module  # the module that owns the parameters
    run_model: nn.Module  # what to call (possibly compiled)
    device: torch.device
    amp: torch.dtype | None
    holdout: Callable[[], Iterable[Any]] | None  # batches of the held-out split, or None
    all_reduce: Callable[[torch.Tensor], torch.Tensor]  # sum over ranks (identity in one process)
