"""ImageNet-C folders (`<root>/<corruption>/<severity>/<wnid>/*.JPEG`, 224x224 in the release):
checked up front, read with a center crop only (no resize), same protocol as FolderDataset.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms

from fastadv.data.class_folders import scan
from fastadv.data.files import DECODE_ERRORS
from fastadv.errors import FastadvError

log = logging.getLogger("fastadv.data")
_EXAMPLES = 3


def _examples(items: Sequence[str]) -> str:
    more = f", ... ({len(items) - _EXAMPLES} more)" if len(items) > _EXAMPLES else ""
    return ", ".join(items[:_EXAMPLES]) + more


def check_imagenet_c_root(root: Path, corruptions: Sequence[str], severities: Sequence[int]) -> None:
    """Every requested corruption and severity folder must exist; name all that are missing."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FastadvError(f"ImageNet-C folder {root} does not exist (expected <corruption>/<severity>/<wnid>/*.JPEG)")
    missing_c = [c for c in corruptions if not (root / c).is_dir()]
    missing_s = [f"{c}/{s}" for c in corruptions if c not in missing_c for s in severities
                 if not (root / c / str(s)).is_dir()]
    if missing_c or missing_s:
        parts = []
        if missing_c:
            parts.append(f"{len(missing_c)} of {len(corruptions)} corruption folder(s) missing ({_examples(missing_c)})")
        if missing_s:
            parts.append(f"{len(missing_s)} severity folder(s) missing ({_examples(missing_s)})")
        raise FastadvError(
            f"ImageNet-C folder {root}: {'; '.join(parts)}. Expected <corruption>/<1..5>/<wnid>/*.JPEG; "
            "restrict the evaluation with eval.corruptions=... / eval.severities=... if you hold only part of it."
        )


def image_size_of(path: str) -> tuple[int, int] | None:
    """(width, height) from the file header, or None if it cannot be read."""
    try:
        with Image.open(path) as image:
            return image.size
    except DECODE_ERRORS:
        return None


class ImageNetCDataset(torch.utils.data.Dataset):
    """One (corruption, severity) folder; item `(index, sample_seed)` -> (image [3,S,S] in [0,1], label, index) or None.

    Labels come from the class folder names matched against `classes` (the model's, by name).
    `keep` (file name -> class name) restricts the images to those of the clean evaluation;
    any of them missing here is an error. Images must be exactly image_size x image_size: a
    file of another size is returned as None and reported by `wrong_size` after the pass.
    """

    def __init__(self, root: Path, corruption: str, severity: int, classes: Sequence[str], image_size: int,
                 keep: Mapping[str, str] | None = None) -> None:
        self.root = Path(root).expanduser() / corruption / str(severity)
        self.corruption, self.severity, self.image_size = corruption, severity, image_size
        found, samples = scan(self.root)
        self.classes = list(classes)
        if found != self.classes:
            missing = sorted(set(self.classes) - set(found))
            extra = sorted(set(found) - set(self.classes))
            raise FastadvError(
                f"ImageNet-C {self.root}: {len(found)} class folder(s), the model has {len(self.classes)} classes"
                f" ({len(missing)} missing, e.g. {_examples(missing) or '-'}; {len(extra)} unexpected, e.g. "
                f"{_examples(extra) or '-'}). The folders must be the validation set's class folders (wnids)."
            )
        base = [os.path.basename(p) for p, _ in samples]
        names = base if len(set(base)) == len(base) else [os.path.relpath(p, self.root) for p, _ in samples]
        if keep is not None:
            where = {n: i for i, n in enumerate(names)}
            absent = [n for n in keep if n not in where]
            if absent:
                raise FastadvError(
                    f"ImageNet-C {self.root} lacks {len(absent)} of the {len(keep)} evaluated validation images "
                    f"({_examples(sorted(absent))}); regenerate it or point eval.imagenet_c at a complete copy."
                )
            moved = [n for n in keep if self.classes[samples[where[n]][1]] != keep[n]]
            if moved:
                raise FastadvError(
                    f"ImageNet-C {self.root}: {len(moved)} image(s) sit in another class folder than in the "
                    f"validation set ({_examples(sorted(moved))})."
                )
            order = sorted(where[n] for n in keep)
            samples, names = [samples[i] for i in order], [names[i] for i in order]
        self.paths = [p for p, _ in samples]
        self.labels = [y for _, y in samples]
        self.file_names = names
        self.transform = transforms.Compose([transforms.CenterCrop(image_size), transforms.ToTensor()])
        self._warned: set[int] = set()
        first = image_size_of(self.paths[0]) if self.paths else None
        if first is not None and first != (image_size, image_size):
            raise FastadvError(self._size_message([(self.file_names[0], first)], len(self.paths), checked=1))

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int, int] | None:
        index, _ = item
        try:
            with open(self.paths[index], "rb") as f:
                image = Image.open(f).convert("RGB")
        except DECODE_ERRORS as exc:
            if index not in self._warned:
                self._warned.add(index)
                log.warning("skipping %s: cannot decode (%s: %s)", self.paths[index], type(exc).__name__, exc)
            return None
        if image.size != (self.image_size, self.image_size):
            return None  # reported with all the others by wrong_size()
        return self.transform(image), self.labels[index], index

    def wrong_size(self, indices: Sequence[int]) -> list[tuple[str, tuple[int, int]]]:
        """Which of these (skipped) images have the wrong size, with their size."""
        out = []
        for i in indices:
            size = image_size_of(self.paths[i])
            if size is not None and size != (self.image_size, self.image_size):
                out.append((self.file_names[i], size))
        return out

    def _size_message(self, wrong: Sequence[tuple[str, tuple[int, int]]], total: int, checked: int | None = None) -> str:
        shown = [f"{n} is {w}x{h}" for n, (w, h) in wrong]
        scope = "the first image checked is" if checked == 1 else f"{len(wrong)} of {total} images are"
        return (f"ImageNet-C {self.root}: {scope} not {self.image_size}x{self.image_size} ({_examples(shown)}). "
                f"ImageNet-C is read with a center crop only, no resize: the images must have the evaluation "
                f"size data.image_size={self.image_size} (224 for the released ImageNet-C).")

    def check_sizes(self, skipped: Sequence[int]) -> None:
        """Raise if any of the skipped images was skipped for its size (counts and first examples)."""
        wrong = self.wrong_size(skipped)
        if wrong:
            raise FastadvError(self._size_message(wrong, len(self)))
