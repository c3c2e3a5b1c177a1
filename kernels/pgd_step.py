"""Fused l_inf PGD update (docs/reference/methods.md: PGD) as one Triton pass over memory.

    stepped = x_adv + alpha * sign(grad)
    delta   = min(max(stepped - x, -eps), eps)
    out     = min(max(x + delta, 0), 1)

Every operation is the one `pgd_update_reference` performs, in the same order and in
fp32, so the result is bit-identical to the reference (`alpha * sign` is exact, so a
compiler-contracted fma cannot change it either).

Layout: the op is elementwise, so when x_adv, x and grad are dense (non-overlapping, no
gaps) with the same strides, the kernel walks the flat storage order. That covers NCHW
contiguous and channels_last (NHWC) tensors alike. Per-sample alpha/eps ([B] tensors) are
read with sample = flat_index // (numel // B), which needs the batch dimension outermost
in memory (true for both NCHW and NHWC). Anything else (mismatched layouts, slices with
gaps, a permuted batch dimension) falls back to copying x and grad into x_adv's layout, or
all three into a contiguous (or channels_last) layout when x_adv itself does not qualify.
The output has x_adv's layout in every case.

This module imports triton at import time; the dispatcher (`fastadv.kernels`) imports it
lazily, so the package itself imports without triton.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["pgd_update_triton"]

BLOCK_SIZE = 1024  # elements per program: 8 fp32 per thread at 4 warps (two 16-byte vectors)
NUM_WARPS = 4
_GRAD_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _pgd_update_kernel(
    x_adv_ptr,
    x_ptr,
    grad_ptr,
    out_ptr,
    alpha_ptr,
    eps_ptr,
    alpha,
    eps,
    numel,
    per_sample_numel,
    PER_SAMPLE_ALPHA: tl.constexpr,
    PER_SAMPLE_EPS: tl.constexpr,
    INT64_INDEX: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    if INT64_INDEX:
        offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    else:
        offs = pid * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel

    x_adv = tl.load(x_adv_ptr + offs, mask=mask, other=0.0)
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    g = tl.load(grad_ptr + offs, mask=mask, other=0.0).to(tl.float32)

    if PER_SAMPLE_ALPHA or PER_SAMPLE_EPS:
        sample = offs // per_sample_numel
    if PER_SAMPLE_ALPHA:
        a = tl.load(alpha_ptr + sample, mask=mask, other=0.0)
    else:
        a = alpha
    if PER_SAMPLE_EPS:
        e = tl.load(eps_ptr + sample, mask=mask, other=0.0)
    else:
        e = eps

    # torch.sign: +1 / -1 / 0, and 0 for NaN (torch.sign(nan) == 0 on CPU and CUDA).
    s = tl.where(g > 0, 1.0, tl.where(g < 0, -1.0, 0.0))
    stepped = x_adv + a * s
    # torch.clamp / torch.minimum / torch.maximum propagate NaN: PropagateNan.ALL does too.
    d = tl.minimum(tl.maximum(stepped - x, -e, propagate_nan=tl.PropagateNan.ALL), e, propagate_nan=tl.PropagateNan.ALL)
    y = tl.minimum(tl.maximum(x + d, 0.0, propagate_nan=tl.PropagateNan.ALL), 1.0, propagate_nan=tl.PropagateNan.ALL)
    tl.store(out_ptr + offs, y, mask=mask)


def _dense_key(t: torch.Tensor):
    """Strides of the size>1 dims if `t` is non-overlapping and dense, else None.

    Two dense tensors of the same shape with the same key store their elements in the same
    flat order (the strides of size-1 dims do not matter)."""
    dims = [(t.stride(i), t.size(i)) for i in range(t.dim()) if t.size(i) > 1]
    expected = 1
    for stride, size in sorted(dims):
        if stride != expected:
            return None
        expected *= size
    return tuple(stride for stride, _ in dims)


def _batch_outermost(t: torch.Tensor) -> bool:
    """For a dense tensor: does element [b, ...] live at flat positions b*(numel/B) onward?"""
    batch = t.size(0)
    return batch <= 1 or t.stride(0) == t.numel() // batch


def _like(src: torch.Tensor, template: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`src` copied into `template`'s exact strides (no copy when it already has them)."""
    dtype = src.dtype if dtype is None else dtype
    key = _dense_key(template)
    if key is not None and _dense_key(src) == key and src.dtype == dtype:
        return src
    out = torch.empty_like(template, dtype=dtype)  # preserve_format keeps a dense template's strides
    out.copy_(src)
    return out


