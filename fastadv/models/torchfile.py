"""Reading torch files safely, and saying in words why one could not be read.

Every torch file fastadv opens goes through `load`: torch.load(weights_only=True), which never
runs code from the file, with exactly one class allowed beyond torch's own: argparse.Namespace,
which timm's CheckpointSaver pickles under "args" (timm's own loader allows the same one).
When torch refuses a file the reason is found from the file itself (torch's
get_unsafe_globals_in_checkpoint for zip archives, a pickletools scan that executes nothing for
legacy files and bare pickles), never from the wording of torch's message.
"""

from __future__ import annotations

import argparse
import pickle
import pickletools
import zipfile
from pathlib import Path
from typing import BinaryIO

import torch

from fastadv.errors import FastadvError

SAFE_GLOBALS = (argparse.Namespace,)  # timm.utils.CheckpointSaver: save_state["args"] = args
# What torch.save's legacy format itself references (storages, tensor rebuilders, OrderedDict);
# any other global in a refused pickle is named as the code it would run.
_TORCH_GLOBALS = ("torch.", "collections.OrderedDict", "_codecs.encode")


def load(path: Path, what: str = "a torch file"):
    """torch.load(path, weights_only=True) with SAFE_GLOBALS; any failure is one FastadvError line."""
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for bad files; each is named in words below
        raise FastadvError(f"{path} could not be read as {what}: {describe(path, exc)}") from None


def describe(path: Path, exc: Exception) -> str:
    """Why torch could not load `path`, in words: code-running pickle, empty, truncated, not a torch file."""
    path = Path(path)
    with open(path, "rb") as f:
        data = f.read(4096)  # the head names the format; a refused pickle is read whole below
    if not data:
        return "it is an empty file (0 bytes); copy or download it again"
    if data[:2] == b"PK":  # the zip archive torch.save writes
        if isinstance(exc, pickle.UnpicklingError):
            unsafe = _zip_unsafe_globals(path)
            if unsafe:
                return _runs_code(unsafe)
        if not zipfile.is_zipfile(path):
            return "it is a truncated or damaged zip archive (the torch.save format); copy or download it again"
        return (f"it is a zip archive but not one torch.save wrote, or a damaged one ({type(exc).__name__}); "
                f"pass a .pth / .pt written by torch.save or a .safetensors file")
    if isinstance(exc, pickle.UnpicklingError):  # torch's legacy format or a bare pickle that torch refused
        with open(path, "rb") as f:
            complete, names = _pickle_globals(f, path.stat().st_size)
        unsafe = [n for n in names if not _allowed(n)]
        if complete and unsafe:
            return _runs_code(unsafe)
        if complete:
            return "it is a pickle that torch's safe (weights-only) loader refuses; pass a plain state dict"
    if data[:1] == b"\x80":  # a pickle (protocol 2+): torch's legacy format
        return "it is a truncated or damaged torch file (legacy format); copy or download it again"
    if _looks_like_text(data):
        first = data.split(b"\n", 1)[0][:40].decode("utf-8", "replace")
        return f"it is a text file, not a torch file (it starts {first!r})"
    return f"it is not a torch file (neither a zip archive nor a pickle: it starts with bytes {data[:4].hex()})"


def _runs_code(names: list[str]) -> str:
    shown = ", ".join(dict.fromkeys(names))
    return (f"refused, because unpickling it would run code: it references {shown}, which is neither a tensor nor "
            f"a container. fastadv never opens such a file; if you trust its producer, save a plain state dict "
            f"(torch.save(model.state_dict())) or a .safetensors file there and pass that")


def _zip_unsafe_globals(path: Path) -> list[str]:
    try:
        with torch.serialization.safe_globals(list(SAFE_GLOBALS)):
            return list(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)))
    except Exception:  # a damaged archive: described as such by the caller
        return []


def _allowed(name: str) -> bool:
    allowed = {f"{c.__module__}.{c.__qualname__}" for c in SAFE_GLOBALS}
    return name in allowed or name.startswith(_TORCH_GLOBALS)


def _pickle_globals(stream: BinaryIO, size: int) -> tuple[bool, list[str]]:
    """The globals the consecutive pickles in `stream` name, read with pickletools (nothing is executed).

    Returns (at least one whole pickle parsed, the names). STACK_GLOBAL takes its module and name
    from the strings pushed before it (directly or through the memo)."""
    names, complete = [], False
    while stream.tell() < size and len(names) < 1000:
        recent, memo = [], {}
        try:
            for op, arg, _ in pickletools.genops(stream):
                if op.name in ("GLOBAL", "INST"):
                    names.append(str(arg).replace(" ", "."))
                elif op.name == "STACK_GLOBAL" and len(recent) >= 2:
                    names.append(f"{recent[-2]}.{recent[-1]}")
                if op.name == "MEMOIZE":
                    memo[len(memo)] = recent[-1] if recent else None
                elif op.name in ("PUT", "BINPUT", "LONG_BINPUT"):
                    memo[arg] = recent[-1] if recent else None
                elif op.name in ("GET", "BINGET", "LONG_BINGET"):
                    recent.append(memo.get(arg))
                elif isinstance(arg, str):
                    recent.append(arg)
                elif op.name not in ("PROTO", "FRAME"):
                    recent.append(None)
        except Exception:  # not (or no longer) a pickle: torch's legacy format stores raw bytes after them
            break
        complete = True
    return complete, names


def _looks_like_text(data: bytes) -> bool:
    head = data
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as exc:  # a multi-byte character cut at 4096 bytes is still text
        if exc.start < len(head) - 3:
            return False
        text = head[:exc.start].decode("utf-8")
    return all(c.isprintable() or c in "\t\r\n" for c in text)
