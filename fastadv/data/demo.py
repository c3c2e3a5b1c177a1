"""The embedded demo dataset: scikit-learn's 8x8 digits (no download), upsampled to RGB.

Used on CPU when no dataset is configured, so every command runs end to end anywhere.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from fastadv.config import DataConfig
from fastadv.data.geometry import interpolation_name
from fastadv.data.seeding import limit_indices


@functools.lru_cache(maxsize=4)
def digits(image_size: int, interpolation: str = "bilinear") -> tuple[torch.Tensor, torch.Tensor]:
    """All 1797 digits as float32 [N,3,S,S] in [0,1] and int64 labels [N], upsampled with
    data.interpolation (bilinear | bicubic; built once per size and filter)."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = torch.from_numpy(data.images).float().div(16.0).unsqueeze(1)  # [N,1,8,8]
    x = F.interpolate(x, size=(image_size, image_size), mode=interpolation_name(interpolation), align_corners=False)
    x = x.clamp(0.0, 1.0).repeat(1, 3, 1, 1).contiguous()
    return x, torch.from_numpy(data.target).long()


@functools.lru_cache(maxsize=1)
def split_indices() -> dict[str, list[int]]:
    """Fixed stratified 80/20 split of the original indices, each sorted."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    y = load_digits().target
    train, val = train_test_split(list(range(len(y))), test_size=0.2, stratify=y, random_state=0)
    return {"train": sorted(train), "val": sorted(val)}


class DigitsDataset(torch.utils.data.Dataset):
    """In-memory digits; item `(index, sample_seed)` -> (image [3,S,S] in [0,1], label, index)."""

    classes = [str(i) for i in range(10)]

    def __init__(self, image_size: int, split: str, augment: bool, limit: int = 0,
                 interpolation: str = "bilinear") -> None:
        images, labels = digits(image_size, interpolation_name(interpolation))
        original = split_indices()[split]
        original = [original[i] for i in limit_indices(len(original), limit)]
        keep = torch.tensor(original, dtype=torch.int64)
        self.images = images[keep]
        self.labels = labels[keep].tolist()
        self.file_names = [f"digits_{i:04d}.png" for i in original]
        self.image_size = image_size
        self.augment = augment
        self.pad = max(1, image_size // 16)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.labels)

    def translate(self, image: torch.Tensor) -> torch.Tensor:
        """Random translation: zero-pad, then crop back (no flip: digits are not mirror-symmetric)."""
        p, s = self.pad, self.image_size
        padded = F.pad(image, (p, p, p, p))
        top, left = torch.randint(0, 2 * p + 1, (2,)).tolist()
        return padded[:, top : top + s, left : left + s]

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, int, int]:
        index, seed = item
        image = self.images[index]
        if self.augment:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                image = self.translate(image)
        return image.clone(), self.labels[index], index


def build_demo_dataset(cfg: DataConfig, split: str, augment: bool | None = None) -> DigitsDataset:
    """augment: random translation (default for "train") or none."""
    augment = split == "train" if augment is None else augment
    limit = cfg.limit_train if split == "train" else cfg.limit_val
    return DigitsDataset(cfg.image_size, split, augment=augment, limit=limit, interpolation=cfg.interpolation)
