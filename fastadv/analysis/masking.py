"""Gradient-masking checks (Carlini et al. 2019 checklist; Athalye et al. 2018) from saved settings.

Each check compares robust accuracies (1 - top-1 error over the K classes) of settings the
masking suite wrote (fastadv.eval.suites_robustness.masking_settings) and gives "pass", "fail" or "skipped"
with one line of evidence. `tol` (eval.masking_tolerance, in the settings' eval.json entries)
is the slack a finite sample needs; "~0%" means at most eval.masking_zero.
- steps: accuracy does not rise from PGD-10 to PGD-40 to PGD-100;
- eps: accuracy does not rise with eps, and is ~0% at the largest eps;
- black-box: Square (no gradients) is not more successful than APGD-CE (white-box);
- K-head: the K-head PGD is not weaker than the K+M PGD (label-augmented models only);
- transfer: PGD crafted on the Std model is not more successful than the white-box PGD.
"""

from __future__ import annotations

import re
from typing import Any

from fastadv.eval import suites, suites_robustness

PASS, FAIL, SKIP = "pass", "fail", "skipped"


def _acc(settings: dict[str, Any], key: str | None) -> float | None:
    s = settings.get(key) if key else None
    return None if s is None or s.get("error") is None else 1.0 - float(s["error"])


def _fmt(x: float) -> str:
    return f"{100 * x:.2f}%"


def _chain(named: list[tuple[str, float]], tol: float) -> tuple[str, str]:
    rises = [f"{a} {_fmt(x)} -> {b} {_fmt(y)}" for (a, x), (b, y) in zip(named, named[1:]) if y > x + tol]
    text = ", ".join(f"{n} {_fmt(v)}" for n, v in named)
    return (FAIL, f"accuracy rises: {'; '.join(rises)}") if rises else (PASS, text)


def masking_checks(model: dict[str, Any]) -> list[dict[str, str]]:
    """[{check, status, detail}] for one model; [] when the masking suite did not run."""
    s = model["settings"]
    mine = [k for k in s if suites.suite_of(k) == suites_robustness.MASKING]
    if not mine:
        return []
    tol = float(s[mine[0]].get("tolerance", 0.01))
    zero = float(s[mine[0]].get("zero", 0.02))
    pgd_k, pgd_km = suites.attack_keys(s, suites.setting_spec(suites.PGD))
    out = []

    steps = sorted([(int(re.fullmatch(r"\D*(\d+)", k).group(1)), k) for k in s
                    if k == pgd_k or k in {suites_robustness.mask_pgd_key(n) for n in suites_robustness.MASK_STEPS}])
    named = [(f"{n} steps", _acc(s, k)) for n, k in steps]
    out.append({"check": "robust accuracy falls with PGD steps", **_status(_chain(named, tol) if len(named) > 1 else
                                                                           (SKIP, "fewer than two step counts"))})
    eps = sorted((float(s[k].get("multiple", 0)), k) for k in mine if "multiple" in s[k])
    if eps:
        named = [(f"{m:g}x eps", _acc(s, k)) for m, k in eps]
        status, detail = _chain(named, tol)
        if status == PASS and named[-1][1] > zero:
            status, detail = FAIL, f"{named[-1][0]} leaves {_fmt(named[-1][1])} (> {_fmt(zero)}): {detail}"
        out.append({"check": "robust accuracy falls with eps, to ~0% at a large eps", **_status((status, detail))})
    apgd, square = _acc(s, suites_robustness.MASK_APGD), _acc(s, suites_robustness.MASK_SQUARE)
    out.append({"check": "black-box Square not below white-box APGD-CE", **_status(
        (SKIP, "APGD-CE or Square missing") if apgd is None or square is None else
        (FAIL if square + tol < apgd else PASS, f"Square {_fmt(square)}, APGD-CE {_fmt(apgd)}"))})
    k, km = _acc(s, pgd_k), _acc(s, pgd_km)
    out.append({"check": "K-head attack not weaker than the K+M attack", **_status(
        (SKIP, "not a label-augmented model (no K+M attack)") if k is None or km is None else
        (FAIL if k > km + tol else PASS, f"K-head {_fmt(k)}, K+M {_fmt(km)}"))})
    transfer = _acc(s, suites_robustness.MASK_TRANSFER)
    out.append({"check": "transfer attack from Std not stronger than white-box", **_status(
        (SKIP, "no eval.transfer_from (the Std run)") if transfer is None or k is None else
        (FAIL if transfer + tol < k else PASS, f"transfer {_fmt(transfer)}, white-box PGD {_fmt(k)}"))})
    return out


def _status(pair: tuple[str, str]) -> dict[str, str]:
    return {"status": pair[0], "detail": pair[1]}


def failed_checks(model: dict[str, Any]) -> list[str]:
    return [c["check"] for c in masking_checks(model) if c["status"] == FAIL]
