"""The kernels as custom operators: opcheck, equality with the reference, compile without breaks.

CPU only: the operators' reference implementation, and (when triton imports and
TRITON_INTERPRET=1) the Triton implementation under the interpreter.
"""

from __future__ import annotations

import os

import pytest
import torch

import fastadv.kernels as kernels
from fastadv.kernels import ops
from fastadv.kernels.reference import label_augmented_ce_reference, pgd_update_reference

NAN = float("nan")
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1" and kernels.triton_available()
PATHS = [False, True] if INTERPRET else [False]  # use_triton flag values to check


@pytest.fixture(autouse=True)
def _restore_triton_mode():
    yield
    kernels.reload_triton_mode()


def pgd_case(shape, seed=0, eps=0.03):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g)
    x_adv = (x + (torch.rand(shape, generator=g) * 2 - 1) * eps).clamp(0, 1)
    grad = torch.randn(shape, generator=g)
    grad[torch.rand(shape, generator=g) < 0.2] = 0.0
    return x_adv, x, grad


def ce_case(b, k, m, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(b, k + m, generator=g) * 3).to(dtype)
    target = torch.randint(0, k, (b,), generator=g)
    op = torch.randint(-1, m, (b,), generator=g)
    delta = torch.rand(b, generator=g) * 0.5
    return logits, target, op, delta


# ------------------------------------------------------------------------------ opcheck
@pytest.mark.parametrize("use_triton", PATHS)
def test_opcheck_pgd_update(use_triton):
    x_adv, x, grad = pgd_case((3, 3, 5, 7))
    for alpha, eps in [(ops.scalar_arg(0.0075), ops.scalar_arg(0.03)), (torch.full((3,), 0.01), torch.tensor([0.0, 0.02, 0.05]))]:
        torch.library.opcheck(torch.ops.fastadv.pgd_update.default, (x_adv, x, grad, alpha, eps, use_triton))
    cl = [t.contiguous(memory_format=torch.channels_last) for t in (x_adv, x, grad)]
    torch.library.opcheck(torch.ops.fastadv.pgd_update.default, (*cl, ops.scalar_arg(0.01), ops.scalar_arg(0.03), use_triton))


@pytest.mark.parametrize("use_triton", PATHS)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_opcheck_label_augmented_ce(use_triton, reduction):
    logits, target, op, delta = ce_case(5, 7, 2, seed=1)
    z = logits.requires_grad_(True)
    for op_arg, delta_arg in [(op, delta), (ops.scalar_arg(1, torch.int64), ops.scalar_arg(0.03)), (None, ops.scalar_arg(0.0))]:
        torch.library.opcheck(
            torch.ops.fastadv.la_ce_forward.default, (z, target, op_arg, delta_arg, 7, reduction, use_triton)
        )


# ------------------------------------------------------------------- equal to the reference
@pytest.mark.parametrize("shape", [(4, 3, 8, 8), (3, 3, 7, 5), (1, 1, 1, 1), (5, 3, 17, 13)])
def test_pgd_dispatcher_bit_identical_to_reference(shape):
    x_adv, x, grad = pgd_case(shape, seed=shape[2])
    per_sample = torch.rand(shape[0]) * 0.05
    for alpha, eps in [(0.0075, 0.03), (4 / 255 / 4, 4 / 255), (0.01, per_sample), (per_sample / 4, per_sample)]:
        expected = pgd_update_reference(x_adv, x, grad, alpha, eps)
        assert torch.equal(kernels.pgd_update(x_adv, x, grad, alpha, eps), expected)
    cl = [t.contiguous(memory_format=torch.channels_last) for t in (x_adv, x, grad)]
    got = kernels.pgd_update(*cl, 0.0075, 0.03)
    assert got.is_contiguous(memory_format=torch.channels_last) or shape[1] == 1
    assert torch.equal(got, pgd_update_reference(x_adv, x, grad, 0.0075, 0.03))


def test_pgd_edge_cases():
    x_adv, x, grad = pgd_case((2, 3, 4, 4))
    assert torch.equal(kernels.pgd_update(x_adv, x, grad, 0.01, 0.0), x)  # eps 0: back to x
    assert torch.equal(kernels.pgd_update(x_adv, x, torch.zeros_like(grad), 0.01, 0.5), x_adv)  # sign(0) = 0
    eps = torch.tensor([0.0, 0.5])
    out = kernels.pgd_update(x_adv, x, grad, 0.01, eps)
    assert torch.equal(out[0], x[0]) and torch.equal(out, pgd_update_reference(x_adv, x, grad, 0.01, eps))
    bad = x_adv.clone()
    bad[0, 0, 0, 0] = NAN
    assert torch.equal(kernels.pgd_update(bad, x, grad, 0.01, 0.03).isnan(), pgd_update_reference(bad, x, grad, 0.01, 0.03).isnan())
    with pytest.raises(ValueError, match="per-sample"):
        kernels.pgd_update(x_adv, x, grad, 0.01, torch.ones(3))


