"""`fastadv data write-ffcv`: a class-folder split to an FFCV .beton plus OUT.json metadata.

As in the FFCV ImageNet example: the longest side capped at max_resolution, a share
compress_probability stored as JPEG of jpeg_quality, the rest raw. Labels and file order are
the folder backend's scan. Undecodable files are stored as an 8x8 placeholder and listed in
the metadata, so loading can drop them with a counted warning.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from fastadv.data.class_folders import scan
from fastadv.errors import FastadvError
from fastadv.runtime.fileio import atomic_write_text

log = logging.getLogger("fastadv.data")

FORMAT = "fastadv-ffcv"
PLACEHOLDER = 8  # side of the black image stored for an undecodable file
WRITE_MODES = ("proportion", "jpg", "raw", "smart")
SYSTEM_PACKAGES = "pkg-config g++ libturbojpeg0-dev libopencv-dev"


@functools.lru_cache(maxsize=1)
def ffcv_import_error() -> str | None:
    """None when FFCV imports (then patched: see _keep_torch_threads), else the reason."""
    import torch

    threads = torch.get_num_threads()
    try:
        import ffcv.loader  # noqa: F401
        import ffcv.writer  # noqa: F401
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        torch.set_num_threads(threads)  # importing FFCV sets torch's global thread count to 1
    _keep_torch_threads()
    return None


def _keep_torch_threads() -> None:
    """FFCV's Compiler.set_num_threads also sets torch's global intra-op thread count (at import,
    per Loader, per epoch, from its worker thread), which would silently change training's CPU
    threads. Here it sets numba's threads only, capped at what numba allows (data.workers may
    exceed the cores)."""
    import numba
    from ffcv.pipeline.compiler import Compiler

    if getattr(Compiler, "_fastadv_keeps_torch_threads", False):
        return

    def set_num_threads(cls, n: int) -> None:
        n = min(n if n >= 1 else (os.cpu_count() or 1), numba.config.NUMBA_NUM_THREADS)
        cls.num_threads = n
        numba.set_num_threads(n)

    Compiler.set_num_threads = classmethod(set_num_threads)
    Compiler._fastadv_keeps_torch_threads = True


def require_ffcv() -> None:
    reason = ffcv_import_error()
    if reason:
        raise FastadvError(
            f"data.backend=ffcv needs FFCV, which does not import ({reason}). Install the system packages "
            f"(`make system-deps`: {SYSTEM_PACKAGES}) and then `pip install -r requirements.txt`"
        )


def metadata_path(beton: str | Path) -> Path:
    return Path(str(beton) + ".json")


# -------------------------------------------------------------------------------------- writing
class _WriteSource:
    """What DatasetWriter's worker processes read: (RGB uint8 HWC, label) per file; never raises."""

    def __init__(self, paths: list[str], labels: list[int], failures: Path) -> None:
        self.paths, self.labels, self.failures = paths, labels, failures

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        np.random.seed(index)  # the writer's JPEG-or-raw draw (write_mode=proportion) repeats per file
        try:
            with Image.open(self.paths[index]) as image:
                return np.asarray(image.convert("RGB")), self.labels[index]
        except Exception as exc:  # noqa: BLE001 - decode errors and anything else: a raise here would hang FFCV's writer
            (self.failures / str(index)).write_text(f"{type(exc).__name__}: {exc}")
        return np.zeros((PLACEHOLDER, PLACEHOLDER, 3), np.uint8), self.labels[index]


