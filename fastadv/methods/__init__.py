"""Training objectives behind one interface: `loss, stats = method(model, x, y)`.

The Trainer never knows which method runs; a new objective is a new file here plus one
line in METHODS.
"""

from __future__ import annotations

from typing import Callable, Protocol

import torch
from torch import nn

from fastadv.config import Config
from fastadv.methods.adversarial import AdversarialTraining
from fastadv.methods.standard import StandardTraining


class Method(Protocol):
    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


METHODS: dict[str, Callable[[Config], Method]] = {
    "std": StandardTraining.from_config,
    "adv": AdversarialTraining.from_config,
    "adv-plus": AdversarialTraining.from_config,
}


def build_method(cfg: Config) -> Method:
    return METHODS[cfg.method.name](cfg)
