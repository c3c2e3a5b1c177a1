"""ImageNet-style class folders (`root/<wnid>/*.JPEG`), decoded with PIL."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from torchvision import transforms

from fastadv.config import DataConfig
from fastadv.data.class_folders import scan
from fastadv.data.files import DECODE_ERRORS
from fastadv.data.geometry import pil_interpolation
from fastadv.data.seeding import limit_indices
from fastadv.errors import FastadvError

log = logging.getLogger("fastadv.data")

EMPTY_PATH_MESSAGE = (
    "data.path is empty: pass --data /path/to/imagenet (a folder with train/ and val/ class folders)"
)
_fallback_warned: set[str] = set()

def _has_subfolders(path: Path) -> bool:
    with os.scandir(path) as it:
        return any(entry.is_dir() for entry in it)


def split_root(cfg: DataConfig, split: str) -> Path:
    """The folder holding the class folders of `split`.

    With data.same_split=true, falls back to data.path itself when it has neither split folder
    but directly holds class folders (e.g. a single sample set), with a warning once.
    """
    if not cfg.path:
        raise FastadvError(EMPTY_PATH_MESSAGE)
    base = Path(cfg.path).expanduser()
    if not base.exists():
        raise FastadvError(
            f"data.path {base} does not exist "
            f"(expected a folder with {cfg.train_dir}/ and {cfg.val_dir}/ class folders)"
        )
    if not base.is_dir():
        raise FastadvError(f"data.path {base} is not a folder")
    root = base / (cfg.train_dir if split == "train" else cfg.val_dir)
    if root.is_dir():
        return root
    if not (base / cfg.train_dir).exists() and not (base / cfg.val_dir).exists():
        if not _has_subfolders(base):
            raise FastadvError(
                f"no class folders in {base}: expected {cfg.train_dir}/ and {cfg.val_dir}/ folders, "
                f"or one sub-folder per class (e.g. {base}/n01440764/*.JPEG)"
            )
        if not cfg.same_split:
            raise FastadvError(
                f"{base} has no {cfg.train_dir}/ and {cfg.val_dir}/ folders: training and evaluating on the same "
                f"images would report training accuracy as validation accuracy. Split it into {cfg.train_dir}/ and "
                f"{cfg.val_dir}/, or set data.same_split=true to use its class folders for both on purpose"
            )
        if str(base) not in _fallback_warned:
            _fallback_warned.add(str(base))
            log.warning(
                "%s has no %s/ or %s/ folder: using its class folders for both train and val",
                base, cfg.train_dir, cfg.val_dir,
            )
        return base
    raise FastadvError(f"{root} does not exist: data.path {base} needs a {root.name}/ folder of class folders")


def train_transform(cfg: DataConfig) -> Callable[[Image.Image], torch.Tensor]:
    return transforms.Compose([
        transforms.RandomResizedCrop(cfg.image_size, scale=(cfg.min_scale, 1.0),
                                     interpolation=pil_interpolation(cfg.interpolation), antialias=True),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
    ])


def val_transform(cfg: DataConfig) -> Callable[[Image.Image], torch.Tensor]:
    return transforms.Compose([
        transforms.Resize(cfg.val_resize, interpolation=pil_interpolation(cfg.interpolation), antialias=True),
        transforms.CenterCrop(cfg.image_size),
        transforms.ToTensor(),
    ])


class FolderDataset(torch.utils.data.Dataset):
    """Class-folder images; item `(index, sample_seed)` -> (image [3,H,W] in [0,1], label, index) or None."""

    def __init__(
        self,
        root: Path,
        transform: Callable[[Image.Image], torch.Tensor],
        limit: int = 0,
    ) -> None:
        self.root = Path(root)
        self.transform = transform
        self.classes, samples = scan(self.root)
        samples = [samples[i] for i in limit_indices(len(samples), limit)]
        self.paths = [path for path, _ in samples]
        self.labels = [label for _, label in samples]
        base = [os.path.basename(p) for p in self.paths]
        unique = len(set(base)) == len(base)
        self.file_names = base if unique else [os.path.relpath(p, self.root) for p in self.paths]
        self._warned: set[int] = set()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> Image.Image | None:
        """Decode one file to RGB, or warn (once per file) and return None."""
        path = self.paths[index]
        try:
            with open(path, "rb") as f:
                image = Image.open(f)
                return image.convert("RGB")  # grayscale, CMYK, palette, PNG-as-JPEG -> RGB
        except DECODE_ERRORS as exc:
            if index not in self._warned:
                self._warned.add(index)
                log.warning("skipping %s: cannot decode (%s: %s)", path, type(exc).__name__, exc)
            return None

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int, int] | None:
        index, seed = item
        image = self.load(index)
        if image is None:
            return None
        with torch.random.fork_rng(devices=[]):  # augmentation never touches the global RNG
            torch.manual_seed(seed)
            tensor = self.transform(image)
        return tensor, self.labels[index], index


def build_folder_dataset(cfg: DataConfig, split: str, augment: bool | None = None) -> FolderDataset:
    """augment: train transform (default for "train") or the deterministic val transform."""
    root = split_root(cfg, split)
    augment = split == "train" if augment is None else augment
    limit = cfg.limit_train if split == "train" else cfg.limit_val
    return FolderDataset(root, train_transform(cfg) if augment else val_transform(cfg), limit)
