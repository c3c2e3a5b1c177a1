"""ImageNet-X (Idrissi et al. 2022) through the `imagenet-x` package's own functions.

Only (file_name, predicted_class) per validation image is needed; the 16 factor annotations
ship inside the package. acc_f = accuracy on the annotated images showing factor f, the
error ratio ER_f = (1 - acc_f) / (1 - acc_avg), acc_avg over the annotated subset. Defaults
as the package's `get_factor_accuracies`: top factor, prototypes filtered out.
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from fastadv.analysis.imagenet_meta import PACKAGE_HINT, SuiteSkipped, imagenet_predictions
from fastadv.analysis.predictions import write_predictions


def _package():
    try:
        # pandas + scipy: imported only when the suite runs
        from imagenet_x import FACTORS, augment_model_predictions, compute_factor_accuracies, error_ratio
        from imagenet_x import load_annotations
    except ImportError as e:
        raise SuiteSkipped(f"the imagenet-x package is not importable ({e}; {PACKAGE_HINT})") from e
    return FACTORS, load_annotations, augment_model_predictions, compute_factor_accuracies, error_ratio


@functools.lru_cache(maxsize=4)
def _annotations(which_factor: str, filter_prototypes: bool):
    _, load_annotations, *_ = _package()
    return load_annotations(which_factor=which_factor, partition="val", filter_prototypes=filter_prototypes)


def _number(x: Any) -> float | None:
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else x


def factor_metrics(file_names: Sequence[str], predicted_1k: np.ndarray, probability: np.ndarray,
                   which_factor: str = "top", filter_prototypes: bool = True) -> dict[str, Any]:
    """Per-factor error rate and error ratio of ImageNet-1k predictions, as the package computes them.

    The package divides correct by total counts per factor and yields NaN for every factor when
    not one annotated image is classified correctly; then a factor with images has error 1
    (0 of n correct) and error ratio 1, which is what we report.
    """
    import pandas as pd

    factors, _, augment, compute_accuracies, error_ratio = _package()
    annotations = _annotations(which_factor, filter_prototypes)
    df = pd.DataFrame({"file_name": [os.path.basename(n) for n in file_names],
                       "predicted_class": np.asarray(predicted_1k, dtype=np.int64),
                       "predicted_probability": np.asarray(probability, dtype=np.float64)})
    with warnings.catch_warnings():  # the package's ReaL merge trips a pandas deprecation warning
        warnings.simplefilter("ignore")
        merged = augment(annotations, {"model": df})
    if len(merged) == 0:
        raise SuiteSkipped(f"none of the {len(df)} evaluated images is annotated in ImageNet-X "
                           f"({which_factor} factor, prototypes {'filtered' if filter_prototypes else 'kept'})")
    acc = compute_accuracies(merged, list(factors), "is_correct")
    ratio = error_ratio(acc)
    counts = merged[list(factors)].sum()
    none_correct = not bool(merged["is_correct"].any())
    out_factors = {}
    for f in factors:
        n = int(counts[f])
        a = acc.loc["model", f] if "model" in acc.index else float("nan")
        if math.isnan(a) and n > 0 and none_correct:
            a = 0.0
        r = ratio.loc["model", f] if "model" in ratio.index else float("nan")
        if math.isnan(r) and n > 0 and none_correct:
            r = 1.0  # (1 - 0) / (1 - 0): no image right, on the factor or overall
        out_factors[f] = {"images": n, "error": None if n == 0 or math.isnan(a) else 1.0 - float(a),
                          "error_ratio": None if n == 0 else _number(r)}
    average_acc = float(merged["is_correct"].mean())
    return {
        "title": "ImageNet-X", "suite": "imagenet-x", "images": int(len(merged)),
        "which_factor": which_factor, "filter_prototypes": filter_prototypes,
        "average_error": 1.0 - average_acc, "factors": out_factors,
        "note": "factor accuracies and error ratios from the imagenet-x package "
                "(compute_factor_accuracies, error_ratio) on the clean predictions",
    }


def imagenet_x_suite(file_names: Sequence[str], predicted: np.ndarray, probability: np.ndarray,
                     true: np.ndarray | None, class_names: Sequence[str], num_classes: int,
                     export: str | os.PathLike | None = None) -> dict[str, Any]:
    """ImageNet-X metrics of a model's clean predictions; optionally write them in the package's
    CSV format (ImageNet-1k class ids) to `export` for its own tools."""
    _package()
    _, pred_1k = imagenet_predictions(file_names, predicted, true, class_names, num_classes)
    names = [os.path.basename(n) for n in file_names]
    out = factor_metrics(names, pred_1k, probability)
    if export:
        write_predictions(export, names, pred_1k, probability)
        out["predictions_csv"] = str(export)
    return out
