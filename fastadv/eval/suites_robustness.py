"""The robustness-evaluation suites beyond PGD: AutoAttack, the gradient-masking checks and the paper's
own attack convention, registered into fastadv.eval.suites like every other setting (their keys live here
and in suites.py only). fastadv/eval/__init__.py imports it, so importing fastadv.eval.suites registers them.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

from fastadv.eval.suites import (ATTACK, CHECK, CONVENTION, Setting, SettingSpec, SuiteSpec, eval_step_size,
                            register_setting, register_suite)

AUTOATTACK = "autoattack"
AUTOATTACK_EVAL_EPS = "autoattack_eval_eps"
MASKING = "masking"
PAPER_CODE = "paper_code"
MASK_STEPS = (10, 100)  # with the PGD suite's PGD-40: the steps check
MASK_APGD, MASK_SQUARE, MASK_TRANSFER = "mask-apgd-ce", "mask-square", "mask-transfer"
# `fastadv eval --suite NAME`: the config override that asks for an optional suite
OPTIONAL_SUITES = {AUTOATTACK: "eval.autoattack=true", MASKING: "eval.masking_checks=true",
                   PAPER_CODE: 'eval.attack_convention="paper-code"'}


def mask_pgd_key(steps: int) -> str: return f"mask-pgd{steps}"  # noqa: E704
def mask_eps_key(multiple: float) -> str: return f"mask-eps{multiple:g}x"  # noqa: E704


def _aa_attacks(cfg) -> tuple[str, ...]:
    return tuple(a.strip() for a in cfg.eval.autoattack_attacks.split(",") if a.strip())


def _aa_setting(cfg, key: str, title: str, eps: float, head: str, suite: str = AUTOATTACK,
                version: str | None = None, attacks: tuple[str, ...] | None = None) -> Setting:
    from fastadv.attacks import AutoAttackRun

    e = cfg.eval
    run = AutoAttackRun(eps=eps, num_classes=cfg.model.num_classes, head=head,
                        version=version or e.autoattack_version, attacks=_aa_attacks(cfg) if attacks is None else attacks,
                        seed=e.seed, square_queries=e.square_queries)
    fields = {"eps": eps, "eps_255": eps * 255, "version": run.version, "attacks": list(run.attacks),
              "seed": run.seed, "square_queries": run.square_queries, "head": head}
    return Setting(key, title, suite, run, fields, resumable=True)


def autoattack_settings(cfg, at_eval_eps: bool = False) -> list[Setting]:
    """AutoAttack on the K head (and on all K+M logits for an LA model) at eval.autoattack_eps, or at eval.eps."""
    e = cfg.eval
    if not e.autoattack or (at_eval_eps and (not e.autoattack_at_eval_eps or e.eps == e.autoattack_eps)):
        return []
    eps, key = (e.eps, f"{AUTOATTACK}-evaleps") if at_eval_eps else (e.autoattack_eps, AUTOATTACK)
    name = f"AutoAttack at eps {eps * 255:.3g}/255"
    out = [_aa_setting(cfg, key, f"{name} (K-class head{', adaptive' if cfg.model.num_aux else ''})", eps, "k")]
    if cfg.model.num_aux:
        out.append(_aa_setting(cfg, f"{key}-kplusm", f"{name} (all K+M logits; scored by argmax over K)", eps, "all"))
    return out


def _aa_params(info: Mapping[str, Any]) -> str | None:
    if "eps" not in info:
        return None
    attacks = f", attacks={','.join(info['attacks'])}" if info.get("attacks") else ""
    return f"eps={info['eps']:.4g} ({info['eps'] * 255:.3g}/255), version={info.get('version')}{attacks}, seed={info.get('seed')}"


def masking_settings(cfg) -> list[Setting]:
    """The attacks the gradient-masking checks compare (K-class head, eval.eps unless named)."""
    from fastadv.attacks import PGD as PGDAttack
    from fastadv.attacks import TransferPGD
    from fastadv.config.eval_options import parse_eps_multiples

    e = cfg.eval
    if not e.masking_checks:
        return []
    k = cfg.model.num_classes
    common = {"tolerance": e.masking_tolerance, "zero": e.masking_zero}

    def pgd(key: str, title: str, eps: float, steps: int) -> Setting:
        alpha = 2.5 * eps / steps
        attack = PGDAttack(eps=eps, steps=steps, alpha=alpha, random_start=e.random_start, num_classes=k, head="k")
        return Setting(key, title, MASKING, attack, {"eps": eps, "steps": steps, "alpha": alpha, "head": "k", **common},
                       resumable=True)

    out = [pgd(mask_pgd_key(n), f"PGD-{n} (masking check: steps)", e.eps, n) for n in MASK_STEPS]
    for m in parse_eps_multiples(e.masking_eps):
        eps = min(1.0, m * e.eps)
        s = pgd(mask_eps_key(m), f"PGD-{e.steps} at {m:g} x eps (masking check: eps)", eps, e.steps)
        out.append(replace(s, fields={**s.fields, "multiple": m}))
    for key, attack in ((MASK_APGD, "apgd-ce"), (MASK_SQUARE, "square")):
        s = _aa_setting(cfg, key, f"{attack.upper()} alone (masking check: black-box vs white-box)", e.eps, "k",
                        MASKING, version="standard", attacks=(attack,))
        out.append(replace(s, fields={**s.fields, **common}))
    if e.transfer_from:
        base = PGDAttack(eps=e.eps, steps=e.steps, alpha=eval_step_size(e), random_start=e.random_start,
                         num_classes=k, head="k")
        out.append(Setting(MASK_TRANSFER, f"PGD-{e.steps} transferred from {e.transfer_from} (masking check: transfer)",
                           MASKING, TransferPGD(source=e.transfer_from, pgd=base),
                           {"eps": e.eps, "steps": e.steps, "source": e.transfer_from, **common}, resumable=True))
    return out


def paper_code_settings(cfg) -> list[Setting]:
    """PGD as the paper's code runs it (fastadv.attacks.paper_convention), next to the standard PGD."""
    from fastadv.attacks import PaperCodePGD

    e = cfg.eval
    if e.attack_convention != "paper-code":
        return []
    attack = PaperCodePGD(std=tuple(cfg.model.std), eps=e.paper_eps, step=e.paper_step, steps=e.steps,
                          random_start=e.random_start)
    sigma = sum(cfg.model.std) / len(cfg.model.std)
    return [Setting(f"paper-pgd{e.steps}", f"PGD-{e.steps}, paper-code convention (all K+M logits, own label, "
                                           f"normalized eps, no [0, 1] box)", PAPER_CODE, attack,
                    {"eps_normalized": e.paper_eps, "step_normalized": e.paper_step, "steps": e.steps,
                     "pixel_eps_255_mean": e.paper_eps * sigma * 255, "head": "all", "label": "own argmax over K+M",
                     "box": "none"})]


