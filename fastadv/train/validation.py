"""Robust validation while training (docs/guides/watching.md): clean and PGD accuracy per class on a
fixed set of images, every train.validate_every steps (0 = each epoch end), logged as
{"event": "validation"} records, and the best.pt criterion.

It runs fastadv eval's own code path (eval.evaluate._predict over distributed.BatchShard batches,
the RNG seeded per batch from eval.seed, the PGD setting built by eval.suites with
eval.steps = train.validate_steps, K-class head), so its numbers equal `fastadv eval RUN
--set eval.steps=<validate_steps>` on the same images and weights. It forks the RNG: training
draws the same random numbers with validation on or off, and resume stays exact.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch

from fastadv.config import Config
from fastadv.data import build_dataset, build_loader
from fastadv.data.eval_subset import select_subset
from fastadv.data.subset import IndexSubset
from fastadv.errors import FastadvError
from fastadv.eval.evaluate import _predict
from fastadv.eval.suites import CLEAN, clean_setting, pgd_settings
from fastadv.runtime import distributed
from fastadv.runtime.device import to_device

# best.pt criteria: name -> the validation record's field it maximizes
CRITERIA = {"robust_acc": "robust_acc", "worst_class_robust_acc": "worst_class_robust_acc"}
GRID_IMAGES = 8  # images in the clean / adversarial / perturbation grid handed to the sinks


def validation_split(cfg: Config) -> str:
    """"holdout", "val" or "off" (auto: the held-out split when there is one)."""
    v = cfg.train.validate
    if v == "auto":
        return "holdout" if cfg.train.holdout_per_class > 0 else "off"
    return v


def best_criterion(cfg: Config) -> str | None:
    """The best.pt criterion, or None (off, or auto with validation off)."""
    b = cfg.train.best
    if b == "auto":
        return "robust_acc" if validation_split(cfg) != "off" else None
    if b == "off":
        return None
    if b not in CRITERIA:
        raise FastadvError(f"train.best={b!r} is not one of: auto, off, {', '.join(CRITERIA)}")
    if validation_split(cfg) == "off":
        raise FastadvError(f"train.best={b} needs robust validation: set train.validate=holdout (with "
                           f"train.holdout_per_class) or train.validate=val")
    return b


def class_stats(pred: list[int], true: list[int], num_classes: int) -> dict[str, Any]:
    """Image accuracy, per-class accuracies (None: no image of the class), worst class and class SD."""
    correct, count = [0] * num_classes, [0] * num_classes
    for p, t in zip(pred, true):
        count[t] += 1
        correct[t] += int(p == t)
    per_class = [c / n if n else None for c, n in zip(correct, count)]
    present = torch.tensor([a for a in per_class if a is not None], dtype=torch.float64)
    return {"acc": sum(correct) / max(sum(count), 1), "per_class": per_class,
            "worst": float(present.min()) if len(present) else 0.0,
            "sd": float(present.std(unbiased=False)) if len(present) else 0.0}  # ddof=0, as the report's class SD


class Validator:
    """The fixed validation images and attack of one run; `run(model)` -> the validation record."""

    def __init__(self, cfg: Config, holdout, device: torch.device, amp) -> None:
        self.cfg, self.device, self.amp = cfg, device, amp
        self.where = validation_split(cfg)
        t = cfg.train
        if self.where == "holdout":
            if holdout is None:
                raise FastadvError("train.validate=holdout needs held-out data: set train.holdout_per_class "
                                   "(e.g. 0.02), or train.validate=val for a fixed subset of the validation set")
            dataset = holdout
        else:
            dataset = build_dataset(cfg.data, "val")
        dataset, _ = select_subset(dataset, t.validate_subset, cfg.eval.seed)
        if t.validate_images and len(dataset) > t.validate_images:
            dataset = IndexSubset(dataset, list(range(t.validate_images)))
        self.dataset = dataset
        # eval's settings with this run's validation steps: the same attack object `fastadv eval` builds
        self.vcfg = copy.deepcopy(cfg)
        self.vcfg.eval.steps = t.validate_steps
        self.settings = [clean_setting(self.vcfg), pgd_settings(self.vcfg)[0]]
        self.batch_size = cfg.eval.batch_size or cfg.data.eval_batch_size
        self.seconds = 0.0  # all validations of this process so far
        self.grid: dict[str, torch.Tensor] = {}  # the last validation's first images (sinks draw them)

    def describe(self) -> str:
        t = self.cfg.train
        what = "held-out split of the training set" if self.where == "holdout" else \
            "validation set subset (not the final evaluation)"
        return f"{what}: {len(self.dataset)} images{', subset ' + t.validate_subset if t.validate_subset else ''}"

    def run(self, model: torch.nn.Module, eval_weights: dict[str, Any] | None = None,
            grid: bool = False) -> dict[str, Any]:
        """Clean and PGD per class on the fixed images (eval mode; `eval_weights`: what `fastadv eval`
        would load instead of the training weights, e.g. the EMA / FAWA average)."""
        start = time.perf_counter()
        was_training = model.training
        if eval_weights is not None:
            model = copy.deepcopy(model)
            model.load_state_dict(eval_weights)
        model.eval()
        cuda = [self.device] if self.device.type == "cuda" else []
        out: dict[str, Any] = {"event": "validation", "split": self.where, "images": len(self.dataset),
                               "attack": self.settings[1].title, **{k: v for k, v in self.settings[1].fields.items()
                                                                    if k in ("eps", "steps", "alpha", "head")}}
        try:
            with torch.random.fork_rng(devices=cuda):
                shard = distributed.BatchShard(self.dataset, self.batch_size, self.cfg.eval.seed)
                loader = build_loader(self.cfg.data, "val", batch_size=self.batch_size, shuffle=False,
                                      dataset=shard.dataset, device=self.device)
                for setting, name in zip(self.settings, (CLEAN, "robust")):
                    rows = shard.gather(_predict(model, zip(shard.batch_ids, shard.batches(loader)), setting,
                                                 self.vcfg, self.device, self.amp, False, len(shard.dataset)))
                    s = class_stats(rows["pred"], rows["true"], self.cfg.model.num_classes)
                    out.update({f"{name}_acc": s["acc"], f"worst_class_{name}_acc": s["worst"],
                                f"{name}_class_sd": s["sd"], f"{name}_acc_per_class": s["per_class"]})
                if grid:
                    self._keep_grid(model, loader)
        finally:
            model.train(was_training)
        seconds = time.perf_counter() - start
        self.seconds += seconds
        out["seconds"] = seconds
        return out

    def _keep_grid(self, model, loader) -> None:
        """The first GRID_IMAGES images, their PGD versions and the perturbation (for the sinks' image grids)."""
        if not distributed.is_main():
            return
        batch = next(iter(loader), None)
        if batch is None or batch.images.shape[0] == 0:
            return
        torch.manual_seed(self.cfg.eval.seed)
        x = to_device(batch.images[:GRID_IMAGES], self.device, self.cfg.train.channels_last).float()
        y = batch.labels[:GRID_IMAGES].to(self.device)
        x_adv = self.settings[1].attack(model, x, y).detach().float()
        self.grid = {CLEAN: x.cpu(), "adversarial": x_adv.cpu(), "perturbation": (x_adv - x).cpu()}
