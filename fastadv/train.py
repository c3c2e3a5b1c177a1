"""The one Trainer: SGD + cosine schedule, AMP, channels_last, compile, checkpoints, JSONL log.

It reads like the algorithm: for each batch, `loss, stats = method(model, x, y)`, one
optimizer step. The method (std / adv / adv-plus / ...) is opaque to it. Resume is exact
on the CPU: the sampler and the augmentation are pure functions of (seed, epoch, index),
and the RNG state that attacks draw from is saved in every checkpoint.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from fastadv.checkpoint import CHECKPOINT_NAME, check_compatible, fingerprint, load_checkpoint, save_checkpoint
from fastadv.config import Config, to_toml
from fastadv.data import build_dataset, build_loader
from fastadv.data.subset import IndexSubset, stratified_holdout
from fastadv.errors import FastadvError, NonFiniteLossError
from fastadv.methods import EpochContext, build_method
from fastadv.models import build_model, predict_k
from fastadv.runtime import amp_dtype, autocast, maybe_compile, prepare_model, resolve_device, to_device


def cosine_lr(step: int, total_steps: int, base_lr: float, min_ratio: float, warmup_steps: int = 0) -> float:
    """Linear warm-up, then cosine annealing from base_lr to base_lr * min_ratio (per step)."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    floor = base_lr * min_ratio
    return floor + 0.5 * (base_lr - floor) * (1 + math.cos(math.pi * progress))


def train_step(method, model: torch.nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               x: torch.Tensor, y: torch.Tensor, device: torch.device, amp: torch.dtype | None,
               where: str = "") -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One optimizer step of `method` (attack included); refuses a NaN/inf loss before the update.

    Shared by the Trainer and the benchmark, so `make bench` times exactly this code.
    """
    model.train()
    with autocast(device, amp):
        loss, stats = method(model, x, y)
    if not torch.isfinite(loss):
        raise NonFiniteLossError(f"the loss became {loss.item()}{where}; training stopped before the update")
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss, stats


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class JsonlLog:
    """Append-only JSON lines; every line is flushed so a killed run keeps its log."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0
    skipped_images: int = 0


