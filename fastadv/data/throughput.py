"""Loader throughput: images/sec of one backend, for `make bench` (measures, never asserts).

    from fastadv.config import DataConfig
    from fastadv.data.throughput import loader_throughput
    cfg = DataConfig(path="/data/imagenet-samples", backend="dali", workers=2, same_split=True)
    loader_throughput(cfg, "train", batches=20)   # random-resized crop 224 + flip

For data.backend=ffcv write the .beton first (`fastadv data write-ffcv SRC OUT`, or
`fastadv.data.ffcv_backend.write_ffcv`) and set data.ffcv_train / data.ffcv_val.
"""

from __future__ import annotations

import dataclasses
import os
import platform
import time
from typing import Any

import torch

from fastadv.config import DataConfig
from fastadv.data.loader import build_dataset, build_loader, resolve_backend


def loader_throughput(cfg: DataConfig, split: str = "train", batches: int = 20, *, batch_size: int = 0,
                      warmup: int = 2, device: torch.device | str | None = None, epochs_max: int = 1000) -> dict[str, Any]:
    """Time `batches` batches of `split` after `warmup` untimed ones (first-epoch JIT, pipeline build, caches).

    Epochs repeat (seed 0, epochs 0, 1, ...) until enough batches were drawn, so a small
    folder still gives a steady-state number. images_per_sec counts decoded images only.
    """
    batch_size = batch_size or (cfg.batch_size if split == "train" else cfg.eval_batch_size)
    dev = torch.device(device) if device is not None else None
    t0 = time.perf_counter()
    dataset = build_dataset(cfg, split)
    setup = time.perf_counter() - t0
    images = skipped = drawn = 0
    first_batch = None
    start = None
    for epoch in range(epochs_max):
        loader = build_loader(cfg, split, batch_size=batch_size, shuffle=split == "train", seed=0, epoch=epoch,
                              drop_last=split == "train", dataset=dataset, device=dev)
        t_epoch = time.perf_counter()
        for batch in loader:
            if first_batch is None:
                first_batch = time.perf_counter() - t_epoch
            if drawn == warmup:
                if dev is not None and dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                start = time.perf_counter()
            elif drawn > warmup:
                images += int(batch.images.shape[0])
                skipped += batch.skipped
            drawn += 1
            if drawn > warmup + batches:
                break
        if drawn > warmup + batches:
            break
    if dev is not None and dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - start if start is not None else 0.0
    return {
        "backend": resolve_backend(cfg), "split": split, "batch_size": batch_size, "workers": cfg.workers,
        "image_size": cfg.image_size, "batches": max(0, drawn - warmup - 1), "images": images, "skipped": skipped,
        "seconds": seconds, "images_per_sec": images / seconds if seconds > 0 else 0.0,
        "setup_seconds": setup, "first_batch_seconds": first_batch,
        "device": str(dev) if dev is not None else "cpu", "cpu_count": os.cpu_count(),
        "machine": platform.machine(), "data": dataclasses.asdict(cfg),
    }
