"""The `ffcv` backend: class folders written once to a .beton, read with FFCV's JIT decoders.

`fastadv data write-ffcv SRC OUT` (ffcv_write.py) writes SRC with the folder backend's
labels and file order, plus OUT.json. Files that could not be decoded are stored as
placeholders and dropped from every batch with a counted warning (Batch.skipped), so
batches hold the folder backend's indices.

Loading: RandomResizedCrop + flip (train) or CenterCrop of ratio image_size / val_resize
(val) decoders give uint8; fastadv turns them into float [0,1] itself (no mean/std: the
model normalizes), channels_last, on the loader's device. Order, DDP shard and resume point
come from fastadv's EpochSampler; FFCV's crop randomness is its own (not seeded per sample).
FFCV's worker thread can die silently and leave its queue waiting forever; here a failure
becomes an error and a loader without a batch for data.timeout seconds raises.
FFCV's decoders resize with their own fixed filter (OpenCV INTER_AREA, an area average): it is
what data.interpolation=bilinear gets here (as before the option existed); bicubic cannot be
honoured, and says so in one warning (warn_interpolation), it is not emulated.
"""

from __future__ import annotations

import collections
import functools
import json
import logging
import math
import queue
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from fastadv.config import DataConfig
from fastadv.runtime.hints import fastadv_command
from fastadv.data.ffcv_write import (  # noqa: F401 (ffcv_import_error, write_ffcv: re-exported)
    FORMAT,
    ffcv_import_error,
    metadata_path,
    require_ffcv,
    write_ffcv,
)
from fastadv.data.batch import Batch
from fastadv.data.geometry import interpolation_name
from fastadv.data.sampler import EpochSampler
from fastadv.data.seeding import limit_indices
from fastadv.data.subset import unwrap_subset
from fastadv.data.threads import single_threaded_torch
from fastadv.errors import FastadvError

log = logging.getLogger("fastadv.data")

# FFCV Loaders by (beton, pipeline): each JIT-compiles its pipeline on first use (seconds), so
# epochs and datasets over the same .beton reuse one. Bounded; holds no batch memory.
_LOADERS: collections.OrderedDict[tuple, object] = collections.OrderedDict()
_interpolation_warned: set[str] = set()


def warn_interpolation(cfg: DataConfig) -> None:
    """One warning per process when data.interpolation asks for a filter FFCV's decoders do not have."""
    name = interpolation_name(cfg.interpolation)
    if name != "bilinear" and name not in _interpolation_warned:
        _interpolation_warned.add(name)
        log.warning("data.interpolation=%s is not applied by data.backend=ffcv: FFCV's decoders resize with "
                    "OpenCV INTER_AREA (use data.backend=folder or dali for %s crops)", name, name)


# -------------------------------------------------------------------------------------- dataset
class BetonDataset:
    """A .beton plus its metadata: classes, labels, file_names like FolderDataset; index = beton row."""

    def __init__(self, beton: Path, split: str, cfg: DataConfig, limit: int = 0) -> None:
        require_ffcv()
        from ffcv.reader import Reader

        self.beton, self.split = beton, split
        side = metadata_path(beton)
        if not beton.is_file():
            raise FastadvError(
                f"{beton} does not exist: write it with `{fastadv_command()} data write-ffcv <{split} class folders> {beton}` "
                f"or point data.ffcv_{'train' if split == 'train' else 'val'} at your .beton"
            )
        if not side.is_file():
            raise FastadvError(f"{side} is missing: {beton} was not written by `{fastadv_command()} data write-ffcv`; rewrite it")
        try:
            meta = json.loads(side.read_text())
        except (OSError, ValueError) as exc:
            raise FastadvError(f"{side} is not valid JSON ({exc}); rewrite {beton} with `{fastadv_command()} data write-ffcv`") from exc
        if meta.get("format") != FORMAT:
            raise FastadvError(f"{side} is not fastadv .beton metadata; rewrite {beton} with `{fastadv_command()} data write-ffcv`")
        wanted, other = (cfg.train_dir, cfg.val_dir) if split == "train" else (cfg.val_dir, cfg.train_dir)
        if meta["split"] == other and other != wanted:
            raise FastadvError(
                f"{beton} was written from {meta['source']} (the {other!r} split) but the {split} split was "
                f"requested; set data.ffcv_{'train' if split == 'train' else 'val'} to the .beton of {wanted}/"
            )
        try:
            reader = Reader(str(beton))
        except Exception as exc:  # wrong magic / version / truncated file
            raise FastadvError(f"{beton} is not a readable FFCV .beton ({type(exc).__name__}: {exc})") from exc
        if set(reader.field_names) != {"image", "label"} or reader.num_samples != meta["num_samples"]:
            raise FastadvError(
                f"{beton} does not match {side} ({reader.num_samples} samples with fields {reader.field_names}, "
                f"metadata: {meta['num_samples']} samples with image, label); rewrite it with `{fastadv_command()} data write-ffcv`"
            )
        self.meta = meta
        self.classes: list[str] = list(meta["classes"])
        self.rows = limit_indices(meta["num_samples"], limit)  # dataset index -> beton row
        self.labels = [meta["labels"][r] for r in self.rows]
        self.file_names = [meta["file_names"][r] for r in self.rows]
        self.bad_rows = {int(r) for r in meta["skipped"]}
        self._warned: set[int] = set()

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.rows)

    def warn_skipped(self, row: int) -> None:
        if row not in self._warned:
            self._warned.add(row)
            info = self.meta["skipped"][str(row)]
            log.warning("skipping %s: cannot decode (%s); stored as a placeholder in %s", info["file"], info["reason"], self.beton)


