"""Report parts of the robustness evaluation: the subset statement, the gradient-masking checks
(pass/fail per model, failures in the headline), AutoAttack per attack, and the paper-code
attack convention next to the standard one."""

from __future__ import annotations

from typing import Any

from fastadv.eval import suites, suites_robustness
from fastadv.analysis.masking import FAIL, failed_checks, masking_checks
from fastadv.analysis.report_render import Bullets, Doc, Heading, Para, Table

CLEAN_MISS = "clean-error"  # = fastadv.attacks.auto_attack.CLEAN_MISS (the analysis side stays torch-free; tested)


def _pct(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f}"


def headline_lines(models: list[dict[str, Any]]) -> list[str]:
    """Top-of-report lines: failed masking checks and class-poor subsets (never buried)."""
    lines = [f"**Gradient-masking check FAILED** for {m['model']}: {c}." for m in models for c in failed_checks(m)]
    for m in models:
        sub = m.get("subset") or {}
        if sub.get("classes_under_5"):
            few = sub["classes_under_5"]
            lines.append(f"**Warning**: {m['model']} was evaluated on subset {sub['subset']!r}, where {len(few)} class(es) "
                         f"have fewer than 5 images ({', '.join(map(str, few[:5]))}{', ...' if len(few) > 5 else ''}): "
                         "their class-wise numbers rest on very few images.")
    return lines


def subset_lines(models: list[dict[str, Any]]) -> list[str]:
    out = []
    for m in models:
        sub = m.get("subset")
        out.append(f"{m['model']}: all validation images" if not sub else
                   f"{m['model']}: subset {sub['subset']!r}, {sub['images']} images, {sub['min_per_class']} to "
                   f"{sub['max_per_class']} per class (seed {sub['seed']})")
    return out


def add_sections(doc: Doc, models: list[dict[str, Any]]) -> None:
    doc.add(Heading(2, "Evaluated images"), Bullets(subset_lines(models)))
    _autoattack(doc, models)
    _conventions(doc, models)
    rows = [[m["model"], c["check"], c["status"].upper() if c["status"] == FAIL else c["status"], c["detail"]]
            for m in models for c in masking_checks(m)]
    doc.add(Heading(2, "Gradient-masking checks"))
    if not rows:
        doc.add(Para("Not run (`fastadv eval --suite masking`, or `make eval AUTOATTACK=1`)."))
        return
    doc.add(Table(["model", "check", "status", "evidence (robust accuracy)"], rows, 2),
            Para("Carlini et al. (2019) and Athalye et al. (2018): each check compares robust accuracies (K-class "
                 "head, eval.eps unless named) with the slack eval.masking_tolerance; a failure means the white-box "
                 "numbers above may overstate robustness."))


def autoattack_counts(s: dict[str, Any]) -> dict[str, int]:
    """One AutoAttack row's images by outcome, from its CSV's broken_by column (scoring.py counts it):
    clean errors + robust + broken = evaluated images, and robust / images = the row's robust accuracy."""
    by = s.get("broken_by") or {}
    images, clean, robust = sum(by.values()), by.get(CLEAN_MISS, 0), by.get("robust", 0)
    return {"images": images, "clean errors": clean, "robust": robust, "broken": images - clean - robust}


def _autoattack(doc: Doc, models: list[dict[str, Any]]) -> None:
    rows = []
    for m in models:
        for key, s in m["settings"].items():
            if s.get("suite") == suites_robustness.AUTOATTACK:
                n = autoattack_counts(s)
                by = ", ".join(f"{a}: {c}" for a, c in (s.get("broken_by") or {}).items() if a not in ("robust", CLEAN_MISS))
                attacked = "all K+M logits" if s.get("head") == "all" else "K-class head"
                rows.append([m["model"], key, attacked, _pct(1 - s["error"]), str(n["images"]), str(n["clean errors"]),
                             str(n["robust"]), f"{n['broken']}" + (f" ({by})" if by else ""), _pct(s["classwise"]["sd"])])
    if rows:
        doc.add(Heading(2, "AutoAttack"),
                Table(["model", "setting", "attacked", "robust accuracy", "images", "clean errors", "robust",
                       "broken (by attack)", "class-wise SD of error"], rows, 1),
                Para("pyautoattack 0.2.0 (the official attacks). One scoring rule for every row (fastadv.eval.scoring_rule): "
                     "an image is robust only if it is correct over the K classes clean, every attack of the version "
                     "ran on it, and none changed its argmax over the K classes; clean errors + robust + broken = "
                     "images. The K+M row attacks all K+M logits; where pyautoattack's own test (argmax over K+M) "
                     "already fails on the clean image, that image is attacked on the K head instead (CSV column "
                     "attacked_on)."))


def _conventions(doc: Doc, models: list[dict[str, Any]]) -> None:
    pgd = suites.setting_spec(suites.PGD)
    rows = []
    for m in models:
        paper = [k for k, s in m["settings"].items() if s.get("suite") == suites_robustness.PAPER_CODE]
        if not paper:
            continue
        k, km = suites.attack_keys(m["settings"], pgd)
        err = (lambda key: _pct(m["settings"][key]["error"]) if key else "—")
        rows.append([m["model"], err(k), err(km), err(paper[0]),
                     f"{m['settings'][paper[0]].get('pixel_eps_255_mean', 0):.2f}/255"])
    if rows:
        doc.add(Heading(2, "Attack conventions side by side (error %)"),
                Table(["model", "standard, K-head", "standard, K+M", "paper-code", "paper-code pixel eps (mean over channels)"],
                      rows, 1),
                Para("Standard: true label, eps in pixels, [0, 1] box (docs/reference/methods.md: PGD). Paper-code: the paper's "
                     "public code (all K+M logits, the model's own K+M prediction as label, eps and step in "
                     "normalized-input units, no box; docs/reference/methods.md). The gap between the columns is the convention."))


def headline_fields(model: dict[str, Any]) -> dict[str, Any]:
    return {"masking_failed": failed_checks(model), "subset": (model.get("subset") or {}).get("subset")}
