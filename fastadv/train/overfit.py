"""The catastrophic-overfitting guard (Wong et al. 2020): single-step training can collapse within
an epoch, PGD accuracy falling to ~0 while FGSM accuracy rises. Every `every` optimizer steps
(default: once per epoch) the guard measures PGD-10 and FGSM accuracy on one fixed held-out batch
(eval mode, K-class head); it fires when PGD accuracy has fallen by more than `drop` since the last
good check while FGSM accuracy has not fallen. Then it logs, warns on the console and, per
train.on_overfit, keeps going ("warn"), stops ("stop"), or restores the model and optimizer of the
last good check and stops ("rollback"). train.on_overfit = "auto" guards the methods whose spec is
single_step and leaves the others alone.
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fastadv.attacks import PGD
from fastadv.config import Config
from fastadv.methods.registry import method_spec
from fastadv.models import predict_k


def guard_action(cfg: Config) -> str:
    """"off", "warn", "stop" or "rollback" (auto: warn for single-step methods, else off)."""
    action = cfg.train.on_overfit
    if action == "auto":
        return "warn" if method_spec(cfg.method.name).single_step else "off"
    return action


def collapsed(good: dict[str, float] | None, now: dict[str, float], drop: float) -> bool:
    """The documented signature: PGD accuracy falls by more than `drop` while FGSM accuracy does not fall."""
    return good is not None and now["pgd_acc"] < good["pgd_acc"] - drop and now["fgsm_acc"] >= good["fgsm_acc"]


@dataclass
class OverfitGuard:
    action: str  # warn | stop | rollback
    every: int  # optimizer steps between checks
    drop: float
    eps: float
    num_classes: int
    x: torch.Tensor
    y: torch.Tensor
    good: dict[str, float] | None = None  # the last good check's accuracies
    good_state: dict[str, Any] | None = field(default=None, repr=False)  # its model + optimizer (rollback)

    def due(self, step: int) -> bool:
        return step % self.every == 0

    def measure(self, model: nn.Module, run_model: nn.Module) -> dict[str, float]:
        was_training = model.training
        model.eval()
        try:
            pgd = PGD(eps=self.eps, steps=10, alpha_ratio=0.25, num_classes=self.num_classes, head="k")
            fgsm = PGD(eps=self.eps, steps=1, alpha_ratio=1.0, random_start=False, num_classes=self.num_classes,
                       head="k")
            out = {}
            for name, attack in (("pgd_acc", pgd), ("fgsm_acc", fgsm)):
                x_adv = attack(run_model, self.x, self.y)
                with torch.no_grad():
                    out[name] = float((predict_k(run_model(x_adv), self.num_classes) == self.y).float().mean())
            return out
        finally:
            model.train(was_training)

    def check(self, model: nn.Module, run_model: nn.Module, optimizer: torch.optim.Optimizer,
              decide=lambda verdict: verdict) -> tuple[dict[str, Any], bool]:
        """(the log record, whether training must stop). `decide` makes every rank follow rank 0."""
        now = self.measure(model, run_model)
        fired = bool(decide(collapsed(self.good, now, self.drop)))
        record: dict[str, Any] = {"event": "overfit_check", **now, "collapsed": fired}
        if not fired:
            self.good = now
            if self.action == "rollback":
                self.good_state = {"model": copy.deepcopy(model.state_dict()),
                                   "optimizer": copy.deepcopy(optimizer.state_dict())}
            return record, False
        record.update(action=self.action, last_good=self.good)
        print(f"fastadv: WARNING catastrophic overfitting: PGD-10 accuracy on the held-out batch fell from "
              f"{self.good['pgd_acc']:.3f} to {now['pgd_acc']:.3f} while FGSM accuracy went "
              f"{self.good['fgsm_acc']:.3f} -> {now['fgsm_acc']:.3f} (train.on_overfit={self.action})",
              file=sys.stderr, flush=True)
        if self.action == "rollback" and self.good_state is not None:
            model.load_state_dict(self.good_state["model"])
            optimizer.load_state_dict(self.good_state["optimizer"])
            record["rolled_back"] = True
        return record, self.action in ("stop", "rollback")


def build_guard(cfg: Config, dataset, steps_per_epoch: int, device: torch.device) -> OverfitGuard | None:
    """The guard of this run, or None (off). `dataset`: the held-out split, or None for the val split."""
    action = guard_action(cfg)
    if action == "off":
        return None
    from fastadv.data import build_loader

    n = cfg.train.overfit_images
    loader = build_loader(cfg.data, "val", batch_size=n, shuffle=False, dataset=dataset, device=device)
    batch = next(iter(loader))
    return OverfitGuard(action=action, every=cfg.train.overfit_every or steps_per_epoch, drop=cfg.train.overfit_drop,
                        eps=cfg.attack.eps, num_classes=cfg.model.num_classes, x=batch.images[:n].to(device),
                        y=batch.labels[:n].to(device))
