"""optim.label_smoothing: the training CE only (never an attack); Free AT refuses it (issue 15, item 3)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastadv import kernels
from fastadv.cli import main
from fastadv.config import load_config
from fastadv.errors import FastadvError
from fastadv.methods import build_method
from fastadv.methods.adversarial import AdversarialTraining
from fastadv.methods.base import forward_and_loss, training_ce
from fastadv.methods.trades import trades_loss

K = 7
S = 0.1
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1" and kernels.triton_available()


@pytest.fixture(autouse=True)
def _restore_triton_mode():
    yield
    kernels.reload_triton_mode()


def reference_loss(logits, y, num_classes, ops, delta, s):
    """-sum_k y~_k log softmax(z)_k per sample, y~ written out entry by entry in float64:
    y~[c] = (1 - d) ((1 - s) [c == y] + s / K) for c < K, y~[K + j] = d (d = 0 when j < 0 or no op)."""
    logp = torch.log_softmax(logits.double(), dim=1)
    rows = []
    for b in range(logits.shape[0]):
        j = -1 if ops is None else int(ops[b])
        d = float(delta[b] if isinstance(delta, torch.Tensor) else delta) if j >= 0 else 0.0
        target = torch.zeros(logits.shape[1], dtype=torch.float64)
        for c in range(num_classes):
            target[c] = (1 - d) * ((1 - s) * (c == int(y[b])) + s / num_classes)
        if j >= 0:
            target[num_classes + j] = d
        rows.append(-(target * logp[b]).sum())
    return torch.stack(rows)


def case(m, seed=0, batch=5):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, K + m, generator=g) * 3
    y = torch.randint(0, K, (batch,), generator=g)
    return logits, y


# ------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("value", ["1", "1.5", "-0.1"])
def test_bad_label_smoothing_is_refused_in_one_line(value):
    with pytest.raises(FastadvError) as err:
        load_config("demo-adv", [f"optim.label_smoothing={value}"])
    assert str(err.value).startswith(f"optim.label_smoothing={float(value):g} must be in [0, 1)")
    assert "\n" not in str(err.value)


def test_bad_label_smoothing_exits_2_on_the_command_line(capsys):
    assert main(["train", "--recipe", "demo-adv", "optim.label_smoothing=1"]) == 2
    assert "optim.label_smoothing=1 must be in [0, 1)" in capsys.readouterr().err


def test_default_is_off_and_valid_values_load():
    assert load_config("demo-adv").optim.label_smoothing == 0.0
    assert load_config("demo-adv", ["optim.label_smoothing=0.25"]).optim.label_smoothing == 0.25


@pytest.mark.parametrize("recipe", ["demo-free", "demo-free-plus"])
def test_free_at_refuses_label_smoothing(recipe):
    load_config(recipe, ["optim.label_smoothing=0"])
    with pytest.raises(FastadvError, match=r"Free AT .*optim\.label_smoothing=0") as err:
        load_config(recipe, ["optim.label_smoothing=0.1"])
    assert "\n" not in str(err.value) and "attack" in str(err.value)


@pytest.mark.parametrize("recipe", ["imagenet-adv-plus-convnext-t", "imagenet-adv-plus-vit-s"])
def test_singh_recipes_train_with_label_smoothing_0_1(recipe):
    cfg = load_config(recipe)
    assert cfg.optim.label_smoothing == 0.1
    assert build_method(cfg).label_smoothing == 0.1
    assert load_config("imagenet-adv-plus").optim.label_smoothing == 0.0  # their base is unchanged


# --------------------------------------------------------------------------------------- loss
@pytest.mark.parametrize("m", [0, 1])
@pytest.mark.parametrize("s", [S, 0.37])
def test_smoothed_loss_is_the_written_out_formula(m, s):
    logits, y = case(m)
    ops = torch.tensor([0, -1, 0, 0, -1]) if m else None
    delta = torch.tensor([0.03, 0.5, 0.2, 0.0, 0.1]) if m else 0.0
    want = reference_loss(logits, y, K, ops, delta, s)
    got = training_ce(logits, y, K, op_index=ops, delta=delta, label_smoothing=s, reduction="none")
    torch.testing.assert_close(got.double(), want, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(training_ce(logits, y, K, ops, delta, s).double(), want.mean(), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(training_ce(logits, y, K, ops, delta, s, reduction="sum").double(), want.sum(),
                               rtol=1e-6, atol=1e-6)
    if m:  # one op index and one delta for the whole batch
        torch.testing.assert_close(training_ce(logits, y, K, 0, 0.03, s, reduction="none").double(),
                                   reference_loss(logits, y, K, [0] * 5, 0.03, s), rtol=1e-6, atol=1e-6)
    else:  # torch's own label smoothing
        torch.testing.assert_close(got, F.cross_entropy(logits, y, label_smoothing=s, reduction="none"))


def test_smoothed_gradient_is_softmax_minus_the_smoothed_target():
    logits, y = case(1, seed=3)
    ops, delta = torch.tensor([0, -1, 0, 0, 0]), 0.03
    z = logits.double().requires_grad_(True)
    training_ce(z, y, K, op_index=ops, delta=delta, label_smoothing=S).backward()
    target = torch.zeros(5, K + 1, dtype=torch.float64)
    target[:, :K] = S / K
    target[torch.arange(5), y] += 1 - S
    d = torch.where(ops >= 0, delta, 0.0).double()
    target[:, :K] *= (1 - d)[:, None]
    target[:, K] = d
    torch.testing.assert_close(z.grad, (torch.softmax(logits.double(), 1) - target) / 5)


@pytest.mark.parametrize("m", [0, 1])
def test_no_smoothing_is_bit_identical_to_the_plain_loss(m):
    logits, y = case(m, seed=5)
    ops = torch.tensor([0, -1, 0, 0, -1]) if m else None
    for reduction in ("mean", "none"):
        a = logits.clone().requires_grad_(True)
        b = logits.clone().requires_grad_(True)
        got = training_ce(a, y, K, op_index=ops, delta=0.03 if m else 0.0, label_smoothing=0.0, reduction=reduction)
        want = kernels.label_augmented_ce(b, y, K, op_index=ops, delta=0.03 if m else 0.0, reduction=reduction)
        assert torch.equal(got, want)
        got.sum().backward()
        want.sum().backward()
        assert torch.equal(a.grad, b.grad)
    model = nn.Linear(3, K + m)
    x = torch.randn(5, 3)
    assert torch.equal(forward_and_loss(model, x, y, ops, 0.03, K)[0], forward_and_loss(model, x, y, ops, 0.03, K, 0.0)[0])
    clean, adv = case(m, seed=6)[0], case(m, seed=7)[0]
    assert torch.equal(trades_loss(clean, adv, y, K, 6.0), trades_loss(clean, adv, y, K, 6.0, label_smoothing=0.0))
    assert not torch.equal(trades_loss(clean, adv, y, K, 6.0), trades_loss(clean, adv, y, K, 6.0, label_smoothing=S))


@pytest.mark.skipif(not INTERPRET, reason="needs triton and TRITON_INTERPRET=1")
def test_fused_and_reference_paths_agree(monkeypatch):
    """s = 0: the fused kernel (interpreted) against the reference; s > 0 takes the plain-torch path on both."""
    logits, y = case(1, seed=8)
    ops = torch.tensor([0, -1, 0, 0, -1])
    results = {}
    for mode in ("off", "interpret"):
        monkeypatch.setenv("FASTADV_TRITON", mode)
        kernels.reload_triton_mode()
        assert kernels.use_triton(logits) == (mode == "interpret")
        for s in (0.0, S):
            z = logits.clone().requires_grad_(True)
            loss = training_ce(z, y, K, op_index=ops, delta=0.03, label_smoothing=s)
            loss.backward()
            results[mode, s] = (loss.detach(), z.grad)
    for s in (0.0, S):
        torch.testing.assert_close(results["interpret", s][0], results["off", s][0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(results["interpret", s][1], results["off", s][1], rtol=1e-6, atol=1e-6)
    assert torch.equal(results["interpret", S][0], results["off", S][0])


# ------------------------------------------------------------------------------------ methods
class RecordingNet(nn.Module):
    """conv + BatchNorm + linear over K + extra logits; records every input it is called on."""

    def __init__(self, extra: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 8 * 8, K + extra)
        self.inputs: list[torch.Tensor] = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


SMOOTHED = [("demo-std", False), ("demo-adv", False), ("demo-adv-plus", False), ("demo-fgsm-rs", False),
            ("demo-fgsm-rs-plus", False), ("demo-dafa-at", False), ("demo-dafa-at", True), ("demo-cfa-at", False),
            ("demo-cfa-at", True), ("demo-trades", False)]  # True: DAFA's weighted / CFA's calibrated epochs


def run_method(recipe: str, s: float, calibrated: bool):
    """One training loss of `recipe` at label smoothing s: (loss, every input the model saw, stats, method)."""
    cfg = load_config(recipe, [f"model.num_classes={K}", "attack.steps=1" if "fgsm" in recipe else "attack.steps=3",
                               f"optim.label_smoothing={s}"])
    method = build_method(cfg)
    if calibrated and hasattr(method, "weights"):  # DAFA after its warm-up: the per-sample-weight path
        method.weights, method.epochs_done = torch.linspace(0.5, 1.5, K), cfg.dafa.warmup_epochs
    if calibrated and hasattr(method, "t"):  # CFA calibrating: class-wise eps in the CCM attack
        method.t, method.epochs_done = torch.linspace(0.1, 0.9, K), method.warmup_epochs
    model = RecordingNet(cfg.model.num_aux)
    model.train()
    g = torch.Generator().manual_seed(1)
    x, y = torch.rand(6, 3, 8, 8, generator=g), torch.arange(6) % K
    torch.manual_seed(7)
    loss, stats = method(model, x, y)
    return loss, model, stats, method, y


@pytest.mark.parametrize("recipe, calibrated", SMOOTHED)
def test_smoothing_changes_the_training_loss_but_not_one_attack_input(recipe, calibrated):
    """Same seed: every input the model sees (attack steps, training forward) is bit-identical with
    s = 0 and s > 0, so the adversarial examples are the same; only the training loss moves."""
    plain, model0, _, method0, _ = run_method(recipe, 0.0, calibrated)
    smooth, model, stats, method, y = run_method(recipe, S, calibrated)
    plain_inputs, smooth_inputs = model0.inputs, model.inputs
    assert method.__class__ is method0.__class__
    assert len(plain_inputs) == len(smooth_inputs) >= 1
    for a, b in zip(plain_inputs, smooth_inputs):
        assert torch.equal(a, b)
    assert len(plain_inputs) > 1 or recipe == "demo-std"  # an attack ran (std trains clean)
    assert not torch.isclose(plain, smooth, rtol=0, atol=1e-6)
    inner = getattr(method, "inner", method)
    assert inner.label_smoothing == S and method0.__dict__.get("label_smoothing", 0.0) == 0.0
    if isinstance(inner, AdversarialTraining) and "train_logits" in stats:  # PGD-AT, FGSM-RS, Adv+, CFA-AT
        ops = torch.zeros_like(y) if inner.delta else None
        want = reference_loss(stats["train_logits"], y, K, ops, inner.delta, S).mean()
        torch.testing.assert_close(smooth.double(), want, rtol=1e-5, atol=1e-6)
    if calibrated and hasattr(method, "weights"):  # DAFA's PGD-AT path: w_y times the smoothed CE
        with torch.no_grad():
            logits = model(smooth_inputs[-1])  # train mode: the same batch statistics as the training forward
        want = (reference_loss(logits, y, K, None, 0.0, S) * method.weights.double()[y]).mean()
        torch.testing.assert_close(smooth.double(), want, rtol=1e-5, atol=1e-6)


def test_smoothed_training_forwards_compile_as_one_graph():
    """dynamo's explain: the smoothed loss adds no graph break to the compiled step functions."""
    from fastadv.runtime import compiled
    from fastadv.methods.trades import trades_forward_loss

    if not compiled.whole_step_supported():
        pytest.skip("this PyTorch cannot trace autograd.grad (model-only compile)")
    model = RecordingNet(1)
    x, y = torch.rand(5, 3, 8, 8), torch.arange(5) % K
    runs = [torch._dynamo.explain(forward_and_loss)(model, x, y, torch.zeros(5, dtype=torch.long), 0.03, K, S),
            torch._dynamo.explain(trades_forward_loss)(model, x, x, y, K, 6.0, False, True, None, S)]
    for r in runs:
        assert r.graph_break_count == 0, r.break_reasons
        assert r.graph_count == 1
