"""ImageNet-X: our factor error rates and error ratios equal the imagenet-x package's own
functions (get_factor_accuracies, error_ratio) on synthetic predictions over its annotations."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("imagenet_x")
from imagenet_x import FACTORS, error_ratio, get_factor_accuracies  # noqa: E402

from fastadv.analysis.imagenet_meta import annotation_file  # noqa: E402
from fastadv.analysis.imagenet_x import factor_metrics  # noqa: E402
from fastadv.analysis.predictions import write_predictions  # noqa: E402
from fastadv.analysis.scoring import model_metrics  # noqa: E402


def _val_labels() -> tuple[list[str], np.ndarray]:
    with open(annotation_file("filename_label.csv"), newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["file_name"] for r in rows], np.array([int(r["label"]) for r in rows])


def _synthetic(names: list[str], labels: np.ndarray, seed: int) -> np.ndarray:
    """About 70% right, the rest a random wrong-or-right class; file-name dependent."""
    rng = np.random.default_rng(seed)
    right = rng.random(len(names)) < 0.7
    return np.where(right, labels, rng.integers(0, 1000, len(names)))


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore:Constructing a DataFrame")
def test_error_ratios_equal_the_package(tmp_path: Path) -> None:
    names, labels = _val_labels()
    models = tmp_path / "models"
    for seed in (0, 1):
        pred = _synthetic(names, labels, seed)
        prob = np.random.default_rng(seed + 10).random(len(names))
        write_predictions(models / f"model{seed}.csv", names, pred, prob)  # the package's format, no true_class
    theirs = get_factor_accuracies(str(models))  # the package reads the folder itself
    ratios = error_ratio(theirs)
    for seed in (0, 1):
        ours = model_metrics(models / f"model{seed}.csv")  # labels from the package's ground truth
        x = ours["suites"]["imagenet_x"]
        assert x["status"] == "done" and x["images"] == 46_110  # 48,868 annotated, prototypes filtered
        row = f"model{seed}"
        assert x["average_error"] == pytest.approx(1 - theirs.loc[row, "average"], abs=1e-12)
        for f in FACTORS:
            assert x["factors"][f]["error"] == pytest.approx(1 - theirs.loc[row, f], abs=1e-12), f
            assert x["factors"][f]["error_ratio"] == pytest.approx(ratios.loc[row, f], abs=1e-12), f
        assert ours["settings"]["clean"]["images"] == 50_000


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::FutureWarning", "ignore:Constructing a DataFrame")
def test_subset_and_all_wrong() -> None:
    import pandas as pd
    from imagenet_x import augment_model_predictions, compute_factor_accuracies, load_annotations

    names, labels = _val_labels()
    pred = labels.copy()
    pred[::3] = (labels[::3] + 1) % 1000
    out = factor_metrics(names[:5000], pred[:5000], np.full(5000, 0.5))
    df = pd.DataFrame({"file_name": names[:5000], "predicted_class": pred[:5000], "predicted_probability": 0.5})
    merged = augment_model_predictions(load_annotations(), {"m": df})
    theirs = compute_factor_accuracies(merged, FACTORS)
    ratios = error_ratio(theirs)
    assert out["images"] == len(merged) and 0 < out["images"] < 5000
    for f in FACTORS:
        if out["factors"][f]["images"]:
            assert out["factors"][f]["error"] == pytest.approx(1 - theirs.loc["m", f], abs=1e-12)
            assert out["factors"][f]["error_ratio"] == pytest.approx(ratios.loc["m", f], abs=1e-12)
    # every prediction wrong: the package gives NaN (no correct image at all); we report error 1, ratio 1
    wrong = factor_metrics(names[:300], (labels[:300] + 1) % 1000, np.full(300, 0.5))
    assert wrong["average_error"] == 1.0
    for v in wrong["factors"].values():
        if v["images"]:
            assert v["error"] == 1.0 and v["error_ratio"] == 1.0
        else:
            assert v["error"] is None and v["error_ratio"] is None
