"""torchvision's crop geometry as plain numbers, so other decoders (DALI) reproduce the folder backend.

random_resized_crop() draws exactly what RandomResizedCrop + RandomHorizontalFlip draw after
torch.manual_seed(seed); resize_shorter() / center_anchor() are Resize(int) / CenterCrop.
The resize filter is data.interpolation (bilinear | bicubic), the same in every backend but FFCV.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from PIL import Image
from torchvision import transforms
from torchvision.transforms import InterpolationMode

RATIO = (3.0 / 4.0, 4.0 / 3.0)  # torchvision RandomResizedCrop's aspect-ratio range


def random_resized_crop(width: int, height: int, seed: int, scale: tuple[float, float],
                        ratio: tuple[float, float] = RATIO) -> tuple[int, int, int, int, bool]:
    """(top, left, h, w, flip): torchvision RandomResizedCrop.get_params then RandomHorizontalFlip,
    drawn from a generator seeded with `seed` (the numbers torchvision draws after torch.manual_seed(seed))."""
    g = torch.Generator().manual_seed(seed)
    area = height * width
    log_ratio = torch.log(torch.tensor(ratio))
    for _ in range(10):
        target_area = area * torch.empty(1).uniform_(scale[0], scale[1], generator=g).item()
        aspect = torch.exp(torch.empty(1).uniform_(log_ratio[0], log_ratio[1], generator=g)).item()
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=g).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=g).item())
            break
    else:  # central crop fallback
        in_ratio = width / height
        if in_ratio < min(ratio):
            w, h = width, int(round(width / min(ratio)))
        elif in_ratio > max(ratio):
            h, w = height, int(round(height * max(ratio)))
        else:
            w, h = width, height
        top, left = (height - h) // 2, (width - w) // 2
    flip = bool(torch.rand(1, generator=g).item() < 0.5)
    return top, left, h, w, flip


def interpolation_name(name: str) -> str:
    """data.interpolation as a filter name. "auto" reaches the data layer only unresolved (a config
    saved before the option existed, a DataConfig built directly): bilinear, what those runs used."""
    return "bilinear" if name == "auto" else name


def pil_interpolation(name: str) -> InterpolationMode:
    """The torchvision / PIL filter of data.interpolation."""
    return {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}[interpolation_name(name)]


def resize_shorter(width: int, height: int, size: int) -> tuple[int, int]:
    """(new_w, new_h) of torchvision Resize(size): shorter side -> size, longer side truncated."""
    if width <= height:
        return size, int(size * height / width)
    return int(size * width / height), size


def center_anchor(extent: int, crop: int) -> int:
    """torchvision CenterCrop's offset along one axis (negative: zero padding, as it pads)."""
    if extent >= crop:
        return int(round((extent - crop) / 2.0))
    return -((crop - extent) // 2)


def resize_uint8(x: torch.Tensor, height: int, width: int, interpolation: str = "bilinear") -> torch.Tensor:
    """Antialiased bilinear / bicubic resize of uint8 [1,3,h,w] (PIL's BILINEAR / BICUBIC filter, as
    torchvision's tensor path)."""
    if x.shape[-2:] == (height, width):
        return x
    mode = interpolation_name(interpolation)
    return torch.nn.functional.interpolate(x, size=(height, width), mode=mode, antialias=True, align_corners=False)


def crop_or_pad(x: torch.Tensor, left: int, top: int, size: int) -> torch.Tensor:
    """The size x size window at (left, top) of [1,3,h,w]; zero padding where it leaves the image."""
    h, w = x.shape[-2:]
    if left < 0 or top < 0 or left + size > w or top + size > h:
        pad = (max(0, -left), max(0, left + size - w), max(0, -top), max(0, top + size - h))
        x = torch.nn.functional.pad(x, pad)
        left, top = max(0, left), max(0, top)
    return x[..., top : top + size, left : left + size]



@dataclass(frozen=True)
class Geometry:
    """What the pipeline does after decoding: "train" (random-resized crop + flip to size) or
    "val" (resize shorter side to `resize`, center crop `size`)."""

    mode: str
    size: int
    resize: int = 0
    min_scale: float = 0.08
    interpolation: str = "bilinear"  # data.interpolation

    def pil_transform(self) -> Callable[[Image.Image], torch.Tensor]:
        """The folder backend's transform for the same geometry (the per-batch fallback)."""
        mode = pil_interpolation(self.interpolation)
        if self.mode == "train":
            steps = [transforms.RandomResizedCrop(self.size, scale=(self.min_scale, 1.0), interpolation=mode,
                                                  antialias=True),
                     transforms.RandomHorizontalFlip()]
        else:
            steps = [transforms.Resize(self.resize, interpolation=mode, antialias=True), transforms.CenterCrop(self.size)]
        return transforms.Compose([*steps, transforms.ToTensor()])
