"""The one Trainer: SGD + cosine schedule, AMP, channels_last, compile, checkpoints, JSONL log.

It reads like the algorithm: for each batch, `loss, stats = method(model, x, y)`, one
optimizer step. The method (std / adv / adv-plus / ...) is opaque to it. Resume is exact
on the CPU: the sampler and the augmentation are pure functions of (seed, epoch, index),
and the RNG state that attacks draw from is saved in every checkpoint.

Under torchrun (fastadv.distributed) the same loop runs on every rank with DDP: each rank
reads its shard of every global batch (data.batch_size per rank), rank 0 logs and writes the
checkpoint, which holds every rank's RNG state and the epoch position in global samples.
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

from fastadv import distributed
from fastadv.checkpoint import CHECKPOINT_NAME, check_compatible, fingerprint, load_checkpoint, save_checkpoint
from fastadv.config import Config, to_toml
from fastadv.data import build_dataset, build_loader, mix
from fastadv.data.subset import IndexSubset, stratified_holdout
from fastadv.errors import FastadvError, NonFiniteLossError
from fastadv.methods import EpochContext, build_method
from fastadv.models import build_model, predict_k
from fastadv.optim import WeightEma, build_optimizer, clip_gradients, lr_at  # issue 15
from fastadv.runtime import amp_dtype, autocast, maybe_compile, prepare_model, to_device


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
               where: str = "", clip_grad_norm: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
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
    clip_gradients(optimizer, scaler, clip_grad_norm)  # issue 15: unscale_ then clip (no-op at 0)
    scaler.step(optimizer)
    scaler.update()
    return loss, stats


def rng_state(device: torch.device) -> dict[str, Any]:
    """The RNG state the attacks draw from: the CPU generator and the run's GPU."""
    state: dict[str, Any] = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    cuda = state.get("cuda")
    if cuda is not None and device.type == "cuda":
        if isinstance(cuda, (list, tuple)):  # older checkpoints: every visible GPU
            index = device.index or 0
            cuda = cuda[index] if index < len(cuda) else None
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)


