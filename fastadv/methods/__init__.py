"""Training objectives behind one interface: `loss, stats = method(model, x, y)`.

The Trainer never knows which method runs: it builds one through the registry
(fastadv.methods.registry) and calls every hook of `MethodBase` unconditionally. A new
objective is a new file here plus one `MethodSpec` line in registry.py. Importing this
package loads no torch; the method classes load with their spec's factory.
"""

from __future__ import annotations

import importlib
from typing import Any

from fastadv.methods.registry import MethodSpec, build_method, method_names, method_spec, register_method

__all__ = ["EpochContext", "Method", "MethodBase", "MethodSpec", "build_method", "method_names", "method_spec",
           "register_method"]


def __getattr__(name: str) -> Any:
    """EpochContext / Method / MethodBase load torch: import them on first use (PEP 562)."""
    if name in ("EpochContext", "Method", "MethodBase"):
        value = getattr(importlib.import_module("fastadv.methods.base"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'fastadv.methods' has no attribute {name!r}")
