"""Adv and Adv+: PGD adversarial training, with the plain label (Adv) or the
label-augmented target (Adv+, docs/reference/methods.md: LA): the adversarial example counts as op j
and gets y~ = [(1 - delta) onehot_K(y), delta onehot_M(j)].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from fastadv.runtime import compiled
from fastadv.attacks import PGD, training_attack
from fastadv.config import Config
from fastadv.methods.base import MethodBase, forward_and_loss, training_ce
from fastadv.methods.registry import MethodSpec, method_spec
from fastadv.models import predict_k


@dataclass
class AdversarialTraining(MethodBase):
    attack: PGD
    num_classes: int
    delta: float = 0.0  # 0 = Adv (plain label); > 0 = Adv+
    op_index: int = 0
    clean_fraction: float = 0.0  # the first round(f * B) samples are trained clean, plain label
    label_smoothing: float = 0.0  # optim.label_smoothing: the training CE only, never the attack

    @classmethod
    def from_config(cls, cfg: Config, spec: MethodSpec | None = None) -> "AdversarialTraining":
        """Adv, or Adv+ when the spec is label-augmented (then the target carries method.delta)."""
        spec = spec or method_spec(cfg.method.name)
        return cls(
            attack=training_attack(cfg.attack, cfg.model.num_classes),
            num_classes=cfg.model.num_classes,
            delta=cfg.method.delta if spec.label_augmented else 0.0,
            op_index=cfg.method.op_index,
            clean_fraction=cfg.method.clean_fraction,
            label_smoothing=cfg.optim.label_smoothing,
        )

    def inputs(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor | None = None,
               alpha: float | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The training batch (clean part, then adversarial part) and each sample's op index (-1 = clean)."""
        n_clean = round(self.clean_fraction * x.shape[0])
        if isinstance(alpha, torch.Tensor):
            alpha = alpha[n_clean:]
        x_adv = self.attack(model, x[n_clean:], y[n_clean:], eps=None if eps is None else eps[n_clean:], alpha=alpha)
        ops = torch.full((x.shape[0],), self.op_index, dtype=torch.long, device=x.device)
        ops[:n_clean] = -1
        return (torch.cat([x[:n_clean], x_adv]) if n_clean else x_adv), ops

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.compute(model, x, y)

    def compute(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor | None = None,
                alpha: float | torch.Tensor | None = None,
                sample_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss with an optional per-sample eps [B] (class-wise calibration, CFA), attack step
        (a scalar or [B]; None = the attack's own) and per-sample loss weight [B] (DAFA).

        stats["adv_correct"] is per sample (bool, NaN-free), for class-wise bookkeeping;
        samples trained clean count as not adversarial there (False in stats["adversarial"]).
        """
        x_train, ops = self.inputs(model, x, y, eps, alpha)
        ops_arg = ops if self.delta else None
        if sample_weight is None:
            loss, logits = compiled.call(forward_and_loss, model, x_train, y, ops_arg, float(self.delta),
                                         self.num_classes, float(self.label_smoothing))
        else:
            logits = model(x_train)
            per_sample = training_ce(logits, y, self.num_classes, op_index=ops_arg, delta=self.delta,
                                     label_smoothing=self.label_smoothing, reduction="none")
            loss = (per_sample * sample_weight).mean()
        correct = predict_k(logits.detach(), self.num_classes) == y
        adversarial = ops >= 0
        # A masked mean, not correct[adversarial] (boolean indexing is a host sync): NaN when none is adversarial.
        adv_acc = (correct & adversarial).sum().float() / adversarial.sum().float()
        return loss, {"train_acc": correct.float().mean(), "adv_acc": adv_acc,
                      "adv_correct": correct, "adversarial": adversarial, "train_logits": logits.detach()}
