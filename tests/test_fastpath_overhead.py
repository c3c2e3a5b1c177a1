"""Issue 29: the plain kernel path adds no operator round trip in eager mode (CPU, tiny sizes)."""

from __future__ import annotations

import pytest
import torch

import fastadv.kernels as kernels
from fastadv.kernels import ops
from fastadv.kernels.reference import label_augmented_ce_reference, pgd_update_reference


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 11))


def test_plain_kernel_path_skips_the_custom_operator_in_eager_mode(monkeypatch):
    """On the CPU the dispatcher calls the reference directly: same numbers, no operator round trip."""
    def boom(*args, **kwargs):
        raise AssertionError("custom operator called on the plain eager path")

    monkeypatch.setattr(ops, "pgd_update_op", boom)
    monkeypatch.setattr(ops, "la_ce_forward", boom)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 4, 4, generator=g)
    x_adv, grad = (x + 0.01).clamp(0, 1), torch.randn(2, 3, 4, 4, generator=g)
    assert torch.equal(kernels.pgd_update(x_adv, x, grad, 0.01, 0.03), pgd_update_reference(x_adv, x, grad, 0.01, 0.03))
    z = torch.randn(2, 11, generator=g, requires_grad=True)
    t = torch.tensor([3, 4])
    assert torch.equal(kernels.label_augmented_ce(z, t, 10, 0, 0.03), label_augmented_ce_reference(z, t, 10, 0, 0.03))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_plain_ce_gradient_equals_the_operators_backward(reduction):
    """The eager plain path differentiates the reference by autograd; the operator's hand-written backward
    (what compiled callers get) gives the same gradient."""
    g = torch.Generator().manual_seed(3)
    logits, target = torch.randn(4, 12, generator=g) * 3, torch.randint(0, 10, (4,), generator=g)
    z1, z2 = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    plain = kernels.label_augmented_ce(z1, target, 10, 1, 0.05, reduction)
    op, _, _ = ops.la_ce_forward(z2, target, ops.scalar_arg(1, torch.int64), ops.scalar_arg(0.05), 10, reduction, False)
    torch.testing.assert_close(plain, op, rtol=0, atol=0)
    torch.testing.assert_close(torch.autograd.grad(plain.sum(), z1)[0], torch.autograd.grad(op.sum(), z2)[0],
                               rtol=1e-6, atol=1e-7)
