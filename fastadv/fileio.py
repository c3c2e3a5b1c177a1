"""One way to write a file a user keeps: a temp file beside it, then an atomic rename.

Readers never see a half-written file, and a crash (or a refused write) leaves any old
file byte-identical. Checkpoints, predictions, reports, figures, generated ImageNet-C and
FFCV metadata all go through `atomic_write`.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO


def atomic_write(path: str | os.PathLike, write: Callable[[IO], object], mode: str = "w",
                 fsync: bool = False) -> None:
    """Call ``write(file)`` on a temp file beside ``path``, then rename it into place.

    mode "w" writes UTF-8 text (newline=""), "wb" bytes. fsync=True flushes the data to
    disk before the rename (checkpoints: the rename must never point at unwritten blocks).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        kwargs = {"newline": "", "encoding": "utf-8"} if "b" not in mode else {}
        with os.fdopen(fd, mode, **kwargs) as f:
            write(f)
            if fsync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data), mode="wb")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))
