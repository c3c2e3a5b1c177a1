"""The method interface, its no-op hooks, and what the Trainer hands to a method at each epoch end."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Protocol

import torch
import torch.nn.functional as F
from torch import nn


def smoothed_label_augmented_ce(logits: torch.Tensor, y: torch.Tensor, num_classes: int,
                                op_index: torch.Tensor | int | None, delta: float | torch.Tensor,
                                label_smoothing: float, reduction: str = "mean") -> torch.Tensor:
    """Label-augmented cross-entropy with the class part of the target smoothed, in plain torch.

    y~ = concat[(1 - d) ((1 - s) onehot_K(y) + s / K), d onehot_M(j)] (d = delta where j >= 0,
    else 0), loss = -sum y~ log softmax(z) over all K+M logits. With M = 0 (or no op) this is
    F.cross_entropy(z, y, label_smoothing=s). The fused Triton kernel takes a one-hot class target
    only, so smoothing always runs here (autograd through plain torch, on every device).
    """
    logp = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=1)
    nll_class = -logp.gather(1, y.long().view(-1, 1)).squeeze(1)
    uniform = -logp[:, :num_classes].mean(dim=1)  # -sum_k (1 / K) log p_k over the K classes
    loss = (1 - label_smoothing) * nll_class + label_smoothing * uniform
    if op_index is not None and logits.shape[1] > num_classes:
        ops = torch.as_tensor(op_index, device=logits.device).long().expand(logits.shape[0])
        nll_op = -logp.gather(1, (num_classes + ops.clamp(min=0)).view(-1, 1)).squeeze(1)
        d = torch.as_tensor(delta, dtype=logp.dtype, device=logits.device).expand(logits.shape[0])
        d = torch.where(ops >= 0, d, torch.zeros_like(d))
        loss = (1 - d) * loss + d * nll_op
    if reduction == "none":
        return loss
    return loss.sum() if reduction == "sum" else loss.mean()


def training_ce(logits: torch.Tensor, y: torch.Tensor, num_classes: int, op_index: torch.Tensor | int | None = None,
                delta: float | torch.Tensor = 0.0, label_smoothing: float = 0.0,
                reduction: str = "mean") -> torch.Tensor:
    """The training cross-entropy (optim.label_smoothing = s): never used by an attack.

    s = 0: exactly `kernels.label_augmented_ce` (the fused kernel where it applies, bit-identical to
    the loss without smoothing). s > 0: `smoothed_label_augmented_ce`, the plain-torch path on every
    device, since the fused kernel cannot take a smoothed target."""
    if not label_smoothing:
        from fastadv import kernels

        return kernels.label_augmented_ce(logits, y, num_classes, op_index=op_index, delta=delta, reduction=reduction)
    return smoothed_label_augmented_ce(logits, y, num_classes, op_index, delta, label_smoothing, reduction)


def forward_and_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, op_index: torch.Tensor | None, delta: float,
                     num_classes: int, label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """The training forward and its (label-augmented, optionally smoothed) cross-entropy: (loss, logits).

    Module-level with explicit arguments so `fastadv.runtime.compiled.call` compiles it as one graph."""
    logits = model(x)
    return training_ce(logits, y, num_classes, op_index, delta, label_smoothing), logits


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
