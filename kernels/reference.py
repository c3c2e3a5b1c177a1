"""Plain-torch versions of the fused kernels: the CPU path and the tests' ground truth.

Both functions follow docs/reference/methods.md: PGD, LA op by op, so a fused kernel that keeps
the same order of floating-point operations reproduces them exactly in fp32.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def per_sample(value: float | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
    """A scalar stays a scalar; a [B] tensor becomes [B, 1, 1, ...] to broadcast over `like`."""
    if isinstance(value, torch.Tensor):
        if value.dim() == 0:
            return value.to(like.dtype)
        if value.shape != (like.shape[0],):
            raise ValueError(f"per-sample value must have shape [{like.shape[0]}], got {tuple(value.shape)}")
        return value.to(device=like.device, dtype=like.dtype).view(-1, *([1] * (like.dim() - 1)))
    return value


def pgd_update_reference(
    x_adv: torch.Tensor,
    x: torch.Tensor,
    grad: torch.Tensor,
    alpha: float | torch.Tensor,
    eps: float | torch.Tensor,
) -> torch.Tensor:
    """One l_inf PGD step: x_adv + alpha*sign(grad), projected onto the eps-ball around x, then [0,1].

    Op order of torchattacks' PGD: delta = clamp(x_adv' - x, -eps, eps); clamp(x + delta, 0, 1).
    `alpha` and `eps` are scalars or per-sample [B] tensors. sign(0) = 0.
    """
    alpha_b = per_sample(alpha, x)
    eps_b = per_sample(eps, x)
    stepped = x_adv + alpha_b * grad.sign().to(x.dtype)
    if isinstance(eps_b, torch.Tensor):
        delta = torch.minimum(torch.maximum(stepped - x, -eps_b), eps_b)
    else:
        delta = torch.clamp(stepped - x, min=-eps_b, max=eps_b)
    return torch.clamp(x + delta, min=0.0, max=1.0)


def random_start_reference(x: torch.Tensor, eps: float | torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """x + U(-eps, eps), clamped to [0, 1] (the PGD random start)."""
    # Drawn in logical (NCHW) order whatever x's memory format, so channels_last runs see the same noise.
    noise = torch.empty(x.shape, dtype=x.dtype, device=x.device).uniform_(-1.0, 1.0, generator=generator)
    return torch.clamp(x + noise * per_sample(eps, x), min=0.0, max=1.0)


def label_augmented_ce_reference(
    logits: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    op_index: torch.Tensor | int | None = None,
    delta: float | torch.Tensor = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """Cross-entropy against the label-augmented soft target over K+M logits.

    y~ = concat[(1 - delta) onehot_K(y), delta onehot_M(j)], loss = -sum y~ log softmax(z)
       = (1 - delta) CE(z, y) + delta CE(z, K + j).
    `op_index` j is per sample ([B] int, -1 = no op: plain label) or one int for the batch;
    None or delta = 0 gives plain cross-entropy over all logits. Computed in fp32 at least.
    """
    compute_dtype = torch.promote_types(logits.dtype, torch.float32)
    logp = F.log_softmax(logits.to(compute_dtype), dim=1)
    nll_class = -logp.gather(1, target.long().view(-1, 1)).squeeze(1)
    batch = logits.shape[0]
    delta_b = torch.as_tensor(delta, dtype=compute_dtype, device=logits.device).expand(batch)
    if op_index is None or logits.shape[1] == num_classes:
        if op_index is not None and bool((delta_b > 0).any()):
            raise ValueError("delta > 0 needs label-augmentation logits: logits have only K columns")
        loss = nll_class
    else:
        ops = torch.as_tensor(op_index, device=logits.device).long().expand(batch)
        has_op = ops >= 0
        op_col = (num_classes + ops.clamp(min=0)).view(-1, 1)
        nll_op = -logp.gather(1, op_col).squeeze(1)
        d = torch.where(has_op, delta_b, torch.zeros_like(delta_b))
        loss = (1 - d) * nll_class + d * nll_op
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    if reduction == "none":
        return loss
    raise ValueError(f"unknown reduction {reduction!r}")


def label_augmented_target(
    target: torch.Tensor, num_classes: int, num_aux: int, op_index: torch.Tensor | int | None, delta: float | torch.Tensor
) -> torch.Tensor:
    """The dense soft target y~ [B, K+M] (for tests and for readers of the formula)."""
    batch = target.shape[0]
    y = torch.zeros(batch, num_classes + num_aux, dtype=torch.float64, device=target.device)
    d = torch.as_tensor(delta, dtype=torch.float64, device=target.device).expand(batch).clone()
    if op_index is None:
        d.zero_()
        ops = torch.zeros(batch, dtype=torch.long, device=target.device)
    else:
        ops = torch.as_tensor(op_index, device=target.device).long().expand(batch)
        d = torch.where(ops >= 0, d, torch.zeros_like(d))
    rows = torch.arange(batch, device=target.device)
    y[rows, target.long()] = 1 - d
    has_op = (ops >= 0) & (d > 0)
    y[rows[has_op], num_classes + ops[has_op]] = d[has_op]
    return y


def label_augmented_ce_reference_backward(
    grad_out: torch.Tensor,
    logits: torch.Tensor,
    target: torch.Tensor,
    num_classes: int,
    op_index: torch.Tensor | int | None = None,
    delta: float | torch.Tensor = 0.0,
    reduction: str = "mean",
) -> torch.Tensor:
    """d loss / d logits of `label_augmented_ce_reference`, written out as autograd computes it.

    The same backward formulas in the same order (mean: expand / B; mul; neg; gather ->
    scatter_add into zeros; log_softmax backward; cast back), so the gradient is bit-identical
    to `torch.autograd.grad` through the reference. It exists because the custom operator's
    CPU kernel runs below autograd, where the reference's graph cannot be recorded.
    """
    compute_dtype = torch.promote_types(logits.dtype, torch.float32)
    logp = F.log_softmax(logits.to(compute_dtype), dim=1)
    batch = logits.shape[0]
    grad_out = grad_out.to(compute_dtype)
    if reduction == "mean":
        grad_rows = grad_out.expand(batch) / batch
    elif reduction == "sum":
        grad_rows = grad_out.expand(batch)
    elif reduction == "none":
        grad_rows = grad_out
    else:
        raise ValueError(f"unknown reduction {reduction!r}")
    target_col = target.long().view(-1, 1)
    if op_index is None or logits.shape[1] == num_classes:
        grad_logp = torch.zeros_like(logp).scatter_add_(1, target_col, grad_rows.neg().unsqueeze(1))
    else:
        delta_b = torch.as_tensor(delta, dtype=compute_dtype, device=logits.device).expand(batch)
        ops = torch.as_tensor(op_index, device=logits.device).long().expand(batch)
        d = torch.where(ops >= 0, delta_b, torch.zeros_like(delta_b))
        op_col = (num_classes + ops.clamp(min=0)).view(-1, 1)
        from_class = torch.zeros_like(logp).scatter_add_(1, target_col, (grad_rows * (1 - d)).neg().unsqueeze(1))
        from_op = torch.zeros_like(logp).scatter_add_(1, op_col, (grad_rows * d).neg().unsqueeze(1))
        grad_logp = from_class + from_op
    grad = torch._log_softmax_backward_data(grad_logp, logp, 1, compute_dtype)
    return grad.to(logits.dtype)
