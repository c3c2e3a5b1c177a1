"""DAFA (Lee et al., ICLR 2024; rucy74/DAFA): distance-aware fair adversarial training.

During epoch `warmup_epochs` (1-based, their `epoch == dafa_warmup`) the softmax of every
training sample's adversarial train-mode forward is accumulated per class; at that epoch's end
p_ij = mean probability of class j over class i's samples, and the class weights become
    w_i = 1 + lam * sum_{j != i: p_ii < p_jj} p_ij p_jj - lam * sum_{j != i: p_ii >= p_jj} p_ji p_ii
(ones before). From then on each sample's eps and attack step are w_y times the base ones and its
loss term is weighted by w_y: the CE of PGD-AT, and TRADES' natural CE (their trades_loss weights
CE only, not the KL term).

Differences from their code, documented: their madry_loss takes a second, unweighted step
projected to the base eps after every weighted one (so eps is not scaled for w > 1); here the
PGD-AT attack is the project's PGD with eps and step scaled by w_y, as the paper describes, from
the uniform random start of attack.random_start (theirs: x + 0.001 N(0, 1)). Per-sample eps and
steps are clamped at >= 0 (a weight below 0, possible for lam > 1, would invert the ball).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fastadv.config import Config
from fastadv.methods.adversarial import AdversarialTraining
from fastadv.methods.base import EpochContext, MethodBase
from fastadv.methods.registry import MethodSpec, method_spec
from fastadv.methods.trades import Trades


def dafa_weights(p: torch.Tensor, lam: float) -> torch.Tensor:
    """Class weights from the class-similarity matrix p [K, K] (vectorized; see dafa_weights_reference)."""
    p = p.double()
    d = p.diagonal()
    below = d[:, None] < d[None, :]  # below[i, j]: p_ii < p_jj (never on the diagonal)
    off = ~torch.eye(p.shape[0], dtype=torch.bool, device=p.device)
    plus = torch.where(below, p * d[None, :], 0).sum(dim=1)  # sum_j p_ij p_jj
    minus = torch.where(~below & off, p.T * d[:, None], 0).sum(dim=1)  # sum_j p_ji p_ii
    return (1 + lam * plus - lam * minus).float()


def dafa_weights_reference(p: torch.Tensor, lam: float) -> torch.Tensor:
    """The double loop of their utils.calculate_class_weights, for tests."""
    k = p.shape[0]
    w = [1.0] * k
    for i in range(k):
        for j in range(k):
            if i == j:
                continue
            if p[i, i] < p[j, j]:
                w[i] += lam * float(p[i, j]) * float(p[j, j])
            else:
                w[i] -= lam * float(p[j, i]) * float(p[i, i])
    return torch.tensor(w)


@dataclass
class ClassWeighting(MethodBase):
    inner: AdversarialTraining | Trades
    num_classes: int
    eps: float
    lam: float = 1.0
    warmup_epochs: int = 70
    # state (checkpointed)
    epochs_done: int = 0
    weights: torch.Tensor | None = None  # [K] after the warm-up epoch, else None (all ones)
    prob_sum: torch.Tensor | None = field(default=None, repr=False)  # [K, K] during the warm-up epoch
    count: torch.Tensor | None = field(default=None, repr=False)

    @classmethod
    def from_config(cls, cfg: Config, spec: MethodSpec | None = None) -> "ClassWeighting":
        spec = spec or method_spec(cfg.method.name)
        return cls(inner=method_spec(spec.inner).build(cfg), num_classes=cfg.model.num_classes, eps=cfg.attack.eps,
                   lam=cfg.dafa.lam, warmup_epochs=cfg.dafa.warmup_epochs)

    def _base_step(self) -> float:
        inner = self.inner
        return float(inner.step_size(self.eps) if isinstance(inner, Trades) else inner.attack.step_size(self.eps))

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        if self.weights is None:
            loss, stats = self.inner.compute(model, x, y)
        else:
            w = self.weights.to(x.device)[y]
            scale = w.clamp(min=0)
            eps, alpha = (scale * self.eps).clamp(max=1.0), scale * self._base_step()
            if isinstance(self.inner, Trades):
                loss, stats = self.inner.compute(model, x, y, eps=eps, alpha=alpha, ce_weight=w)
            else:
                loss, stats = self.inner.compute(model, x, y, eps=eps, alpha=alpha, sample_weight=w)
        if self.epochs_done == self.warmup_epochs - 1:
            self._accumulate(stats["train_logits"], y)
        return loss, {k: v for k, v in stats.items() if k != "train_logits"}

    def _accumulate(self, logits: torch.Tensor, y: torch.Tensor) -> None:
        probs = torch.softmax(logits[:, :self.num_classes].float(), dim=1)
        if self.prob_sum is None or self.prob_sum.device != y.device:
            prev = (None, None) if self.prob_sum is None else (self.prob_sum.to(y.device), self.count.to(y.device))
            self.prob_sum = prev[0] if prev[0] is not None else torch.zeros(self.num_classes, self.num_classes,
                                                                            device=y.device)
            self.count = prev[1] if prev[1] is not None else torch.zeros(self.num_classes, device=y.device)
        self.prob_sum.index_add_(0, y, probs)
        self.count += torch.bincount(y, minlength=self.num_classes).float()

    def on_epoch_end(self, ctx: EpochContext) -> dict[str, Any]:
        self.epochs_done = ctx.epoch
        if ctx.epoch != self.warmup_epochs or self.prob_sum is None:
            return {}
        total, count = ctx.all_reduce(self.prob_sum), ctx.all_reduce(self.count)
        p = (total / count.clamp(min=1)[:, None]).cpu()
        self.weights = dafa_weights(p, self.lam)
        self.prob_sum = self.count = None
        return {"dafa_class_weights": self.weights.tolist(), "dafa_similarity_diag": p.diagonal().tolist(),
                "dafa_classes_unseen": int((count == 0).sum())}

    def state_dict(self) -> dict[str, Any]:
        return {"epochs_done": self.epochs_done, "weights": self.weights, "prob_sum": self.prob_sum, "count": self.count}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs_done, self.weights = state["epochs_done"], state["weights"]
        self.prob_sum, self.count = state["prob_sum"], state["count"]
