"""The named precision policies of `train.precision` (torch-free, so config validation can list them).

Each policy names the dtype of each part of a training step; `fastadv.runtime.precision` applies them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PrecisionPolicy:
    """name: the train.precision value; attack / update: the autocast dtype ("bf16", "fp16") of attack
    generation (the PGD forward + input gradient) and of the weight update's forward/backward (None =
    fp32, no autocast); scaler: a GradScaler on the update's loss (fp16); lowp_iterate: an ablation that
    rounds the attack's iterate x + delta to the attack dtype after every step, as if stored in it."""

    name: str
    attack: str | None
    update: str | None
    scaler: bool = False
    lowp_iterate: bool = False
    summary: str = ""


POLICIES: dict[str, PrecisionPolicy] = {p.name: p for p in (
    PrecisionPolicy("fp32", None, None, summary="everything in fp32 (no autocast)"),
    PrecisionPolicy("bf16", "bf16", "bf16",
                    summary="attack and update under bf16 autocast; iterate, losses, BN statistics fp32"),
    PrecisionPolicy("bf16-attack", "bf16", None, summary="attack under bf16 autocast, the weight update in fp32"),
    PrecisionPolicy("bf16-update", None, "bf16", summary="attack in fp32, the weight update under bf16 autocast"),
    PrecisionPolicy("bf16-lowp-input", "bf16", "bf16", lowp_iterate=True,
                    summary="ablation: bf16, with the attack's iterate x + delta rounded to bf16 after every step"),
    PrecisionPolicy("fp16-scaled", "fp16", "fp16", scaler=True,
                    summary="attack and update under fp16 autocast, a gradient scaler on the update (apex O1 style)"),
)}
AUTO = "auto"
PRECISION_CHOICES = (AUTO, *POLICIES)
