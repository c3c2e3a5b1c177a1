"""The class-folder scan (`root/<class>/<image>`) that the folder, dali and ffcv backends and ImageNet-C share."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from fastadv.errors import FastadvError


def scan(root: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Sorted class names and (path, label) samples, like torchvision's ImageFolder."""
    try:
        classes, class_to_idx = find_classes(root)
    except FileNotFoundError as exc:
        raise FastadvError(
            f"no class folders in {root}: expected one sub-folder per class (e.g. {root}/n01440764/*.JPEG)"
        ) from exc
    # make_dataset lower-cases file names before matching, so .JPEG counts too.
    samples = make_dataset(root, class_to_idx, extensions=IMG_EXTENSIONS, allow_empty=True)
    counts = Counter(label for _, label in samples)
    empty = [name for name in classes if counts[class_to_idx[name]] == 0]
    if empty:
        shown = ", ".join(empty[:5]) + (", ..." if len(empty) > 5 else "")
        raise FastadvError(
            f"{len(empty)} of {len(classes)} class folder(s) in {root} hold no images "
            f"({', '.join(IMG_EXTENSIONS)}): {shown}"
        )
    return classes, samples
