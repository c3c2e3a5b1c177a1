"""Checkpoints: atomic writes, `weights_only` loads (fastadv.torchfile), and a fingerprint check on resume."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from fastadv.config import Config
from fastadv.errors import FastadvError
from fastadv.runtime.fileio import atomic_write
from fastadv.models import torchfile

FORMAT = "fastadv-checkpoint"
VERSION = 1
CHECKPOINT_NAME = "checkpoint.pt"
BEST_NAME = "best.pt"  # the best validation checkpoint (train.best), beside checkpoint.pt
WHICH = {"last": CHECKPOINT_NAME, "best": BEST_NAME}  # fastadv eval --checkpoint


def fingerprint(cfg: Config) -> dict[str, Any]:
    """What must match for a resume to make sense (shapes and the training objective)."""
    return {
        "recipe": cfg.name,
        "model.arch": cfg.model.arch,
        "model.num_classes": cfg.model.num_classes,
        "model.num_aux": cfg.model.num_aux,
        "method.name": cfg.method.name,
        "data.backend": cfg.data.backend,
        "data.image_size": cfg.data.image_size,
    }


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write to a temp file in the same folder, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, **payload}
    atomic_write(path, lambda f: torch.save(payload, f), mode="wb", fsync=True)


def resolve_checkpoint(path: str | Path, which: str = "last") -> Path:
    """A checkpoint file, or a run folder holding checkpoint.pt (which="last") or best.pt ("best")."""
    p = Path(path)
    if which not in WHICH:
        raise FastadvError(f"--checkpoint {which}: choose one of {', '.join(WHICH)}")
    if p.is_dir():
        if which == "best" and not (p / BEST_NAME).is_file() and (p / CHECKPOINT_NAME).is_file():
            raise FastadvError(f"{p} has no {BEST_NAME}: it is written only with robust validation on "
                               f"(train.validate, train.best); use --checkpoint last")
        p = p / WHICH[which]
    if not p.is_file():
        raise FastadvError(f"no checkpoint at {p}: pass a run folder (with {CHECKPOINT_NAME}) or a checkpoint file")
    return p


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load with weights_only=True and refuse anything that is not a fastadv checkpoint."""
    p = resolve_checkpoint(path)
    obj = torchfile.load(p, "a fastadv checkpoint")  # weights_only; a bad file is named in words
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        keys = list(obj)[:6] if isinstance(obj, dict) else type(obj).__name__
        raise FastadvError(
            f"{p} is not a fastadv checkpoint (found {keys}); "
            f"to start from torchvision or other weights use --init {p}"
        )
    if obj.get("version") != VERSION:
        raise FastadvError(f"{p} has checkpoint version {obj.get('version')}, this fastadv reads version {VERSION}")
    return obj


def check_compatible(ckpt: dict[str, Any], cfg: Config, path: str | Path) -> None:
    """Resume only into the same recipe / architecture / head / method; list every mismatch."""
    saved = ckpt.get("fingerprint", {})
    wanted = fingerprint(cfg)
    diffs = [f"{k}: checkpoint has {saved.get(k)!r}, this run has {v!r}" for k, v in wanted.items() if saved.get(k) != v]
    if diffs:
        raise FastadvError(
            f"cannot resume from {path}: it was written by a different run:\n  - " + "\n  - ".join(diffs)
            + "\nResume with the recipe that wrote it, or start fresh with a new train.out_dir"
            + " (use --init to start from its weights)."
        )
