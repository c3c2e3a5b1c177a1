"""The one owner of numeric precision: `train.precision`, a named policy saying which dtype each part
of a training step runs in, and the fixed-weight forward that makes reduced-precision attacks cheap.

Methods and attacks never check dtypes themselves; they ask this module:
- `training(policy, device)`: the context `train_step` runs a method in (autocast at the update's dtype);
- `attack_region(device)`: entered by every attack loop (PGD, FGSM, TRADES' KL attack), it switches
  autocast to the active policy's attack dtype (no policy active, as in `fastadv eval`: the caller's
  own autocast, i.e. eval.amp, stays);
- `iterate_dtype()`: the dtype an attack stores its iterate x + delta in between steps (fp32 except in
  the bf16-lowp-input ablation);
- `fixed_weights(model)`: a view of `model` whose conv / linear weights are cast to the autocast dtype
  once, for forwards whose weights do not change (attacks, evaluation).

What stays fp32 in every policy, by construction: the attack's iterate x + delta and its projection
(fp32 tensors, cast once by the first conv), every loss (kernels.label_augmented_ce and the smoothed CE
compute in fp32 whatever the logits' dtype), BatchNorm's running statistics (fp32 buffers that autocast
never converts), the weights and the optimizer state (autocast casts copies).
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Iterator

import torch
from torch import nn

from fastadv.errors import FastadvError
from fastadv.runtime.precision_policies import AUTO, POLICIES, PRECISION_CHOICES, PrecisionPolicy

__all__ = ["PrecisionPolicy", "POLICIES", "resolve", "training", "attack_region", "iterate_dtype", "fixed_weights",
           "attack_dtype", "update_dtype", "scaler"]


BF16, FP16 = torch.bfloat16, torch.float16
DTYPES = {"bf16": BF16, "fp16": FP16, None: None}


def auto_policy_name(device: torch.device) -> str:
    """train.precision=auto, chosen from the measured table (docs/guides/precision.md, "Defaults"): the
    fastest policy whose robust metrics stayed within seed noise of fp32 (bf16) on CUDA and on CPUs with
    native bf16 units (AVX512-BF16 / AMX, fastadv.runtime.hardware); fp32 on other CPUs, where bf16 is
    emulated and slower."""
    if device.type == "cuda":
        return "bf16"
    from fastadv.runtime.hardware import detect_cpu

    return "bf16" if detect_cpu().has_native_bf16 else "fp32"


def resolve(name: str, device: torch.device) -> PrecisionPolicy:
    """The policy `train.precision = name` means on `device` (auto resolved); a clear error for an unknown name."""
    if name == AUTO:
        name = auto_policy_name(device)
    if name not in POLICIES:
        raise FastadvError(f"train.precision={name!r} is not one of: {', '.join(PRECISION_CHOICES)}")
    return POLICIES[name]


# ----------------------------------------------------------------------------- the active policy
_ACTIVE: ContextVar[PrecisionPolicy | None] = ContextVar("fastadv_precision", default=None)


def _autocast_at(device: torch.device, dtype: torch.dtype | None):
    """Autocast at `dtype`, or explicitly off (None): an inner region overrides an outer one."""
    if dtype is None:
        return torch.autocast(device.type, enabled=False) if torch.is_autocast_enabled(device.type) \
            else contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


@contextlib.contextmanager
def training(policy: PrecisionPolicy, device: torch.device) -> Iterator[None]:
    """The region a method's step runs in: the update's autocast; attacks inside switch to the attack's."""
    token = _ACTIVE.set(policy)
    try:
        with _autocast_at(device, update_dtype(policy)):
            yield
    finally:
        _ACTIVE.reset(token)


def attack_region(device: torch.device):
    """Entered by every attack loop: the active training policy's attack autocast, else the caller's."""
    policy = _ACTIVE.get()
    return contextlib.nullcontext() if policy is None else _autocast_at(device, attack_dtype(policy))


def iterate_dtype() -> torch.dtype | None:
    """The dtype the attack's iterate is rounded to after each step (None: kept in fp32)."""
    policy = _ACTIVE.get()
    return attack_dtype(policy) if policy is not None and policy.lowp_iterate else None


def attack_dtype(policy: PrecisionPolicy) -> torch.dtype | None:
    return DTYPES[policy.attack]