def _per_sample_arg(value, batch: int, device: torch.device, name: str):
    """(tensor or None, fp32-rounded float). A 0-dim tensor counts as per-sample (broadcast to [B])."""
    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            value = value.reshape(1).expand(batch)
        if value.shape != (batch,):
            raise ValueError(f"per-sample {name} must have shape [{batch}], got {tuple(value.shape)}")
        return value.to(device=device, dtype=torch.float32).contiguous(), 0.0
    # torch multiplies/clamps a fp32 tensor with a Python scalar in fp32: round it the same way.
    return None, float(torch.tensor(float(value), dtype=torch.float32))


def pgd_update_triton(
    x_adv: torch.Tensor,
    x: torch.Tensor,
    grad: torch.Tensor,
    alpha: float | torch.Tensor,
    eps: float | torch.Tensor,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """One fused l_inf PGD step; bit-identical to `pgd_update_reference` in fp32.

    x_adv, x: fp32, same shape [B, ...]; grad: fp32/bf16/fp16 of the same shape (converted in
    the kernel). alpha, eps: Python floats or per-sample [B] tensors. Returns a new tensor in
    x_adv's memory format, or writes into `out` (which may be x_adv itself) and returns it.
    """
    if x_adv.dtype != torch.float32 or x.dtype != torch.float32:
        raise TypeError(f"pgd_update_triton needs fp32 x_adv and x, got {x_adv.dtype} and {x.dtype}")
    if grad.dtype not in _GRAD_DTYPES:
        raise TypeError(f"pgd_update_triton needs a fp32/bf16/fp16 gradient, got {grad.dtype}")
    if x_adv.shape != x.shape or grad.shape != x.shape:
        raise ValueError(f"shape mismatch: x_adv {tuple(x_adv.shape)}, x {tuple(x.shape)}, grad {tuple(grad.shape)}")
    if x_adv.dim() == 0:
        raise ValueError("pgd_update_triton needs a batch dimension")
    if not (x_adv.device == x.device == grad.device):
        raise ValueError("x_adv, x and grad must be on the same device")

    batch = x_adv.size(0)
    alpha_t, alpha_f = _per_sample_arg(alpha, batch, x_adv.device, "alpha")
    eps_t, eps_f = _per_sample_arg(eps, batch, x_adv.device, "eps")

    # One common dense layout with the batch outermost: x_adv's own layout when it qualifies;
    # else a clone in x_adv's suggested format (NCHW or NHWC) for a tensor with gaps, or a
    # contiguous copy for a dense tensor whose batch dimension is not outermost.
    x_adv_dense = _dense_key(x_adv) is not None
    if x_adv_dense and _batch_outermost(x_adv):
        xa = x_adv
    elif not x_adv_dense:
        xa = x_adv.clone()  # preserve_format: empty_like's suggested memory format
        if _dense_key(xa) is None or not _batch_outermost(xa):
            xa = x_adv.contiguous()
    else:
        xa = x_adv.contiguous()
    xx = _like(x, xa)
    gg = _like(grad, xa)

    if out is not None:
        if out.shape != x_adv.shape or out.dtype != torch.float32 or out.device != x_adv.device:
            raise ValueError("out must be a fp32 tensor with x_adv's shape and device")
    # Write straight into `out` (x_adv itself is fine: each element is read before it is
    # written, by the same program) when it has the working layout; else copy at the end.
    direct = out is not None and _dense_key(out) == _dense_key(xa)
    result = out if direct else torch.empty_like(xa)  # dense template: xa's strides
    numel = xa.numel()
    if numel > 0:
        per_sample_numel = max(numel // max(batch, 1), 1)
        grid = (triton.cdiv(numel, BLOCK_SIZE),)
        _pgd_update_kernel[grid](
            xa,
            xx,
            gg,
            result,
            alpha_t if alpha_t is not None else xa,  # dummy pointer, never read
            eps_t if eps_t is not None else xa,
            alpha_f,
            eps_f,
            numel,
            per_sample_numel,
            PER_SAMPLE_ALPHA=alpha_t is not None,
            PER_SAMPLE_EPS=eps_t is not None,
            INT64_INDEX=numel + BLOCK_SIZE >= 2**31,
            BLOCK=BLOCK_SIZE,
            num_warps=NUM_WARPS,
        )
    if out is not None:
        if not direct:
            out.copy_(result)
        return out
    if xa is not x_adv and x_adv_dense:
        result = _like(result, x_adv)  # back to x_adv's (dense but unusual) layout
    return result