class Trainer:
    def __init__(self, cfg: Config, resume: str | Path | None = None) -> None:
        self.cfg = cfg
        self.out_dir = Path(cfg.train.out_dir)
        self.device = resolve_device(cfg.train.device)
        self.amp = amp_dtype(cfg.train.amp, self.device)
        torch.manual_seed(cfg.train.seed)
        self.train_set = build_dataset(cfg.data, "train")
        if self.train_set.num_classes != cfg.model.num_classes:
            raise FastadvError(
                f"the training data has {self.train_set.num_classes} classes but model.num_classes="
                f"{cfg.model.num_classes}; set model.num_classes={self.train_set.num_classes}"
            )
        self.holdout_set = None
        if cfg.train.holdout_per_class > 0:
            keep, held = stratified_holdout(self.train_set.labels, cfg.train.holdout_per_class, cfg.train.seed)
            # The held-out images are read without augmentation (the split's val transform).
            self.holdout_set = IndexSubset(build_dataset(cfg.data, "train", augment=False), held)
            self.train_set = IndexSubset(self.train_set, keep)
        self.model = prepare_model(build_model(cfg.model), self.device, cfg.train.channels_last)
        self.run_model = maybe_compile(self.model, cfg.train.compile, cfg.train.compile_mode, self.device)
        o = cfg.optim
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.method = build_method(cfg)
        self.progress = Progress()
        self.steps_per_epoch = len(self.train_set) // cfg.data.batch_size
        if self.steps_per_epoch < 1:
            raise FastadvError(
                f"data.batch_size={cfg.data.batch_size} is larger than the training set ({len(self.train_set)} images)"
            )
        self.total_steps = o.epochs * self.steps_per_epoch
        if cfg.train.max_steps:
            self.total_steps = min(self.total_steps, cfg.train.max_steps)
        if resume:
            self._resume(resume)
        self.log = JsonlLog(self.out_dir / "train.jsonl")

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    def save(self) -> None:
        method_state = self.method.state_dict() if hasattr(self.method, "state_dict") else None
        eval_weights = self.method.eval_weights() if hasattr(self.method, "eval_weights") else None
        save_checkpoint(self.checkpoint_path, {
            "method": method_state,
            "eval_model": eval_weights,
            "config": self.cfg.to_dict(),
            "fingerprint": fingerprint(self.cfg),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "progress": vars(self.progress).copy(),
            "rng": rng_state(),
        })

    def _resume(self, path: str | Path) -> None:
        ckpt = load_checkpoint(path)
        check_compatible(ckpt, self.cfg, path)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.progress = Progress(**ckpt["progress"])
        if ckpt.get("method") is not None and hasattr(self.method, "load_state_dict"):
            self.method.load_state_dict(ckpt["method"])
        set_rng_state(ckpt["rng"])

    # ------------------------------------------------------------------ the loop
    def fit(self) -> Path:
        cfg, p = self.cfg, self.progress
        self.out_dir.mkdir(parents=True, exist_ok=True)
        (self.out_dir / "config.toml").write_text(to_toml(cfg))
        bar = tqdm(total=self.total_steps, initial=p.step, desc=cfg.name, unit="step",
                   disable=not cfg.train.progress, dynamic_ncols=True)
        window = {"images": 0, "skipped": 0, "start": time.perf_counter()}
        try:
            while p.epoch < cfg.optim.epochs and not self._reached_max_steps():
                loader = build_loader(cfg.data, "train", batch_size=cfg.data.batch_size, shuffle=True,
                                      seed=cfg.train.seed, epoch=p.epoch, start_batch=p.batch_in_epoch,
                                      drop_last=True, dataset=self.train_set, device=self.device)
                for batch in loader:
                    self._train_step(batch, window, bar)
                    if self._reached_max_steps():
                        self.save()
                        break
                else:
                    p.epoch, p.batch_in_epoch = p.epoch + 1, 0
                    self._method_epoch_end()
                    self.save()
                    self.log.write({"event": "epoch_end", "epoch": p.epoch, "step": p.step,
                                    "skipped_images": p.skipped_images})
        finally:
            bar.close()
        self.log.write({"event": "done", "epoch": p.epoch, "step": p.step, "skipped_images": p.skipped_images})
        return self.checkpoint_path

    def _method_epoch_end(self) -> None:
        """The method's optional epoch-end hook (e.g. CFA's calibration and FAWA); its record is logged."""
        hook = getattr(self.method, "on_epoch_end", None)
        if hook is None:
            return
        holdout = self._holdout_batches if self.holdout_set is not None else None
        ctx = EpochContext(epoch=self.progress.epoch, model=self.model, run_model=self.run_model, device=self.device,
                           amp=self.amp, holdout=holdout, all_reduce=lambda t: t)
        record = hook(ctx)
        self.model.train()
        if record:
            self.log.write({"event": "method_epoch_end", "epoch": self.progress.epoch, **record})

    def _holdout_batches(self):
        return build_loader(self.cfg.data, "val", batch_size=self.cfg.data.eval_batch_size, shuffle=False,
                            dataset=self.holdout_set, device=self.device)

    def _reached_max_steps(self) -> bool:
        return bool(self.cfg.train.max_steps) and self.progress.step >= self.cfg.train.max_steps

    def _train_step(self, batch, window: dict[str, Any], bar: tqdm) -> None:
        cfg, p = self.cfg, self.progress
        p.skipped_images += batch.skipped
        window["skipped"] += batch.skipped
        if batch.images.shape[0] == 0:  # every image of this batch failed to decode
            p.batch_in_epoch += 1
            return
        x = to_device(batch.images, self.device, cfg.train.channels_last)
        y = batch.labels.to(self.device, non_blocking=True)
        lr = cosine_lr(p.step, self.total_steps, cfg.optim.lr, cfg.optim.min_lr_ratio, cfg.optim.warmup_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        try:
            loss, stats = train_step(self.method, self.run_model, self.optimizer, self.scaler, x, y, self.device,
                                     self.amp, where=f" at step {p.step + 1} (epoch {p.epoch + 1})")
        except NonFiniteLossError as exc:
            raise NonFiniteLossError(
                f"{exc}, and the last good checkpoint {self.checkpoint_path} is intact. "
                f"Try a lower optim.lr, or train.amp=off if this happened under fp16"
            ) from None
        p.step += 1
        p.batch_in_epoch += 1
        window["images"] += x.shape[0]
        bar.update(1)
        if p.step % cfg.train.log_every == 0 or p.batch_in_epoch == self.steps_per_epoch or self._reached_max_steps():
            self._log(loss, stats, x, y, lr, window, bar)
        if cfg.train.checkpoint_every and p.step % cfg.train.checkpoint_every == 0:
            self.save()

    def _log(self, loss, stats, x, y, lr, window, bar) -> None:
        p = self.progress
        self.model.eval()
        with torch.no_grad(), autocast(self.device, self.amp):
            clean_acc = (predict_k(self.run_model(x), self.cfg.model.num_classes) == y).float().mean()
        self.model.train()
        elapsed = time.perf_counter() - window["start"]
        record = {
            "event": "train", "step": p.step, "epoch": p.epoch + p.batch_in_epoch / self.steps_per_epoch,
            "loss": loss.item(), "clean_acc": clean_acc.item(),
            **{k: v.item() for k, v in stats.items() if v.numel() == 1},
            "lr": lr, "images_per_sec": window["images"] / max(elapsed, 1e-9),
            "skipped_images": window["skipped"],
        }
        if self.device.type == "cuda":
            record["max_memory_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        self.log.write(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}", img_s=f"{record['images_per_sec']:.0f}")
        window.update(images=0, skipped=0, start=time.perf_counter())


def train(cfg: Config, resume: str | Path | None = None) -> Path:
    """Train per `cfg`; returns the checkpoint path. `resume` = checkpoint file or run folder."""
    return Trainer(cfg, resume).fit()
