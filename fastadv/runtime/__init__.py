"""Run-time plumbing beside the pipeline: where and how a run executes, and what it leaves on disk.

Owns the device, precision and compile switches (device.py, compiled.py), CPU/GPU feature
detection (hardware.py), torchrun / DDP (distributed.py), the run folder with its lock and
overwrite-aside rule (runfolder.py), atomic file writes (fileio.py) and progress bars
(progress.py). Importing this package imports no torch: device.py's names, which used to live in
the module fastadv.runtime, are loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

_DEVICE_NAMES = ("resolve_device", "amp_dtype", "autocast", "compile_enabled", "maybe_compile", "prepare_model",
                 "to_device")


def __getattr__(name: str) -> Any:
    if name in _DEVICE_NAMES:
        return getattr(importlib.import_module("fastadv.runtime.device"), name)
    raise AttributeError(f"module 'fastadv.runtime' has no attribute {name!r}")
