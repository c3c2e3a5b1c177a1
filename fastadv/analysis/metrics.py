"""Error metrics, pure functions on predictions (docs/reference/metrics.md): top-1 and class-wise
error, worst classes, relative changes, ImageNet-C mCE (unnormalized and AlexNet-normalized)
and ImageNet-ReaL error.

All errors are fractions in [0, 1]; the report turns them into percentages.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fastadv.errors import FastadvError
from fastadv.analysis.predictions import Predictions


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


# ---------------------------------------------------------------- ImageNet-C

# The 15 corruptions of mCE (Hendrycks & Dietterich 2019), in the paper's order.
CORRUPTIONS = (
    "gaussian_noise", "shot_noise", "impulse_noise", "defocus_blur", "glass_blur", "motion_blur",
    "zoom_blur", "snow", "frost", "fog", "brightness", "contrast", "elastic_transform", "pixelate",
    "jpeg_compression",
)
EXTRA_CORRUPTIONS = ("speckle_noise", "gaussian_blur", "spatter", "saturate")  # released, not in mCE
SEVERITIES = (1, 2, 3, 4, 5)
# AlexNet's mean error over the five severities, keyed by name (never by position).
ALEXNET_ERRORS = {
    "gaussian_noise": 0.886428, "shot_noise": 0.894468, "impulse_noise": 0.922640,
    "defocus_blur": 0.819880, "glass_blur": 0.826268, "motion_blur": 0.785948,
    "zoom_blur": 0.798360, "snow": 0.866816, "frost": 0.826572, "fog": 0.819324,
    "brightness": 0.564592, "contrast": 0.853204, "elastic_transform": 0.646056,
    "pixelate": 0.717840, "jpeg_compression": 0.606500,
}


def corruption_errors(errors: Mapping[str, Mapping[int, float]]) -> dict[str, Any]:
    """CE and mCE from top-1 errors E[corruption][severity].

    CE_c = mean over the severities of E_c,s; ``mce`` = mean of CE_c over the 15 mCE
    corruptions present (the primary paper's, unnormalized); ``mce_alexnet`` = mean of
    CE_c / AlexNet_c (the standard mCE). ``complete`` is True only when all 15 corruptions
    were evaluated at all five severities; otherwise both means cover what was evaluated and
    the report marks them partial. Extra corruptions get a CE but never enter the mCE.
    """
    per: dict[str, Any] = {}
    for name, by_severity in errors.items():
        values = [float(v) for v in by_severity.values()]
        if not values:
            continue
        ce = float(np.mean(values))
        alex = ALEXNET_ERRORS.get(name)
        per[name] = {"errors": {int(s): float(e) for s, e in sorted(by_severity.items())}, "ce": ce,
                     "ce_alexnet": ce / alex if alex else None, "in_mce": name in ALEXNET_ERRORS}
    common = [c for c in CORRUPTIONS if c in per]
    complete = len(common) == len(CORRUPTIONS) and all(
        sorted(per[c]["errors"]) == list(SEVERITIES) for c in common)
    nan = float("nan")
    return {
        "corruptions": per,
        "mce": float(np.mean([per[c]["ce"] for c in common])) if common else nan,
        "mce_alexnet": float(np.mean([per[c]["ce_alexnet"] for c in common])) if common else nan,
        "mce_corruptions": common,
        "complete": complete,
    }


# ---------------------------------------------------------------- ImageNet-ReaL


def real_correct(predicted: np.ndarray, label_lists: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
    """(included, correct) masks: an image counts when its ReaL list is non-empty, and is
    correct when the prediction is in its list (Beyer et al. 2020)."""
    predicted = np.asarray(predicted).reshape(-1)
    if len(label_lists) != predicted.size:
        raise ValueError(f"real_correct: {predicted.size} predictions but {len(label_lists)} label lists")
    included = np.array([len(labels) > 0 for labels in label_lists], dtype=bool)
    correct = np.array([int(p) in labels for p, labels in zip(predicted.tolist(), label_lists)], dtype=bool)
    return included, correct & included


def real_metrics(predicted: np.ndarray, true: np.ndarray, label_lists: Sequence[Sequence[int]],
                 num_classes: int) -> dict[str, Any]:
    """ReaL top-1 error over the images with a non-empty list, and per-class error grouped by
    the original (true) class of each included image."""
    included, correct = real_correct(predicted, label_lists)
    true = np.asarray(true).reshape(-1)
    n = int(included.sum())
    if n == 0:
        raise ValueError("real_metrics: every image has an empty ReaL list")
    t = true[included]
    # An included image is "wrong" when its prediction is not in its list: classwise_error
    # needs (pred, true) pairs, so encode correctness as pred == true.
    pseudo = np.where(correct[included], t, -1)
    per_class = classwise_error(pseudo, t, num_classes)
    return {
        "images": n,
        "excluded_empty": int(included.size - n),
        "error": float(1.0 - correct[included].mean()),
        "classwise": summarize_classwise(per_class),
        "per_class_error": [None if np.isnan(e) else float(e) for e in per_class],
    }
