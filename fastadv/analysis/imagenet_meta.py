"""ImageNet-1k facts the ReaL and ImageNet-X suites need: validation file names, the 1000
wnids in index order, the validation ground truth, and the map from a model's classes to
ImageNet indices.

The wnid list and the ground truth are read from the annotation files that ship inside the
`imagenet-x` package (imagenet_labels.txt, filename_label.csv); nothing is downloaded.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fastadv.errors import FastadvError

VAL_NAME = re.compile(r"^ILSVRC2012_val_(\d{8})\.JPEG$")
NUM_VAL = 50_000
NUM_CLASSES = 1000
PACKAGE_HINT = "pip install imagenet-x==0.0.7"


class SuiteSkipped(Exception):
    """A suite cannot run on these predictions; the message is the reason shown in the report."""


def val_index(file_name: str) -> int | None:
    """0-based index of an ImageNet validation file name (ILSVRC2012_val_00000001.JPEG -> 0)."""
    m = VAL_NAME.match(Path(file_name).name)
    if not m:
        return None
    i = int(m.group(1)) - 1
    return i if 0 <= i < NUM_VAL else None


def annotation_file(name: str) -> Path:
    """A file from the imagenet-x package's annotations/ folder (found without importing it)."""
    spec = importlib.util.find_spec("imagenet_x")
    if spec is None or not spec.submodule_search_locations:
        raise SuiteSkipped(f"the imagenet-x package is not installed ({PACKAGE_HINT})")
    path = Path(list(spec.submodule_search_locations)[0]) / "annotations" / name
    if not path.is_file():
        raise SuiteSkipped(f"{path} is missing from the installed imagenet-x package (reinstall: {PACKAGE_HINT})")
    return path


@functools.lru_cache(maxsize=1)
def imagenet_wnids() -> tuple[str, ...]:
    """The 1000 ImageNet-1k wnids in class-index order (sorted, as ImageFolder numbers them)."""
    with open(annotation_file("imagenet_labels.txt"), encoding="utf-8") as f:
        wnids = tuple(line.split(",", 1)[0].strip() for line in f if line.strip())
    if len(wnids) != NUM_CLASSES:
        raise SuiteSkipped(f"imagenet-x's imagenet_labels.txt lists {len(wnids)} classes, not 1000")
    return wnids


@functools.lru_cache(maxsize=1)
def imagenet_val_labels() -> dict[str, int]:
    """Ground-truth class index of each of the 50,000 validation file names."""
    with open(annotation_file("filename_label.csv"), newline="", encoding="utf-8") as f:
        return {row["file_name"]: int(row["label"]) for row in csv.DictReader(f)}


def imagenet_class_map(class_names: Sequence[str], num_classes: int) -> np.ndarray:
    """ImageNet-1k index of each of the model's classes.

    Class folders named by wnid (any subset of the 1000, in any order) map by name; a model
    whose classes are just the ids 0..999 (predictions from another tool) maps to itself.
    """
    names = [str(c) for c in class_names]
    wnids = imagenet_wnids()
    index = {w: i for i, w in enumerate(wnids)}
    if names and all(n in index for n in names):
        return np.array([index[n] for n in names], dtype=np.int64)
    if num_classes == NUM_CLASSES and names == [str(i) for i in range(NUM_CLASSES)]:
        return np.arange(NUM_CLASSES, dtype=np.int64)
    odd = [n for n in names if n not in index]
    raise SuiteSkipped(
        f"the model's {num_classes} classes are not ImageNet-1k classes ({len(odd)} class name(s) are "
        f"not ImageNet wnids, e.g. {', '.join(odd[:3])})"
    )


def imagenet_predictions(file_names: Sequence[str], predicted: np.ndarray, true: np.ndarray | None,
                         class_names: Sequence[str], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Check that predictions are on ImageNet validation images with their real classes and
    return (validation indices, predictions as ImageNet-1k indices); SuiteSkipped otherwise.
    """
    idx = [val_index(n) for n in file_names]
    bad = [n for n, i in zip(file_names, idx) if i is None]
    if bad:
        what = "none" if len(bad) == len(idx) else f"{len(bad)} of {len(idx)}"
        raise SuiteSkipped(
            f"{what} of the file names are ImageNet validation names (ILSVRC2012_val_NNNNNNNN.JPEG), "
            f"e.g. {', '.join(bad[:3])}"
        )
    mapping = imagenet_class_map(class_names, num_classes)
    predicted = np.asarray(predicted, dtype=np.int64)
    if predicted.size and (predicted.min() < 0 or predicted.max() >= mapping.size):
        raise FastadvError(f"predicted class ids must lie in 0..{mapping.size - 1} to map them to ImageNet")
    if true is not None:
        truth = imagenet_val_labels()
        mapped_true = mapping[np.asarray(true, dtype=np.int64)]
        differ = [n for n, t in zip(file_names, mapped_true.tolist()) if truth.get(Path(n).name) != t]
        if differ:
            raise SuiteSkipped(
                f"the true classes of {len(differ)} of {len(file_names)} images disagree with the ImageNet "
                f"validation labels (e.g. {', '.join(differ[:3])}): the images are not ImageNet val as labelled"
            )
    return np.array(idx, dtype=np.int64), mapping[predicted]