class JsonlLog:
    """Append-only JSON lines; every line is flushed so a killed run keeps its log."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path, self.enabled = path, enabled  # enabled on rank 0 only
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
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
        self.dist, self.device = distributed.setup(cfg.train.device, cfg.train.dist_timeout_s)
        world = self.dist.world_size
        self.amp = amp_dtype(cfg.train.amp, self.device)
        # Attacks differ across ranks but repeat run to run; DDP copies rank 0's initial weights.
        torch.manual_seed(distributed.rank_seed(cfg.train.seed, self.dist.rank))
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
        if cfg.train.sync_batchnorm and world > 1:
            if self.device.type != "cuda":
                raise FastadvError("train.sync_batchnorm=true needs CUDA GPUs (PyTorch's SyncBatchNorm has no CPU "
                                   "implementation); set train.sync_batchnorm=false for gloo / CPU runs")
            self.model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        # attack_model: what the attacks, the log and the epoch-end hooks call; run_model: the training
        # forward (under torchrun: compile(DDP(model)), carrying attack_model for the attacks).
        self.attack_model = maybe_compile(self.model, cfg.train.compile, cfg.train.compile_mode, self.device)
        o = cfg.optim
        self.optimizer = build_optimizer(self.model, o)  # issue 15: sgd (as before) | adamw
        self.ema = WeightEma(o.ema_decay) if o.ema_decay else None  # issue 15: evaluated instead of the raw weights
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == torch.float16)
        self.method = build_method(cfg)
        self.progress = Progress()
        self.global_batch = cfg.data.batch_size * world  # data.batch_size is per rank
        self.base_lr = o.lr * distributed.lr_factor(cfg.train.lr_scaling, world)
        self.steps_per_epoch = len(self.train_set) // self.global_batch
        if self.steps_per_epoch < 1:
            raise FastadvError(
                f"the global batch (data.batch_size={cfg.data.batch_size} x {world} rank(s)) is larger than the "
                f"training set ({len(self.train_set)} images)"
            )
        self.total_steps = o.epochs * self.steps_per_epoch
        if cfg.train.max_steps:
            self.total_steps = min(self.total_steps, cfg.train.max_steps)
        self.resumed: dict[str, Any] | None = None
        resume = resume or self._auto_resume()
        if resume:
            self._resume(resume)
        self.run_model = self.attack_model
        if self.dist.active:
            ddp = distributed.wrap_model(self.model, self.attack_model, self.dist)
            self.run_model = maybe_compile(ddp, cfg.train.compile, cfg.train.compile_mode, self.device)
        self.log = JsonlLog(self.out_dir / "train.jsonl", enabled=self.dist.is_main)

    # ------------------------------------------------------------------ checkpoints
    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    def save(self) -> None:
        """Rank 0 writes; every rank must call it (its RNG state and rank-local method state are gathered)."""
        method_state = self.method.state_dict() if hasattr(self.method, "state_dict") else None
        eval_weights = self.method.eval_weights() if hasattr(self.method, "eval_weights") else None
        if self.ema is not None:  # issue 15
            eval_weights = self.ema.weights()
        method_local = distributed.gather_rank_local(method_state)
        rngs = distributed.gather_objects(rng_state(self.device))
        if not self.dist.is_main:
            return
        p = self.progress
        progress = {**vars(p), "samples_in_epoch": p.batch_in_epoch * self.global_batch,
                    "global_batch": self.global_batch, "world_size": self.dist.world_size}
        extra = {"rng_per_rank": rngs, "method_rank_local": method_local} if self.dist.active else {}
        save_checkpoint(self.checkpoint_path, {
            "method": method_state,
            "eval_model": eval_weights,
            "config": self.cfg.to_dict(),
            "fingerprint": fingerprint(self.cfg),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "progress": progress,
            "rng": rngs[0],
            "ema": self.ema.state_dict() if self.ema is not None else None,  # issue 15
            **extra,
        })

    def _auto_resume(self) -> Path | None:
        """The run folder when train.auto_resume or a torchrun restart asks for it and it holds a checkpoint."""
        if not (self.cfg.train.auto_resume or distributed.restart_count() > 0):
            return None
        found = distributed.broadcast_object(self.checkpoint_path.is_file())  # rank 0 decides for all
        return self.out_dir if found else None

    def _resume(self, path: str | Path) -> None:
        """Model, optimizer, progress, method state and RNG; the epoch position moves in global samples.

        Same global batch: the same batches follow (exact). Another global batch: the position
        is rounded down to a whole new global batch (at most one global batch is seen twice) and
        the step counter (hence the lr schedule) is recomputed from it. RNG and rank-local method
        state: rank r takes saved rank r's; a rank the checkpoint lacks starts a fresh seeded
        stream, and at another world size every rank takes rank 0's method state.
        """
        ckpt = load_checkpoint(path)
        check_compatible(ckpt, self.cfg, path)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None and ckpt.get("ema"):  # issue 15
            self.ema.load_state_dict(ckpt["ema"], self.device)
        saved = dict(ckpt["progress"])
        saved_world = saved.pop("world_size", 1)
        saved_batch = saved.pop("global_batch", 0) or ckpt["config"]["data"]["batch_size"]
        samples = saved.pop("samples_in_epoch", saved["batch_in_epoch"] * saved_batch)
        self.progress = p = Progress(**saved)
        if saved_batch != self.global_batch:
            p.batch_in_epoch = samples // self.global_batch
            p.step = p.epoch * self.steps_per_epoch + p.batch_in_epoch
        rank, world = self.dist.rank, self.dist.world_size
        state = ckpt.get("method")
        if state is not None and hasattr(self.method, "load_state_dict"):
            local = ckpt.get("method_rank_local") or {}
            if saved_world == world:
                state = {**state, **{k: v[rank] for k, v in local.items()}}
            self.method.load_state_dict(state)
        rngs = ckpt.get("rng_per_rank") or [ckpt["rng"]]
        if rank < len(rngs):
            set_rng_state(rngs[rank], self.device)
        else:
            torch.manual_seed(mix(self.cfg.train.seed, rank, p.epoch, p.step))
        self.resumed = {"event": "resume", "step": p.step, "epoch": p.epoch, "samples_in_epoch": samples,
                        "world_size": world, "global_batch": self.global_batch,
                        "from_world_size": saved_world, "from_global_batch": saved_batch}

    # ------------------------------------------------------------------ the loop
    def fit(self) -> Path:
        with distributed.failures_named(self.dist):
            return self._fit()

    def _fit(self) -> Path:
        cfg, p = self.cfg, self.progress
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.toml").write_text(to_toml(cfg))
        if self.resumed:
            self.log.write(self.resumed)
        bar = tqdm(total=self.total_steps, initial=p.step, desc=cfg.name, unit="step",
                   disable=not (cfg.train.progress and self.dist.is_main), dynamic_ncols=True)
        window = {"images": 0, "skipped": 0, "start": time.perf_counter()}
        try:
            while p.epoch < cfg.optim.epochs and not self._reached_max_steps():
                loader = build_loader(cfg.data, "train", batch_size=cfg.data.batch_size, shuffle=True,
                                      seed=cfg.train.seed, epoch=p.epoch, start_batch=p.batch_in_epoch,
                                      drop_last=True, rank=self.dist.rank, world_size=self.dist.world_size,
                                      dataset=self.train_set, device=self.device)
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
        ctx = EpochContext(epoch=self.progress.epoch, model=self.model, run_model=self.attack_model,
                           device=self.device, amp=self.amp, holdout=holdout, all_reduce=distributed.all_reduce_sum)
        record = hook(ctx)
        self.model.train()
        if record:
            self.log.write({"event": "method_epoch_end", "epoch": self.progress.epoch, **record})

    def _holdout_batches(self):
        """This rank's whole batches of the held-out split (the ranks' counts are summed by all_reduce)."""
        shard = distributed.BatchShard(self.holdout_set, self.cfg.data.eval_batch_size, self.cfg.train.seed)
        return build_loader(self.cfg.data, "val", batch_size=self.cfg.data.eval_batch_size, shuffle=False,
                            dataset=shard.dataset, device=self.device)

    def _reached_max_steps(self) -> bool:
        return bool(self.cfg.train.max_steps) and self.progress.step >= self.cfg.train.max_steps

    def _batch_counts(self, batch) -> tuple[int, int, bool]:
        """(images, skipped images) of the global batch and whether some rank's share is empty."""
        n = batch.images.shape[0]
        if not self.dist.active:
            return n, batch.skipped, n == 0
        total = distributed.all_reduce_sum(torch.tensor([n, batch.skipped, int(n == 0)], dtype=torch.int64))
        return int(total[0]), int(total[1]), bool(total[2])

    def _train_step(self, batch, window: dict[str, Any], bar: tqdm) -> None:
        cfg, p = self.cfg, self.progress
        distributed.inject_test_fault(p.step, self.dist)
        images, skipped, empty = self._batch_counts(batch)
        p.skipped_images += skipped
        window["skipped"] += skipped
        if empty:  # every image of this batch (of some rank's share: all ranks skip together) failed to decode
            p.batch_in_epoch += 1
            return
        x = to_device(batch.images, self.device, cfg.train.channels_last)
        y = batch.labels.to(self.device, non_blocking=True)
        lr = lr_at(p.step, self.total_steps, self.base_lr, cfg.optim, self.steps_per_epoch)  # issue 15: = cosine_lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        try:
            loss, stats = train_step(self.method, self.run_model, self.optimizer, self.scaler, x, y, self.device,
                                     self.amp, where=f" at step {p.step + 1} (epoch {p.epoch + 1})",
                                     clip_grad_norm=cfg.optim.clip_grad_norm)  # issue 15
        except NonFiniteLossError as exc:
            raise NonFiniteLossError(
                f"{exc}, and the last good checkpoint {self.checkpoint_path} is intact. "
                f"Try a lower optim.lr, or train.amp=off if this happened under fp16"
            ) from None
        if self.dist.active and not cfg.train.sync_batchnorm:
            distributed.broadcast_buffers(self.model)  # every rank continues with rank 0's BatchNorm statistics
        if self.ema is not None:  # issue 15: after the step (and the BatchNorm broadcast)
            self.ema.update(self.model)
        p.step += 1
        p.batch_in_epoch += 1
        window["images"] += images
        bar.update(1)
        if p.step % cfg.train.log_every == 0 or p.batch_in_epoch == self.steps_per_epoch or self._reached_max_steps():
            self._log(loss, stats, x, y, lr, window, bar)
        if cfg.train.checkpoint_every and p.step % cfg.train.checkpoint_every == 0:
            self.save()

    def _log(self, loss, stats, x, y, lr, window, bar) -> None:
        """One JSONL line (rank 0); the scalars are means over the ranks, images/sec the global rate."""
        p = self.progress
        self.model.eval()
        with torch.no_grad(), autocast(self.device, self.amp):
            clean_acc = (predict_k(self.attack_model(x), self.cfg.model.num_classes) == y).float().mean()
        self.model.train()
        scalars = {"loss": loss, "clean_acc": clean_acc, **{k: v for k, v in stats.items() if v.dim() == 0}}
        values = torch.stack([v.detach().float().reshape(()) for v in scalars.values()])
        values = (distributed.all_reduce_sum(values) / self.dist.world_size).tolist()
        elapsed = time.perf_counter() - window["start"]
        record = {
            "event": "train", "step": p.step, "epoch": p.epoch + p.batch_in_epoch / self.steps_per_epoch,
            **dict(zip(scalars, values)),
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
