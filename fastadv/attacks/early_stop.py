"""Early-stop PGD for evaluation (eval.early_stop, off by default).

A sample whose K-head prediction on an iterate the loop already forwards is wrong counts as
broken from then on: it stops being attacked (its update is masked out, so it keeps its
fooling iterate) and is returned at that iterate. Samples never fooled follow exactly the
last-iterate trajectory (eval mode makes samples independent, and sign() removes the 1/B of
the mean loss), so robust accuracy with early stop is never higher than the last-iterate
number and equal on the samples it never fooled.

compact = True also drops broken samples from the working batch once fewer than half of it
remain attackable, and stops when none does: that reads a count on the host (one sync per
step), which is why it is evaluation-only and opt-in. It is what saves forward passes;
masking alone saves none. Without compaction the loop has no host sync.
"""

from __future__ import annotations

import torch
from torch import nn

from fastadv import kernels
from fastadv.attacks.loss import Eps, attack_loss
from fastadv.models import predict_k


def _take(value: Eps, keep: torch.Tensor) -> Eps:
    return value[keep] if isinstance(value, torch.Tensor) and value.dim() == 1 else value


def early_stop_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, start: torch.Tensor, *, alpha: Eps, eps: Eps,
                   steps: int, num_classes: int, head: str, temperature: float, compact: bool) -> torch.Tensor:
    """`steps` PGD steps from `start`; each sample stops at the first iterate that fools the K head."""
    result = start.detach().clone()
    index = torch.arange(x.shape[0], device=x.device)  # rows of `result` the working batch holds
    x_w, y_w, x_adv = x, y, start.detach()
    alpha_w, eps_w = alpha, eps
    fooled = torch.zeros_like(y, dtype=torch.bool)  # by any iterate so far
    for _ in range(steps):
        x_adv.requires_grad_(True)
        logits = model(x_adv)
        fooled = fooled | (predict_k(logits.detach(), num_classes) != y_w)
        active = ~fooled
        (grad,) = torch.autograd.grad(attack_loss(logits, y_w, num_classes, head, temperature), x_adv)
        x_adv = x_adv.detach()
        mask = active.view(-1, *([1] * (x_adv.dim() - 1)))
        x_adv = torch.where(mask, kernels.pgd_update(x_adv, x_w, grad, alpha_w, eps_w), x_adv)
        if compact:
            remaining = int(active.sum())  # the one host sync per step (opt-in)
            if remaining == 0 or 2 * remaining < x_adv.shape[0]:
                result.index_copy_(0, index, x_adv)
                if remaining == 0:
                    return result
                keep = active.nonzero().squeeze(1)
                index, x_w, y_w, x_adv = index[keep], x_w[keep], y_w[keep], x_adv[keep]
                alpha_w, eps_w = _take(alpha_w, keep), _take(eps_w, keep)
                fooled = fooled[keep]
    result.index_copy_(0, index, x_adv)
    return result
