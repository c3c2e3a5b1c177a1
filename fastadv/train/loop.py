"""The Trainer: for each batch, `loss, stats = method(model, x, y)` and one optimizer step.

The method (std / adv / adv-plus / ...) is opaque to it: it is built through the registry
and its hooks (fastadv.methods.MethodBase) are called unconditionally. What a checkpoint
holds lives in TrainState (state.py), the learning rate in schedule.py, the log in runlog.py.

Under torchrun (fastadv.runtime.distributed) the same loop runs on every rank with DDP: each rank
reads its shard of every global batch (data.batch_size per rank), rank 0 logs and writes the
checkpoint, which holds every rank's RNG state and the epoch position in global samples.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import torch

from fastadv.runtime import distributed
from fastadv.models.checkpoint import BEST_NAME, CHECKPOINT_NAME, load_checkpoint
from fastadv.config import Config, to_toml
from fastadv.data import build_dataset, build_loader
from fastadv.data.subset import IndexSubset, stratified_holdout
from fastadv.errors import FastadvError, NonFiniteLossError
from fastadv.methods import EpochContext, build_method
from fastadv.models import build_model, predict_k
from fastadv.train.optim import WeightEma, build_optimizer
from fastadv.runtime.progress import progress_bar
from fastadv.runtime.runfolder import check_dataset, dataset_fingerprint, save_config
from fastadv.runtime import precision
from fastadv.runtime.device import autocast, eval_amp_dtype, maybe_compile, prepare_model, to_device
from fastadv.train.overfit import build_guard
from fastadv.train.runlog import log_names
from fastadv.train.sinks import build_sinks, check_loggers
from fastadv.train.validation import CRITERIA, Validator, best_criterion, validation_split
from fastadv.train.schedule import lr_at
from fastadv.train.state import Progress, TrainState
from fastadv.train.step import FiniteGuard, train_step
from fastadv.runtime.stop_signals import STOP, Stopped


class Trainer:
    def __init__(self, cfg: Config, resume: str | Path | None = None, allow_new_dataset: bool = False) -> None:
        self.cfg = cfg
        self.out_dir = Path(cfg.train.out_dir)
        check_loggers(cfg.train.loggers)  # unknown logger / missing package: refused before any work
        self.best_criterion = best_criterion(cfg)  # None: no best.pt
        self.dist, self.device = distributed.setup(cfg.train.device, cfg.train.dist_timeout_s)
        world = self.dist.world_size
        self.precision = precision.resolve(cfg.train.precision, self.device)  # which part runs in which dtype
        # Attacks differ across ranks but repeat run to run; DDP copies rank 0's initial weights.
        torch.manual_seed(distributed.rank_seed(cfg.train.seed, self.dist.rank))
        self.train_set = build_dataset(cfg.data, "train")
        data_print = dataset_fingerprint(self.train_set)
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
        self.optimizer = build_optimizer(self.model, o)  # sgd (the paper's) | adamw
        self.scaler = precision.scaler(self.precision, self.device)
        self.global_batch = cfg.data.batch_size * world  # data.batch_size is per rank
        self.state = TrainState(cfg, self.model, self.optimizer, self.scaler, build_method(cfg), self.dist,
                                self.device, self.global_batch, ema=WeightEma(o.ema_decay) if o.ema_decay else None,
                                precision=self.precision.name)
        self.base_lr = o.lr * distributed.lr_factor(cfg.train.lr_scaling, world)
        self.steps_per_epoch = len(self.train_set) // self.global_batch
        if self.steps_per_epoch < 1:
            raise FastadvError(
                f"the global batch (data.batch_size={cfg.data.batch_size} x {world} rank(s)) is larger than the "
                f"training set ({len(self.train_set)} images)"
            )
        # A method that replays each minibatch m times (Free AT, MethodBase.replays) runs ceil(epochs / m) epochs.
        self.replays = max(1, int(self.method.replays))
        self.epochs = -(-o.epochs // self.replays)
        self.total_steps = self.epochs * self.steps_per_epoch
        if cfg.train.max_steps:
            self.total_steps = min(self.total_steps, cfg.train.max_steps)
        self.resumed: dict[str, Any] | None = None
        resume = resume or self._auto_resume()
        if self.best_criterion and not resume and self.best_path.exists():
            raise FastadvError(f"{self.best_path} exists and this is a new run: best.pt would be written over; "
                               f"move it, or choose another train.out_dir")
        if resume:
            self._resume(resume)
        source = Path(resume) if resume else self.out_dir
        check_dataset(source if source.is_dir() else source.parent, self.out_dir, data_print, bool(resume),
                      allow_new_dataset)
        self.run_model = self.attack_model
        if self.dist.active:
            ddp = distributed.wrap_model(self.model, self.attack_model, self.dist)
            self.run_model = maybe_compile(ddp, cfg.train.compile, cfg.train.compile_mode, self.device, whole_step=False)
        self.log = build_sinks(cfg.train.loggers, self.out_dir, cfg, enabled=self.dist.is_main)
        self.validator = None
        if validation_split(cfg) != "off":
            self.validator = Validator(cfg, self.holdout_set, self.device, eval_amp_dtype(cfg.eval.amp))  # as fastadv eval
        self.overfit = build_guard(cfg, self.holdout_set, self.steps_per_epoch, self.device)  # None when off
        self._stop = False
        self.finite_guard: FiniteGuard | None = None  # set by fit()

    # ------------------------------------------------------------------ checkpoints
    @property
    def method(self):
        return self.state.method

    @property
    def progress(self) -> Progress:
        return self.state.progress

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    @property
    def best_path(self) -> Path:
        return self.out_dir / BEST_NAME

    def save(self) -> None:
        """Write the checkpoint (every rank calls it: TrainState.save gathers rank-local state),
        never of a model a non-finite step has touched."""
        self._check_finite()
        self.state.save(self.checkpoint_path)

    def _check_finite(self) -> None:
        """Raise NonFiniteLossError if a step since the start had a NaN/inf loss (one host sync)."""
        if self.finite_guard is None:
            return
        spe = self.steps_per_epoch
        try:
            self.finite_guard.check(lambda step: f" at step {step} (epoch {(step - 1) // spe + 1})")
        except NonFiniteLossError as exc:
            raise NonFiniteLossError(
                f"{exc}, and the last good checkpoint {self.checkpoint_path} is intact. "
                f"Try a lower optim.lr, or train.precision=fp32 if this happened under fp16"
            ) from None

    def _auto_resume(self) -> Path | None:
        """The run folder when train.auto_resume or a torchrun restart asks for it and it holds a checkpoint."""
        if not (self.cfg.train.auto_resume or distributed.restart_count() > 0):
            return None
        found = distributed.broadcast_object(self.checkpoint_path.is_file())  # rank 0 decides for all
        return self.out_dir if found else None

    def _resume(self, path: str | Path) -> None:
        """Restore the TrainState from a checkpoint file or run folder (see TrainState.restore)."""
        self.resumed = self.state.restore(load_checkpoint(path), path, self.steps_per_epoch)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> Path:
        with distributed.failures_named(self.dist):
            try:
                return self._fit()
            finally:
                self.log.close()

    def _fit(self) -> Path:
        cfg, p = self.cfg, self.progress
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.out_dir, to_toml(cfg))
        self.log.start(cfg.to_dict())
        self.log.write({"event": "precision", "requested": cfg.train.precision, "policy": self.precision.name,
                        "summary": self.precision.summary})
        if self.validator is not None:
            self.log.write({"event": "validation_plan", "split": self.validator.describe(),
                            "every": cfg.train.validate_every or "epoch", "best": self.best_criterion})
        if self.resumed:
            self.log.write(self.resumed)
        bar = progress_bar(total=self.total_steps, initial=p.step, desc=cfg.name, unit="step",
                           disable=not (cfg.train.progress and self.dist.is_main), every=cfg.train.log_every)
        window = {"images": 0, "skipped": 0, "start": time.perf_counter()}
        self.finite_guard = FiniteGuard(first_step=p.step + 1, records_per_step=self.replays)
        try:
            while p.epoch < self.epochs and not self._reached_max_steps():
                loader = build_loader(cfg.data, "train", batch_size=cfg.data.batch_size, shuffle=True,
                                      seed=cfg.train.seed, epoch=p.epoch, start_batch=p.batch_in_epoch,
                                      drop_last=True, rank=self.dist.rank, world_size=self.dist.world_size,
                                      dataset=self.train_set, device=self.device)
                for batch in loader:
                    STOP.armed = True
                    self._train_step(batch, window, bar)
                    self._stop_on_signal()
                    if self._reached_max_steps():
                        if self.validator is not None and not cfg.train.validate_every:
                            self._validate()  # the last step of a run cut short by max_steps
                        self.save()
                        break
                else:
                    p.epoch, p.batch_in_epoch = p.epoch + 1, 0
                    self._check_finite()
                    self._method_epoch_end()
                    if self.validator is not None and not cfg.train.validate_every:
                        self._validate()
                    self.save()
                    self.log.write({"event": "epoch_end", "epoch": p.epoch, "step": p.step,
                                    "skipped_images": p.skipped_images})
        finally:
            STOP.armed = False
            bar.close()
        self._check_finite()
        self.log.write({"event": "done", "epoch": p.epoch, "step": p.step, "skipped_images": p.skipped_images})
        return self.checkpoint_path

    def _stop_on_signal(self) -> None:
        """SIGTERM / SIGUSR1 arrived during this step (any rank): save a checkpoint here, then stop (stop.py)."""
        signum = STOP.received or 0
        if self.dist.active:  # every rank stops at the same step: the checkpoint gathers from all of them
            if int(distributed.all_reduce_sum(torch.tensor([int(bool(signum))], dtype=torch.int64))) > 0:
                signum = signum or int(signal.SIGTERM)
        if not signum:
            return
        STOP.armed = False
        self.save()
        p = self.progress
        self.log.write({"event": "stopped", "signal": signal.Signals(signum).name, "epoch": p.epoch, "step": p.step})
        raise Stopped(signum, saved_step=p.step)

    def _method_epoch_end(self) -> None:
        """The method's epoch-end hook (e.g. CFA's calibration and FAWA); a non-empty record is logged."""
        holdout = self._holdout_batches if self.holdout_set is not None else None
        ctx = EpochContext(epoch=self.progress.epoch, model=self.model, run_model=self.attack_model,
                           device=self.device, amp=precision.attack_dtype(self.precision), holdout=holdout,
                           all_reduce=distributed.all_reduce_sum)
        record = self.method.on_epoch_end(ctx)
        self.model.train()
        if record:
            self.log.write({"event": "method_epoch_end", "epoch": self.progress.epoch, **record})

    def _validate(self) -> None:
        """Robust validation (validation.py): log the record; a new best by the criterion writes best.pt."""
        self._check_finite()
        p = self.progress
        weights = self.state.eval_weights()
        record = self.validator.run(self.model if weights is not None else self.attack_model, weights,
                                    grid=self.log.wants_images)
        record.update(step=p.step, epoch=p.epoch + p.batch_in_epoch / self.steps_per_epoch)
        crit = self.best_criterion
        if crit:
            value = record[CRITERIA[crit]]
            record.update(criterion=crit, best=self.state.best is None or value > self.state.best["value"])
            if record["best"]:
                self.state.best = {"criterion": crit, "value": value, "step": p.step, "epoch": record["epoch"]}
                self.state.save(self.best_path)  # atomic (save_checkpoint); every rank calls it
        self.log.write(record)
        if self.validator.grid:
            self.log.images(p.step, self.validator.grid)

    def _holdout_batches(self):
        """This rank's whole batches of the held-out split (the ranks' counts are summed by all_reduce)."""
        shard = distributed.BatchShard(self.holdout_set, self.cfg.data.eval_batch_size, self.cfg.train.seed)
        return build_loader(self.cfg.data, "val", batch_size=self.cfg.data.eval_batch_size, shuffle=False,
                            dataset=shard.dataset, device=self.device)

    def _reached_max_steps(self) -> bool:
        return self._stop or (bool(self.cfg.train.max_steps) and self.progress.step >= self.cfg.train.max_steps)

    def _batch_counts(self, batch) -> tuple[int, int, bool]:
        """(images, skipped images) of the global batch and whether some rank's share is empty."""
        n = batch.images.shape[0]
        if not self.dist.active:
            return n, batch.skipped, n == 0
        total = distributed.all_reduce_sum(torch.tensor([n, batch.skipped, int(n == 0)], dtype=torch.int64))
        return int(total[0]), int(total[1]), bool(total[2])

    def _train_step(self, batch, window: dict[str, Any], bar) -> None:
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
        lr = lr_at(p.step, self.total_steps, self.base_lr, cfg.optim, self.steps_per_epoch)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        for _ in range(self.replays):  # 1 unless the method replays each minibatch (Free AT)
            loss, stats = train_step(self.method, self.run_model, self.optimizer, self.scaler, x, y, self.device,
                                     self.precision, clip_grad_norm=cfg.optim.clip_grad_norm, guard=self.finite_guard)
        if self.dist.active and not cfg.train.sync_batchnorm:
            distributed.broadcast_buffers(self.model)  # every rank continues with rank 0's BatchNorm statistics
        if self.state.ema is not None:
            self.state.ema.update(self.model)
        p.step += 1
        p.batch_in_epoch += 1
        window["images"] += images
        bar.update(1)
        if p.step % cfg.train.log_every == 0 or p.batch_in_epoch == self.steps_per_epoch or self._reached_max_steps():
            self._log(loss, stats, x, y, lr, window, bar)
        if cfg.train.checkpoint_every and p.step % cfg.train.checkpoint_every == 0:
            self.save()
        if self.overfit is not None and self.overfit.due(p.step):
            self._check_finite()
            record, self._stop = self.overfit.check(self.model, self.attack_model, self.optimizer,
                                                    decide=distributed.broadcast_object)
            self.log.write({**record, "step": p.step, "epoch": p.epoch + p.batch_in_epoch / self.steps_per_epoch})
        if self.validator is not None and cfg.train.validate_every and p.step % cfg.train.validate_every == 0:
            self._validate()

    def _log(self, loss, stats, x, y, lr, window, bar) -> None:
        """One JSONL line (rank 0); the scalars are means over the ranks, images/sec the global rate."""
        p = self.progress
        self._check_finite()
        self.model.eval()
        with torch.no_grad(), autocast(self.device, precision.update_dtype(self.precision)):
            clean_acc = (predict_k(self.attack_model(x), self.cfg.model.num_classes) == y).float().mean()
        self.model.train()
        scalars = {"loss": loss, "clean_acc": clean_acc, **{k: v for k, v in stats.items() if v.dim() == 0}}
        values = torch.stack([v.detach().float().reshape(()) for v in scalars.values()])
        values = (distributed.all_reduce_sum(values) / self.dist.world_size).tolist()
        elapsed = time.perf_counter() - window["start"]
        record = {
            "event": "train", "step": p.step, "epoch": p.epoch + p.batch_in_epoch / self.steps_per_epoch,
            **log_names(dict(zip(scalars, values))),
            "lr": lr, "images_per_sec": window["images"] / max(elapsed, 1e-9),
            "skipped_images": window["skipped"],
        }
        if self.device.type == "cuda":
            record["max_memory_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        self.log.write(record)
        bar.set_postfix(loss=f"{record['loss']:.3f}", img_s=f"{record['images_per_sec']:.0f}")
        window.update(images=0, skipped=0, start=time.perf_counter())


def train(cfg: Config, resume: str | Path | None = None, allow_new_dataset: bool = False) -> Path:
    """Train per `cfg`; returns the checkpoint path. `resume` = checkpoint file or run folder."""
    return Trainer(cfg, resume, allow_new_dataset).fit()
