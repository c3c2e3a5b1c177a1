"""The one scoring rule of every evaluation setting (issue 24).

An image's scored prediction is the argmax over the K class logits (never an extra logit of a
label-augmented model). Under an attack, an image counts robust only if the attack ran on it and
neither the clean image nor the returned one has a scored prediction other than its label:

    pred = argmax_K(model(x))          when that is wrong (a clean error stays an error),
           argmax_K(model(attack(x)))  otherwise.

So robust implies clean-correct, per image and per class, whatever the attack's own success test
(AutoAttack on all K+M logits, the paper-code label, early-stop PGD). An attack that reports
per-image `robust` / `broken_by` columns (AutoAttack) has them re-derived from `pred` here, so the
columns and the accuracy always describe the same images.
"""

from __future__ import annotations

from typing import Any

import torch

from fastadv.attacks.auto_attack import CLEAN_MISS

SCORING_RULE = 2  # in each resume fingerprint (fastadv.eval.resume): 1 = before issue 24
RESCORED = "rescored"  # broken_by of an image the attack called robust but the final scoring did not (numerics)


def scored(clean_logits: torch.Tensor, adv_logits: torch.Tensor, y: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(pred, the logits it came from) under the rule above."""
    clean_pred, adv_pred = clean_logits[:, :k].argmax(1), adv_logits[:, :k].argmax(1)
    wrong = clean_pred.ne(y)
    pred = torch.where(wrong, clean_pred, adv_pred)
    return pred, torch.where(wrong.view(-1, 1), clean_logits, adv_logits)


def reconcile(extra: dict[str, list], pred: list[int], true: list[int], clean_ok: list[bool]) -> dict[str, list]:
    """The attack's `robust` / `broken_by` columns made to agree with the scored predictions."""
    if "robust" not in extra:
        return extra
    broken = list(extra.get("broken_by") or [""] * len(pred))
    robust = [int(p == t) for p, t in zip(pred, true)]
    for i, (r, ok) in enumerate(zip(robust, clean_ok)):
        if not ok:
            broken[i] = CLEAN_MISS
        elif r:
            broken[i] = ""
        elif broken[i] in ("", CLEAN_MISS):
            broken[i] = RESCORED
    out: dict[str, Any] = dict(extra)
    out["robust"], out["broken_by"] = robust, broken
    return out
