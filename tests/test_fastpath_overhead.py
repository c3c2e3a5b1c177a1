"""Issue 29: the plain kernel path adds no operator round trip in eager mode (CPU, tiny sizes)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

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


# --------------------------------------------------------------------------- cast-once weights (issue 29)
def _bn_model() -> nn.Module:
    """Conv, BatchNorm, a grouped conv and a K+M linear head: the layer kinds autocast treats differently."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1, groups=2),
                         nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 11))


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("shape", [(1, 3, 5, 7), (3, 3, 8, 8)])
def test_cast_once_view_is_bit_identical_to_autocast(mode, shape):
    """The view casts exactly what autocast casts: logits and input gradients equal bit for bit."""
    from fastadv.runtime import precision

    model = _bn_model().train(mode == "train")
    for p in model.parameters():
        p.requires_grad_(False)  # as inside an attack (attack_mode)
    x = torch.rand(shape)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        view = precision.fixed_weights(model)
        assert isinstance(view, precision.FixedWeightView)
        outs = []
        for m in (model, view):
            xi = x.clone().requires_grad_(True)
            out = m(xi)
            outs.append((out, torch.autograd.grad(out.float().sum(), xi)[0]))
    assert outs[0][0].dtype == torch.bfloat16
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_cast_once_view_recasts_after_an_in_place_update_and_keeps_fp32_parts():
    from fastadv.runtime import precision

    model = _bn_model().eval()
    x = torch.rand(2, 3, 6, 6)
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.no_grad():
        view = precision.fixed_weights(model)
        before = view(x)
        model[-1].weight.add_(1.0)  # an optimizer step would do this: the copy must not go stale
        assert torch.equal(view(x), model(x)) and not torch.equal(view(x), before)
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the weights themselves stay fp32
    assert model[1].running_mean.dtype == torch.float32
    assert view.inner is model


def test_cast_once_view_only_where_the_dispatch_uses_it():
    """No autocast, the switch off, or a compiled model: the model itself (plain autocast semantics)."""
    from fastadv.runtime import precision
    from fastadv.runtime.compiled import CompiledModel

    model = _bn_model()
    assert precision.fixed_weights(model) is model  # fp32: nothing to cast
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with precision.cast_once(False):
            assert precision.fixed_weights(model) is model
        compiled = CompiledModel(model)
        assert precision.fixed_weights(compiled) is compiled
        view = precision.fixed_weights(model)
        assert precision.fixed_weights(view) is view


@pytest.mark.parametrize("policy", ["bf16", "bf16-attack"])
def test_pgd_with_cast_once_equals_pgd_with_autocast_recasts(policy):
    """The whole attack, fast path vs the plain path (cast-once off): the same adversarial examples."""
    from fastadv.attacks import PGD
    from fastadv.runtime import precision

    model = _bn_model()
    x, y = torch.rand(3, 3, 9, 9), torch.tensor([0, 4, 9])
    attack = PGD(eps=8 / 255, steps=3, alpha=2 / 255, num_classes=10, head="all")
    runs = []
    for fast in (True, False):
        torch.manual_seed(1)
        with precision.cast_once(fast), precision.training(precision.POLICIES[policy], torch.device("cpu")):
            runs.append(attack(model, x, y))
    assert runs[0].dtype == torch.float32 and torch.equal(runs[0], runs[1])


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_an_attack_through_the_view_leaves_the_models_mode_as_it_was(mode):
    """attack_mode saves and restores the mode of what it is given: through the view, the model's own
    (a view with a mode flag of its own once put an evaluated model back in train mode)."""
    from fastadv.attacks import PGD
    from fastadv.runtime import precision

    model = _bn_model().train(mode == "train")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        view = precision.fixed_weights(model)
        assert view.training == model.training
        PGD(eps=8 / 255, steps=1, alpha=2 / 255, num_classes=10)(view, torch.rand(2, 3, 6, 6), torch.tensor([1, 2]))
    assert model.training == (mode == "train") and all(m.training == model.training for m in model.modules())
    view.eval()
    assert not model.training


def test_fused_sgd_follows_the_plain_sgd_update():
    """FUSED_SGD_DEVICES: the fused step and PyTorch's plain for-loop step agree over several steps,
    odd parameter shapes included (the fused kernel may round differently, never compute differently)."""
    from fastadv.train.optim import sgd

    torch.manual_seed(0)
    shapes = [(7, 3, 3, 3), (7,), (1,), (13, 5), (2, 1, 1, 1)]
    a = [torch.randn(s, requires_grad=True) for s in shapes]
    b = [t.detach().clone().requires_grad_(True) for t in a]
    fused = sgd(a, lr=0.1, momentum=0.9, weight_decay=5e-4)
    plain = torch.optim.SGD(b, lr=0.1, momentum=0.9, weight_decay=5e-4, foreach=False)
    assert fused.defaults["fused"] is True and plain.defaults["fused"] is None
    for _ in range(4):
        grads = [torch.randn(s) for s in shapes]
        for p, q, g in zip(a, b, grads):
            p.grad, q.grad = g.clone(), g.clone()
        fused.step()
        plain.step()
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
