"""Fused kernels behind one dispatcher each: Triton on CUDA tensors, plain torch elsewhere.

The dispatchers below are the only place in fastadv that looks at the device to pick a path
(`use_triton`). Triton is imported lazily and guarded, so `import fastadv.kernels` works
where triton is not installed; the Triton modules (`pgd_step`, `la_xent`) are imported on
first use only. (The PGD kernel's module is not called `pgd_update`: a submodule of that
name would replace the `pgd_update` dispatcher as a package attribute once imported.)

Environment switch FASTADV_TRITON:
  unset / "auto"  Triton for CUDA tensors when triton imports, the reference otherwise;
  "interpret"     also Triton for CPU tensors, when TRITON_INTERPRET=1 is set too (the
                  Triton interpreter; lets CI exercise the fused path without a GPU);
  "0" / "off"     always the reference (e.g. to benchmark against it on a GPU).
Inputs the kernels do not cover (fp64, other dtypes) always take the reference.
"""

from __future__ import annotations

import functools
import os

import torch

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
    "triton_available",
    "use_triton",
]

_FAST_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """True when triton imports (cached; a broken or missing install means the reference)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a triton that fails to initialise
        return False
    return True


def use_triton(tensor: torch.Tensor) -> bool:
    """Should the fused Triton path handle `tensor`? See FASTADV_TRITON in the module doc."""
    mode = os.environ.get("FASTADV_TRITON", "auto").strip().lower()
    if mode in ("0", "off", "false", "no", "reference"):
        return False
    if tensor.is_cuda:
        return triton_available()
    if mode == "interpret" and os.environ.get("TRITON_INTERPRET", "") == "1":
        return triton_available()
    return False


def pgd_update(x_adv: torch.Tensor, x: torch.Tensor, grad: torch.Tensor, alpha, eps) -> torch.Tensor:
    """x_adv <- clip(clip(x_adv + alpha sign(grad), x - eps, x + eps), 0, 1) (REFERENCE.md §2)."""
    if (
        use_triton(x_adv)
        and x_adv.dtype == torch.float32
        and x.dtype == torch.float32
        and grad.dtype in _FAST_DTYPES
        and x_adv.dim() > 0
    ):
        from fastadv.kernels.pgd_step import pgd_update_triton

        return pgd_update_triton(x_adv, x, grad, alpha, eps)
    return pgd_update_reference(x_adv, x, grad, alpha, eps)


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
    if use_triton(logits) and logits.dtype in _FAST_DTYPES and logits.dim() == 2:
        from fastadv.kernels.la_xent import label_augmented_ce_triton

        return label_augmented_ce_triton(logits, target, num_classes, op_index, delta, reduction)
    return label_augmented_ce_reference(logits, target, num_classes, op_index, delta, reduction)
