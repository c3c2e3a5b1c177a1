"""Deterministic, resumable, shardable data loading: EpochSampler, collate, build_loader.

Every sample is drawn as `(index, sample_seed)`; its augmentation depends on that seed only,
so an epoch is a pure function of (seed, epoch), independent of workers and resume point.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch.utils.data import DataLoader, Sampler

from fastadv.config import DataConfig
from fastadv.errors import FastadvError

_MASK64 = (1 << 64) - 1
SPLITS = ("train", "val")


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix(*values: int) -> int:
    """Hash integers into one well-spread 63-bit seed (valid for torch.manual_seed)."""
    h = 0
    for v in values:
        h = _splitmix64(h ^ (v & _MASK64))
    return h >> 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of one sample: a function of (seed, epoch, index) only."""
    return mix(seed, epoch, index, 0x5EED)


def limit_indices(n: int, limit: int) -> list[int]:
    """The first `limit` indices of a fixed (seed 0) permutation of range(n), sorted; all if limit <= 0."""
    if limit <= 0 or limit >= n:
        return list(range(n))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    return sorted(perm[:limit].tolist())


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


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields `(index, sample_seed)` for one epoch of one rank, from item `skip` on.

    Order: randperm seeded by mix(seed, epoch) if shuffle, else range(n). With world_size > 1
    the order is padded by wrap-around to a multiple of world_size (or truncated if drop_last),
    like DistributedSampler; rank takes positions rank::world_size.
    """

    def __init__(
        self,
        n: int,
        *,
        shuffle: bool,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        skip: int = 0,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise FastadvError(f"rank={rank} must be in [0, world_size={world_size})")
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, epoch
        self.rank, self.world_size, self.drop_last, self.skip = rank, world_size, drop_last, max(0, skip)
        if world_size == 1:
            self.per_rank = n
        elif drop_last:
            self.per_rank = n // world_size
        else:
            self.per_rank = math.ceil(n / world_size)

    def order(self) -> list[int]:
        """The full (padded or truncated) order over all ranks."""
        if self.shuffle:
            g = torch.Generator().manual_seed(mix(self.seed, self.epoch))
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = self.per_rank * self.world_size
        if total > len(order) and order:
            reps = math.ceil(total / len(order))
            order = (order * reps)[:total]
        return order[:total]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        mine = self.order()[self.rank :: self.world_size][self.skip :]
        for index in mine:
            yield index, sample_seed(self.seed, self.epoch, index)

    def __len__(self) -> int:
        return max(0, self.per_rank - self.skip)


class Loader:
    """Iterable of Batch over a DataLoader, moved to `device` if given."""

    def __init__(self, loader: DataLoader, device: torch.device | None = None) -> None:
        self.loader = loader
        self.device = device

    @property
    def dataset(self):
        return self.loader.dataset

    @property
    def sampler(self) -> EpochSampler:
        return self.loader.sampler

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[Batch]:
        for batch in self.loader:
            yield batch if self.device is None else batch.to(self.device, non_blocking=True)


@contextlib.contextmanager
def single_threaded_torch() -> Iterator[None]:
    """torch intra-op threads = 1 inside, restored after: for the small CPU ops of the dali / ffcv loaders,
    whose OpenMP threads would otherwise wait for the cores DALI's / FFCV's own threads keep busy."""
    n = torch.get_num_threads()
    if n > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if n > 1:
            torch.set_num_threads(n)


def resolve_backend(cfg: DataConfig) -> str:
    """data.backend with "auto" resolved: dali when a CUDA GPU is visible and DALI imports, else folder."""
    if cfg.backend != "auto":
        return cfg.backend
    if torch.cuda.is_available():
        from fastadv.data.dali import dali_available

        if dali_available():
            return "dali"
    return "folder"


def unwrap_subset(dataset) -> tuple[object, list[int] | None]:
    """(base dataset, base index of every item) through IndexSubset-style wrappers (.dataset + .indices)."""
    positions = None
    while hasattr(dataset, "dataset") and hasattr(dataset, "indices"):
        inner = list(dataset.indices)
        positions = inner if positions is None else [inner[i] for i in positions]
        dataset = dataset.dataset
    return dataset, positions


def build_dataset(cfg: DataConfig, split: str, augment: bool | None = None):
    """The dataset of `split` for cfg.backend; augment defaults to split == "train".

    folder / dali: the class-folder scan (dali decodes the same files); ffcv: the .beton and
    its metadata; demo: the embedded digits. All have classes, labels, file_names, len(), and
    `augment` (train geometry or the deterministic val geometry) for the loader.
    """
    if split not in SPLITS:
        raise FastadvError(f"split {split!r} is not one of: {', '.join(SPLITS)}")
    backend = resolve_backend(cfg)
    augment = split == "train" if augment is None else augment
    # Imported here: the backends import helpers from this module.
    if backend in ("folder", "dali"):
        if backend == "dali":
            from fastadv.data.dali import require_dali

            require_dali()
        from fastadv.data.folder import build_folder_dataset

        dataset = build_folder_dataset(cfg, split, augment)
    elif backend == "ffcv":
        from fastadv.data.ffcv_backend import build_ffcv_dataset

        dataset = build_ffcv_dataset(cfg, split)
    elif backend == "demo":
        from fastadv.data.demo import build_demo_dataset

        dataset = build_demo_dataset(cfg, split, augment)
    else:
        raise FastadvError(f"data.backend={cfg.backend!r} is not one of: auto, dali, ffcv, folder, demo")
    dataset.augment = augment
    return dataset


def build_loader(
    cfg: DataConfig,
    split: str,
    *,
    batch_size: int,
    shuffle: bool,
    seed: int = 0,
    epoch: int = 0,
    start_batch: int = 0,
    drop_last: bool = False,
    rank: int = 0,
    world_size: int = 1,
    dataset=None,
    device: torch.device | None = None,
):
    """One epoch of `split` for one rank, starting at batch `start_batch` (exact resume).

    Yields Batch; len() = number of batches. dali / ffcv batches are already on `device`,
    channels_last, and augmented as the dataset's `augment` says (default: split == "train").
    """
    if batch_size < 1:
        raise FastadvError(f"batch_size={batch_size} must be >= 1")
    if dataset is None:
        dataset = build_dataset(cfg, split)
    backend = resolve_backend(cfg)
    if backend in ("dali", "ffcv"):
        kw = dict(batch_size=batch_size, shuffle=shuffle, seed=seed, epoch=epoch, start_batch=start_batch,
                  drop_last=drop_last, rank=rank, world_size=world_size, device=device)
        if backend == "dali":
            from fastadv.data.dali import build_dali_loader

            return build_dali_loader(cfg, split, dataset, **kw)
        from fastadv.data.ffcv_backend import build_ffcv_loader

        return build_ffcv_loader(cfg, split, dataset, **kw)
    sampler = EpochSampler(
        len(dataset),
        shuffle=shuffle,
        seed=seed,
        epoch=epoch,
        rank=rank,
        world_size=world_size,
        drop_last=drop_last,
        skip=start_batch * batch_size,
    )
    workers = 0 if backend == "demo" else cfg.workers  # demo is in memory
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=functools.partial(collate, image_size=cfg.image_size),
        num_workers=workers,
        pin_memory=device is not None and torch.device(device).type == "cuda",
        drop_last=drop_last,
        # Own generator: DataLoader draws its worker base seed from it, not from the global RNG.
        generator=torch.Generator().manual_seed(mix(seed, epoch, rank)),
    )
    return Loader(loader, device)
