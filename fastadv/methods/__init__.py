"""Training objectives behind one interface: `loss, stats = method(model, x, y)`.

The Trainer never knows which method runs; a new objective is a new file here plus one
line in METHODS.
"""

from __future__ import annotations

from typing import Callable

from fastadv.config import Config
from fastadv.methods.adversarial import AdversarialTraining
from fastadv.methods.base import EpochContext, Method
from fastadv.methods.cfa import ClassWiseCalibration
from fastadv.methods.standard import StandardTraining
from fastadv.methods.trades import Trades

__all__ = ["METHODS", "EpochContext", "Method", "build_method"]

METHODS: dict[str, Callable[[Config], Method]] = {
    "std": StandardTraining.from_config,
    "adv": AdversarialTraining.from_config,
    "adv-plus": AdversarialTraining.from_config,
    "trades": Trades.from_config,
    "cfa-at": ClassWiseCalibration.from_config,
    "cfa-trades": ClassWiseCalibration.from_config,
    "adv-plus-cfa": ClassWiseCalibration.from_config,
}


def build_method(cfg: Config) -> Method:
    return METHODS[cfg.method.name](cfg)
