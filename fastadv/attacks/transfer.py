"""Transfer attack for the gradient-masking checks: PGD crafted on a source model (the Std run),
evaluated on the model under test. If it beats the white-box attack, the white-box gradients lie."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from fastadv.attacks.linf import PGD
from fastadv.errors import FastadvError


def load_source_model(run: str, device: torch.device) -> nn.Module:
    from fastadv.models.checkpoint import load_checkpoint, resolve_checkpoint
    from fastadv.config import from_dict
    from fastadv.models import build_model

    ckpt = load_checkpoint(resolve_checkpoint(run))
    cfg = from_dict(ckpt["config"])
    cfg.model.pretrained, cfg.model.init = False, ""
    model = build_model(cfg.model)
    model.load_state_dict(ckpt.get("eval_model") or ckpt["model"])
    return model.to(device).eval()


@dataclass(frozen=True, kw_only=True)
class TransferPGD:
    """`pgd` run on the model of `source` (a run folder or checkpoint), whatever model it is called with."""

    source: str
    pgd: PGD
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not Path(self.source).expanduser().exists():
            raise FastadvError(f"eval.transfer_from={self.source!r}: no such run folder or checkpoint "
                               "(give the Std run, e.g. runs/demo-std)")

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.device not in self._cache:
            self._cache[x.device] = load_source_model(self.source, x.device)
        return self.pgd(self._cache[x.device], x, y)