def update_dtype(policy: PrecisionPolicy) -> torch.dtype | None:
    return DTYPES[policy.update]


def scaler(policy: PrecisionPolicy, device: torch.device) -> torch.amp.GradScaler:
    return torch.amp.GradScaler(device.type, enabled=policy.scaler)


# ----------------------------------------------------------------------------- fixed-weight forwards
# Where the cast-once view is used, decided by measurement (docs/guides/precision.md, "fixed-weight
# forwards"): autocast re-casts a weight to bf16 on every forward unless the weight requires grad, and
# attacks freeze the weights, so a PGD-10 re-casts every conv weight 10 times (on the 2-core Xeon:
# aten::copy_ 14 % of PGD-10's self time, 26 % of clean evaluation's). On the CPU (eager) the view
# casts once. Under torch.compile (the CUDA fast path) inductor fuses the casts into the graph, so
# the view is not used there; eager CUDA has not been measured, so it is left as plain autocast.
CAST_ONCE_DEVICES = frozenset({"cpu"})
_CAST_ONCE_ON: ContextVar[bool] = ContextVar("fastadv_cast_once", default=True)


@contextlib.contextmanager
def cast_once(enabled: bool) -> Iterator[None]:
    """Switch the cast-once view on or off for the duration (the bench's eager baseline runs it off)."""
    token = _CAST_ONCE_ON.set(enabled)
    try:
        yield
    finally:
        _CAST_ONCE_ON.reset(token)


_CAST_MODULES = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)  # the ops autocast runs in reduced precision


class FixedWeightView(nn.Module):
    """`model`'s forward with its conv / linear weights and biases cast to `dtype` once (exactly the
    cast autocast would make on each call, so the outputs are bit-identical). Recasts when a weight
    changes in place (its version counter moves), so a stale copy is never used."""

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.inner = model
        self.dtype = dtype
        self._names = [f"{m_name}.{p_name}" if m_name else p_name
                       for m_name, m in model.named_modules() if isinstance(m, _CAST_MODULES)
                       for p_name, p in m.named_parameters(recurse=False) if p.dtype == torch.float32]
        params = dict(model.named_parameters())
        self._sources = [params[n] for n in self._names]
        self._versions: list[int] = []
        self._cast: dict[str, torch.Tensor] = {}

    # The view's train/eval mode is the model's: a caller that saves and restores the mode around an
    # attack (attack_mode) through the view must restore the model's own, not a flag of the view.
    @property
    def training(self) -> bool:
        inner = self.__dict__.get("_modules", {}).get("inner")
        return inner.training if inner is not None else True

    @training.setter
    def training(self, mode: bool) -> None:
        inner = self.__dict__.get("_modules", {}).get("inner")
        if inner is not None:
            inner.training = mode

    def _refresh(self) -> None:
        versions = [p._version for p in self._sources]
        if versions != self._versions:
            with torch.no_grad():
                self._cast = {n: p.detach().to(self.dtype) for n, p in zip(self._names, self._sources)}
            self._versions = versions

    def forward(self, *args, **kwargs):
        self._refresh()
        return torch.func.functional_call(self.inner, self._cast, args, kwargs, strict=False)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)  # num_classes, num_aux, ... of the wrapped classifier


def fixed_weights(model: nn.Module) -> nn.Module:
    """A cast-once view of `model` for forwards whose weights stay fixed, where it pays (CAST_ONCE_DEVICES,
    eager, reduced-precision autocast on); else `model` itself. Create it where the weights are frozen
    and drop it when they change (one attack, one evaluation pass)."""
    if not _CAST_ONCE_ON.get() or isinstance(model, FixedWeightView) or _is_compiled(model):
        return model
    param = next(model.parameters(), None)
    if param is None or param.device.type not in CAST_ONCE_DEVICES:
        return model
    device_type = param.device.type
    if not torch.is_autocast_enabled(device_type):
        return model
    dtype = torch.get_autocast_dtype(device_type)
    return FixedWeightView(model, dtype) if dtype in (BF16, FP16) else model


def _is_compiled(model: nn.Module) -> bool:
    from fastadv.runtime import compiled

    return isinstance(model, torch._dynamo.eval_frame.OptimizedModule) or compiled.whole_step(model) \
        or isinstance(model, compiled.CompiledModel)
