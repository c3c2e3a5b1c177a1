"""The dispatcher: build_dataset / build_loader for data.backend, the one module that knows every backend.

Backends (folder, demo, dali, ffcv) import only the bottom modules (batch, sampler, seeding,
subset, threads) and are imported here lazily, when their backend is asked for: dali and
ffcv pull in heavy optional packages. The folder and demo backends go through a torch
DataLoader over EpochSampler (wrapped in Loader); dali and ffcv bring their own loaders.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import torch
from torch.utils.data import DataLoader

from fastadv.config import DataConfig
from fastadv.data.batch import Batch, collate
from fastadv.data.sampler import EpochSampler
from fastadv.data.seeding import mix
from fastadv.errors import FastadvError

SPLITS = ("train", "val")


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


def resolve_backend(cfg: DataConfig) -> str:
    """data.backend with "auto" resolved: dali when a CUDA GPU is visible and DALI imports, else folder."""
    if cfg.backend != "auto":
        return cfg.backend
    if torch.cuda.is_available():
        from fastadv.data.dali import dali_available

        if dali_available():
            return "dali"
    return "folder"


# ------------------------------------------------------------------- datasets, by backend
def _folder_dataset(cfg: DataConfig, split: str, augment: bool):
    from fastadv.data.folder import build_folder_dataset

    return build_folder_dataset(cfg, split, augment)


def _dali_dataset(cfg: DataConfig, split: str, augment: bool):
    """The folder backend's scan: DALI decodes the same files."""
    from fastadv.data.dali import require_dali

    require_dali()
    return _folder_dataset(cfg, split, augment)


def _ffcv_dataset(cfg: DataConfig, split: str, augment: bool):
    from fastadv.data.ffcv_backend import build_ffcv_dataset

    return build_ffcv_dataset(cfg, split)


def _demo_dataset(cfg: DataConfig, split: str, augment: bool):
    from fastadv.data.demo import build_demo_dataset

    return build_demo_dataset(cfg, split, augment)


DATASET_BUILDERS: dict[str, Callable] = {
    "folder": _folder_dataset,
    "dali": _dali_dataset,
    "ffcv": _ffcv_dataset,
    "demo": _demo_dataset,
}


# ------------------------------------------------- backends that bring their own loader
def _dali_loader(cfg: DataConfig, split: str, dataset, **kw):
    from fastadv.data.dali import build_dali_loader

    return build_dali_loader(cfg, split, dataset, **kw)


def _ffcv_loader(cfg: DataConfig, split: str, dataset, **kw):
    from fastadv.data.ffcv_backend import build_ffcv_loader

    return build_ffcv_loader(cfg, split, dataset, **kw)


OWN_LOADERS: dict[str, Callable] = {"dali": _dali_loader, "ffcv": _ffcv_loader}


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
    builder = DATASET_BUILDERS.get(backend)
    if builder is None:
        raise FastadvError(f"data.backend={cfg.backend!r} is not one of: auto, dali, ffcv, folder, demo")
    dataset = builder(cfg, split, augment)
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
    own_loader = OWN_LOADERS.get(backend)
    if own_loader is not None:
        return own_loader(cfg, split, dataset, batch_size=batch_size, shuffle=shuffle, seed=seed, epoch=epoch,
                          start_batch=start_batch, drop_last=drop_last, rank=rank, world_size=world_size,
                          device=device)
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
