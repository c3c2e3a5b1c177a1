"""TrainState: everything a checkpoint holds, saved and restored in one place.

A checkpoint carries the model, optimizer, grad scaler, the method's own state (e.g. CFA's
class-wise accuracies and weight average), the weights evaluation should use, the config
and its fingerprint, where training stands (`Progress`) and the RNG state the attacks draw
from. Resume is exact on the CPU: the sampler and augmentation are pure functions of
(seed, epoch, index), so only this state is needed to continue bit-identically.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from fastadv.runtime import distributed
from fastadv.models.checkpoint import check_compatible, fingerprint, save_checkpoint
from fastadv.config import Config
from fastadv.data import mix


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0
    batch_in_epoch: int = 0
    step: int = 0
    skipped_images: int = 0


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


@dataclass
class TrainState:
    """The objects a run trains and the progress counters; `save` / `restore` are the checkpoint."""

    cfg: Config
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    method: Any  # a fastadv.methods.MethodBase
    dist: distributed.RankInfo
    device: torch.device
    global_batch: int  # data.batch_size x world size
    progress: Progress = field(default_factory=Progress)
    ema: Any = None  # a fastadv.train.optim.WeightEma (optim.ema_decay > 0): evaluated instead of the raw weights
    best: dict[str, Any] | None = None  # best.pt so far: {"criterion", "value", "step", "epoch"} (resume keeps it)
    precision: str = ""  # the train.precision policy this run trains in, resolved for its device (eval.json shows it)

    def eval_weights(self) -> dict[str, Any] | None:
        """What `fastadv eval` loads instead of the training weights (EMA / the method's average), or None."""
        return self.ema.weights() if self.ema is not None else self.method.eval_weights()

    def save(self, path: Path) -> None:
        """Rank 0 writes; every rank must call it (its RNG state and rank-local method state are gathered)."""
        method_state = self.method.state_dict()
        eval_weights = self.eval_weights()
        method_local = distributed.gather_rank_local(method_state)
        rngs = distributed.gather_objects(rng_state(self.device))
        if not self.dist.is_main:
            return
        p = self.progress
        progress = {**vars(p), "samples_in_epoch": p.batch_in_epoch * self.global_batch,
                    "global_batch": self.global_batch, "world_size": self.dist.world_size}
        extra = {"rng_per_rank": rngs, "method_rank_local": method_local} if self.dist.active else {}
        save_checkpoint(path, {
            "method": method_state,
            "eval_model": eval_weights,
            "config": self.cfg.to_dict(),
            "fingerprint": fingerprint(self.cfg),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "progress": progress,
            "rng": rngs[0],
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "best": self.best,
            "precision": self.precision,
            **extra,
        })

    def restore(self, ckpt: dict[str, Any], path: str | Path, steps_per_epoch: int) -> dict[str, Any]:
        """Model, optimizer, progress, method state and RNG from a loaded checkpoint; returns the resume record.

        Same global batch: the same batches follow (exact). Another global batch: the position
        is rounded down to a whole new global batch (at most one global batch is seen twice) and
        the step counter (hence the lr schedule) is recomputed from it. RNG and rank-local method
        state: rank r takes saved rank r's; a rank the checkpoint lacks starts a fresh seeded
        stream, and at another world size every rank takes rank 0's method state.
        """
        check_compatible(ckpt, self.cfg, path)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        if self.ema is not None and ckpt.get("ema"):
            self.ema.load_state_dict(ckpt["ema"], self.device)
        saved = dict(ckpt["progress"])
        saved_world = saved.pop("world_size", 1)
        saved_batch = saved.pop("global_batch", 0) or ckpt["config"]["data"]["batch_size"]
        samples = saved.pop("samples_in_epoch", saved["batch_in_epoch"] * saved_batch)
        self.progress = p = Progress(**saved)
        self.best = ckpt.get("best")
        if saved_batch != self.global_batch:
            p.batch_in_epoch = samples // self.global_batch
            p.step = p.epoch * steps_per_epoch + p.batch_in_epoch
        rank, world = self.dist.rank, self.dist.world_size
        state = ckpt.get("method")
        if state is not None:
            local = ckpt.get("method_rank_local") or {}
            if saved_world == world:
                state = {**state, **{k: v[rank] for k, v in local.items()}}
            self.method.load_state_dict(state)
        rngs = ckpt.get("rng_per_rank") or [ckpt["rng"]]
        if rank < len(rngs):
            set_rng_state(rngs[rank], self.device)
        else:
            torch.manual_seed(mix(self.cfg.train.seed, rank, p.epoch, p.step))
        return {"event": "resume", "step": p.step, "epoch": p.epoch, "samples_in_epoch": samples,
                "world_size": world, "global_batch": self.global_batch,
                "from_world_size": saved_world, "from_global_batch": saved_batch}
