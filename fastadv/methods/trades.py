"""TRADES (Zhang et al. 2019) as yaodongyu/TRADES' trades.py runs it (docs/reference/methods.md):

- the KL attack in eval mode from x + 0.001 N(0, 1), 10 steps of 0.007 at eps 0.031 (step ratio
  0.007 / 0.031 of eps when attack.alpha = 0), projected and clipped to [0, 1];
- then train-mode forwards of x (CE), x' and x again (the KL target), so BatchNorm's statistics
  see the same batches as theirs (method.trades_reference_forwards = false: x and x' only, one
  forward less; the loss value is the same);
- loss = CE(f(x), y) + beta * KL(f(x) || f(x')) averaged over the batch.

With per-sample betas (CFA's CCR, or CFA's normalization from the first epoch) the per-sample loss
is [CE + beta_y KL] / (1 + beta_y) (docs/reference/methods.md). A per-sample CE weight (DAFA) scales CE only,
as rucy74/DAFA's trades_loss does; optim.label_smoothing smooths the CE term only (not the KL
term, not the KL attack). The attack's own options: attack.head is honoured (the KL over
the K logits or all K+M), attack.model_mode too; attack.random_start = false and
attack.temperature != 1 are refused by the registry's check (the KL start is Gaussian, and the
KL attack has no temperature).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fastadv.runtime import compiled
from fastadv.attacks import trades_kl_attack
from fastadv.config import Config
from fastadv.methods.base import MethodBase
from fastadv.methods.registry import MethodSpec
from fastadv.models import predict_k

TRADES_ALPHA_RATIO = 0.007 / 0.031  # their step at their eps; attack.alpha = 0 scales it with eps


def trades_loss(logits_clean: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor, num_classes: int,
                beta: float | torch.Tensor, normalize: bool = False, kl_target: torch.Tensor | None = None,
                ce_weight: torch.Tensor | None = None, label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean over the batch of CE(clean) + beta * KL(softmax(target) || softmax(adv)), over K logits.

    kl_target: the clean logits the KL compares with (their code's second clean forward; default
    logits_clean). ce_weight: a per-sample weight of the CE term (DAFA). label_smoothing
    (optim.label_smoothing): smooths the natural CE term only, never the KL term or the KL attack.
    """
    clean = logits_clean[:, :num_classes].float()
    adv = logits_adv[:, :num_classes].float()
    target = clean if kl_target is None else kl_target[:, :num_classes].float()
    ce = F.cross_entropy(clean, y, reduction="none", label_smoothing=label_smoothing)
    if ce_weight is not None:
        ce = ce * ce_weight
    log_p_target = F.log_softmax(target, dim=1)
    kl = (log_p_target.exp() * (log_p_target - F.log_softmax(adv, dim=1))).sum(dim=1)
    per_sample = ce + beta * kl
    if normalize:
        per_sample = per_sample / (1 + beta)
    return per_sample.mean()


def trades_forward_loss(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, num_classes: int,
                        beta: float | torch.Tensor, normalize: bool, reference_forwards: bool,
                        ce_weight: torch.Tensor | None,
                        label_smoothing: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The train-mode forwards (x, x', and x again for their KL target) and the loss: (loss, clean, adv).
    Module-level with explicit arguments so `fastadv.runtime.compiled.call` compiles it as one graph."""
    clean, adv = model(x), model(x_adv)  # train mode (train_step): BatchNorm sees each batch alone
    target = model(x) if reference_forwards else None  # their KL target: a second forward of x
    loss = trades_loss(clean, adv, y, num_classes, beta, normalize=normalize, kl_target=target, ce_weight=ce_weight,
                       label_smoothing=label_smoothing)
    return loss, clean, adv


@dataclass
class Trades(MethodBase):
    eps: float
    steps: int
    num_classes: int
    beta: float = 6.0
    alpha: float | None = None  # the attack's step, or (exactly one of the two)
    alpha_ratio: float | None = None  # step = alpha_ratio * eps (per sample when eps is per sample)
    init_std: float = 0.001
    reference_forwards: bool = True  # x, x', x in train mode (their code); false: x, x'
    head: str = "k"  # the KL attack's logits: "k" or "all" (identical when M = 0)
    model_mode: str = "eval"  # the model's mode during the KL attack (theirs: eval)
    label_smoothing: float = 0.0  # optim.label_smoothing: the natural CE term only

    def __post_init__(self) -> None:
        if (self.alpha is None) == (self.alpha_ratio is None):
            raise ValueError("Trades: give exactly one of alpha and alpha_ratio")

    @classmethod
    def from_config(cls, cfg: Config, spec: MethodSpec | None = None) -> "Trades":
        """attack.alpha = 0 means their 0.007 at 0.031, i.e. step = (0.007 / 0.031) * eps."""
        a, m = cfg.attack, cfg.method
        step = {"alpha": a.alpha} if a.alpha > 0 else {"alpha_ratio": TRADES_ALPHA_RATIO}
        return cls(eps=a.eps, steps=a.steps, num_classes=cfg.model.num_classes, beta=m.beta,
                   init_std=m.trades_init_std, reference_forwards=m.trades_reference_forwards, head=a.head,
                   model_mode=a.model_mode, label_smoothing=cfg.optim.label_smoothing, **step)

    def step_size(self, eps: float | torch.Tensor) -> float | torch.Tensor:
        return self.alpha if self.alpha is not None else eps * self.alpha_ratio

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return self.compute(model, x, y)

    def compute(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor | None = None,
                beta: torch.Tensor | None = None, alpha: float | torch.Tensor | None = None,
                ce_weight: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-sample eps [B] (CCM), beta [B] (CCR: also normalizes by 1 + beta_y), attack step
        (scalar or [B]; None = step_size(eps)) and CE weight [B] (DAFA)."""
        eps_used = self.eps if eps is None else eps
        x_adv = trades_kl_attack(model, x, eps=eps_used, alpha=self.step_size(eps_used) if alpha is None else alpha,
                                 steps=self.steps, num_classes=self.num_classes, init_std=self.init_std,
                                 head=self.head, model_mode=self.model_mode)
        loss, clean, adv = compiled.call(trades_forward_loss, model, x, x_adv, y, self.num_classes,
                                         self.beta if beta is None else beta, beta is not None,
                                         self.reference_forwards, ce_weight, float(self.label_smoothing))
        correct_clean = predict_k(clean.detach(), self.num_classes) == y
        correct_adv = predict_k(adv.detach(), self.num_classes) == y
        return loss, {"train_acc": correct_clean.float().mean(), "adv_acc": correct_adv.float().mean(),
                      "adv_correct": correct_adv, "adversarial": torch.ones_like(correct_adv),
                      "train_logits": adv.detach()}
