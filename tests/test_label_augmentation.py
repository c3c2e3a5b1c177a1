"""The label-augmented cross-entropy (docs/reference/methods.md: LA): formula, gradient, edge cases."""

from __future__ import annotations

import pytest
import torch

from fastadv.kernels import label_augmented_ce, label_augmented_target


def soft_target_ce(logits, soft):
    return -(soft * torch.log_softmax(logits.double(), dim=1)).sum(dim=1)


@pytest.mark.parametrize("k, m", [(10, 1), (10, 3), (1000, 1), (7, 2)])
def test_equals_soft_target_cross_entropy(k, m):
    torch.manual_seed(k + m)
    b = 9
    logits = torch.randn(b, k + m, dtype=torch.float64) * 3
    y = torch.randint(0, k, (b,))
    ops = torch.randint(-1, m, (b,))  # -1 = no op (plain label)
    delta = torch.rand(b, dtype=torch.float64) * 0.5
    got = label_augmented_ce(logits, y, k, op_index=ops, delta=delta, reduction="none")
    expected = soft_target_ce(logits, label_augmented_target(y, k, m, ops, delta))
    assert torch.allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert torch.allclose(label_augmented_ce(logits, y, k, ops, delta), expected.mean())


def test_decomposes_into_two_cross_entropies():
    torch.manual_seed(0)
    logits = torch.randn(4, 11, dtype=torch.float64)
    y = torch.tensor([0, 3, 9, 2])
    ce = torch.nn.functional.cross_entropy
    expected = 0.97 * ce(logits, y) + 0.03 * ce(logits, torch.full((4,), 10))
    assert torch.allclose(label_augmented_ce(logits, y, 10, op_index=0, delta=0.03), expected)


def test_gradient_is_softmax_minus_soft_target_and_passes_gradcheck():
    torch.manual_seed(1)
    k, m, b = 6, 2, 5
    logits = torch.randn(b, k + m, dtype=torch.float64, requires_grad=True)
    y = torch.randint(0, k, (b,))
    ops = torch.tensor([0, 1, -1, 1, 0])
    delta = 0.2
    loss = label_augmented_ce(logits, y, k, ops, delta, reduction="sum")
    (grad,) = torch.autograd.grad(loss, logits)
    expected = torch.softmax(logits, 1) - label_augmented_target(y, k, m, ops, delta)
    assert torch.allclose(grad, expected, atol=1e-12)
    assert torch.autograd.gradcheck(lambda z: label_augmented_ce(z, y, k, ops, delta), (logits,))


def test_delta_zero_is_plain_cross_entropy():
    torch.manual_seed(2)
    logits = torch.randn(8, 1001)
    y = torch.randint(0, 1000, (8,))
    plain = torch.nn.functional.cross_entropy(logits, y)
    assert torch.allclose(label_augmented_ce(logits, y, 1000, op_index=0, delta=0.0), plain)
    assert torch.allclose(label_augmented_ce(logits[:, :1000], y, 1000), torch.nn.functional.cross_entropy(logits[:, :1000], y))


def test_extreme_logits_do_not_overflow_and_nan_propagates():
    y = torch.tensor([0, 1])
    logits = torch.tensor([[1e4, -1e4, 0.0], [-1e4, 3e4, -3e4]])
    loss = label_augmented_ce(logits, y, 2, op_index=0, delta=0.1, reduction="none")
    assert torch.isfinite(loss).all()
    nan_logits = logits.clone()
    nan_logits[0, 1] = float("nan")
    assert torch.isnan(label_augmented_ce(nan_logits, y, 2, op_index=0, delta=0.1, reduction="none")[0])


def test_bf16_logits_are_accumulated_in_fp32():
    torch.manual_seed(3)
    logits = torch.randn(4, 11) * 4
    y = torch.randint(0, 10, (4,))
    low = label_augmented_ce(logits.bfloat16(), y, 10, op_index=0, delta=0.03)
    assert low.dtype == torch.float32
    ref = label_augmented_ce(logits.bfloat16().double(), y, 10, op_index=0, delta=0.03)
    assert torch.allclose(low.double(), ref, rtol=1e-6)


def test_delta_without_aux_logits_is_refused():
    with pytest.raises(ValueError, match="K columns"):
        label_augmented_ce(torch.randn(2, 5), torch.tensor([0, 1]), 5, op_index=0, delta=0.1)
