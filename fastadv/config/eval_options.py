"""The robustness-evaluation options of [eval] (AutoAttack, masking checks, paper-code); validation.py checks them."""

from __future__ import annotations

from dataclasses import dataclass

from fastadv.errors import FastadvError

ATTACK_CONVENTIONS = ("standard", "paper-code")
AUTOATTACK_GROUPINGS = ("whole", "batch")  # eval.autoattack_grouping (fastadv.eval.whole_set)


@dataclass
class RobustnessOptions:
    """The [eval] fields of the robustness evaluation (config.EvalConfig inherits them)."""

    subset: str = ""  # "" = all | robustbench-5k | per-class:N (seeded) | a file of ids (fastadv.data.eval_subset)
    autoattack: bool = False  # `eval --suite autoattack`: pyautoattack at autoattack_eps (and at eps, if at_eval_eps)
    autoattack_eps: float = 4 / 255  # RobustBench's ImageNet l_inf eps
    autoattack_at_eval_eps: bool = True
    autoattack_version: str = "standard"  # standard | plus | rand | custom (autoattack_attacks, in order)
    autoattack_attacks: str = ""  # e.g. "apgd-ce,square"; with a package version: run only these of it
    square_queries: int = 0  # 0 = the version's Square budget (5000)
    # whole = one AutoAttack run over this rank's evaluated images, as the official call (fastadv.eval.whole_set);
    # batch = one per eval batch (resumes per batch; borderline images can differ from the official call)
    autoattack_grouping: str = "whole"
    masking_checks: bool = False  # `eval --suite masking` (fastadv.analysis.masking)
    masking_eps: str = "0.25,0.5,1,2,4,16"  # multiples of eps (capped at 1); the largest must reach ~0%
    masking_tolerance: float = 0.01  # robust-accuracy slack of the checks
    masking_zero: float = 0.02  # "~0%": robust accuracy at the largest eps at most this
    transfer_from: str = ""  # the Std run the transfer attack is crafted on ("" = check skipped)
    attack_convention: str = "standard"  # | paper-code: also PGD as the paper's code runs it (docs/reference/methods.md)
    paper_eps: float = 0.03  # paper-code eps and step, in normalized-input units
    paper_step: float = 0.01


def parse_eps_multiples(text: str) -> list[float]:
    """eval.masking_eps: comma-separated positive multiples of eval.eps, sorted."""
    try:
        values = sorted(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = []
    if not values or values[0] <= 0:
        raise FastadvError(f"eval.masking_eps={text!r}: give comma-separated positive multiples of eval.eps, e.g. 0.5,1,16")
    return values

