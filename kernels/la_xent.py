"""Fused label-augmented cross-entropy (docs/reference/methods.md: LA): Triton forward and backward.

    y~   = concat[(1 - d) onehot_K(y), d onehot_M(j)]      (d = 0 when j < 0 or no op)
    loss = lse(z) - (1 - d) z[y] - d z[K + j]
    dL/dz = softmax(z) - y~

Forward: one program per row; a running max and a running sum of exp over the row in
BLOCK_N chunks (any N: 13, 1001, 50k), fp32 accumulation whatever the logits' dtype. The
per-row loss is written as log(s) + (1-d)(m - z[y]) + d(m - z[K+j]) with m the row max and
s = sum exp(z - m): mathematically lse - (1-d) z[y] - d z[K+j], without the cancellation of
subtracting two large numbers. Saved for backward: the logits (the input itself, no copy),
targets, ops, per-sample deltas when given, and two fp32 numbers per row (m, log s); no
softmax matrix.

Backward: one program per row, one pass: grad = (exp((z - m) - log s) - y~) * g_row, where
g_row = grad_out (sum), grad_out / B (mean) or grad_out[b] (none); stored in the logits'
dtype.

Why (m, log s) rather than lse = m + log s: exp(z - lse) loses the low bits of lse when
|m| is large (the fp32 ulp at 3e4 is 0.002); (z - m) - log s keeps them.

Precision when compiled: on NVIDIA GPUs tl.exp / tl.log lower to the approximate ex2/lg2
instructions (like __expf), so compiled results carry ~1e-6 relative error against an fp64
reference, against ~1e-7 under the interpreter (numpy's exp/log). Fine for training; a GPU
test should allow rtol ~1e-5.

NaN logits give a NaN loss (the NaN reaches the sum of exp, whatever max() does with it);
logits of +-3e4 do not overflow (everything is relative to the row max). Out-of-range
indices (target outside [0, K), op >= M) give a NaN loss and NaN gradient row instead of
the reference's IndexError: the kernel does not synchronize with the host to check them.

This module imports triton at import time; the dispatcher (`fastadv.kernels`) imports it
lazily, so the package itself imports without triton.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch.autograd.function import once_differentiable

__all__ = [
    "LabelAugmentedCE",
    "la_ce_backward_triton",
    "la_ce_forward_triton",
    "label_augmented_ce_triton",
    "prepare_la_ce_inputs",
]

MAX_BLOCK_N = 4096  # columns per chunk of the row loop (N = 1001 -> one chunk of 1024)
_LOGIT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _block_n(n: int) -> int:
    return min(max(triton.next_power_of_2(n), 16), MAX_BLOCK_N)


def _num_warps(block_n: int) -> int:
    return 8 if block_n >= 4096 else 4 if block_n >= 1024 else 2 if block_n >= 256 else 1


@triton.jit
def _row_delta(delta_ptr, delta, row, target_col, op_ptr, K, M, HAS_OP: tl.constexpr, PER_SAMPLE_DELTA: tl.constexpr):
    """(d, op column, row valid) for one row; d = 0 without an op."""
    valid = (target_col >= 0) & (target_col < K)
    if HAS_OP:
        op = tl.load(op_ptr + row)
        has_op = op >= 0
        valid = valid & (op < M)
        if PER_SAMPLE_DELTA:
            d = tl.load(delta_ptr + row).to(tl.float32)
        else:
            d = delta
        d = tl.where(has_op, d, 0.0)
        op_col = K + tl.maximum(op, 0)
    else:
        d = 0.0
        op_col = K
    return d, op_col, valid


@triton.jit
def _la_ce_fwd_kernel(
    logits_ptr,
    target_ptr,
    op_ptr,
    delta_ptr,
    delta,
    loss_ptr,
    max_ptr,
    logsum_ptr,
    N,
    K,
    M,
    stride_row,
    HAS_OP: tl.constexpr,
    PER_SAMPLE_DELTA: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    row = tl.program_id(0)
    row_ptr = logits_ptr + row.to(tl.int64) * stride_row
    cols = tl.arange(0, BLOCK_N)

    # Running max m and sum s = sum exp(z - m), chunk by chunk (online log-sum-exp).
    m = -float("inf")
    s = 0.0
    for start in range(0, N, BLOCK_N):
        c = start + cols
        z = tl.load(row_ptr + c, mask=c < N, other=-float("inf")).to(tl.float32)
        m_new = tl.maximum(m, tl.max(z, axis=0))
        # Shift by 0 while every logit so far is -inf (masked columns), so that a row whose
        # first chunk is all -inf still works; exp(m - shift) with m = -inf is 0.
        shift = tl.where(m_new == -float("inf"), 0.0, m_new)
        s = s * tl.exp(m - shift) + tl.sum(tl.exp(z - shift), axis=0)
        m = m_new
    log_s = tl.log(s)

    t = tl.load(target_ptr + row)
    d, op_col, valid = _row_delta(delta_ptr, delta, row, t, op_ptr, K, M, HAS_OP, PER_SAMPLE_DELTA)
    z_t = tl.load(row_ptr + t, mask=valid, other=0.0).to(tl.float32)
    loss = log_s + (1.0 - d) * (m - z_t)
    if HAS_OP:
        z_op = tl.load(row_ptr + op_col, mask=valid, other=0.0).to(tl.float32)
        loss = loss + d * (m - z_op)
    loss = tl.where(valid, loss, float("nan"))
    tl.store(loss_ptr + row, loss)
    tl.store(max_ptr + row, m)
    tl.store(logsum_ptr + row, log_s)


@triton.jit
def _la_ce_bwd_kernel(
    logits_ptr,
    target_ptr,
    op_ptr,
    delta_ptr,
    delta,
    max_ptr,
    logsum_ptr,
    grad_out_ptr,
    grad_out_stride,
    grad_scale,
    grad_ptr,
    N,
    K,
    M,
    stride_row,
    grad_stride_row,
    HAS_OP: tl.constexpr,
    PER_SAMPLE_DELTA: tl.constexpr,
    BLOCK_N: tl.constexpr,
):
    row = tl.program_id(0)
    row_ptr = logits_ptr + row.to(tl.int64) * stride_row
    out_ptr = grad_ptr + row.to(tl.int64) * grad_stride_row
    cols = tl.arange(0, BLOCK_N)

    m = tl.load(max_ptr + row)
    log_s = tl.load(logsum_ptr + row)
    g = tl.load(grad_out_ptr + row * grad_out_stride).to(tl.float32) * grad_scale
    t = tl.load(target_ptr + row)
    d, op_col, valid = _row_delta(delta_ptr, delta, row, t, op_ptr, K, M, HAS_OP, PER_SAMPLE_DELTA)
    w_t = 1.0 - d
    for start in range(0, N, BLOCK_N):
        c = start + cols
        mask = c < N
        z = tl.load(row_ptr + c, mask=mask, other=-float("inf")).to(tl.float32)
        p = tl.exp((z - m) - log_s)
        y = tl.where(c == t, w_t, 0.0)
        if HAS_OP:
            y = y + tl.where(c == op_col, d, 0.0)
        gz = (p - y) * g
        gz = tl.where(valid, gz, float("nan"))
        tl.store(out_ptr + c, gz.to(grad_ptr.dtype.element_ty), mask=mask)


def _prepare_delta(delta, batch: int, device: torch.device):
    """(fp32 [B] tensor or None, fp32-rounded float)."""
    if isinstance(delta, torch.Tensor):
        if delta.dim() == 0:
            delta = delta.reshape(1).expand(batch)  # no host sync: read per row like a [B] delta
        if delta.shape != (batch,):
            raise ValueError(f"per-sample delta must have shape [{batch}], got {tuple(delta.shape)}")
        return delta.detach().to(device=device, dtype=torch.float32).contiguous(), 0.0
    return None, float(torch.tensor(float(delta), dtype=torch.float32))


def la_ce_forward_triton(logits, target, ops, delta_t, delta_f, num_classes, reduction):
    """Forward kernel on prepared inputs (see `prepare_la_ce_inputs`): (loss, row max, row log s)."""
    batch, n = logits.shape
    block_n = _block_n(n)
    loss = torch.empty(batch, dtype=torch.float32, device=logits.device)
    row_max = torch.empty_like(loss)
    row_logsum = torch.empty_like(loss)
    if batch > 0:
        _la_ce_fwd_kernel[(batch,)](
            logits,
            target,
            ops if ops is not None else target,
            delta_t if delta_t is not None else loss,
            delta_f,
            loss,
            row_max,
            row_logsum,
            n,
            num_classes,
            n - num_classes,
            logits.stride(0),
            HAS_OP=ops is not None,
            PER_SAMPLE_DELTA=delta_t is not None,
            BLOCK_N=block_n,
            num_warps=_num_warps(block_n),
        )
    if reduction == "mean":
        loss = loss.mean()
    elif reduction == "sum":
        loss = loss.sum()
    return loss, row_max, row_logsum


def la_ce_backward_triton(grad_out, logits, target, ops, delta_t, delta_f, row_max, row_logsum, num_classes, reduction):
    """Backward kernel on prepared inputs: d loss / d logits in the logits' dtype, [B, N] contiguous."""
    batch, n = logits.shape
    block_n = _block_n(n)
    grad = torch.empty((batch, n), dtype=logits.dtype, device=logits.device)
    grad_out = grad_out.to(torch.float32)
    if reduction == "none":
        grad_out_stride, scale = grad_out.stride(0), 1.0
    else:
        grad_out_stride, scale = 0, (1.0 / batch if reduction == "mean" and batch > 0 else 1.0)
    if batch > 0:
        _la_ce_bwd_kernel[(batch,)](
            logits,
            target,
            ops if ops is not None else target,
            delta_t if delta_t is not None else row_max,
            delta_f,
            row_max,
            row_logsum,
            grad_out,
            grad_out_stride,
            scale,
            grad,
            n,
            num_classes,
            n - num_classes,
            logits.stride(0),
            grad.stride(0),
            HAS_OP=ops is not None,
            PER_SAMPLE_DELTA=delta_t is not None,
            BLOCK_N=block_n,
            num_warps=_num_warps(block_n),
        )
    return grad


