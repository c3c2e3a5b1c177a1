"""AutoAttack (Croce & Hein 2020) through the official package `pyautoattack` (0.2.0), per image.

`AutoAttackRun(...)(model, x, y)` returns the adversarial images and, per image, pyautoattack's
robust flag and the attack that broke it ("clean" = misclassified before any attack, "" = robust).
It calls `AutoAttack.run_standard_evaluation` once per attack of the version, in the version's
order, on the images still robust: the library's own loop does exactly that (each attack seeds
itself with `seed` before perturbing, and runs only on points still robust), so the flags equal
one direct `run_standard_evaluation` call on the same images, eps and seed (tests/test_autoattack.py),
and we learn which attack broke each image, which the combined call does not report.

head "k" attacks the K-class head (the model seen through `HeadView`, logits[:, :K]); head "all"
attacks all K+M logits (pyautoattack's "robust" then means argmax over K+M == y; the caller
scores argmax over K of the returned images, see fastadv.eval.suites).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from fastadv.attacks.autoattack_names import ATTACK_NAMES, VERSIONS, check_autoattack_names  # noqa: F401 (re-exported)
from fastadv.attacks.linf import attack_mode, attack_view
from fastadv.config.validation import check_eps

CLEAN_MISS = "clean-error"  # broken_by of an image misclassified without attack


def check_autoattack_args(eps: float, version: str, attacks: tuple[str, ...]) -> None:
    """Clear one-line errors before any attack runs (eps = 4 instead of 4/255, unknown names)."""
    check_eps("eval.autoattack_eps", float(eps))
    check_autoattack_names(version, attacks)


class HeadView(nn.Module):
    """The model as the attacker sees it: logits[:, :K] (head "k") or all K+M logits, in float32."""

    def __init__(self, model: nn.Module, num_classes: int | None) -> None:
        super().__init__()
        self.model, self.num_classes = model, num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)
        return (logits if self.num_classes is None else logits[:, : self.num_classes]).float()


@dataclass(frozen=True)
class AutoAttackResult:
    x_adv: torch.Tensor
    robust: list[bool]  # pyautoattack's flag: still classified correctly (over the attacked logits)
    broken_by: list[str]  # the attack that broke it, CLEAN_MISS, or "" when robust


@dataclass(frozen=True, kw_only=True)
class AutoAttackRun:
    """AutoAttack at l_inf `eps`. version: standard | plus | rand (the package's versions) | custom
    (`attacks` in that order). With a package version, a non-empty `attacks` runs only those of
    the version's attacks, with the version's parameters (like its run_standard_evaluation_individual).
    square_queries > 0 overrides Square's query budget (5,000 in every version)."""

    eps: float
    num_classes: int
    head: str = "k"
    version: str = "standard"
    attacks: tuple[str, ...] = ()
    seed: int = 0
    square_queries: int = 0
    returns_extras: bool = True  # evaluate: the call returns (x_adv, per-image columns)

    def __post_init__(self) -> None:
        check_autoattack_args(self.eps, self.version, self.attacks)

    def build(self, model: nn.Module, device: torch.device | str):
        from pyautoattack import AutoAttack

        view = HeadView(model, self.num_classes if self.head == "k" else None)
        if self.version == "custom":
            aa = AutoAttack(view, norm="Linf", eps=self.eps, version="custom", attacks=list(self.attacks),
                            device=device, seed=self.seed)
        else:
            aa = AutoAttack(view, norm="Linf", eps=self.eps, version=self.version, device=device, seed=self.seed)
            if self.attacks:
                aa.attacks_to_run = [a for a in aa.attacks_to_run if a in self.attacks]
        if self.square_queries > 0:
            aa.square.n_queries = self.square_queries
        aa.logger.setLevel(max(aa.logger.level, logging.INFO))  # its per-batch debug lines are noise here
        return aa

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> AutoAttackResult:
        model = attack_view(model)
        x, y = x.detach().float(), y.detach()
        with attack_mode(model):
            aa = self.build(model, x.device)
            order = list(aa.attacks_to_run)
            with torch.no_grad():
                robust = HeadView(model, self.num_classes if self.head == "k" else None)(x).argmax(1).eq(y)
            broken = [CLEAN_MISS if not r else "" for r in robust.tolist()]
            x_adv = x.clone()
            for name in order:
                idx = torch.nonzero(robust).flatten()
                if idx.numel() == 0:
                    break
                aa.attacks_to_run = [name]
                xa, ya = aa.run_standard_evaluation(x[idx], y[idx], batch_size=max(1, x.shape[0]))
                hit = ya.ne(y[idx])
                x_adv[idx[hit]] = xa[hit].to(x_adv.dtype)
                robust[idx[hit]] = False
                for i in idx[hit].tolist():
                    broken[i] = name
        return AutoAttackResult(x_adv, robust.tolist(), broken)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        """(x_adv, {"robust": [0/1], "broken_by": [...]}) — the extra predictions-CSV columns."""
        result = self.run(model, x, y)
        return result.x_adv, {"robust": [int(r) for r in result.robust], "broken_by": result.broken_by}
