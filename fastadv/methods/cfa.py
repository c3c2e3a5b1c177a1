"""CFA (Wei et al., CVPR 2023): class-wise calibrated fair adversarial training (docs/reference/methods.md).

Wraps an inner method (PGD-AT, TRADES, or Adv+) and adds:
- CCM: eps_k = (lambda1 + t_k) * eps, with t_k class k's robust accuracy on the training
  adversarial examples of the previous epoch; each sample is attacked with its class's eps.
- CCR (TRADES only): beta_k = (lambda2 + t_k) * beta; per-sample loss / (1 + beta_y).
- FAWA: after each epoch, theta_bar = decay * theta_bar + (1 - decay) * theta, but only when
  the worst-class PGD accuracy on a held-out split (2% per class) reaches a threshold
  (fawa_gate = false: a plain per-epoch EMA). The average is what gets evaluated.
Calibration starts after `warmup_epochs`; FAWA as soon as its gate passes (PKU-ML/CFA).

As the reference code runs it (docs/reference/methods.md), each deliberate difference a named option:
- cfa.normalize_from_start (default true): TRADES+CFA's loss is [CE + beta_y KL] / (1 + beta_y)
  from the first epoch (their b = beta / (1 + beta) at start); false: plain TRADES until CCR starts.
- cfa.ccm_step = "fixed" (default): the CCM attack keeps the base step (eps / 4 of the base eps);
  "scaled": step = ratio * eps_k.
- FAWA's gate evaluates in eval mode (BatchNorm statistics untouched); cfa.fawa_after_warmup =
  true makes FAWA wait for warmup_epochs as well.
- cfa.preset = "paper" (threshold 0.2, decay 0.85) or "code" (0.24, 0.88, begin epoch 10) for the
  fields left at -1.
- The PGD-AT attack's model mode is attack.model_mode: "eval" by default (the same attack as adv
  and adv-plus, so the comparison isolates CFA); their code attacks in "train" mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fastadv.attacks import PGD
from fastadv.attacks.linf import TRAIN_ALPHA_RATIO
from fastadv.config import Config, resolved_cfa
from fastadv.methods.adversarial import AdversarialTraining
from fastadv.methods.base import EpochContext, MethodBase
from fastadv.methods.registry import MethodSpec, method_spec
from fastadv.methods.trades import Trades
from fastadv.models import predict_k
from fastadv.runtime.device import autocast


def calibrated_eps(t: torch.Tensor, eps: float, lambda1: float) -> torch.Tensor:
    """CCM: eps_k = (lambda1 + t_k) * eps, capped at 1 (the whole pixel range)."""
    return ((lambda1 + t) * eps).clamp(max=1.0)


def calibrated_beta(t: torch.Tensor, beta: float, lambda2: float) -> torch.Tensor:
    """CCR: beta_k = (lambda2 + t_k) * beta."""
    return (lambda2 + t) * beta


def fawa_update(average: dict[str, torch.Tensor] | None, weights: dict[str, torch.Tensor],
                decay: float) -> dict[str, torch.Tensor]:
    """theta_bar <- decay * theta_bar + (1 - decay) * theta (the first update copies theta).

    Floating tensors (parameters and BatchNorm statistics) are averaged; integer buffers
    (BatchNorm's batch counter) take the current value.
    """
    if average is None:
        return {k: v.detach().clone() for k, v in weights.items()}
    out = {}
    for k, v in weights.items():
        v = v.detach()
        out[k] = average[k] * decay + v * (1 - decay) if v.is_floating_point() else v.clone()
    return out


def classwise_accuracy(model: nn.Module, batches, attack: PGD | None, num_classes: int, device: torch.device,
                       amp, all_reduce) -> torch.Tensor:
    """Per-class accuracy (clean if attack is None) over `batches`, summed across ranks."""
    correct = torch.zeros(num_classes, device=device)
    total = torch.zeros(num_classes, device=device)
    for batch in batches:
        if len(batch.labels) == 0:
            continue
        x, y = batch.images.to(device), batch.labels.to(device)
        with autocast(device, amp):
            if attack is not None:
                x = attack(model, x, y)
            with torch.no_grad():
                hit = (predict_k(model(x), num_classes) == y).float()
        correct += torch.bincount(y, weights=hit, minlength=num_classes)
        total += torch.bincount(y, minlength=num_classes).float()
    correct, total = all_reduce(correct), all_reduce(total)
    return torch.where(total > 0, correct / total.clamp(min=1), torch.full_like(total, float("nan")))


@dataclass
class ClassWiseCalibration(MethodBase):
    inner: AdversarialTraining | Trades
    num_classes: int
    eps: float
    beta: float = 6.0
    ccm: bool = True
    ccr: bool = True
    fawa: bool = True
    lambda1: float = 0.5
    lambda2: float = 0.5
    warmup_epochs: int = 1
    fawa_threshold: float = 0.2
    fawa_decay: float = 0.85
    fawa_gate: bool = True
    fawa_steps: int = 10
    normalize_from_start: bool = True
    fixed_step: bool = True  # cfa.ccm_step = "fixed"
    fawa_after_warmup: bool = False
    # state (checkpointed)
    epochs_done: int = 0
    t: torch.Tensor | None = None  # last epoch's class-wise robust training accuracy
    correct: torch.Tensor | None = None  # this epoch's running counts
    total: torch.Tensor | None = None
    average: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    @classmethod
    def from_config(cls, cfg: Config, spec: MethodSpec | None = None) -> "ClassWiseCalibration":
        """Wraps the registered method named by spec.inner (adv, adv-plus or trades) and calibrates it."""
        spec, c = spec or method_spec(cfg.method.name), cfg.cfa
        inner = method_spec(spec.inner).build(cfg)
        return cls(inner=inner, num_classes=cfg.model.num_classes, eps=cfg.attack.eps, beta=cfg.method.beta,
                   ccm=c.ccm, ccr=c.ccr and isinstance(inner, Trades), fawa=c.fawa, lambda1=c.lambda1,
                   lambda2=c.lambda2, warmup_epochs=int(resolved_cfa(c, "warmup_epochs")),
                   fawa_threshold=resolved_cfa(c, "fawa_threshold"), fawa_decay=resolved_cfa(c, "fawa_decay"),
                   fawa_gate=c.fawa_gate, fawa_steps=c.fawa_steps, normalize_from_start=c.normalize_from_start,
                   fixed_step=c.ccm_step == "fixed", fawa_after_warmup=c.fawa_after_warmup)

    @property
    def calibrating(self) -> bool:
        return self.epochs_done >= self.warmup_epochs and self.t is not None

    def class_eps(self) -> torch.Tensor | None:
        return calibrated_eps(self.t, self.eps, self.lambda1) if self.ccm and self.calibrating else None

    def base_step(self) -> float:
        """The inner attack's step at the base eps (the reference's fixed 2/255 at 8/255)."""
        step = self.inner.step_size(self.eps) if isinstance(self.inner, Trades) else self.inner.attack.step_size(self.eps)
        return float(step)

    def class_beta(self) -> torch.Tensor | None:
        return calibrated_beta(self.t, self.beta, self.lambda2) if self.ccr and self.calibrating else None

    def _on_device(self, name: str, value: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
        """`value` copied to `device` once per epoch (a host-to-device copy each step would stall the queue)."""
        if value is None:
            return None
        key = (name, device)
        cache = self.__dict__.setdefault("_device_cache", {})
        if key not in cache or cache[key][0] is not self.t:
            cache[key] = (self.t, value.to(device))
        return cache[key][1]

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        eps_k = self._on_device("eps", self.class_eps(), x.device)
        eps = None if eps_k is None else eps_k[y]
        alpha = self.base_step() if eps is not None and self.fixed_step else None
        if isinstance(self.inner, Trades):
            beta_k = self._on_device("beta", self.class_beta(), x.device)
            if beta_k is not None:
                beta = beta_k[y]
            elif self.normalize_from_start:  # their b = beta / (1 + beta) before calibration
                beta = torch.full(y.shape, float(self.beta), device=x.device)
            else:
                beta = None
            loss, stats = self.inner.compute(model, x, y, eps=eps, beta=beta, alpha=alpha)
        else:
            loss, stats = self.inner.compute(model, x, y, eps=eps, alpha=alpha)
        self._count(y, stats["adv_correct"], stats["adversarial"])
        return loss, stats

    def _count(self, y: torch.Tensor, correct: torch.Tensor, mask: torch.Tensor) -> None:
        if self.correct is None:
            self.correct = torch.zeros(self.num_classes, device=y.device)
            self.total = torch.zeros(self.num_classes, device=y.device)
        elif self.correct.device != y.device:  # counts restored from a checkpoint (loaded on the CPU)
            self.correct, self.total = self.correct.to(y.device), self.total.to(y.device)
        # index_add_ with masked weights, not bincount(y[mask]): boolean indexing and bincount's size read sync.
        weight = mask.to(self.total.dtype)
        self.correct.index_add_(0, y, correct.to(weight.dtype) * weight)
        self.total.index_add_(0, y, weight)

    def on_epoch_end(self, ctx: EpochContext) -> dict[str, Any]:
        """t_k from this epoch's counts; FAWA gate and update. Returns what the Trainer logs."""
        record: dict[str, Any] = {}
        if self.total is not None:
            correct, total = ctx.all_reduce(self.correct), ctx.all_reduce(self.total)
            self.t = torch.where(total > 0, correct / total.clamp(min=1), torch.zeros_like(total)).cpu()
            record["train_robust_acc_per_class"] = self.t.tolist()
        self.correct = self.total = None
        self.epochs_done = ctx.epoch
        if self.class_eps() is not None:
            record["eps_per_class"] = self.class_eps().tolist()
        if self.class_beta() is not None:
            record["beta_per_class"] = self.class_beta().tolist()
        if self.fawa and ctx.holdout is not None:
            record.update(self._fawa(ctx))
        return record

    def _fawa(self, ctx: EpochContext) -> dict[str, Any]:
        attack = PGD(eps=self.eps, steps=self.fawa_steps, num_classes=self.num_classes, alpha_ratio=TRAIN_ALPHA_RATIO,
                     head="k")
        was_training = ctx.model.training
        ctx.model.eval()  # the gate must not move BatchNorm's statistics (their validation runs in eval mode)
        try:
            clean = classwise_accuracy(ctx.run_model, ctx.holdout(), None, self.num_classes, ctx.device, ctx.amp,
                                       ctx.all_reduce)
            robust = classwise_accuracy(ctx.run_model, ctx.holdout(), attack, self.num_classes, ctx.device, ctx.amp,
                                        ctx.all_reduce)
        finally:
            ctx.model.train(was_training)
        worst = float(torch.nan_to_num(robust, nan=1.0).min())
        passed = (not self.fawa_gate) or worst >= self.fawa_threshold
        update = passed and (not self.fawa_after_warmup or ctx.epoch >= self.warmup_epochs)
        if update:
            self.average = fawa_update(self.average, ctx.model.state_dict(), self.fawa_decay)
        return {"holdout_clean_acc_per_class": clean.tolist(), "holdout_robust_acc_per_class": robust.tolist(),
                "holdout_worst_class_robust_acc": worst, "fawa_updated": update}

    def eval_weights(self) -> dict[str, torch.Tensor] | None:
        """The FAWA average once it exists: the weights evaluation should use."""
        return self.average

    def state_dict(self) -> dict[str, Any]:
        return {"epochs_done": self.epochs_done, "t": self.t, "correct": self.correct, "total": self.total,
                "average": self.average}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epochs_done, self.t = state["epochs_done"], state["t"]
        self.correct, self.total, self.average = state["correct"], state["total"], state["average"]
