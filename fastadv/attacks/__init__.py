"""l_inf attacks in [0, 1] pixel space: PGD, FGSM, Temperature-PGD and TRADES' KL attack.

Calling convention. fastadv's attacks are configured once and take the model at call
time: ``attack = PGD(eps=8/255, steps=10, alpha=2/255, num_classes=K)``, then
``x_adv = attack(model, x, y)`` — so one attack object serves the training model, its
compiled wrapper and the FAWA average alike. torchattacks binds the model at
construction instead (``atk = torchattacks.PGD(model, eps=...)``, then ``atk(x, y)``);
`bound(attack, model)` gives that style when a user expects it. Both run the same loop
(`linf_attack`, docs/reference/methods.md: PGD): eval mode and frozen parameters during the attack,
input gradients only, sign step, projection to the eps-ball and the [0, 1] box, the last
iterate returned.

This package is importable without torch (the head names below are what the config
validates against); the attack code itself loads on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

# The outputs an attack's loss can read (validated by fastadv.config before torch loads).
HEADS: dict[str, str] = {
    "all": "cross-entropy over all K+M logits (the paper's training attack; identical to k when M = 0)",
    "k": "cross-entropy over the K class logits only (the adaptive attack on a label-augmented model)",
}

_LAZY = {
    "PGD": "linf", "FGSM": "linf", "BoundAttack": "linf", "bound": "linf", "attack_loss": "linf",
    "attack_mode": "linf", "attack_view": "linf", "check_attack_args": "linf", "fgsm": "linf",
    "linf_attack": "linf", "pgd_linf": "linf", "training_attack": "linf", "trades_kl_attack": "linf",
    "AutoAttackRun": "auto_attack", "PaperCodePGD": "paper_convention", "TransferPGD": "transfer",
}

__all__ = ["HEADS", *_LAZY]


def __getattr__(name: str) -> Any:
    """Load the torch-backed attack code on first use (PEP 562)."""
    if name in _LAZY:
        value = getattr(importlib.import_module(f"fastadv.attacks.{_LAZY[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fastadv.attacks' has no attribute {name!r}")