def write_ffcv(src: str | Path, out: str | Path, *, max_resolution: int = 500, jpeg_quality: int = 90,
               compress_probability: float = 0.5, write_mode: str = "proportion", workers: int = 0,
               chunk_size: int = 100) -> dict:
    """Write the class-folder split `src` to the .beton `out` (+ `out`.json); returns the metadata."""
    require_ffcv()
    from ffcv.fields import IntField, RGBImageField
    from ffcv.writer import DatasetWriter

    if write_mode not in WRITE_MODES:
        raise FastadvError(f"write mode {write_mode!r} is not one of: {', '.join(WRITE_MODES)}")
    if not 1 <= jpeg_quality <= 100:
        raise FastadvError(f"jpeg quality {jpeg_quality} must be in [1, 100]")
    if not 0 <= compress_probability <= 1:
        raise FastadvError(f"compress probability {compress_probability:g} must be in [0, 1]")
    if max_resolution < PLACEHOLDER:
        raise FastadvError(f"max resolution {max_resolution} must be >= {PLACEHOLDER}")
    root = Path(src).expanduser()
    if not root.is_dir():
        raise FastadvError(f"{root} is not a folder: pass a split folder of class folders, e.g. /data/imagenet/train")
    classes, samples = scan(root)
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    paths, labels = [p for p, _ in samples], [label for _, label in samples]
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    fields = {"image": RGBImageField(write_mode=write_mode, max_resolution=max_resolution,
                                     jpeg_quality=jpeg_quality, compress_probability=compress_probability),
              "label": IntField()}
    with tempfile.TemporaryDirectory(prefix="fastadv-ffcv-") as failures:
        # A page must hold the largest raw image (longest side max_resolution, any aspect ratio).
        page_size = 1 << max(23, math.ceil(math.log2(3 * max_resolution * max_resolution + 1)))
        writer = DatasetWriter(str(tmp), fields, page_size=page_size,
                               num_workers=workers if workers > 0 else (os.cpu_count() or 1))
        _run_guarded(lambda: writer.from_indexed_dataset(_WriteSource(paths, labels, Path(failures)),
                                                         chunksize=chunk_size), tmp)
        skipped = {int(p.name): p.read_text() for p in Path(failures).iterdir()}
    os.replace(tmp, out)
    base = [os.path.basename(p) for p in paths]
    meta = {
        "format": FORMAT, "version": 1, "source": str(root.resolve()), "split": root.name,
        "classes": classes, "num_samples": len(paths), "labels": labels,
        "file_names": base if len(set(base)) == len(base) else [os.path.relpath(p, root) for p in paths],
        "skipped": {str(i): {"file": paths[i], "reason": r} for i, r in sorted(skipped.items())},
        "max_resolution": max_resolution, "jpeg_quality": jpeg_quality,
        "compress_probability": compress_probability, "write_mode": write_mode,
    }
    for i, r in sorted(skipped.items()):
        log.warning("skipping %s: cannot decode (%s); stored as a placeholder that loading drops", paths[i], r)
    atomic_write_text(metadata_path(out), json.dumps(meta))
    return meta


def _run_guarded(work, tmp: Path) -> None:
    """Run FFCV's writer (in the main thread: it forks) under a watchdog thread.

    FFCV's writer waits forever when a worker process dies; the watchdog interrupts it when
    no worker process has been alive for 10 s.
    """
    import _thread
    import multiprocessing

    done, fired = threading.Event(), threading.Event()

    def watch() -> None:
        idle_since = None
        while not done.wait(0.5):
            if multiprocessing.active_children():
                idle_since = None
                continue
            idle_since = idle_since or time.monotonic()
            if time.monotonic() - idle_since > 10:
                fired.set()
                _thread.interrupt_main()
                return

    watchdog = threading.Thread(target=watch, name="fastadv-ffcv-writer-watchdog", daemon=True)
    watchdog.start()
    try:
        work()
    except KeyboardInterrupt:
        if not fired.is_set():
            raise
    except Exception as exc:
        tmp.unlink(missing_ok=True)
        raise FastadvError(f"writing the .beton failed: {type(exc).__name__}: {exc}") from exc
    finally:
        done.set()
    if fired.is_set():
        tmp.unlink(missing_ok=True)
        raise FastadvError("FFCV's writer stopped making progress: its worker processes are gone (out of memory? "
                           "killed?); nothing was written. Check the log above and retry")
