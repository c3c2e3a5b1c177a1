"""Std: clean training with the plain one-hot label."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fastadv.runtime import compiled
from fastadv.config import Config
from fastadv.methods.base import MethodBase, forward_and_loss
from fastadv.methods.registry import MethodSpec
from fastadv.models import predict_k


@dataclass
class StandardTraining(MethodBase):
    num_classes: int
    label_smoothing: float = 0.0  # optim.label_smoothing

    @classmethod
    def from_config(cls, cfg: Config, spec: MethodSpec | None = None) -> "StandardTraining":
        return cls(num_classes=cfg.model.num_classes, label_smoothing=cfg.optim.label_smoothing)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, logits = compiled.call(forward_and_loss, model, x, y, None, 0.0, self.num_classes,
                                     float(self.label_smoothing))
        acc = (predict_k(logits.detach(), self.num_classes) == y).float().mean()
        return loss, {"train_acc": acc}