register_setting(SettingSpec(AUTOATTACK, ATTACK, AUTOATTACK, (r"autoattack", r"autoattack-kplusm"),
                             build=autoattack_settings, label="AutoAttack", params=_aa_params,
                             title=lambda key: "AutoAttack (eval.autoattack_eps)"))
register_setting(SettingSpec(AUTOATTACK_EVAL_EPS, ATTACK, AUTOATTACK, (r"autoattack-evaleps", r"autoattack-evaleps-kplusm"),
                             build=lambda cfg: autoattack_settings(cfg, at_eval_eps=True), label="AutoAttack",
                             params=_aa_params, title=lambda key: "AutoAttack (eval.eps)"))
register_setting(SettingSpec(MASKING, CHECK, MASKING, (r"mask-pgd(\d+)", r"mask-eps(.+)x", MASK_APGD, MASK_SQUARE, MASK_TRANSFER),
                             build=masking_settings, label="gradient-masking checks"))
register_setting(SettingSpec(PAPER_CODE, CONVENTION, PAPER_CODE, (r"paper-pgd(\d+)",), build=paper_code_settings,
                             label="paper-code PGD", title=lambda key: "PGD, paper-code convention"))
for _suite in (SuiteSpec(AUTOATTACK, "AutoAttack", ATTACK), SuiteSpec(MASKING, "gradient-masking checks", CHECK),
               SuiteSpec(PAPER_CODE, "paper-code attack convention", CONVENTION)):
    register_suite(_suite)
