"""TRADES (Zhang et al. 2019): CE on clean images + beta * KL(f(x) || f(x')).

With per-sample betas (CFA's CCR) the per-sample loss is normalized:
[CE(f(x), y) + beta_y KL(f(x) || f(x'))] / (1 + beta_y)   (REFERENCE.md §7).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fastadv.attacks import trades_kl_attack
from fastadv.attacks.linf import TRAIN_ALPHA_RATIO
from fastadv.config import Config
from fastadv.methods.base import MethodBase
from fastadv.methods.registry import MethodSpec
from fastadv.models import predict_k


def trades_loss(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, num_classes: int,
                beta: float | torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """Mean over the batch of CE(clean) + beta * KL(softmax(clean) || softmax(adv)), over K logits."""
    clean = logits_clean[:, :num_classes].float()
    adv = logits_adv[:, :num_classes].float()
    ce = F.cross_entropy(clean, y, reduction="none")
    log_p_clean = F.log_softmax(clean, dim=1)
    kl = (log_p_clean.exp() * (log_p_clean - F.log_softmax(adv, dim=1))).sum(dim=1)
    per_sample = ce + beta * kl
    if normalize:
        per_sample = per_sample / (1 + beta)
    return per_sample.mean()


@dataclass
class Trades(MethodBase):
    eps: float
    steps: int
    num_classes: int
    beta: float = 6.0
    alpha: float | None = None  # the attack's step, or (exactly one of the two)
    alpha_ratio: float | None = None  # step = alpha_ratio * eps (per sample when eps is per sample)
    init_std: float = 0.001

    def __post_init__(self) -> None:
        if (self.alpha is None) == (self.alpha_ratio is None):
            raise ValueError("Trades: give exactly one of alpha and alpha_ratio")

    @classmethod
    def from_config(cls, cfg: Config, spec: MethodSpec | None = None) -> "Trades":
        """attack.alpha = 0 means the documented eps / 4 (fastadv.attacks.training_attack's rule)."""
        a, m = cfg.attack, cfg.method
        step = {"alpha": a.alpha} if a.alpha > 0 else {"alpha_ratio": TRAIN_ALPHA_RATIO}
        return cls(eps=a.eps, steps=a.steps, num_classes=cfg.model.num_classes, beta=m.beta,
                   init_std=m.trades_init_std, **step)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.compute(model, x, y)

    def compute(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor | None = None,
                beta: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-sample eps [B] (CCM) and per-sample beta [B] (CCR: also normalizes by 1 + beta_y)."""
        eps_used = self.eps if eps is None else eps
        alpha = self.alpha if self.alpha is not None else eps_used * self.alpha_ratio
        x_adv = trades_kl_attack(model, x, eps=eps_used, alpha=alpha, steps=self.steps,
                                 num_classes=self.num_classes, init_std=self.init_std)
        clean, adv = model(x), model(x_adv)  # two passes, as TRADES' code: BatchNorm sees each batch alone
        loss = trades_loss(clean, adv, y, self.num_classes, self.beta if beta is None else beta, normalize=beta is not None)
        correct_clean = predict_k(clean.detach(), self.num_classes) == y
        correct_adv = predict_k(adv.detach(), self.num_classes) == y
        return loss, {"train_acc": correct_clean.float().mean(), "adv_acc": correct_adv.float().mean(),
                      "adv_correct": correct_adv, "adversarial": torch.ones_like(correct_adv)}
