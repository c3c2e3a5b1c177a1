"""The fused kernels as PyTorch custom operators, so torch.compile traces through them.

    fastadv::pgd_update(x_adv, x, grad, alpha, eps, use_triton) -> Tensor
    fastadv::la_ce_forward(logits, target, op_index?, delta, num_classes, reduction, use_triton)
        -> (loss, row_max, row_logsum)
    fastadv::la_ce_backward(grad_out, logits, target, op_index?, delta, row_max, row_logsum,
                            num_classes, reduction, use_triton) -> grad_logits

`use_triton` is decided once per call site by the dispatcher (`fastadv.kernels`), from the
cached FASTADV_TRITON mode, the device and the dtype; inside a compiled graph it is a
constant. One implementation serves every device: Triton when `use_triton` (CUDA tensors, or
CPU tensors under the Triton interpreter), the plain-torch reference otherwise (the CPU path).
The ops are `custom_op`s rather than `triton_op`s: the wrappers do layout and argument
handling in Python (strides, a 0-d CPU scalar read with `.item()`), which an opaque operator
keeps out of the traced graph.

eps, alpha, delta and op_index are tensors in the schema so compile does not specialize on
Python floats. A 0-d CPU tensor stands for the Python number it holds (the dispatcher turns
floats into float64 0-d CPU tensors): reading it costs no device sync and gives the reference
and the kernel exactly the scalar arithmetic they had with a float. Other tensors (0-d on the
device, or [B]) are per-sample values.

The fake (meta) implementations give the output metadata: pgd_update returns x_adv's layout;
the loss is fp32 (fp64 for fp64 logits), [] or [B]; the row statistics are [B] fp32 on the
Triton path and empty on the reference path (which does not need them); the logits gradient
is contiguous in the logits' dtype.
"""

from __future__ import annotations

import torch
from torch.library import custom_op

from fastadv.kernels.reference import (
    label_augmented_ce_reference,
    label_augmented_ce_reference_backward,
    pgd_update_reference,
)

__all__ = ["la_ce_backward", "la_ce_forward", "pgd_update_op", "scalar_arg"]


