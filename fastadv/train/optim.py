"""Optimizer, learning-rate schedule, gradient clipping and a weights EMA (optim.* in the config).

- sgd: torch.optim.SGD over all parameters, exactly as the paper recipes always did.
- adamw: torch.optim.AdamW (decoupled weight decay) with two groups: decay on weight
  matrices / kernels, none on norms, biases and every other 1-d parameter (the rule of the
  ConvNeXt/DeiT/timm recipes and of Singh et al. 2023's code when their name list is not used).
- (the learning-rate schedule for every optimizer is fastadv.train.schedule.lr_at)
- WeightEma: theta_bar <- d * theta_bar + (1 - d) * theta every step, the averaging rule of
  fastadv.methods.cfa.fawa_update, updated in place.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from fastadv.config import OptimConfig


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """[decayed, not decayed]: no decay on 1-d parameters (norm scales/shifts, biases, LayerScale gammas,
    cls tokens are 3-d and decayed as in timm) and on any `.bias`."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


# Where SGD runs PyTorch's fused kernel (one pass over each parameter for weight decay, momentum and
# the update) instead of its default, decided by measurement (`python -m bench.optimizer_step`): on the
# CPU one ResNet-50 step took 15 ms fused vs 35 ms for the default for-loop and 65 ms for foreach
# (Intel Xeon, 2 cores, PyTorch 2.15), 6-7 % of a standard or Free AT step at 64 px, batch 8. On CUDA
# PyTorch's own default (foreach) stays: not measured on a GPU. Same update rule; the test compares
# the two paths (tests/test_fastpath_overhead.py).
FUSED_SGD_DEVICES = frozenset({"cpu"})


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.Optimizer:
    if cfg.name == "adamw":
        return torch.optim.AdamW(decay_groups(model, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas))
    return sgd(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def sgd(params, **hyper) -> torch.optim.SGD:
    """torch.optim.SGD, fused where FUSED_SGD_DEVICES says it pays (the parameters' device decides)."""
    params = list(params)
    device = params[0].device.type if params else "cpu"
    return torch.optim.SGD(params, fused=True if device in FUSED_SGD_DEVICES else None, **hyper)


def clip_gradients(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler, max_norm: float) -> torch.Tensor | None:
    """Unscale (fp16) and clip the global gradient norm; call between backward and scaler.step."""
    if not max_norm:
        return None
    scaler.unscale_(optimizer)
    params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
    return torch.nn.utils.clip_grad_norm_(params, max_norm)


class WeightEma:
    """Per-step EMA of a model's state dict (parameters and float buffers; integer buffers copied).

    The first update copies the weights, as fastadv.methods.cfa.fawa_update does; the update is
    in place (no per-step allocation) and equals fawa_update (tests/test_models_zoo.py).
    """

    def __init__(self, decay: float) -> None:
        self.decay = decay
        self.average: dict[str, torch.Tensor] | None = None

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        state = model.state_dict()
        if self.average is None:
            self.average = {k: v.detach().clone() for k, v in state.items()}
            return
        for k, v in state.items():
            avg = self.average[k]
            if v.is_floating_point():
                avg.mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                avg.copy_(v)

    def weights(self) -> dict[str, torch.Tensor] | None:
        return self.average

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "average": self.average}

    def load_state_dict(self, state: dict[str, Any], device: torch.device | None = None) -> None:
        avg = state.get("average")
        self.average = None if avg is None else {k: v.to(device) if device else v for k, v in avg.items()}
