"""The fused Triton kernels against the plain-torch reference, under the Triton interpreter.

Runs on the CPU with TRITON_INTERPRET=1 (set here before triton is imported, and by
`make test`). Sizes stay small: the interpreter runs every program in numpy.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

pytest.importorskip("triton")

import fastadv.kernels as kernels  # noqa: E402
from fastadv.kernels.la_xent import label_augmented_ce_triton  # noqa: E402
from fastadv.kernels.pgd_step import pgd_update_triton  # noqa: E402
from fastadv.kernels.reference import (  # noqa: E402
    label_augmented_ce_reference,
    label_augmented_target,
    pgd_update_reference,
)

if os.environ.get("TRITON_INTERPRET") != "1":  # e.g. TRITON_INTERPRET=0 exported by hand
    pytest.skip("the Triton kernels run on CPU tensors only under TRITON_INTERPRET=1", allow_module_level=True)

NAN = float("nan")


# ----------------------------------------------------------------------------- pgd_update


def pgd_inputs(shape, seed=0, eps=0.03, zero_frac=0.2):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g)
    x_adv = (x + (torch.rand(shape, generator=g) * 2 - 1) * eps).clamp(0, 1)
    grad = torch.randn(shape, generator=g)
    grad[torch.rand(shape, generator=g) < zero_frac] = 0.0  # sign(0) = 0
    return x_adv, x, grad


def assert_bit_equal(got, expected):
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert torch.equal(got, expected), f"max abs diff {(got - expected).abs().max().item()}"


SHAPES = [(4, 3, 8, 8), (3, 3, 7, 5), (1, 3, 1, 1), (5, 3, 17, 13), (2, 3, 32, 29)]


@pytest.mark.parametrize("shape", SHAPES)
def test_pgd_scalar_bit_identical(shape):
    x_adv, x, grad = pgd_inputs(shape)
    for alpha, eps in [(0.0075, 0.03), (4 / 255 / 4, 4 / 255), (0.1, 0.3)]:
        assert_bit_equal(pgd_update_triton(x_adv, x, grad, alpha, eps), pgd_update_reference(x_adv, x, grad, alpha, eps))


@pytest.mark.parametrize("shape", SHAPES)
def test_pgd_per_sample_bit_identical(shape):
    x_adv, x, grad = pgd_inputs(shape, seed=1, eps=0.1)
    b = shape[0]
    g = torch.Generator().manual_seed(2)
    eps = torch.rand(b, generator=g) * 0.1
    eps[0] = 0.0  # an eps = 0 row leaves the image unchanged
    alpha = torch.rand(b, generator=g) * 0.05
    for a, e in [(alpha, eps), (0.01, eps), (alpha, 0.03), (torch.tensor(0.01), torch.tensor(0.02))]:
        got = pgd_update_triton(x_adv, x, grad, a, e)
        assert_bit_equal(got, pgd_update_reference(x_adv, x, grad, a, e))
    got = pgd_update_triton(x_adv, x, grad, alpha, eps)
    assert torch.equal(got[0], x[0])
    dist = (got - x).abs().flatten(1).amax(dim=1)
    assert torch.all(dist <= eps + 1e-6)  # (x + delta) - x rounds, as in the reference


def test_pgd_zero_gradient_and_box_edges():
    shape = (4, 3, 5, 6)
    x_adv, x, _ = pgd_inputs(shape, seed=3)
    zero = torch.zeros(shape)
    got = pgd_update_triton(x_adv, x, zero, 0.01, 0.03)
    assert_bit_equal(got, pgd_update_reference(x_adv, x, zero, 0.01, 0.03))
    assert torch.equal(got, x_adv)  # x_adv already inside the ball and the box

    x = torch.rand(shape)
    x[0], x[1] = 0.0, 1.0
    x[2, :, ::2] = 0.0
    x[2, :, 1::2] = 1.0
    x_adv = x.clone()
    for grad in (torch.randn(shape), -torch.ones(shape), torch.ones(shape)):
        got = pgd_update_triton(x_adv, x, grad, 0.05, 0.03)
        assert_bit_equal(got, pgd_update_reference(x_adv, x, grad, 0.05, 0.03))
        assert got.min() >= 0 and got.max() <= 1
    assert torch.equal(pgd_update_triton(x_adv, x, -torch.ones(shape), 0.05, 0.03)[0], x[0])
    assert torch.equal(pgd_update_triton(x_adv, x, torch.ones(shape), 0.05, 0.03)[1], x[1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_pgd_low_precision_grad(dtype):
    x_adv, x, grad = pgd_inputs((3, 3, 7, 5), seed=4)
    grad = (grad * 1e-3).to(dtype)  # small values, some underflow to 0
    eps = torch.tensor([0.0, 0.01, 0.03])
    assert_bit_equal(pgd_update_triton(x_adv, x, grad, 0.0075, eps), pgd_update_reference(x_adv, x, grad, 0.0075, eps))


def test_pgd_channels_last():
    shape = (3, 3, 7, 5)
    x_adv, x, grad = pgd_inputs(shape, seed=5)
    expected = pgd_update_reference(x_adv, x, grad, 0.0075, torch.tensor([0.0, 0.02, 0.03]))
    cl = [t.contiguous(memory_format=torch.channels_last) for t in (x_adv, x, grad)]
    got = pgd_update_triton(*cl, 0.0075, torch.tensor([0.0, 0.02, 0.03]))
    assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()
    assert_bit_equal(got, expected)
    # mixed layouts: x and grad are brought into x_adv's layout, the output keeps it
    got = pgd_update_triton(cl[0], x, grad.to(torch.bfloat16), 0.0075, 0.03)
    assert got.is_contiguous(memory_format=torch.channels_last) and not got.is_contiguous()
    assert_bit_equal(got, pgd_update_reference(x_adv, x, grad.to(torch.bfloat16), 0.0075, 0.03))
    got = pgd_update_triton(x_adv, cl[1], cl[2], 0.0075, 0.03)
    assert got.is_contiguous()
    assert_bit_equal(got, pgd_update_reference(x_adv, x, grad, 0.0075, 0.03))


def test_pgd_non_dense_inputs_and_out():
    big = pgd_inputs((4, 3, 10, 8), seed=6)
    x_adv, x, grad = (t[:, :, ::2] for t in big)  # strided views with gaps
    assert not x_adv.is_contiguous()
    eps = torch.tensor([0.01, 0.0, 0.03, 0.05])
    expected = pgd_update_reference(x_adv, x, grad, 0.0075, eps)
    assert_bit_equal(pgd_update_triton(x_adv, x, grad, 0.0075, eps), expected)
    # a dense layout with the batch not outermost (permuted storage)
    xp = [t.contiguous().transpose(0, 1).contiguous().transpose(0, 1) for t in (x_adv, x, grad)]
    got = pgd_update_triton(*xp, 0.0075, eps)
    assert got.stride() == xp[0].stride()
    assert_bit_equal(got, expected)
    # out=, including in place
    out = torch.empty_like(expected)
    assert pgd_update_triton(x_adv, x, grad, 0.0075, eps, out=out) is out
    assert_bit_equal(out, expected)
    xa = x_adv.contiguous()
    assert pgd_update_triton(xa, x, grad, 0.0075, eps, out=xa) is xa
    assert_bit_equal(xa, expected)


def test_pgd_nan_matches_reference():
    x_adv, x, grad = pgd_inputs((2, 3, 4, 4), seed=7)
    grad[0, 0, 0, :2] = NAN  # torch.sign(nan) == 0
    x_adv[1, 1, 1, 1] = NAN  # propagates through the clamps
    got = pgd_update_triton(x_adv, x, grad, 0.0075, 0.03)
    expected = pgd_update_reference(x_adv, x, grad, 0.0075, 0.03)
    torch.testing.assert_close(got, expected, rtol=0, atol=0, equal_nan=True)
    assert torch.isnan(got[1, 1, 1, 1]) and not torch.isnan(got[0]).any()


# ------------------------------------------------------------------------------ la_xent


def la_case(b, k, m, seed=0, scale=3.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(b, k + m, generator=g) * scale).to(dtype)
    target = torch.randint(0, k, (b,), generator=g)
    ops = torch.randint(-1, m, (b,), generator=g)  # -1 = no op
    ops[0] = -1
    ops[-1] = m - 1
    delta = torch.rand(b, generator=g) * 0.5
    return logits, target, ops, delta


def expected_grad(logits, target, k, ops, delta, reduction, grad_out):
    """(softmax(z) - y~) * dL/dloss_row, in float64."""
    b, n = logits.shape
    soft = label_augmented_target(target, k, n - k, ops, delta)
    diff = torch.softmax(logits.double(), dim=1) - soft
    if reduction == "none":
        return diff * grad_out.double().view(-1, 1)
    scale = grad_out.double() / (b if reduction == "mean" else 1)
    return diff * scale


def run_triton(logits, target, k, ops, delta, reduction, grad_out=None, dtype=None):
    z = logits.clone().requires_grad_(True)
    loss = label_augmented_ce_triton(z, target, k, ops, delta, reduction)
    if grad_out is None:
        grad_out = torch.randn(loss.shape, generator=torch.Generator().manual_seed(11)) if loss.dim() else torch.tensor(1.7)
    loss.backward(grad_out)
    return loss, z.grad, grad_out


def check_fp32(logits, target, k, ops, delta, reduction, rtol=1e-6):
    loss, grad, grad_out = run_triton(logits, target, k, ops, delta, reduction)
    d64 = delta.double() if isinstance(delta, torch.Tensor) else delta
    expected = label_augmented_ce_reference(logits.double(), target, k, ops, d64, reduction)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), expected, rtol=rtol, atol=0)
    g64 = expected_grad(logits, target, k, ops, delta, reduction, grad_out)
    assert grad.dtype == logits.dtype and grad.shape == logits.shape
    # fp32 softmax: 1e-6 relative to the row's largest entry (tiny probabilities carry the
    # exp() rounding of their own size, far below that)
    atol = rtol * g64.abs().amax(dim=1, keepdim=True)
    assert torch.all((grad.double() - g64).abs() <= atol + rtol * g64.abs()), (grad.double() - g64).abs().max()


@pytest.mark.parametrize("b, k, m", [(6, 10, 3), (8, 1000, 1), (4, 1000, 2), (3, 7, 2)])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_la_ce_matches_float64(b, k, m, reduction):
    logits, target, ops, delta = la_case(b, k, m, seed=b + k + m)
    check_fp32(logits, target, k, ops, delta, reduction)


def test_la_ce_long_rows_loop_over_chunks():
    logits, target, ops, delta = la_case(2, 9000, 3, seed=1)  # > MAX_BLOCK_N: three chunks
    logits[0, :4096] = -float("inf")  # the whole first chunk masked out
    check_fp32(logits, target.clamp(min=4096), 9000, ops, delta, "none")


def test_la_ce_scalar_delta_and_batch_op():
    logits, target, ops, _ = la_case(5, 10, 3, seed=2)
    check_fp32(logits, target, 10, ops, 0.03, "mean")
    check_fp32(logits, target, 10, 2, 0.03, "none")  # one op for the whole batch
    check_fp32(logits, target, 10, ops, torch.tensor(0.25), "sum")  # 0-dim delta


@pytest.mark.parametrize("scale", [1e4, 3e4])
def test_la_ce_huge_logits_do_not_overflow(scale):
    logits, target, ops, delta = la_case(4, 10, 2, seed=3)
    logits = logits.sign() * scale * (logits.abs() > 1).float() + logits  # +-scale mixed with O(1)
    logits[1] = -scale
    logits[2, target[2]] = scale  # a confident correct row: loss ~ 0
    loss, grad, _ = run_triton(logits, target, 10, ops, delta, "none")
    assert torch.isfinite(loss).all() and torch.isfinite(grad).all()
    check_fp32(logits, target, 10, ops, delta, "none")


def test_la_ce_delta_zero_is_plain_cross_entropy():
    logits, target, ops, _ = la_case(6, 10, 3, seed=4)
    plain = F.cross_entropy(logits, target)
    for op, delta in [(None, 0.0), (ops, 0.0), (ops, torch.zeros(6)), (None, 0.5)]:
        got = label_augmented_ce_triton(logits, target, 10, op, delta)
        torch.testing.assert_close(got, plain, rtol=1e-6, atol=0)
    # K columns only: fine with delta = 0, an error with delta > 0 and an op
    logits_k = logits[:, :10]
    torch.testing.assert_close(
        label_augmented_ce_triton(logits_k, target, 10, ops, 0.0), F.cross_entropy(logits_k, target), rtol=1e-6, atol=0
    )
    with pytest.raises(ValueError):
        label_augmented_ce_triton(logits_k, target, 10, ops, 0.03)
    with pytest.raises(ValueError):
        label_augmented_ce_reference(logits_k, target, 10, ops, 0.03)
    with pytest.raises(ValueError):
        label_augmented_ce_triton(logits, target, 10, ops, 0.03, reduction="avg")


def test_la_ce_expanded_grad_out_and_strided_rows():
    big, target, ops, delta = la_case(5, 10, 6, seed=5)
    logits = big[:, :13]  # row stride 16, not contiguous
    z = logits.clone().requires_grad_(True)
    (label_augmented_ce_triton(z, target, 10, ops.clamp(max=2), delta, "none") * 1.0).sum().backward()
    expected = expected_grad(logits, target, 10, ops.clamp(max=2), delta, "none", torch.ones(5))
    torch.testing.assert_close(z.grad.double(), expected, rtol=1e-6, atol=1e-7)
    loss = label_augmented_ce_triton(logits, target, 10, ops.clamp(max=2), delta, "none")
    ref = label_augmented_ce_reference(logits.double(), target, 10, ops.clamp(max=2), delta.double(), "none")
    torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_la_ce_low_precision_logits(dtype):
    logits, target, ops, delta = la_case(4, 1000, 1, seed=6, dtype=dtype)
    loss, grad, grad_out = run_triton(logits, target, 1000, ops, delta, "mean")
    # fp32 accumulation: as exact as fp32 on the same (upcast) values
    expected = label_augmented_ce_reference(logits.double(), target, 1000, ops, delta.double(), "mean")
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss.double(), expected, rtol=1e-6, atol=0)
    # the gradient is rounded to the logits' dtype once, at the store
    assert grad.dtype == dtype
    g64 = expected_grad(logits, target, 1000, ops, delta, "mean", grad_out)
    # fp16: half an ulp (round to nearest). bf16: one ulp, because the Triton interpreter
    # converts fp32 -> bf16 by truncation (a compiled kernel rounds to nearest even).
    # atol for fp16 subnormals.
    rtol = 2**-7 if dtype == torch.bfloat16 else 2**-11
    torch.testing.assert_close(grad.double(), g64, rtol=rtol * 1.01, atol=1e-7)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # numpy: inf - inf
def test_la_ce_nan_logits_give_nan():
    logits, target, ops, delta = la_case(3, 10, 2, seed=7)
    logits[1, 4] = NAN
    loss, grad, _ = run_triton(logits, target, 10, ops, delta, "none")
    assert torch.isnan(loss[1]) and torch.isfinite(loss[[0, 2]]).all()
    assert torch.isnan(grad[1]).all() and torch.isfinite(grad[[0, 2]]).all()
    assert torch.isnan(label_augmented_ce_triton(logits, target, 10, ops, delta))
    logits[1] = float("inf")
    assert torch.isnan(label_augmented_ce_triton(logits, target, 10, ops, delta, "none")[1])


def test_la_ce_out_of_range_index_gives_nan_not_a_number():
    logits, target, ops, delta = la_case(3, 10, 2, seed=8)
    target[0] = 10  # not a class
    ops[2] = 2  # not an op (M = 2)
    loss = label_augmented_ce_triton(logits, target, 10, ops, delta, "none")
    assert torch.isnan(loss[0]) and torch.isnan(loss[2]) and torch.isfinite(loss[1])


# ----------------------------------------------------------------------------- dispatch


def _spy(monkeypatch, module_name, func_name):
    import importlib

    module = importlib.import_module(module_name)
    calls = []
    original = getattr(module, func_name)

    def wrapper(*args, **kwargs):
        calls.append(func_name)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, func_name, wrapper)
    return calls


@pytest.fixture(autouse=True)
def _restore_triton_mode():
    """Tests that switch FASTADV_TRITON re-read it; put the cached mode back afterwards."""
    yield
    kernels.reload_triton_mode()


def test_dispatch_routes_to_triton_under_interpret(monkeypatch):
    pgd_calls = _spy(monkeypatch, "fastadv.kernels.pgd_step", "pgd_update_triton")
    ce_calls = _spy(monkeypatch, "fastadv.kernels.la_xent", "label_augmented_ce_triton")
    x_adv, x, grad = pgd_inputs((3, 3, 5, 4), seed=9)
    logits, target, ops, delta = la_case(4, 10, 1, seed=9)

    monkeypatch.delenv("FASTADV_TRITON", raising=False)
    kernels.reload_triton_mode()  # the mode is read once; re-read it after switching
    assert not kernels.use_triton(x)
    ref_adv = kernels.pgd_update(x_adv, x, grad, 0.0075, 0.03)
    ref_loss = kernels.label_augmented_ce(logits, target, 10, ops, delta)
    assert pgd_calls == [] and ce_calls == []

    monkeypatch.setenv("FASTADV_TRITON", "interpret")
    kernels.reload_triton_mode()  # the mode is read once; re-read it after switching
    assert kernels.use_triton(x)
    assert_bit_equal(kernels.pgd_update(x_adv, x, grad, 0.0075, 0.03), ref_adv)
    z = logits.clone().requires_grad_(True)
    loss = kernels.label_augmented_ce(z, target, 10, ops, delta)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)
    loss.backward()
    assert pgd_calls == ["pgd_update_triton"] and ce_calls == ["label_augmented_ce_triton"]
    # fp64 is not a kernel dtype: the reference handles it even when Triton is on
    kernels.label_augmented_ce(logits.double(), target, 10, ops, delta)
    assert ce_calls == ["label_augmented_ce_triton"]

    monkeypatch.setenv("FASTADV_TRITON", "off")
    kernels.reload_triton_mode()  # the mode is read once; re-read it after switching
    assert not kernels.use_triton(x)
    monkeypatch.setenv("FASTADV_TRITON", "interpret")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    kernels.reload_triton_mode()  # the mode is read once; re-read it after switching
    assert not kernels.use_triton(x)  # interpret mode needs the interpreter


def test_kernels_import_without_triton():
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import torch, fastadv.kernels as k\n"
        "assert not k.triton_available() and not k.use_triton(torch.zeros(1))\n"
        "x = torch.rand(2, 3, 4, 4)\n"
        "assert torch.equal(k.pgd_update(x, x, torch.zeros_like(x), 0.1, 0.1), x)\n"
    )
    env = dict(os.environ, FASTADV_TRITON="interpret", TRITON_INTERPRET="1")
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)
