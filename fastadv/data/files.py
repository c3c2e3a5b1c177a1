"""Reading image files for decoders that abort on one bad file (DALI): cheap checks, PIL fallback.

prepare_file() reads a file and returns the bytes to decode, or the reason to skip it, the
same files the folder backend (PIL) skips. FileSource pairs files with labels and warns
once per skipped file.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger("fastadv.data")

# PIL raises these for unreadable, empty, truncated or garbage files.
DECODE_ERRORS = (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


@dataclass
class Prepared:
    data: np.ndarray  # encoded bytes DALI decodes
    width: int
    height: int


def prepare_file(path: str) -> Prepared | str:
    """Read one file and check it cheaply; the bytes for DALI, or the reason to skip it.

    JPEG (gray / RGB, with its end marker) and RGB / gray PNG (with IEND) go to DALI as they
    are; anything else PIL can decode goes as a lossless PNG of PIL's RGB conversion (same
    pixels as the folder backend); what PIL cannot decode is skipped.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        return f"cannot read ({exc})"
    if not raw:
        return "empty file"
    try:
        with Image.open(io.BytesIO(raw)) as image:
            fmt, mode, (width, height) = image.format, image.mode, image.size
            direct = (fmt == "JPEG" and mode in ("L", "RGB") and b"\xff\xd9" in raw[-4096:]) or (
                fmt == "PNG" and mode in ("L", "RGB") and b"IEND" in raw[-64:]
            )
            if direct:
                return Prepared(np.frombuffer(raw, dtype=np.uint8), width, height)
            rgb = image.convert("RGB")  # full decode: raises on truncated / corrupt data
    except DECODE_ERRORS as exc:
        return f"cannot decode ({type(exc).__name__}: {exc})"
    buf = io.BytesIO()
    rgb.save(buf, format="PNG", compress_level=1)
    return Prepared(np.frombuffer(buf.getvalue(), dtype=np.uint8), width, height)


@dataclass
class FileSource:
    """Files and labels the loader reads; dataset index i = files[i]. Warnings once per file."""

    files: Sequence[str]
    labels: Sequence[int]
    warned: set[int] = field(default_factory=set)

    def __len__(self) -> int:
        return len(self.files)

    def prepare(self, index: int) -> Prepared | None:
        result = prepare_file(self.files[index])
        if isinstance(result, str):
            if index not in self.warned:
                self.warned.add(index)
                log.warning("skipping %s: %s", self.files[index], result)
            return None
        return result
