"""One way to write a file a user keeps: a temp file beside it, then an atomic rename.

Readers never see a half-written file, and a crash (or a refused write) leaves any old
file byte-identical. Checkpoints, predictions, reports, figures, generated ImageNet-C and
FFCV metadata all go through `atomic_write`.
"""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from fastadv.errors import FastadvError


def _umask() -> int:
    """The process umask (os has no getter: set and restore it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


class _CountingSink:
    """A write-only file that counts bytes: measures how much space a refused write needed."""

    def __init__(self, text: bool) -> None:
        self.size, self.text = 0, text

    def write(self, data) -> int:
        self.size += len(data.encode("utf-8")) if self.text else len(data)
        return len(data)

    def flush(self) -> None:
        pass


def _needed_bytes(write: Callable[[IO], object], mode: str) -> int | None:
    sink = _CountingSink("b" not in mode)
    try:
        write(sink)  # type: ignore[arg-type]
    except Exception:  # a writer that needs a real file (seek, fileno): size unknown
        return None
    return sink.size


def _is_disk_full(exc: BaseException | None) -> bool:
    """ENOSPC / EDQUOT, also when a writer wrapped it (torch.save turns it into a RuntimeError)."""
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def _disk_full(path: Path, write: Callable[[IO], object], mode: str) -> FastadvError:
    needed = _needed_bytes(write, mode)
    free = shutil.disk_usage(path.parent).free
    need = f"it needs {needed / 2**20:.1f} MiB" if needed is not None else "it needs more space"
    old = f"; the previous {path.name} is intact" if path.exists() else ""
    return FastadvError(f"no space left on the device writing {path}: {need}, {free / 2**20:.1f} MiB are free in "
                        f"{path.parent}{old}. Free some space (or write to another folder) and run again")


def atomic_write(path: str | os.PathLike, write: Callable[[IO], object], mode: str = "w",
                 fsync: bool = False) -> None:
    """Call ``write(file)`` on a temp file beside ``path``, then rename it into place.

    mode "w" writes UTF-8 text (newline=""), "wb" bytes. fsync=True flushes the data to
    disk before the rename (checkpoints: the rename must never point at unwritten blocks).
    The file gets mode 0666 minus the umask; a full disk raises FastadvError naming the size needed.
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
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600: the file gets the user's umask like any other
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if _is_disk_full(exc):
            raise _disk_full(path, write, mode) from None
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    atomic_write(path, lambda f: f.write(data), mode="wb")


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))