@pytest.mark.parametrize("b, k, m", [(6, 10, 1), (3, 7, 2), (1, 13, 3), (9, 1000, 1)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_ce_forward_backward_bit_identical_to_reference_autograd(b, k, m, reduction):
    logits, target, op, delta = ce_case(b, k, m, seed=b + k)
    for op_arg, delta_arg in [(op, delta), (0, 0.03), (None, 0.0), (op, 0.1)]:
        z_ref = logits.clone().requires_grad_(True)
        ref = label_augmented_ce_reference(z_ref, target, k, op_arg, delta_arg, reduction)
        z = logits.clone().requires_grad_(True)
        got = kernels.label_augmented_ce(z, target, k, op_arg, delta_arg, reduction)
        assert torch.equal(got, ref)
        upstream = torch.rand_like(ref) + 0.5
        (g_ref,) = torch.autograd.grad(ref, z_ref, upstream)
        (g,) = torch.autograd.grad(got, z, upstream)
        assert torch.equal(g, g_ref)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_ce_other_dtypes_match_reference(dtype):
    logits, target, op, delta = ce_case(4, 10, 1, dtype=dtype)
    z_ref, z = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    ref = label_augmented_ce_reference(z_ref, target, 10, op, delta)
    got = kernels.label_augmented_ce(z, target, 10, op, delta)
    assert got.dtype == ref.dtype and torch.equal(got, ref)
    assert torch.equal(torch.autograd.grad(got, z)[0], torch.autograd.grad(ref, z_ref)[0])


def test_ce_nan_logits_propagate_and_misuse_is_refused():
    logits, target, op, delta = ce_case(3, 5, 1)
    logits[1, 2] = NAN
    z = logits.requires_grad_(True)
    loss = kernels.label_augmented_ce(z, target, 5, op, delta, reduction="none")
    assert torch.isnan(loss[1]) and torch.isfinite(loss[[0, 2]]).all()
    (g,) = torch.autograd.grad(loss.sum(), z)
    assert torch.isnan(g[1]).all() and torch.isfinite(g[[0, 2]]).all()
    with pytest.raises(ValueError, match="K columns"):
        kernels.label_augmented_ce(torch.randn(2, 5), torch.tensor([0, 1]), 5, op_index=0, delta=0.1)
    with pytest.raises(ValueError, match="reduction"):
        kernels.label_augmented_ce(torch.randn(2, 5), torch.tensor([0, 1]), 5, reduction="avg")


@pytest.mark.skipif(not INTERPRET, reason="needs triton and TRITON_INTERPRET=1")
def test_operators_route_to_triton_under_interpret(monkeypatch):
    logits, target, op, delta = ce_case(4, 10, 1)
    x_adv, x, grad = pgd_case((3, 3, 5, 4))
    monkeypatch.setenv("FASTADV_TRITON", "interpret")
    assert kernels.reload_triton_mode() == "cuda+cpu-interpret"
    z = logits.clone().requires_grad_(True)
    loss = kernels.label_augmented_ce(z, target, 10, op, delta)
    (g,) = torch.autograd.grad(loss, z)
    z_ref = logits.clone().requires_grad_(True)
    ref = label_augmented_ce_reference(z_ref, target, 10, op, delta)
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=0)
    torch.testing.assert_close(g, torch.autograd.grad(ref, z_ref)[0], rtol=1e-5, atol=1e-7)
    assert torch.equal(kernels.pgd_update(x_adv, x, grad, 0.01, 0.03), pgd_update_reference(x_adv, x, grad, 0.01, 0.03))


# --------------------------------------------------------------------- compile, no breaks
def _step(model, x_adv, x, grad, y, eps):
    """A PGD update with a per-sample eps and the label-augmented CE of the model's logits."""
    x_next = kernels.pgd_update(x_adv, x, grad, eps / 4, eps)
    loss = kernels.label_augmented_ce(model(x_next), y, 10, op_index=0, delta=0.03)
    return x_next, loss


def _inputs():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 11))
    x_adv, x, grad = pgd_case((5, 3, 4, 4))
    y = torch.randint(0, 10, (5,))
    return model, x_adv, x, grad, y, torch.full((5,), 0.03)


def _eager_and_grads(fn, model, *args):
    model.zero_grad()
    x_next, loss = fn(model, *args)
    loss.backward()
    return x_next, loss, [p.grad.clone() for p in model.parameters()]


def test_compile_fullgraph_no_graph_breaks_no_recompiles_and_eager_numbers():
    import torch._dynamo
    from torch._dynamo.utils import counters

    model, x_adv, x, grad, y, eps = _inputs()
    torch._dynamo.reset()
    explained = torch._dynamo.explain(_step)(model, x_adv, x, grad, y, eps)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons

    eager = _eager_and_grads(_step, model, x_adv, x, grad, y, eps)
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(_step, fullgraph=True, backend="aot_eager")
    got = _eager_and_grads(compiled, model, x_adv, x, grad, y, eps)
    assert torch.equal(got[0], eager[0]) and torch.equal(got[1], eager[1])
    assert all(torch.equal(a, b) for a, b in zip(got[2], eager[2]))
    # New eps values and another op/delta float, same shapes: the same graph, no recompile.
    again = _eager_and_grads(compiled, model, x_adv, x, grad, y, eps * 0.5)
    assert torch.equal(again[0], _step(model, x_adv, x, grad, y, eps * 0.5)[0])
    assert sum(counters["graph_break"].values()) == 0
    assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.slow
def test_compile_inductor_gives_eager_numbers():
    """The default (inductor) backend: the operators stay opaque, so their numbers are eager's."""
    import torch._dynamo

    model, x_adv, x, grad, y, eps = _inputs()
    eager = _eager_and_grads(_step, model, x_adv, x, grad, y, eps)
    torch._dynamo.reset()
    got = _eager_and_grads(torch.compile(_step, fullgraph=True), model, x_adv, x, grad, y, eps)
    assert torch.equal(got[0], eager[0])
    torch.testing.assert_close(got[1], eager[1], rtol=1e-5, atol=1e-6)  # the Linear may be re-fused
    for a, b in zip(got[2], eager[2]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