def scalar_arg(value, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """A Python number as a 0-d CPU tensor (exact for floats: float64); a tensor passes through."""
    if isinstance(value, torch.Tensor):
        return value
    return torch.tensor(value, dtype=dtype)


def _unwrap(value: torch.Tensor | None, read: bool = True):
    """A 0-d CPU tensor becomes its Python number (when `read`); anything else is returned as it is.

    read = False (the reference on CPU tensors) keeps the 0-d tensor: the reference computes with
    it exactly as with the float (cast to the data's dtype), and no tensor is read on the host.
    """
    if read and value is not None and value.dim() == 0 and value.device.type == "cpu":
        return value.item()
    return value


def _in_layout_of(result: torch.Tensor, template: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`result` with exactly the strides `torch.empty_like(template)` gives (the fake's promise)."""
    if result.stride() == template.stride() and result.dtype == dtype:
        return result
    out = torch.empty_like(template, dtype=dtype)
    if out.stride() == result.stride() and result.dtype == dtype:
        return result
    return out.copy_(result)


# ------------------------------------------------------------------------------ PGD update
@custom_op("fastadv::pgd_update", mutates_args=())
def pgd_update_op(
    x_adv: torch.Tensor, x: torch.Tensor, grad: torch.Tensor, alpha: torch.Tensor, eps: torch.Tensor, use_triton: bool
) -> torch.Tensor:
    read = use_triton or x_adv.device.type != "cpu"
    alpha_v, eps_v = _unwrap(alpha, read), _unwrap(eps, read)
    if use_triton:
        from fastadv.kernels import pgd_step

        result = pgd_step.pgd_update_triton(x_adv, x, grad, alpha_v, eps_v)
    else:
        result = pgd_update_reference(x_adv, x, grad, alpha_v, eps_v)
    return _in_layout_of(result, x_adv, torch.promote_types(x_adv.dtype, x.dtype))


@pgd_update_op.register_fake
def _(x_adv, x, grad, alpha, eps, use_triton):
    return torch.empty_like(x_adv, dtype=torch.promote_types(x_adv.dtype, x.dtype))


# --------------------------------------------------------------- label-augmented cross-entropy
def _loss_dtype(logits: torch.Tensor) -> torch.dtype:
    return torch.promote_types(logits.dtype, torch.float32)


@custom_op("fastadv::la_ce_forward", mutates_args=())
def la_ce_forward(
    logits: torch.Tensor,
    target: torch.Tensor,
    op_index: torch.Tensor | None,
    delta: torch.Tensor,
    num_classes: int,
    reduction: str,
    use_triton: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    read = use_triton or logits.device.type != "cpu"
    ops, delta_v = _unwrap(op_index, read), _unwrap(delta, read)
    if use_triton:
        from fastadv.kernels import la_xent

        loss, row_max, row_logsum = la_xent.label_augmented_ce_triton(
            logits, target, num_classes, ops, delta_v, reduction, return_row_stats=True
        )
        return loss, row_max, row_logsum
    loss = label_augmented_ce_reference(logits, target, num_classes, ops, delta_v, reduction)
    empty = logits.new_empty((0,), dtype=_loss_dtype(logits))
    return loss, empty, empty.clone()


@la_ce_forward.register_fake
def _(logits, target, op_index, delta, num_classes, reduction, use_triton):
    batch = logits.shape[0]
    loss = logits.new_empty((batch,) if reduction == "none" else (), dtype=_loss_dtype(logits))
    stats = (batch,) if use_triton else (0,)
    return loss, logits.new_empty(stats, dtype=torch.float32), logits.new_empty(stats, dtype=torch.float32)


@custom_op("fastadv::la_ce_backward", mutates_args=())
def la_ce_backward(
    grad_out: torch.Tensor,
    logits: torch.Tensor,
    target: torch.Tensor,
    op_index: torch.Tensor | None,
    delta: torch.Tensor,
    row_max: torch.Tensor,
    row_logsum: torch.Tensor,
    num_classes: int,
    reduction: str,
    use_triton: bool,
) -> torch.Tensor:
    read = use_triton or logits.device.type != "cpu"
    ops, delta_v = _unwrap(op_index, read), _unwrap(delta, read)
    if use_triton:
        from fastadv.kernels import la_xent

        z, t, ops_t, delta_t, delta_f = la_xent.prepare_la_ce_inputs(logits, target, num_classes, ops, delta_v, reduction)
        return la_xent.la_ce_backward_triton(
            grad_out, z, t, ops_t, delta_t, delta_f, row_max, row_logsum, num_classes, reduction
        )
    grad = label_augmented_ce_reference_backward(grad_out, logits, target, num_classes, ops, delta_v, reduction)
    return grad.contiguous()


@la_ce_backward.register_fake
def _(grad_out, logits, target, op_index, delta, row_max, row_logsum, num_classes, reduction, use_triton):
    return logits.new_empty(logits.shape)


def _setup_context(ctx, inputs, output):
    logits, target, op_index, delta, num_classes, reduction, use_triton = inputs
    _, row_max, row_logsum = output
    ctx.save_for_backward(logits, target, op_index, delta, row_max, row_logsum)
    ctx.args = (num_classes, reduction, use_triton)
    ctx.mark_non_differentiable(row_max, row_logsum)


def _backward(ctx, grad_loss, _grad_max, _grad_logsum):
    logits, target, op_index, delta, row_max, row_logsum = ctx.saved_tensors
    grad = None
    if ctx.needs_input_grad[0]:
        grad = la_ce_backward(grad_loss, logits, target, op_index, delta, row_max, row_logsum, *ctx.args)
    return grad, None, None, None, None, None, None


la_ce_forward.register_autograd(_backward, setup_context=_setup_context)
