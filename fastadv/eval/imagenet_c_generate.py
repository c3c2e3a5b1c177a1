"""ImageNet-C generated from the clean validation images with the `imagecorruptions` API
(the NumPy-2-compatible fork `imagecorruptions-imaug` 1.1.5; same import name).

Like the release (Hendrycks & Dietterich 2019): resize the shorter side to data.val_resize,
center crop data.image_size, corrupt, truncate to uint8 (imagecorruptions' `corrupt` does
np.uint8), save as JPEG quality 85 in the released layout <cache>/<corruption>/<severity>/
<wnid>/<file name>. The noise is seeded per image from (eval.seed, file name, corruption,
severity): `np.random.seed(s)` before the call, and `seed=s` for impulse_noise and
glass_blur, which draw from their own generators. So reruns and subsets repeat exactly, and
the cache is the same ImageNet-C folder the released-data reader reads.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import zlib
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torchvision import transforms
from tqdm import tqdm

from fastadv.analysis.metrics import CORRUPTIONS, EXTRA_CORRUPTIONS, SEVERITIES
from fastadv.data.seeding import mix
from fastadv.errors import FastadvError
from fastadv.runtime.fileio import atomic_write_bytes, atomic_write_text

log = logging.getLogger("fastadv.imagenet_c")  # the name it logged under before the module was renamed

JPEG_QUALITY = 85
SEED_KWARG = ("impulse_noise", "glass_blur")  # these take seed= instead of the global RNG
MANIFEST = "fastadv-imagenet-c.json"
FORMAT = "fastadv-imagenet-c-generated"


def parse_corruptions(text: str) -> list[str]:
    """"common" (the 15 of mCE), "all" (+ the 4 extra) or comma-separated names."""
    text = (text or "common").strip()
    if text == "common":
        return list(CORRUPTIONS)
    if text == "all":
        return list(CORRUPTIONS + EXTRA_CORRUPTIONS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    known = CORRUPTIONS + EXTRA_CORRUPTIONS
    bad = [n for n in names if n not in known]
    if bad or not names:
        raise FastadvError(f"eval.corruptions={text!r}: unknown corruption(s) {', '.join(bad) or '(none given)'}; "
                           f"use common, all, or names from: {', '.join(known)}")
    return list(dict.fromkeys(names))


def parse_severities(text: str) -> list[int]:
    try:
        values = [int(v) for v in str(text).replace(" ", "").split(",") if v]
    except ValueError:
        values = []
    if not values or any(v not in SEVERITIES for v in values):
        raise FastadvError(f"eval.severities={text!r} must be comma-separated integers in 1..5, e.g. 1,2,3,4,5")
    return sorted(set(values))


def corruption_seed(seed: int, file_name: str, corruption: str, severity: int) -> int:
    """The 32-bit numpy seed of one corrupted image."""
    return mix(seed, zlib.crc32(file_name.encode()), zlib.crc32(corruption.encode()), severity) % (2**32)


def corrupt_image(image: np.ndarray, corruption: str, severity: int, seed: int) -> np.ndarray:
    """imagecorruptions.corrupt under `seed`, leaving numpy's global RNG as it was."""
    from imagecorruptions import corrupt

    state = np.random.get_state()
    try:
        np.random.seed(seed)
        kwargs = {"seed": seed} if corruption in SEED_KWARG else {}
        return corrupt(image, severity=severity, corruption_name=corruption, **kwargs)
    finally:
        np.random.set_state(state)


def clean_array(path: str | os.PathLike, image_size: int, resize: int) -> np.ndarray:
    """The validation preprocessing of ImageNet-C: resize shorter side, center crop, uint8 HWC."""
    with open(path, "rb") as f:
        image = Image.open(f).convert("RGB")
    image = transforms.CenterCrop(image_size)(transforms.Resize(resize, antialias=True)(image))
    return np.asarray(image, dtype=np.uint8)


def jpeg_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


def default_cache(source_root: Path, seed: int, image_size: int, resize: int) -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fastadv" / "imagenet-c"
    key = hashlib.sha1(f"{source_root.resolve()}|{seed}|{image_size}|{resize}".encode()).hexdigest()[:12]
    return base / key


def _check_manifest(cache: Path, manifest: dict[str, Any]) -> None:
    path = cache / MANIFEST
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError:
            old = {}
        differ = [k for k in ("format", "source", "seed", "image_size", "val_resize", "jpeg_quality")
                  if old.get(k) != manifest[k]]
        if differ:
            raise FastadvError(
                f"the ImageNet-C cache {cache} was generated with other settings "
                f"({', '.join(f'{k}={old.get(k)!r} here, {manifest[k]!r} now' for k in differ)}); "
                "set eval.imagenet_c_cache to another folder or delete this one"
            )
        return
    if cache.exists() and any(cache.iterdir()):
        raise FastadvError(f"{cache} is not empty and holds no {MANIFEST}: refusing to write generated "
                           "ImageNet-C into it; set eval.imagenet_c_cache to an empty or new folder")
    cache.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(manifest, indent=2) + "\n")


def _generate_one(task: tuple) -> str | None:
    """Write every missing (corruption, severity) version of one image; the error text if it fails."""
    src, wnid, name, cache, corruptions, severities, seed, image_size, resize = task
    targets = [(c, s, Path(cache) / c / str(s) / wnid / name) for c in corruptions for s in severities]
    todo = [t for t in targets if not t[2].is_file()]
    if not todo:
        return None
    try:
        clean = clean_array(src, image_size, resize)
    except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError) as e:
        return f"{src}: {type(e).__name__}: {e}"
    for c, s, path in todo:
        atomic_write_bytes(path, jpeg_bytes(corrupt_image(clean, c, s, corruption_seed(seed, name, c, s))))
    return None


def generate_imagenet_c(paths: Sequence[str], labels: Sequence[int], classes: Sequence[str],
                        file_names: Sequence[str], cache: Path, corruptions: Sequence[str],
                        severities: Sequence[int], seed: int, image_size: int, resize: int,
                        source_root: Path, workers: int = 0, progress: bool = True) -> list[str]:
    """Fill `cache` with the missing corrupted images; returns the file names that could not be
    decoded (they are left out, as the clean evaluation skips them)."""
    if image_size < 32:
        raise FastadvError(f"imagecorruptions needs images of at least 32x32 pixels; data.image_size={image_size}")
    try:
        version = metadata.version("imagecorruptions-imaug")
    except metadata.PackageNotFoundError:
        raise FastadvError("eval.imagenet_c=generate needs the imagecorruptions-imaug package "
                           "(pip install imagecorruptions-imaug==1.1.5)") from None
    manifest = {"format": FORMAT, "source": str(Path(source_root).resolve()), "seed": seed,
                "image_size": image_size, "val_resize": resize, "jpeg_quality": JPEG_QUALITY,
                "imagecorruptions-imaug": version}
    _check_manifest(cache, manifest)
    tasks = [(p, classes[y], os.path.basename(p), str(cache), tuple(corruptions), tuple(severities), seed,
              image_size, resize) for p, y in zip(paths, labels)]
    bar = dict(total=len(tasks), desc="generating ImageNet-C", unit="img", disable=not progress, dynamic_ncols=True)
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            failed = list(tqdm(pool.map(_generate_one, tasks, chunksize=8), **bar))
    else:
        failed = [_generate_one(t) for t in tqdm(tasks, **bar)]
    bad = [f for f in failed if f]
    for message in bad[:5]:
        log.warning("ImageNet-C generation skipped %s", message)
    return [n for n, f in zip(file_names, failed) if f]
