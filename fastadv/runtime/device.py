"""Device, precision and compilation choices shared by training, evaluation and benchmarks."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from fastadv.errors import FastadvError
from fastadv.models import RobustClassifier


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise FastadvError(f"train.device={name!r} but no CUDA GPU is visible; use train.device=cpu")
    return torch.device(name)


def amp_dtype(mode: str, device: torch.device) -> torch.dtype | None:
    """The old train.amp value (auto | bf16 | fp16 | off) as an autocast dtype: kept for callers of
    `fastadv.runtime.amp_dtype`; training now reads train.precision (fastadv.runtime.precision)."""
    from fastadv.config.schema import RENAMED
    from fastadv.runtime import precision

    policy = precision.resolve(RENAMED["train", "amp"][1].get(mode, mode), device)
    return precision.update_dtype(policy)


def eval_amp_dtype(mode: str) -> torch.dtype | None:
    """eval.amp: fp32 (None: no autocast) on every device, or bf16 on request. Never train.amp, so runs
    trained in different precisions are evaluated, and compared, in the same one."""
    return {"fp32": None, "bf16": torch.bfloat16}[mode]


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def compile_enabled(setting: str, device: torch.device) -> bool:
    """train.compile: auto = on for CUDA (the fast path), off on the CPU (compiling costs minutes there)."""
    return setting == "true" or (setting == "auto" and device.type == "cuda")


def maybe_compile(model: torch.nn.Module, setting: str, mode: str, device: torch.device,
                  whole_step: bool = True) -> torch.nn.Module:
    """The compiled wrapper (sharing parameters with `model`) or `model` itself.

    whole_step: a `fastadv.runtime.compiled.CompiledModel`, whose attacks and training forward + loss
    run as compiled graphs where this PyTorch can trace autograd.grad (else model-only);
    False: torch.compile(model) alone (the DDP wrapper).
    """
    if not compile_enabled(setting, device):
        return model
    if not whole_step:
        if device.type == "cpu":
            from fastadv.runtime.compiled import key_compile_caches_by_cpu_isa

            key_compile_caches_by_cpu_isa()
        return torch.compile(model, mode=mode)
    from fastadv.runtime.compiled import CompiledModel

    return CompiledModel(model, mode)


def prepare_model(model: RobustClassifier, device: torch.device, channels_last: bool) -> RobustClassifier:
    """channels_last where the architecture family gains from it (RobustClassifier.channels_last: CNNs)."""
    model = model.to(device)
    use = channels_last and getattr(model, "channels_last", True)
    return model.to(memory_format=torch.channels_last) if use else model


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x
