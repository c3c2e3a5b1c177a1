"""Single-step adversarial training at ~FGSM cost (docs/reference/methods.md), with or without label augmentation.

- FGSM-RS (Wong, Rice & Kolter 2020, "Fast is better than free"): delta ~ U(-eps, eps), one signed
  step of 1.25 eps, projected to the eps-ball and [0, 1]; then the usual training step. It is
  AdversarialTraining with a one-step PGD, so Adv+'s label-augmented target applies unchanged.
- Free AT (Shafahi et al. 2019): each minibatch is trained `replays` = m times; every replay's one
  backward gives the weight gradient (optimizer step) and the input gradient, and
  delta <- clip(delta + alpha sign(grad_delta), -eps, eps) is carried to the next replay and the
  next minibatch (delta starts at 0, alpha = eps, the input clipped to [0, 1]: their code).
  The Trainer runs ceil(optim.epochs / m) epochs (MethodBase.replays).
  One backward serves the attack and the weights, so optim.label_smoothing cannot stay off during
  the attack: the registry refuses it for free / free-plus (FGSM-RS smooths its training CE only).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fastadv import kernels
from fastadv.attacks import PGD
from fastadv.config import Config
from fastadv.methods.adversarial import AdversarialTraining
from fastadv.methods.base import MethodBase
from fastadv.methods.registry import MethodSpec
from fastadv.models import predict_k

FGSM_RS_ALPHA_RATIO = 1.25  # Wong et al.: step 1.25 eps from the random start


def fgsm_rs_from_config(cfg: Config, spec: MethodSpec) -> AdversarialTraining:
    """FGSM-RS (spec.label_augmented: with Adv+'s target). attack.alpha = 0 means 1.25 eps."""
    a = cfg.attack
    step = {"alpha": a.alpha} if a.alpha > 0 else {"alpha_ratio": FGSM_RS_ALPHA_RATIO}
    attack = PGD(eps=a.eps, steps=1, num_classes=cfg.model.num_classes, random_start=True, head=a.head,
                 temperature=a.temperature, model_mode=a.model_mode, **step)
    return AdversarialTraining(attack=attack, num_classes=cfg.model.num_classes,
                               delta=cfg.method.delta if spec.label_augmented else 0.0,
                               op_index=cfg.method.op_index, clean_fraction=cfg.method.clean_fraction,
                               label_smoothing=cfg.optim.label_smoothing)


@dataclass
class FreeAdversarialTraining(MethodBase):
    eps: float
    alpha: float
    num_classes: int
    replays: int = 4
    delta: float = 0.0  # label-augmentation weight (0 = plain label; > 0 = Free+, Adv+'s target)
    op_index: int = 0
    noise: torch.Tensor | None = field(default=None, repr=False)  # the carried perturbation (checkpointed)
    _leaf: torch.Tensor | None = field(default=None, repr=False)

    @classmethod
    def from_config(cls, cfg: Config, spec: MethodSpec) -> "FreeAdversarialTraining":
        """attack.alpha = 0 means alpha = eps (their fgsm_step = clip_eps)."""
        a = cfg.attack
        return cls(eps=a.eps, alpha=a.alpha if a.alpha > 0 else a.eps, num_classes=cfg.model.num_classes,
                   replays=cfg.method.replays, delta=cfg.method.delta if spec.label_augmented else 0.0,
                   op_index=cfg.method.op_index)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.noise is None or self.noise.shape != x.shape or self.noise.device != x.device:
            self.noise = torch.zeros_like(x)  # first batch, a resized batch, or restored onto another device
        self._leaf = self.noise.detach().to(x.dtype).requires_grad_(True)
        logits = model((x + self._leaf).clamp(0, 1))
        ops = torch.full_like(y, self.op_index) if self.delta else None
        loss = kernels.label_augmented_ce(logits, y, self.num_classes, op_index=ops, delta=self.delta)
        correct = predict_k(logits.detach(), self.num_classes) == y
        return loss, {"train_acc": correct.float().mean(), "adv_acc": correct.float().mean(),
                      "adv_correct": correct, "adversarial": torch.ones_like(correct)}

    def after_backward(self) -> None:
        """delta <- clip(delta + alpha sign(grad), -eps, eps), from the training backward's input gradient."""
        leaf, self._leaf = self._leaf, None
        if leaf is None or leaf.grad is None:
            return
        grad = torch.nan_to_num(leaf.grad, nan=0.0, posinf=0.0, neginf=0.0)  # an fp16 overflow step moves nothing
        self.noise = (leaf.detach() + self.alpha * grad.sign()).clamp(-self.eps, self.eps)

    def state_dict(self) -> dict[str, Any]:
        return {"noise": self.noise}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.noise = state.get("noise")