def beton_path(cfg: DataConfig, split: str) -> Path:
    explicit = cfg.ffcv_train if split == "train" else cfg.ffcv_val
    if explicit:
        return Path(explicit).expanduser()
    if not cfg.path:
        raise FastadvError(
            f"data.backend=ffcv needs data.ffcv_{'train' if split == 'train' else 'val'} (a .beton) or data.path "
            f"(a folder holding {cfg.train_dir}.beton and {cfg.val_dir}.beton)"
        )
    return Path(cfg.path).expanduser() / f"{cfg.train_dir if split == 'train' else cfg.val_dir}.beton"


def build_ffcv_dataset(cfg: DataConfig, split: str) -> BetonDataset:
    return BetonDataset(beton_path(cfg, split), split, cfg, cfg.limit_train if split == "train" else cfg.limit_val)


# --------------------------------------------------------------------------------------- loader
def center_crop_window(height, width, _, ratio):
    """FFCV's center-crop window with rounding instead of truncation: the square of side
    ratio * shorter side (image_size / val_resize), closest to torchvision's Resize + CenterCrop."""
    s = min(height, width)
    c = min(int(ratio * s + 0.5), s)
    return int((height - c) / 2 + 0.5), int((width - c) / 2 + 0.5), c, c


@functools.lru_cache(maxsize=1)
def _center_crop_decoder_class():
    from ffcv.fields.decoders import CenterCropRGBImageDecoder

    class RoundedCenterCropDecoder(CenterCropRGBImageDecoder):
        @property
        def get_crop_generator(self):
            return center_crop_window

    return RoundedCenterCropDecoder


@functools.lru_cache(maxsize=1)
def _guarded_iterator_class():
    from ffcv.loader.epoch_iterator import IS_CUDA, EpochIterator

    class GuardedEpochIterator(EpochIterator):
        """FFCV's epoch thread, whose failure is recorded instead of leaving the consumer waiting forever."""

        def run(self) -> None:
            try:
                super().run()
            except BaseException as exc:  # noqa: BLE001 - reported by next_batch
                self.failure = exc

        def next_batch(self, timeout: float):
            deadline = time.monotonic() + timeout
            while True:
                try:
                    item = self.output_queue.get(timeout=0.1)
                    break
                except queue.Empty:
                    failure = getattr(self, "failure", None)
                    if failure is not None:
                        raise FastadvError(f"FFCV's loader thread failed: {type(failure).__name__}: {failure}") from failure
                    if not self.is_alive() and self.output_queue.empty():
                        raise FastadvError("FFCV's loader thread stopped without finishing the epoch")
                    if time.monotonic() > deadline:
                        raise FastadvError(f"FFCV produced no batch in {timeout:g} s (data.timeout); stopping instead of hanging")
            if item is None:
                return None
            slot, result = item
            if IS_CUDA:
                self.current_stream.wait_stream(self.cuda_streams[slot])
            return result

    return GuardedEpochIterator