class LabelAugmentedCE(torch.autograd.Function):
    """Autograd wrapper: Triton forward (per-row loss, reduced here) and Triton backward."""

    @staticmethod
    def forward(ctx, logits, target, ops, delta_t, delta_f, num_classes, reduction):
        loss, row_max, row_logsum = la_ce_forward_triton(logits, target, ops, delta_t, delta_f, num_classes, reduction)
        ctx.save_for_backward(logits, target, ops, delta_t, row_max, row_logsum)
        ctx.delta_f = delta_f
        ctx.num_classes = num_classes
        ctx.reduction = reduction
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        logits, target, ops, delta_t, row_max, row_logsum = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return (None,) * 7
        grad = la_ce_backward_triton(
            grad_out, logits, target, ops, delta_t, ctx.delta_f, row_max, row_logsum, ctx.num_classes, ctx.reduction
        )
        return grad, None, None, None, None, None, None


def prepare_la_ce_inputs(logits, target, num_classes, op_index, delta, reduction):
    """Validate and normalise the arguments: (logits, target, ops or None, delta_t or None, delta_f).

    An int op_index becomes a [B] tensor filled on the device (no host-to-device copy)."""
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"unknown reduction {reduction!r}")
    if logits.dim() != 2:
        raise ValueError(f"logits must be [B, N], got {tuple(logits.shape)}")
    if logits.dtype not in _LOGIT_DTYPES:
        raise TypeError(f"label_augmented_ce_triton needs fp32/bf16/fp16 logits, got {logits.dtype}")
    batch, n = logits.shape
    if n < num_classes or num_classes < 1:
        raise ValueError(f"logits have {n} columns, fewer than num_classes={num_classes}")
    if target.shape != (batch,):
        raise ValueError(f"target must have shape [{batch}], got {tuple(target.shape)}")
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    device = logits.device
    target = target.to(device=device, dtype=torch.int64).contiguous()
    delta_t, delta_f = _prepare_delta(delta, batch, device)

    ops = None
    if op_index is not None:
        if n == num_classes:
            # Same check as the reference (syncs only on this misuse-prone path).
            positive = bool((delta_t > 0).any()) if delta_t is not None else delta_f > 0
            if positive:
                raise ValueError("delta > 0 needs label-augmentation logits: logits have only K columns")
        else:
            if isinstance(op_index, torch.Tensor):
                ops = op_index.to(device=device, dtype=torch.int64)
            else:
                ops = torch.full((), int(op_index), dtype=torch.int64, device=device)
            if ops.dim() == 0:
                ops = ops.expand(batch)
            if ops.shape != (batch,):
                raise ValueError(f"op_index must be an int or have shape [{batch}], got {tuple(ops.shape)}")
            ops = ops.contiguous()
    if ops is None:
        delta_t, delta_f = None, 0.0
    return logits, target, ops, delta_t, delta_f


def label_augmented_ce_triton(
    logits: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    op_index: torch.Tensor | int | None = None,
    delta: float | torch.Tensor = 0.0,
    reduction: str = "mean",
    return_row_stats: bool = False,
):
    """Same signature and semantics as `label_augmented_ce_reference`, fused in Triton.

    logits [B, K+M] fp32/bf16/fp16 (fp32 accumulation; the loss is fp32, the gradient has the
    logits' dtype); target [B] ints in [0, K); op_index [B] ints (-1 = no op), one int for the
    batch, or None; delta a float or a [B] tensor (not differentiated). op_index None, or
    logits with only K columns, give plain cross-entropy over all columns.
    return_row_stats=True (the custom operator's forward) skips autograd and returns
    (loss, row max, row log-sum-exp-minus-max), the statistics `la_ce_backward_triton` needs.
    """
    logits, target, ops, delta_t, delta_f = prepare_la_ce_inputs(logits, target, num_classes, op_index, delta, reduction)
    if return_row_stats:
        return la_ce_forward_triton(logits, target, ops, delta_t, delta_f, num_classes, reduction)
    return LabelAugmentedCE.apply(logits, target, ops, delta_t, delta_f, num_classes, reduction)
