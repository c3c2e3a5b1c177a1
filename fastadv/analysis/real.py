"""ImageNet-ReaL (Beyer et al. 2020): the reassessed label lists, and ReaL metrics of a model's
clean predictions.

real.json holds 50,000 lists indexed by validation file number (ILSVRC2012_val_{i+1:08d}.JPEG);
3,163 are empty and those images are excluded. The same file ships inside the `imagenet-x`
package (annotations/imagenet_real_labels.jsonl, one JSON array) and is the default.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fastadv.analysis.imagenet_meta import NUM_CLASSES, NUM_VAL, SuiteSkipped, annotation_file, imagenet_predictions
from fastadv.analysis.metrics import real_metrics
from fastadv.errors import FastadvError
from fastadv.eval.suites import REAL, suite_spec

PACKAGE_FILE = "imagenet_real_labels.jsonl"


def real_labels_path(path: str | None) -> Path:
    """The user's real.json, or the copy inside imagenet-x (SuiteSkipped if not installed)."""
    if path:
        p = Path(path).expanduser()
        if not p.is_file():
            raise FastadvError(f"ReaL labels file {p} not found (eval.real_labels / --real); "
                               "leave it empty to use the real.json shipped in the imagenet-x package")
        return p
    return annotation_file(PACKAGE_FILE)


@functools.lru_cache(maxsize=4)
def load_real_labels(path: str) -> tuple[tuple[int, ...], ...]:
    """Read and validate 50,000 label lists of ints in 0..999."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise FastadvError(f"ReaL labels {path} is not a readable JSON file ({e})") from e
    if not isinstance(data, list) or len(data) != NUM_VAL:
        got = f"{len(data)} entries" if isinstance(data, list) else type(data).__name__
        raise FastadvError(f"ReaL labels {path}: expected a JSON list of {NUM_VAL} label lists, got {got}")
    bad = [i for i, labels in enumerate(data)
           if not isinstance(labels, list)
           or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < NUM_CLASSES for x in labels)]
    if bad:
        raise FastadvError(
            f"ReaL labels {path}: {len(bad)} entr(ies) are not lists of class ids in 0..{NUM_CLASSES - 1} "
            f"(e.g. index {', '.join(str(i) for i in bad[:3])})"
        )
    return tuple(tuple(labels) for labels in data)


def real_suite(file_names: Sequence[str], predicted: np.ndarray, true: np.ndarray | None,
               class_names: Sequence[str], num_classes: int, path: str | None = None) -> dict[str, Any]:
    """ReaL metrics of clean predictions (SuiteSkipped when they are not ImageNet val)."""
    if true is None:
        raise FastadvError("ReaL needs the true class of each image to group errors by class")
    val_idx, pred_1k = imagenet_predictions(file_names, predicted, true, class_names, num_classes)
    source = real_labels_path(path)
    lists = load_real_labels(str(source))
    label_lists = [lists[i] for i in val_idx.tolist()]
    if not any(label_lists):
        raise SuiteSkipped(f"all {len(label_lists)} evaluated images have an empty ReaL label list")
    out = real_metrics(pred_1k, np.asarray(true), label_lists, num_classes)
    return {"title": suite_spec(REAL).label, "suite": REAL, "source": str(source),
            "note": "re-scores the clean predictions against the ReaL label lists", **out}
