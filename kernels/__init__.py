"""Fused kernels behind one dispatcher each: Triton on CUDA tensors, plain torch elsewhere.

The dispatchers below are the only place in fastadv that looks at the device to pick a path
(`use_triton`). Triton is imported lazily and guarded, so `import fastadv.kernels` works
where triton is not installed; the Triton modules (`pgd_step`, `la_xent`) are imported on
first use only. (The PGD kernel's module is not called `pgd_update`: a submodule of that
name would replace the `pgd_update` dispatcher as a package attribute once imported.)

Each fused kernel is a PyTorch custom operator (`fastadv.kernels.ops`: fastadv::pgd_update,
fastadv::la_ce_forward / la_ce_backward with autograd), so torch.compile traces through the
dispatchers with no graph break. Python floats (eps, alpha, delta) and an int op_index are
passed to the operators as 0-d CPU tensors, so a compiled caller does not specialize on them.

Environment switch FASTADV_TRITON, read once at import (call `reload_triton_mode()` after
changing it, e.g. in a test or a benchmark that switches paths):
  unset / "auto"  Triton for CUDA tensors when triton imports, the reference otherwise;
  "interpret"     also Triton for CPU tensors, when TRITON_INTERPRET=1 is set too (the
                  Triton interpreter; lets CI exercise the fused path without a GPU);
  "0" / "off"     always the reference (e.g. to benchmark against it on a GPU).
Inputs the kernels do not cover (fp64, other dtypes) always take the reference.

Which path where (issue 29: the fast path never slower than the plain path it wraps). Decided by
measurement; this table is the one place that records it (docs/guides/gpu-check.md, "fast path"):

  device / caller                 PGD update, LA cross-entropy
  CUDA, Triton imports            fused Triton custom operator (one pass; >= 80% of copy bandwidth
                                  is a `make bench` target, bench/kernels_bench.py)
  CPU (and CUDA with "off"), eager  the plain torch reference, called directly: the custom-operator
                                  round trip (0-d scalar tensors, op dispatch, layout check) cost
                                  360 vs 207 us per PGD update (8x3x64x64) and 392 vs 88 us per CE
                                  forward + backward (8 x 1001) on the 2-core Xeon, 1 thread,
                                  with nothing to gain: the reference is what the operator runs
  CPU / "off", under torch.compile  the custom operator with the reference inside: opaque, so the
                                  compiled numbers are eager's and floats do not specialize graphs
  CPU under TRITON_INTERPRET=1 + "interpret"  Triton in the interpreter (a correctness tool only)
"""

from __future__ import annotations

import functools
import os

import torch

from fastadv.kernels import ops as _ops
from fastadv.kernels.reference import (
    label_augmented_ce_reference,
    label_augmented_target,
    pgd_update_reference,
    random_start_reference,
)

__all__ = [
    "label_augmented_ce",
    "label_augmented_target",
    "pgd_update",
    "random_start",
    "reload_triton_mode",
    "triton_available",
    "triton_mode",
    "use_triton",
]

_FAST_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_OFF = ("0", "off", "false", "no", "reference")


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """True when triton imports (cached; a broken or missing install means the reference)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a triton that fails to initialise
        return False
    return True


def _read_mode() -> tuple[bool, bool]:
    """(Triton for CUDA tensors, Triton for CPU tensors) from the environment, right now."""
    mode = os.environ.get("FASTADV_TRITON", "auto").strip().lower()
    if mode in _OFF:
        return False, False
    on_cpu = mode == "interpret" and os.environ.get("TRITON_INTERPRET", "") == "1"
    # Resolve triton's availability here, outside any compiled region, and only when it matters.
    if not (on_cpu or torch.cuda.is_available()):
        return True, False  # no CUDA tensor can exist; import triton lazily if one ever does
    available = triton_available()
    return available, on_cpu and available


_TRITON_CUDA, _TRITON_CPU = _read_mode()


def reload_triton_mode() -> str:
    """Re-read FASTADV_TRITON / TRITON_INTERPRET (they are read once, at import); returns the mode."""
    global _TRITON_CUDA, _TRITON_CPU
    _TRITON_CUDA, _TRITON_CPU = _read_mode()
    return triton_mode()


def triton_mode() -> str:
    """The cached mode in words: "off", "cuda" (Triton on CUDA tensors) or "cuda+cpu-interpret"."""
    if _TRITON_CPU:
        return "cuda+cpu-interpret"
    return "cuda" if _TRITON_CUDA else "off"


def use_triton(tensor: torch.Tensor) -> bool:
    """Should the fused Triton path handle `tensor`? See FASTADV_TRITON in the module doc."""
    if tensor.is_cuda:
        return _TRITON_CUDA and triton_available()
    return _TRITON_CPU


def pgd_update(x_adv: torch.Tensor, x: torch.Tensor, grad: torch.Tensor, alpha, eps) -> torch.Tensor:
    """x_adv <- clip(clip(x_adv + alpha sign(grad), x - eps, x + eps), 0, 1) (docs/reference/methods.md: PGD)."""
    fused = (
        use_triton(x_adv)
        and x_adv.dtype == torch.float32
        and x.dtype == torch.float32
        and grad.dtype in _FAST_DTYPES
        and x_adv.dim() > 0
    )
    if not fused and not torch.compiler.is_compiling():
        return pgd_update_reference(x_adv, x, grad, alpha, eps)  # eager plain path: no operator round trip
    return _ops.pgd_update_op(x_adv, x, grad, _ops.scalar_arg(alpha), _ops.scalar_arg(eps), fused)


def random_start(x: torch.Tensor, eps, generator: torch.Generator | None = None) -> torch.Tensor:
    """Uniform random start inside the eps-ball, clipped to [0, 1]."""
    return random_start_reference(x, eps, generator)


def label_augmented_ce(
    logits: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    op_index=None,
    delta=0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Label-augmented cross-entropy over K+M logits; delta = 0 is plain cross-entropy."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"unknown reduction {reduction!r}")
    fused = use_triton(logits) and logits.dtype in _FAST_DTYPES and logits.dim() == 2
    if not fused and not torch.compiler.is_compiling():
        return label_augmented_ce_reference(logits, target, num_classes, op_index, delta, reduction)  # see the table
    ops = None if op_index is None else _ops.scalar_arg(op_index, torch.int64)
    loss, _, _ = _ops.la_ce_forward(logits, target, ops, _ops.scalar_arg(delta), num_classes, reduction, fused)
    return loss
