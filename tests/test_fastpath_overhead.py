"""Issue 29: the fast path adds no per-step overhead to the plain path it wraps (CPU, tiny sizes)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import fastadv.kernels as kernels
from fastadv.attacks import PGD
from fastadv.kernels import ops
from fastadv.kernels.reference import label_augmented_ce_reference, pgd_update_reference


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 11))


class WeightCasts(TorchDispatchMode):
    """Counts dtype casts (aten._to_copy) whose input is one of `model`'s parameters."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.ptrs = {p.data_ptr() for p in model.parameters()}
        self.casts = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._to_copy.default and args[0].data_ptr() in self.ptrs:
            self.casts += 1
        return func(*args, **(kwargs or {}))


def _attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> torch.Tensor:
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        return PGD(eps=0.03, steps=steps, alpha_ratio=0.25, num_classes=10, head="all")(model, x, y)


def test_eager_autocast_attack_casts_each_weight_once_and_matches_the_frozen_attack():
    """Frozen weights defeat autocast's cast cache: every step re-cast all of them (old code: 4 x 5 casts)."""
    model, steps = _model(), 4
    x, y = torch.rand(2, 3, 8, 8), torch.tensor([1, 2])
    with WeightCasts(model) as counted:
        got = _attack(model, x, y, steps)
    assert counted.casts == len(list(model.parameters())), counted.casts  # old code: steps x that
    assert all(p.requires_grad and p.grad is None for p in model.parameters())  # restored, nothing accumulated
    for p in model.parameters():
        p.requires_grad_(False)  # nothing to cache: every forward casts again, the pre-issue-29 path
    frozen = _attack(model, x, y, steps)
    assert torch.equal(got, frozen)


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
