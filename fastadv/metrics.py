"""Error metrics over prediction CSVs: top-1 and class-wise error (REFERENCE.md section 5).

All errors are fractions in [0, 1]; the report turns them into percentages.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from fastadv.errors import FastadvError
from fastadv.predictions import Predictions, read_predictions


def top1_error(pred: np.ndarray, true: np.ndarray) -> float:
    """Fraction of samples whose predicted class differs from the true class."""
    pred, true = np.asarray(pred).reshape(-1), np.asarray(true).reshape(-1)
    if pred.shape != true.shape or pred.size == 0:
        raise ValueError(f"top1_error needs two equal, non-empty arrays; got {pred.shape} and {true.shape}")
    return float(np.mean(pred != true))


def classwise_error(pred: np.ndarray, true: np.ndarray, num_classes: int) -> np.ndarray:
    """e_k = 1 - acc_k for k in [0, num_classes); NaN for classes without samples."""
    pred, true = np.asarray(pred).reshape(-1), np.asarray(true).reshape(-1)
    if pred.shape != true.shape:
        raise ValueError(f"classwise_error: shapes differ: {pred.shape} vs {true.shape}")
    counts = np.bincount(true, minlength=num_classes).astype(np.float64)
    wrong = np.bincount(true, weights=(pred != true).astype(np.float64), minlength=num_classes)
    if counts.size > num_classes:
        raise ValueError(f"classwise_error: true class {true.max()} >= num_classes {num_classes}")
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, wrong / counts, np.nan)


def summarize_classwise(errors: np.ndarray) -> dict[str, Any]:
    """Mean, population SD (ddof=0), worst class and worst-10% mean over classes with samples.

    ``n_classes`` counts the classes with samples; the worst 10% is ceil(0.1 * n_classes)
    of them (at least one). ``n_empty`` counts classes without samples (NaN, excluded).
    """
    errors = np.asarray(errors, dtype=np.float64).reshape(-1)
    present = errors[~np.isnan(errors)]
    n = int(present.size)
    if n == 0:
        nan = float("nan")
        return {"mean": nan, "sd": nan, "worst": nan, "worst_class": None, "worst_ties": 0,
                "worst10_mean": nan, "n_classes": 0, "n_empty": int(errors.size)}
    k = max(1, math.ceil(0.1 * n))
    return {
        "mean": float(np.nanmean(errors)),
        "sd": float(np.nanstd(errors, ddof=0)),
        "worst": float(np.nanmax(errors)),
        "worst_class": int(np.nanargmax(errors)),  # lowest index among ties
        "worst_ties": int(np.sum(present == present.max())),  # classes sharing the worst error
        "worst10_mean": float(np.sort(present)[-k:].mean()),
        "n_classes": n,
        "n_empty": int(errors.size - n),
    }


def relative_change(before: float, after: float) -> float:
    """(before - after) / before: the paper's "reduced by x%" (positive = lower error)."""
    if before == 0:
        return float("nan")
    return (before - after) / before


def setting_metrics(preds: Predictions, num_classes: int) -> dict[str, Any]:
    """Top-1 and class-wise error of one setting's predictions."""
    if preds.true is None:
        raise FastadvError(
            f"{preds.path} has no true_class column, so errors cannot be computed; "
            "re-run the evaluation (it writes true_class), or add the labels."
        )
    per_class = classwise_error(preds.predicted, preds.true, num_classes)
    return {
        "images": len(preds),
        "error": top1_error(preds.predicted, preds.true),
        "classwise": summarize_classwise(per_class),
        "per_class_error": [None if np.isnan(e) else float(e) for e in per_class],
    }


def _load_eval_json(eval_dir: Path) -> dict[str, Any]:
    path = eval_dir / "eval.json"
    if not path.is_file():
        raise FastadvError(f"{path} not found: pass an eval dir written by the evaluator.")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise FastadvError(f"{path} is not valid JSON ({e}); re-run the evaluation.") from e
    missing = [k for k in ("model", "num_classes", "settings") if k not in info]
    if missing or not isinstance(info.get("settings"), dict) or not info.get("settings"):
        raise FastadvError(
            f"{path} lacks {', '.join(missing) or 'a non-empty settings table'}; re-run the evaluation."
        )
    return info


def _check_same_files(first: Predictions, other: Predictions) -> None:
    """All settings of one model must score the same images with the same labels."""
    a, b = set(first.file_names), set(other.file_names)
    if a != b:
        only_a, only_b = sorted(a - b), sorted(b - a)
        raise FastadvError(
            f"{other.path} covers different images than {first.path}: {len(only_b)} only in the "
            f"former (e.g. {', '.join(only_b[:3]) or '-'}), {len(only_a)} only in the latter "
            f"(e.g. {', '.join(only_a[:3]) or '-'}). Re-run the evaluation of all settings together."
        )
    if first.true is not None and other.true is not None:
        label = dict(zip(first.file_names, first.true.tolist()))
        differ = [n for n, t in zip(other.file_names, other.true.tolist()) if label[n] != t]
        if differ:
            raise FastadvError(
                f"{other.path} and {first.path} disagree on true_class for {len(differ)} image(s) "
                f"(e.g. {', '.join(differ[:3])}); they must come from the same dataset."
            )


def model_metrics(eval_dir: str | Path) -> dict[str, Any]:
    """Metrics of every setting listed in ``<eval_dir>/eval.json``, in its order."""
    eval_dir = Path(eval_dir)
    info = _load_eval_json(eval_dir)
    k = int(info["num_classes"])
    num_aux = int(info.get("num_aux", 0) or 0)
    names = [str(c) for c in info.get("class_names") or range(k)]
    if len(names) != k:
        raise FastadvError(
            f"{eval_dir / 'eval.json'}: {len(names)} class_names for num_classes={k}; re-run the evaluation."
        )
    settings: dict[str, Any] = {}
    first: Predictions | None = None
    for key, setting_info in info["settings"].items():
        csv_path = eval_dir / "predictions" / f"{key}.csv"
        if not csv_path.is_file():
            raise FastadvError(
                f"{csv_path} not found, but eval.json lists setting {key!r}; re-run the evaluation."
            )
        preds = read_predictions(csv_path, k, num_outputs=k + num_aux)
        if first is None:
            first = preds
        else:
            _check_same_files(first, preds)
        settings[key] = {**(setting_info or {}), **setting_metrics(preds, k)}
    return {
        "model": str(info["model"]),
        "arch": info.get("arch"),
        "num_classes": k,
        "num_aux": num_aux,
        "label_augmented": bool(info.get("label_augmented", num_aux > 0)),
        "class_names": names,
        "eval_dir": str(eval_dir),
        "settings": settings,
    }
