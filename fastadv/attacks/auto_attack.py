"""AutoAttack (Croce & Hein 2020) through the official package `pyautoattack` (0.2.0).

`AutoAttackRun(...)(model, x, y)` returns the adversarial images and, per image, the robust flag
and the attack that broke it ("clean-error" = misclassified before any attack, "" = robust). It
calls `AutoAttack.run_standard_evaluation` once per attack of the version, in the version's order,
on the images still correct under the scoring rule (argmax over K; fastadv.eval.scoring_rule), with
pyautoattack's bs = `run(..., batch_size=)` (all of x by default). evaluate runs it once over the
whole evaluated set (eval.autoattack_grouping=whole, fastadv.eval.whole_set) or once per eval batch
(=batch).

What is tested (tests/test_autoattack.py, tests/test_autoattack_batches.py), head "k":
- on one batch, flags and adversarial images equal one direct `run_standard_evaluation` call on
  that batch with the same eps, seed and version; `run(..., batch_size=8)` on 32 images (4 chunks)
  gives the flags and images of one direct call with bs 8 (APGD-CE + Square, toy linear model);
- grouping=whole: over 4 eval batches, and after an eval interrupted (KeyboardInterrupt) during the
  attack or the scoring and run again, the flags equal one direct call on all evaluated images with
  bs = eval.batch_size (Square, 16 px demo model; one process);
- grouping=batch: the same over 4 eval batches and over an eval resumed per batch
  (fastadv.eval.resume). Not promised there: the direct call regroups the still-robust images of all
  batches into chunks of bs, and each attack draws its random start per chunk, so an image whose
  outcome hinges on its random start can differ (a 16 px toy model at eps 0.12 with APGD-CE +
  Square: 24 vs 26 of 48 robust; at 0.14 and 0.16 equal).

head "k" attacks the K-class head (`HeadView`, logits[:, :K]); head "all" attacks all K+M logits.
pyautoattack's own success test is then argmax over K+M, which is not the scoring rule: an image
broken only over K+M (an extra logit wins, argmax over K still the label) stays robust and goes on
to the next attack, and an image whose clean argmax over K+M is an extra logit (pyautoattack
would never attack it) is attacked on the K head instead (column `attacked_on`: k+m or k).
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from fastadv.attacks.autoattack_names import ATTACK_NAMES, VERSIONS, check_autoattack_names  # noqa: F401 (re-exported)
from fastadv.attacks.linf import attack_mode, attack_view
from fastadv.config.validation import check_eps

CLEAN_MISS = "clean-error"  # broken_by of an image misclassified without attack
ATTACKED_ON = {"k": "k", "all": "k+m"}
AA_LOGGER = "auto-attack"  # pyautoattack's logger


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """pyautoattack's chatter ("setting parameters for standard version", its print()s) kept out of
    the progress output: its logger below WARNING and its stdout swallowed while it builds and runs."""
    logger = logging.getLogger(AA_LOGGER)
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


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
    attacked_on: list[str]  # the head each attack ran on ("k+m", or "k" where K+M's own test fails clean), "" if not


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

    def build(self, model: nn.Module, device: torch.device | str, head: str | None = None):
        """pyautoattack's AutoAttack on the head view (`head` overrides self.head), its chatter silenced."""
        from pyautoattack import AutoAttack

        view = HeadView(model, self.num_classes if (head or self.head) == "k" else None)
        with quiet():
            if self.version == "custom":
                aa = AutoAttack(view, norm="Linf", eps=self.eps, version="custom", attacks=list(self.attacks),
                                device=device, seed=self.seed)
            else:
                aa = AutoAttack(view, norm="Linf", eps=self.eps, version=self.version, device=device, seed=self.seed)
                if self.attacks:
                    aa.attacks_to_run = [a for a in aa.attacks_to_run if a in self.attacks]
        if self.square_queries > 0:
            aa.square.n_queries = self.square_queries
        return aa

    def run(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int | None = None) -> AutoAttackResult:
        """Each attack of the version, in order, on the images still correct under the scoring rule
        (argmax over K). Head "all": an image whose clean argmax over K+M is an extra logit passes
        pyautoattack's own clean test never, so pyautoattack would not attack it; it is attacked on
        the K head instead (`attacked_on` = "k"), so that every image the scoring rule calls correct
        is attacked by every attack of the version. batch_size: pyautoattack's bs (None = all of x in
        one chunk). x may stay on the CPU (the whole evaluated set): pyautoattack moves each chunk of
        bs to the model's device, and the scoring-rule checks here run chunk by chunk too."""
        model = attack_view(model)
        x, y = x.detach().float(), y.detach()
        bs = max(1, batch_size or x.shape[0])
        device = next(model.parameters(), x).device
        k_view = HeadView(model, self.num_classes)
        with attack_mode(model), quiet():
            aa = self.build(model, device)
            fallback = self.build(model, device, head="k") if self.head == "all" else aa
            order = list(aa.attacks_to_run)
            robust = _correct(k_view, x, y, bs, device)  # the scoring rule
            own = _correct(HeadView(model, None if self.head == "all" else self.num_classes), x, y, bs, device)
            broken = [CLEAN_MISS if not r else "" for r in robust.tolist()]
            on = ["" if not r else (ATTACKED_ON[self.head] if o else "k") for r, o in zip(robust.tolist(), own.tolist())]
            x_adv = x.clone()
            for name in order:
                for runner, mask in ((aa, own), (fallback, ~own)):
                    idx = torch.nonzero(robust & mask).flatten()
                    if idx.numel() == 0:
                        continue
                    runner.attacks_to_run = [name]
                    xa, _ = runner.run_standard_evaluation(x[idx], y[idx], batch_size=bs)
                    hit = ~_correct(k_view, xa, y[idx], bs, device)
                    x_adv[idx[hit]] = xa[hit].to(x_adv.device, x_adv.dtype)
                    robust[idx[hit]] = False
                    for i in idx[hit].tolist():
                        broken[i] = name
        return AutoAttackResult(x_adv, robust.tolist(), broken, on)

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        """(x_adv, {"robust": [0/1], "broken_by": [...]}) — the extra predictions-CSV columns."""
        return self.columns(self.run(model, x, y))

    def columns(self, result: AutoAttackResult):
        """(x_adv, {"robust": [0/1], "broken_by": [...]}) of a result (evaluate's per-batch columns)."""
        extra = {"robust": [int(r) for r in result.robust], "broken_by": result.broken_by}
        if self.head == "all":
            extra["attacked_on"] = result.attacked_on
        return result.x_adv, extra


def _correct(view: nn.Module, x: torch.Tensor, y: torch.Tensor, bs: int, device) -> torch.Tensor:
    """argmax(view(x)) == y, computed in chunks of bs on `device`; a bool tensor on x's device."""
    with torch.no_grad():
        parts = [view(x[i:i + bs].to(device)).argmax(1).eq(y[i:i + bs].to(device)) for i in range(0, x.shape[0], bs)]
    return torch.cat(parts).to(x.device) if parts else torch.zeros(0, dtype=torch.bool, device=x.device)
