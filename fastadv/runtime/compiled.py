"""Whole-step compilation: the attack loop and the training forward + loss as compiled graphs.

`runtime.maybe_compile` wraps the model in `CompiledModel` when train.compile is on. Its own
forward is the compiled model (clean evaluation, logging); attacks and methods see the
`whole_step` flag and run their module-level step functions through `call(fn, model, ...)`,
which compiles `fn` once (fullgraph=True, dynamic=False) and calls it on the plain module.

Why module-level functions with explicit arguments: dynamo guards on a function's identity,
so a fresh lambda or closure per call would recompile every call. Per-sample eps/alpha are
tensors so Python floats do not specialize the graph. The eager parts stay outside:
`attack_mode` (model.eval(), freezing parameters), the optimizer step (foreach SGD), the
non-finite guard.

`torch.autograd.grad` inside a fullgraph region needs `torch._dynamo.config.trace_autograd_ops`
(newer PyTorch; 2.15 has it, 2.11 does not). Where it is missing the mode is "model-only":
the model is compiled, the loops run eagerly around it (`compile_mode_of` reports which).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

WHOLE_STEP = "whole-step"
MODEL_ONLY = "model-only"
OFF = "off"


def whole_step_supported() -> bool:
    """Can dynamo trace torch.autograd.grad inside a fullgraph region on this PyTorch?"""
    return hasattr(torch._dynamo.config, "trace_autograd_ops")


ISA_TAG_PREFIX = "fastadv-cpu-vec-isa="


def key_compile_caches_by_cpu_isa() -> str:
    """Add the CPU vector ISA inductor picked for this process to torch.compile's cache key; returns the tag.

    Why: inductor writes its C++ kernels for the ISA it picks per process (ATEN_CPU_CAPABILITY, else
    its probe, which by its code also falls back to a lower ISA when its 60 s dlopen check times out
    on a loaded machine), but its on-disk cache key leaves the ISA out. A graph cached by an AVX-512 process and
    loaded by an AVX2 one ran with the wrong vector width on torch 2.15 and returned garbage (NaN,
    an index of -8 in a scatter; tests/test_switches.py). Idempotent; a PyTorch without
    `torch.compiler.config.cache_key_tag` is left as it is.
    """
    config = getattr(torch.compiler, "config", None)
    if config is None or not hasattr(config, "cache_key_tag"):
        return ""
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    tag = f"{ISA_TAG_PREFIX}{pick_vec_isa() or 'none'}"
    kept = [t for t in config.cache_key_tag.split(",") if t and not t.startswith(ISA_TAG_PREFIX)]
    config.cache_key_tag = ",".join([*kept, tag])
    return tag


def _on_cpu(module: nn.Module) -> bool:
    first = next(iter(module.parameters()), None)
    return first is None or first.device.type == "cpu"


class CompiledModel(nn.Module):
    """`module` with a compiled forward; `whole_step` asks attacks/methods for their compiled loops.

    The parameters are `module`'s (state_dict keys carry a "module." prefix: save the plain model).
    """

    def __init__(self, module: nn.Module, mode: str = "default", whole_step: bool = True) -> None:
        super().__init__()
        self.module = module
        self.compile_mode = mode
        self.whole_step = whole_step and whole_step_supported()
        if _on_cpu(module):
            key_compile_caches_by_cpu_isa()
        object.__setattr__(self, "_forward", torch.compile(module, mode=mode))  # not a submodule: no duplicate keys

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x)

    def __getattr__(self, name: str) -> Any:  # num_aux, channels_last, ... of the wrapped model
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self._modules["module"], name)


def compile_mode_of(model: nn.Module) -> str:
    """"whole-step", "model-only" or "off": what a run with this model actually compiles."""
    if isinstance(model, CompiledModel):
        return WHOLE_STEP if model.whole_step else MODEL_ONLY
    return MODEL_ONLY if hasattr(model, "_orig_mod") else OFF


def whole_step(model: nn.Module) -> bool:
    return isinstance(model, CompiledModel) and model.whole_step


_COMPILED: dict[tuple[Callable, str], Callable] = {}


def compiled(fn: Callable, mode: str = "default") -> Callable:
    """torch.compile(fn, fullgraph=True, dynamic=False), once per (fn, mode)."""
    key = (fn, mode)
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(fn, fullgraph=True, dynamic=False, mode=mode)
    return _COMPILED[key]


def tracing_autograd() -> contextlib.AbstractContextManager:
    """dynamo's trace_autograd_ops switched on for our compiled functions only."""
    return torch._dynamo.config.patch(trace_autograd_ops=True)


def call(fn: Callable, model: nn.Module, *args: Any) -> Any:
    """fn(model, *args): compiled on the plain module when `model` is whole-step, else eagerly."""
    if not whole_step(model):
        return fn(model, *args)
    with tracing_autograd():
        return compiled(fn, model.compile_mode)(model.module, *args)


def per_sample(value: float | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A scalar as a [B] tensor on like's device (a fill: no host-to-device copy); tensors pass through."""
    if isinstance(value, torch.Tensor):
        return value
    return torch.full((like.shape[0],), float(value), dtype=like.dtype, device=like.device)
