"""Self-audit of an eval folder (issue 24): the invariants the one scoring rule (fastadv.eval.scoring_rule)
guarantees, checked from predictions/*.csv and eval.json only. `fastadv eval` runs it before it
writes the final eval.json; `fastadv metrics` (and so `report`) again on read. A violation is one
FastadvError line naming the file, the image and the rule.

- robust implies clean-correct: an image an attack setting scores correct is correct in clean.csv;
- robust accuracy <= clean accuracy, per class;
- every AutoAttack row covers exactly the evaluated images (those of clean.csv);
- no image both robust and broken: the `robust` column equals (predicted == true), and `broken_by`
  is empty exactly where it is 1.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from fastadv.analysis.predictions import Predictions, read_predictions
from fastadv.errors import FastadvError
from fastadv.eval.suites import CLEAN, IMAGENET_C_SETTING_SUITE, suite_of
from fastadv.eval.suites_robustness import AUTOATTACK

NOT_ATTACKS = (CLEAN, IMAGENET_C_SETTING_SUITE)  # the "suite" of settings that no attack ran on


def _fail(path: Path, image: str, rule: str, detail: str) -> None:
    raise FastadvError(f"{path}: image {image}: violates '{rule}' ({detail}); this eval folder is inconsistent: "
                       "re-run `fastadv eval` on it")


def audit_eval_dir(eval_dir: str | Path, info: Mapping[str, Any] | None = None) -> None:
    """Check every invariant above; `info` is the eval.json about to be written (else the one on disk)."""
    eval_dir = Path(eval_dir)
    if info is None:
        info = json.loads((eval_dir / "eval.json").read_text())
    settings = info.get("settings") or {}
    k = int(info["num_classes"])
    clean_path = eval_dir / "predictions" / f"{CLEAN}.csv"
    if CLEAN not in settings or not clean_path.is_file():
        return  # nothing to compare with (an eval without the clean pass)
    clean = read_predictions(clean_path, k)
    clean_ok = dict(zip(clean.file_names, (clean.predicted == clean.true).tolist()))
    for key, entry in settings.items():
        suite = (entry or {}).get("suite") or suite_of(key)
        if suite in NOT_ATTACKS:
            continue
        path = eval_dir / "predictions" / f"{key}.csv"
        if not path.is_file():
            continue  # scoring names a missing CSV in its own words
        preds = read_predictions(path, k)
        if suite == AUTOATTACK:
            _same_images(path, preds, clean_ok)
        _robust_needs_clean(path, preds, clean_ok)
        _per_class(path, preds, clean, k)
        _columns_agree(path, preds)


def _same_images(path: Path, preds: Predictions, clean_ok: dict[str, bool]) -> None:
    names = set(preds.file_names)
    extra = sorted(names - clean_ok.keys())
    if extra:
        _fail(path, extra[0], "AutoAttack rows cover exactly the evaluated images", "not in clean.csv")
    missing = sorted(clean_ok.keys() - names)
    if missing:
        _fail(path, missing[0], "AutoAttack rows cover exactly the evaluated images", "evaluated, but no AutoAttack row")
    if len(preds.file_names) != len(names):
        dup = next(n for n in preds.file_names if preds.file_names.count(n) > 1)
        _fail(path, dup, "AutoAttack rows cover exactly the evaluated images", "more than one row")


def _robust_needs_clean(path: Path, preds: Predictions, clean_ok: dict[str, bool]) -> None:
    for name, p, t in zip(preds.file_names, preds.predicted.tolist(), preds.true.tolist()):
        if p == t and clean_ok.get(name) is False:
            _fail(path, name, "robust implies clean-correct", f"scored {p} = its label here, misclassified in clean.csv")


def _per_class(path: Path, preds: Predictions, clean: Predictions, k: int) -> None:
    robust = np.bincount(preds.true[preds.predicted == preds.true], minlength=k)
    correct = np.bincount(clean.true[clean.predicted == clean.true], minlength=k)
    for c in np.nonzero(robust > correct)[0].tolist():
        _fail(path, f"(class {c})", "robust accuracy <= clean accuracy per class",
              f"{robust[c]} robust vs {correct[c]} clean-correct images")


def _columns_agree(path: Path, preds: Predictions) -> None:
    extra = preds.extra or {}
    if "robust" not in extra:
        return
    broken = extra.get("broken_by") or [""] * len(preds)
    for name, r, b, p, t in zip(preds.file_names, extra["robust"], broken, preds.predicted.tolist(), preds.true.tolist()):
        if str(r) not in ("0", "1"):
            _fail(path, name, "no image both robust and broken", f"robust={r!r} is not 0 or 1")
        if (r == "1") != (p == t):
            _fail(path, name, "no image both robust and broken", f"robust={r} but predicted {p}, label {t}")
        if (r == "1") == bool(b):
            _fail(path, name, "no image both robust and broken", f"robust={r}, broken_by={b!r}")