class FfcvLoader:
    """One epoch of Batches from a .beton, in EpochSampler order; len() like the folder Loader."""

    def __init__(self, dataset: BetonDataset, rows: list[int], sampler: EpochSampler, *, batch_size: int,
                 drop_last: bool, train: bool, cfg: DataConfig, device: torch.device | str | None = None) -> None:
        self.dataset, self.rows, self.sampler = dataset, rows, sampler  # rows[item] = beton row
        self.batch_size, self.drop_last = batch_size, drop_last
        self.train, self.cfg = train, cfg
        self.device = torch.device(device) if device is not None else None
        self.timeout = cfg.timeout

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _ffcv_loader(self):
        from ffcv.fields.decoders import IntDecoder, RandomResizedCropRGBImageDecoder
        from ffcv.loader import Loader, OrderOption
        from ffcv.transforms import RandomHorizontalFlip, ToDevice, ToTensor, ToTorchImage

        c, cuda = self.cfg, self.device is not None and self.device.type == "cuda"
        beton = self.dataset.beton.resolve()
        key = (str(beton), beton.stat().st_mtime_ns, self.train, c.image_size, c.val_resize, c.min_scale,
               self.batch_size, c.workers, str(self.device) if cuda else "")
        loader = _LOADERS.pop(key, None)
        if loader is None:
            size = (c.image_size, c.image_size)
            if self.train:
                image = [RandomResizedCropRGBImageDecoder(size, scale=(c.min_scale, 1.0)), RandomHorizontalFlip()]
            else:
                image = [_center_crop_decoder_class()(size, ratio=c.image_size / c.val_resize)]
            image += [ToTensor(), ToTorchImage()]
            label = [IntDecoder(), ToTensor()]
            if cuda:
                image.append(ToDevice(self.device, non_blocking=True))
                label.append(ToDevice(self.device, non_blocking=True))
            loader = Loader(str(self.dataset.beton), batch_size=self.batch_size, num_workers=max(1, c.workers),
                            order=OrderOption.SEQUENTIAL, drop_last=False, batches_ahead=2,
                            pipelines={"image": image, "label": label})
        _LOADERS[key] = loader  # most recently used last
        while len(_LOADERS) > 8:
            _LOADERS.popitem(last=False)
        return loader

    def __iter__(self) -> Iterator[Batch]:
        from ffcv.pipeline.compiler import Compiler

        items = [index for index, _ in self.sampler][: len(self) * self.batch_size]
        if not items:
            return
        rows = np.asarray([self.rows[i] for i in items], dtype=np.uint64)
        loader = self._ffcv_loader()
        Compiler.set_num_threads(loader.num_workers)
        if loader.code is None:
            loader.generate_code()
        it = _guarded_iterator_class()(loader, rows)
        try:
            for start in range(0, len(items), self.batch_size):
                result = it.next_batch(self.timeout)
                if result is None:
                    raise FastadvError(f"FFCV ended the epoch early, at item {start} of {len(items)}")
                yield self._to_batch(result, items[start : start + self.batch_size])
        finally:
            it.close()

    def _to_batch(self, result, indices: list[int]) -> Batch:
        images, labels = result[0], result[1]
        if images.shape[0] != len(indices):
            raise FastadvError(f"FFCV returned {images.shape[0]} images for a batch of {len(indices)}")
        ds = self.dataset
        keep = [k for k, i in enumerate(indices) if self.rows[i] not in ds.bad_rows]
        for i in indices:
            if self.rows[i] in ds.bad_rows:
                ds.warn_skipped(self.rows[i])
        skipped = len(indices) - len(keep)
        index_tensor = torch.tensor([indices[k] for k in keep], dtype=torch.int64)
        labels = labels.reshape(-1).to(torch.int64)
        if skipped:
            sel = torch.tensor(keep, dtype=torch.int64, device=images.device)
            images, labels = images.index_select(0, sel), labels.index_select(0, sel)
        if self.device is not None:
            images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
            index_tensor = index_tensor.to(self.device)
        else:
            labels = labels.clone()
        if images.device.type == "cpu":
            with single_threaded_torch():  # FFCV's threads keep the cores busy: OpenMP would wait on them
                x = images.float().div_(255.0).contiguous(memory_format=torch.channels_last)
        else:
            x = images.float().div_(255.0).contiguous(memory_format=torch.channels_last)
        return Batch(x, labels, index_tensor, skipped)


def build_ffcv_loader(cfg: DataConfig, split: str, dataset: BetonDataset, *, batch_size: int, shuffle: bool,
                      seed: int = 0, epoch: int = 0, start_batch: int = 0, drop_last: bool = False, rank: int = 0,
                      world_size: int = 1, device: torch.device | str | None = None) -> FfcvLoader:
    """build_loader() for data.backend=ffcv, over a BetonDataset or an IndexSubset of one.

    Decoders follow the dataset's `augment` (set by build_dataset; default split == "train").
    """
    base, positions = unwrap_subset(dataset)
    if not isinstance(base, BetonDataset):
        raise FastadvError(f"data.backend=ffcv needs the dataset from build_dataset (a .beton), got {type(base).__name__}")
    rows = base.rows if positions is None else [base.rows[i] for i in positions]
    sampler = EpochSampler(len(rows), shuffle=shuffle, seed=seed, epoch=epoch, rank=rank, world_size=world_size,
                           drop_last=drop_last, skip=start_batch * batch_size)
    train = bool(getattr(base, "augment", split == "train"))
    warn_interpolation(cfg)
    return FfcvLoader(base, rows, sampler, batch_size=batch_size, drop_last=drop_last, train=train, cfg=cfg, device=device)
