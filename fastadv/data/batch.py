"""The Batch every backend yields, and `collate` (drops undecodable samples, counts them)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass
class Batch:
    images: torch.Tensor  # float32 [B,3,H,W] in [0,1], not mean/std normalized
    labels: torch.Tensor  # int64 [B]
    indices: torch.Tensor  # int64 [B] dataset indices
    skipped: int = 0  # samples of this batch dropped because their file could not be decoded

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(
            self.images.to(device, non_blocking=non_blocking),
            self.labels.to(device, non_blocking=non_blocking),
            self.indices.to(device, non_blocking=non_blocking),
            self.skipped,
        )

    def pin_memory(self) -> Batch:
        """Called by DataLoader's pin-memory thread (pin_memory=True)."""
        return Batch(self.images.pin_memory(), self.labels.pin_memory(), self.indices.pin_memory(), self.skipped)


Sample = tuple[torch.Tensor, int, int]


def collate(samples: Sequence[Sample | None], image_size: int = 0) -> Batch:
    """Stack the decodable samples; None (undecodable file) is dropped and counted in `skipped`.

    An all-failed batch gives images of shape [0, 3, image_size, image_size].
    """
    ok = [s for s in samples if s is not None]
    skipped = len(samples) - len(ok)
    if not ok:
        empty = torch.empty(0, dtype=torch.int64)
        return Batch(torch.empty(0, 3, image_size, image_size), empty, empty.clone(), skipped)
    return Batch(
        images=torch.stack([s[0] for s in ok]),
        labels=torch.tensor([s[1] for s in ok], dtype=torch.int64),
        indices=torch.tensor([s[2] for s in ok], dtype=torch.int64),
        skipped=skipped,
    )
