"""FGSM-RS, Free AT, the overfitting guard, DAFA, and CFA / TRADES as their reference code runs them."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from fastadv.runtime.precision_policies import POLICIES
from fastadv.attacks import PGD, trades_kl_attack
from fastadv.config import load_config
from fastadv.errors import FastadvError
from fastadv.methods import EpochContext, build_method
from fastadv.methods.cfa import ClassWiseCalibration
from fastadv.methods.dafa import ClassWeighting, dafa_weights, dafa_weights_reference
from fastadv.methods.fast import FreeAdversarialTraining
from fastadv.methods.registry import forward_equivalents
from fastadv.methods.trades import TRADES_ALPHA_RATIO, Trades, trades_loss
from fastadv.analysis.report_ranking import rank_methods
from fastadv.train.overfit import OverfitGuard, collapsed
from fastadv.train.step import train_step

FP32 = POLICIES["fp32"]  # train_step's precision policy: no autocast

K = 4


class TinyNet(nn.Module):
    """conv + BatchNorm + linear: small, with BatchNorm statistics to watch."""

    def __init__(self, k: int = K, extra: int = 0) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4 * 8 * 8, k + extra)
        self.inputs: list[torch.Tensor] = []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        return self.fc(torch.relu(self.bn(self.conv(x))).flatten(1))


def batch(n: int = 6, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, K, (n,), generator=g)


def cfg_for(recipe: str, *over: str):
    return load_config(recipe, [f"model.num_classes={K}", *over])


# ----------------------------------------------------------------------------- FGSM-RS
def test_fgsm_rs_is_one_pgd_step_of_1_25_eps_from_a_random_start():
    cfg = cfg_for("demo-fgsm-rs")
    method = build_method(cfg)
    model, (x, y) = TinyNet(), batch()
    torch.manual_seed(7)
    got = method.attack(model, x, y)
    torch.manual_seed(7)
    want = PGD(eps=0.03, steps=1, alpha=1.25 * 0.03, num_classes=K, random_start=True, model_mode="train")(model, x, y)
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert (got - x).abs().max() <= 0.03 + 1e-6 and not torch.equal(got, x)
    assert method.attack.model_mode == "train"  # Wong et al. attack in train mode
    with pytest.raises(FastadvError, match="attack.steps=1"):
        cfg_for("demo-fgsm-rs", "attack.steps=10")


def test_fgsm_rs_plus_uses_the_label_augmented_target():
    assert build_method(cfg_for("demo-fgsm-rs-plus")).delta == pytest.approx(0.03)
    assert build_method(cfg_for("demo-fgsm-rs")).delta == 0.0


# ----------------------------------------------------------------------------- Free AT
def test_free_replays_the_minibatch_and_carries_delta():
    eps = 0.03
    method = FreeAdversarialTraining(eps=eps, alpha=eps, num_classes=K, replays=3)
    model, (x, y) = TinyNet(), batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    expected_delta = torch.zeros_like(x)
    for _ in range(method.replays):
        model.inputs.clear()
        train_step(method, model, opt, scaler, x, y, torch.device("cpu"), FP32)
        (seen,) = model.inputs  # one forward per replay: the same backward gives both gradients
        torch.testing.assert_close(seen, (x + expected_delta).clamp(0, 1))
        expected_delta = method.noise.clone()
        assert expected_delta.abs().max() <= eps + 1e-7
    assert expected_delta.abs().max() > 0
    x2, y2 = batch(seed=2)  # the next minibatch starts from the carried delta
    model.inputs.clear()
    train_step(method, model, opt, scaler, x2, y2, torch.device("cpu"), FP32)
    torch.testing.assert_close(model.inputs[0], (x2 + expected_delta).clamp(0, 1))
    assert set(method.state_dict()) == {"noise"}


def test_free_trainer_runs_epochs_divided_by_replays(tmp_path, monkeypatch):
    from fastadv.train import Trainer

    cfg = load_config("demo-free", [f"train.out_dir={tmp_path}", "data.image_size=16", "data.limit_train=64",
                                    "data.batch_size=32", "optim.epochs=5", "train.progress=false",
                                    "train.holdout_per_class=0", "train.on_overfit=off"])
    trainer = Trainer(cfg)
    calls = []
    original = type(trainer.state.method).__call__

    def counting(self, model, x, y):
        calls.append(x.shape[0])
        return original(self, model, x, y)

    monkeypatch.setattr(type(trainer.state.method), "__call__", counting)
    trainer.fit()
    assert trainer.epochs == math.ceil(5 / 4) == 2
    assert trainer.progress.epoch == 2 and trainer.progress.step == 2 * trainer.steps_per_epoch
    assert len(calls) == 4 * trainer.progress.step  # m optimizer steps on every minibatch


# ----------------------------------------------------------------------------- overfitting guard
def guard(action: str) -> OverfitGuard:
    x, y = batch()
    return OverfitGuard(action=action, every=1, drop=0.2, eps=0.03, num_classes=K, x=x, y=y)


def feed(g: OverfitGuard, model, opt, sequence):
    verdicts = []
    for acc in sequence:
        g.measure = lambda *_a, acc=acc: dict(pgd_acc=acc[0], fgsm_acc=acc[1])
        verdicts.append(g.check(model, model, opt))
    return verdicts


def test_guard_fires_on_a_constructed_collapse_and_rolls_back(capsys):
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = guard("rollback")
    good_weight = model.fc.weight.detach().clone()
    (r1, stop1), = feed(g, model, opt, [(0.40, 0.50)])
    with torch.no_grad():
        model.fc.weight.add_(1.0)  # training moved on
    (r2, stop2), = feed(g, model, opt, [(0.02, 0.85)])  # PGD collapses, FGSM rises
    assert not stop1 and not r1["collapsed"]
    assert stop2 and r2["collapsed"] and r2["rolled_back"]
    torch.testing.assert_close(model.fc.weight, good_weight)
    assert "catastrophic overfitting" in capsys.readouterr().err
    assert collapsed({"pgd_acc": 0.4, "fgsm_acc": 0.5}, {"pgd_acc": 0.1, "fgsm_acc": 0.6}, 0.2)


def test_guard_stays_quiet_on_a_healthy_run_and_warn_does_not_stop():
    model = TinyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    healthy = [(0.10, 0.15), (0.18, 0.25), (0.22, 0.30), (0.21, 0.29), (0.30, 0.40)]
    assert not any(r["collapsed"] or stop for r, stop in feed(guard("stop"), model, opt, healthy))
    # both fall together (not the signature): quiet
    assert not feed(guard("stop"), model, opt, [(0.5, 0.6), (0.1, 0.2)])[1][0]["collapsed"]
    (_, _), (r, stop) = feed(guard("warn"), model, opt, [(0.5, 0.6), (0.0, 0.9)])
    assert r["collapsed"] and not stop


def test_guard_measures_without_touching_batchnorm():
    model, g = TinyNet(), guard("warn")
    before = model.bn.running_mean.clone()
    out = OverfitGuard.measure(g, model, model)
    assert set(out) == {"pgd_acc", "fgsm_acc"}
    torch.testing.assert_close(model.bn.running_mean, before)


# ----------------------------------------------------------------------------- DAFA
def test_dafa_weights_on_a_hand_made_matrix():
    p = torch.tensor([[0.6, 0.3, 0.1],
                      [0.2, 0.7, 0.1],
                      [0.1, 0.4, 0.5]])
    # class 0 (p00 = .6): below class 1 (.7): + p01 p11 = .3*.7 = .21; above class 2 (.5): - p20 p00 = .1*.6 = .06
    # class 1 (.7, the easiest): - p01 p11 - p21 p11 = -(.3 + .4) * .7 = -.49
    # class 2 (.5, the hardest): + p20 p00 + p21 p11 = .1*.6 + .4*.7 = .34
    want = torch.tensor([1 + 0.21 - 0.06, 1 - 0.49, 1 + 0.34])
    torch.testing.assert_close(dafa_weights(p, 1.0), want)
    torch.testing.assert_close(dafa_weights_reference(p, 1.0), want)
    torch.testing.assert_close(dafa_weights(p, 1.5), 1 + 1.5 * (want - 1))
    q = torch.softmax(torch.randn(7, 7), 1)
    torch.testing.assert_close(dafa_weights(q, 1.0), dafa_weights_reference(q, 1.0))


def test_dafa_collects_in_the_warmup_epoch_then_scales_eps_step_and_loss():
    cfg = cfg_for("demo-dafa-at", "dafa.warmup_epochs=1")
    method = build_method(cfg)
    assert isinstance(method, ClassWeighting)
    model, (x, y) = TinyNet(), batch(n=12)
    method(model, x, y)  # epoch 1 = the warm-up epoch: probabilities collected
    ctx = EpochContext(epoch=1, model=model, run_model=model, device=torch.device("cpu"), amp=None, holdout=None,
                       all_reduce=lambda t: t)
    record = method.on_epoch_end(ctx)
    assert len(record["dafa_class_weights"]) == K and method.weights is not None
    seen = {}
    real_inputs = method.inner.attack.__class__.__call__

    def spy(self, model, x, y, eps=None, alpha=None):
        seen.update(eps=eps, alpha=alpha)
        return real_inputs(self, model, x, y, eps=eps, alpha=alpha)

    type(method.inner.attack).__call__ = spy
    try:
        method(model, x, y)
    finally:
        type(method.inner.attack).__call__ = real_inputs
    w = method.weights[y].clamp(min=0)
    torch.testing.assert_close(seen["eps"], w * 0.03)
    torch.testing.assert_close(seen["alpha"], w * 0.03 / 4)


# ----------------------------------------------------------------------------- CFA as PKU-ML/CFA runs it
def ctx_for(model, holdout=None, epoch=1):
    return EpochContext(epoch=epoch, model=model, run_model=model, device=torch.device("cpu"), amp=None,
                        holdout=holdout, all_reduce=lambda t: t)


def test_cfa_trades_loss_is_normalized_from_the_first_epoch():
    cfg = cfg_for("demo-cfa-trades", "method.trades_reference_forwards=false")
    cfa = build_method(cfg)
    assert not cfa.calibrating
    model, (x, y) = TinyNet(), batch()
    model.eval()  # BatchNorm statistics stay put between the calls compared
    torch.manual_seed(3)
    loss, _ = cfa(model, x, y)
    torch.manual_seed(3)
    plain, _ = cfa.inner.compute(model, x, y)
    torch.testing.assert_close(loss, plain / (1 + 6.0))  # their b = beta / (1 + beta) from the start
    cfa_old = build_method(cfg_for("demo-cfa-trades", "method.trades_reference_forwards=false",
                                   "cfa.normalize_from_start=false"))
    torch.manual_seed(3)
    torch.testing.assert_close(cfa_old(model, x, y)[0], plain)


@pytest.mark.parametrize("recipe", ["demo-cfa-at", "demo-cfa-trades"])
def test_ccm_attack_keeps_the_base_step(recipe, monkeypatch):
    import fastadv.attacks.linf as linf

    cfa = build_method(cfg_for(recipe))
    cfa.t, cfa.epochs_done = torch.tensor([0.9, 0.1, 0.5, 0.3]), 5
    seen = []
    real = linf.linf_attack
    monkeypatch.setattr(linf, "linf_attack", lambda *a, **k: seen.append(k["alpha"]) or real(*a, **k))
    model, (x, y) = TinyNet(), batch()
    cfa(model, x, y)
    base = 0.03 / 4 if recipe == "demo-cfa-at" else 0.03 * TRADES_ALPHA_RATIO
    assert seen and float(seen[0]) == pytest.approx(base)  # not ratio * eps_k
    scaled = build_method(cfg_for(recipe, "cfa.ccm_step=scaled"))
    scaled.t, scaled.epochs_done = cfa.t, 5
    seen.clear()
    scaled(model, x, y)
    assert isinstance(seen[0], torch.Tensor) and seen[0].shape == (x.shape[0],)


def holdout_of(x, y):
    return lambda: [SimpleNamespace(images=x, labels=y)]


def test_fawa_gate_runs_in_eval_mode_and_starts_when_it_passes():
    cfa = build_method(cfg_for("demo-cfa-at", "cfa.warmup_epochs=5", "cfa.fawa_threshold=0"))
    model, (x, y) = TinyNet(), batch()
    model.train()
    before = model.bn.running_mean.clone(), int(model.bn.num_batches_tracked)
    record = cfa.on_epoch_end(ctx_for(model, holdout_of(x, y), epoch=1))
    torch.testing.assert_close(model.bn.running_mean, before[0])
    assert int(model.bn.num_batches_tracked) == before[1] and model.training
    assert record["fawa_updated"] and cfa.average is not None  # epoch 1 < warm-up 5: FAWA started anyway
    late = build_method(cfg_for("demo-cfa-at", "cfa.warmup_epochs=5", "cfa.fawa_threshold=0",
                                "cfa.fawa_after_warmup=true"))
    assert not late.on_epoch_end(ctx_for(model, holdout_of(x, y), epoch=1))["fawa_updated"]


def test_cfa_presets_paper_default_and_code():
    paper = build_method(cfg_for("demo-cfa-at"))
    assert (paper.fawa_threshold, paper.fawa_decay) == (0.2, 0.85)
    code = build_method(cfg_for("demo-cfa-at", "cfa.preset=code", "cfa.warmup_epochs=-1"))
    assert (code.fawa_threshold, code.fawa_decay, code.warmup_epochs) == (0.24, 0.88, 10)
    explicit = build_method(cfg_for("demo-cfa-at", "cfa.preset=code", "cfa.fawa_decay=0.5"))
    assert explicit.fawa_decay == 0.5


def test_attack_model_mode_train_moves_batchnorm_eval_does_not():
    model, (x, y) = TinyNet(), batch()
    model.train()
    n0 = int(model.bn.num_batches_tracked)
    PGD(eps=0.03, steps=2, alpha_ratio=0.25, num_classes=K)(model, x, y)
    assert int(model.bn.num_batches_tracked) == n0
    PGD(eps=0.03, steps=2, alpha_ratio=0.25, num_classes=K, model_mode="train")(model, x, y)
    assert int(model.bn.num_batches_tracked) == n0 + 2 and model.training
    cfa = build_method(cfg_for("demo-cfa-at", "attack.model_mode=train"))
    assert cfa.inner.attack.model_mode == "train"


# ----------------------------------------------------------------------------- TRADES as yaodongyu/TRADES runs it
def test_trades_step_is_0_007_at_0_031_scaled_with_eps():
    t = build_method(cfg_for("demo-trades", "attack.eps=0.031"))
    assert t.step_size(0.031) == pytest.approx(0.007)
    assert build_method(cfg_for("demo-trades", "attack.eps=8/255")).step_size(8 / 255) == pytest.approx(
        8 / 255 * 0.007 / 0.031)


def test_trades_train_mode_forwards_are_x_xadv_x():
    t = build_method(cfg_for("demo-trades"))
    model, (x, y) = TinyNet(), batch()
    model.train()
    n0 = int(model.bn.num_batches_tracked)
    model.inputs.clear()
    torch.manual_seed(0)
    loss, _ = t(model, x, y)
    assert int(model.bn.num_batches_tracked) == n0 + 3  # the attack (eval) leaves BatchNorm alone
    train_inputs = model.inputs[-3:]
    torch.testing.assert_close(train_inputs[0], x)
    torch.testing.assert_close(train_inputs[2], x)
    assert not torch.equal(train_inputs[1], x)
    # the attack started at x + 0.001 N(0, 1): its first forward (after the clean one)
    torch.manual_seed(0)
    noise = 0.001 * torch.randn(x.shape)
    torch.testing.assert_close(model.inputs[1], x + noise)
    two = build_method(cfg_for("demo-trades", "method.trades_reference_forwards=false"))
    n1 = int(model.bn.num_batches_tracked)
    two(model, x, y)
    assert int(model.bn.num_batches_tracked) == n1 + 2


def test_trades_refuses_attack_options_it_cannot_honour_and_honours_head():
    with pytest.raises(FastadvError, match="random_start"):
        cfg_for("demo-trades", "attack.random_start=false")
    with pytest.raises(FastadvError, match="temperature"):
        cfg_for("demo-cfa-trades", "attack.temperature=2")
    model, (x, _) = TinyNet(extra=1), batch()
    torch.manual_seed(0)
    k = trades_kl_attack(model, x, eps=0.03, alpha=0.01, steps=2, num_classes=K, head="k")
    torch.manual_seed(0)
    all_ = trades_kl_attack(model, x, eps=0.03, alpha=0.01, steps=2, num_classes=K, head="all")
    assert not torch.equal(k, all_)
    assert build_method(cfg_for("demo-trades", "attack.head=k")).head == "k"


def test_trades_loss_kl_target_and_ce_weight():
    a, b, y = torch.randn(5, K), torch.randn(5, K), torch.randint(0, K, (5,))
    torch.testing.assert_close(trades_loss(a, b, y, K, 6.0, kl_target=a.clone()), trades_loss(a, b, y, K, 6.0))
    w = torch.full((5,), 2.0)
    ce = torch.nn.functional.cross_entropy(a, y)
    torch.testing.assert_close(trades_loss(a, b, y, K, 0.0, ce_weight=w), 2 * ce)


# ----------------------------------------------------------------------------- cost and ranking
def test_forward_equivalents_per_method():
    assert forward_equivalents(cfg_for("demo-adv-plus")) == 23
    assert forward_equivalents(cfg_for("demo-fgsm-rs-plus")) == 5
    assert forward_equivalents(cfg_for("demo-free-plus")) == pytest.approx(3 * 4 * 2 / 6)
    assert forward_equivalents(cfg_for("demo-trades")) == 1 + 20 + 9


def test_rank_methods_by_worst_class_and_sd_over_seeds():
    def e(method, seed, worst, sd):
        return {"method": method, "seed": seed, "model": f"{method}-{seed}", "worst_robust_acc": worst,
                "robust_sd": sd, "forward_equivalents": 5.0, "images_per_sec": 100.0}

    rows = rank_methods([e("a", 0, 0.2, 0.10), e("a", 1, 0.4, 0.12), e("b", 0, 0.35, 0.05), e("b", 1, 0.35, 0.07)])
    a, b = sorted(rows, key=lambda r: r["method"])
    assert a["worst_robust_acc"] == pytest.approx(0.3) and a["worst_robust_acc_sd_over_seeds"] == pytest.approx(0.1)
    assert (b["rank_worst"], a["rank_worst"]) == (1, 2) and (b["rank_sd"], a["rank_sd"]) == (1, 2)
    assert rows[0]["method"] == "b" and a["seeds"] == [0, 1]
