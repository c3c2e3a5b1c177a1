"""Temperature-PGD, TRADES and CFA (CCM, CCR, FAWA): formulas, gates, splits, resume."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fastadv.attacks import PGD, pgd_linf, trades_kl_attack
from fastadv.models.checkpoint import load_checkpoint
from fastadv.config import load_config
from fastadv.data.subset import stratified_holdout
from fastadv.methods import EpochContext, build_method
from fastadv.methods import cfa as cfa_module
from fastadv.methods.cfa import ClassWiseCalibration, calibrated_beta, calibrated_eps, fawa_update
from fastadv.methods.trades import trades_loss
from fastadv.models import build_model
from fastadv.train import train
from test_attacks import TinyNet, straightforward_pgd


def test_temperature_one_is_plain_pgd_and_other_temperatures_differ():
    torch.manual_seed(0)
    model, x, y = TinyNet(), torch.rand(4, 3, 8, 8), torch.tensor([0, 1, 2, 3])
    torch.manual_seed(1)
    plain = straightforward_pgd(model, x, y, eps=0.05, alpha=0.01, steps=4, num_classes=5)
    torch.manual_seed(1)
    t1 = PGD(eps=0.05, alpha=0.01, steps=4, num_classes=5, temperature=1.0)(model, x, y)
    assert torch.equal(t1, plain)
    torch.manual_seed(1)
    t_low = pgd_linf(model, x, y, eps=0.05, alpha=0.01, steps=4, num_classes=5, temperature=0.1)
    assert not torch.equal(t_low, plain)


def test_ccm_and_ccr_formulas():
    t = torch.tensor([0.0, 0.25, 0.5, 1.0])
    assert torch.allclose(calibrated_eps(t, 0.03, 0.5), torch.tensor([0.015, 0.0225, 0.03, 0.045]))
    assert torch.allclose(calibrated_eps(t, 0.9, 0.5), torch.tensor([0.45, 0.675, 0.9, 1.0]))  # capped at 1
    assert torch.allclose(calibrated_beta(t, 6.0, 0.5), torch.tensor([3.0, 4.5, 6.0, 9.0]))


def test_cfa_attacks_each_sample_with_its_class_eps():
    cfg = load_config("demo-cfa-at", ["data.image_size=16", "attack.steps=3"])
    method = build_method(cfg)
    model = build_model(cfg.model)
    method.t = torch.linspace(0, 1, 10)
    method.epochs_done = cfg.cfa.warmup_epochs
    eps_k = method.class_eps()
    y = torch.arange(10)
    x = torch.rand(10, 3, 16, 16) * 0.5 + 0.25  # away from the box edges
    x_adv, _ = method.inner.inputs(model, x, y, eps_k[y])
    dist = (x_adv - x).abs().flatten(1).amax(dim=1)
    assert torch.all(dist <= eps_k + 1e-6)
    assert torch.all(dist >= eps_k * 0.9)  # the budget of each class is used, not one shared eps


def test_trades_loss_matches_the_formula():
    torch.manual_seed(0)
    clean, adv = torch.randn(5, 7), torch.randn(5, 7)
    y = torch.tensor([0, 1, 2, 3, 4])
    kl = F.kl_div(F.log_softmax(adv, 1), F.softmax(clean, 1), reduction="none").sum(1)
    ce = F.cross_entropy(clean, y, reduction="none")
    assert torch.allclose(trades_loss(clean, adv, y, 7, 6.0), (ce + 6.0 * kl).mean(), atol=1e-6)
    beta = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    assert torch.allclose(trades_loss(clean, adv, y, 7, beta, normalize=True), ((ce + beta * kl) / (1 + beta)).mean(), atol=1e-6)


def test_trades_kl_attack_stays_in_the_ball_and_raises_the_kl():
    torch.manual_seed(0)
    model, x = TinyNet(k=5, m=0), torch.rand(4, 3, 8, 8)
    x_adv = trades_kl_attack(model, x, eps=0.05, alpha=0.02, steps=5, num_classes=5)
    assert ((x_adv - x).abs().amax() <= 0.05 + 1e-6) and x_adv.min() >= 0 and x_adv.max() <= 1
    model.eval()
    p = F.softmax(model(x), 1)
    kl = F.kl_div(F.log_softmax(model(x_adv), 1), p, reduction="sum")
    assert kl > 0


def _fake_ctx(model, epoch=3):
    return EpochContext(epoch=epoch, model=model, run_model=model, device=torch.device("cpu"), amp=None,
                        holdout=lambda: [], all_reduce=lambda t: t)


@pytest.mark.parametrize("worst, expect_update", [(0.1, False), (0.2, True), (0.9, True)])
def test_fawa_updates_the_average_only_when_the_gate_passes(monkeypatch, worst, expect_update):
    cfg = load_config("demo-cfa-at", ["data.image_size=16"])
    method: ClassWiseCalibration = build_method(cfg)
    model = build_model(cfg.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    method.average = {k: torch.zeros_like(v) for k, v in before.items()}
    robust = torch.full((10,), 0.95)
    robust[3] = worst
    results = iter([torch.ones(10), robust])  # clean, then PGD accuracy per class on the held-out split
    monkeypatch.setattr(cfa_module, "classwise_accuracy", lambda *args, **kwargs: next(results))
    record = method.on_epoch_end(_fake_ctx(model))
    assert record["fawa_updated"] is expect_update
    assert record["holdout_worst_class_robust_acc"] == pytest.approx(worst)
    w = "net.conv1.weight"
    expected = 0.15 * before[w] if expect_update else torch.zeros_like(before[w])
    assert torch.allclose(method.average[w], expected)
    assert method.eval_weights() is method.average


def test_fawa_update_averages_floats_and_copies_counters():
    avg = {"w": torch.tensor([1.0]), "n": torch.tensor(3)}
    new = fawa_update(avg, {"w": torch.tensor([3.0]), "n": torch.tensor(7)}, 0.85)
    assert torch.allclose(new["w"], torch.tensor([0.85 + 0.45])) and new["n"].item() == 7
    assert fawa_update(None, {"w": torch.tensor([3.0])}, 0.85)["w"].item() == 3.0


def test_holdout_split_is_stratified_and_disjoint():
    labels = [i % 10 for i in range(1000)] + [3] * 50
    train_idx, held = stratified_holdout(labels, 0.02, seed=0)
    assert set(train_idx).isdisjoint(held) and sorted(train_idx + held) == list(range(len(labels)))
    per_class = {c: sum(1 for i in held if labels[i] == c) for c in range(10)}
    assert per_class == {c: (3 if c == 3 else 2) for c in range(10)}
    assert stratified_holdout(labels, 0.02, seed=0) == (train_idx, held)
    _, held_small = stratified_holdout([0, 0, 1], 0.5, seed=0)
    assert len(held_small) == 1 and held_small[0] in (0, 1)  # a class with one image is never held out


TINY = ["data.image_size=16", "data.limit_train=200", "data.batch_size=32", "attack.steps=2", "optim.epochs=3",
        "cfa.warmup_epochs=1", "cfa.fawa_steps=2", "train.progress=false", "train.holdout_per_class=0.05",
        "cfa.fawa_threshold=0"]


@pytest.mark.parametrize("recipe", ["demo-trades", "demo-cfa-at", "demo-cfa-trades", "demo-adv-plus-cfa"])
def test_every_classwise_recipe_trains_and_resumes_exactly(tmp_path, monkeypatch, recipe):
    from test_train import Crash, assert_same_weights, crash_at

    straight = train(load_config(recipe, TINY + [f"train.out_dir={tmp_path / 'a'}"]))
    cfg = load_config(recipe, TINY + [f"train.out_dir={tmp_path / 'b'}"])
    with monkeypatch.context() as m:
        crash_at(m, 6)  # 5 steps per epoch: dies in epoch 2, resumes from the end of epoch 1
        with pytest.raises(Crash):
            train(cfg)
    resumed = train(cfg, resume=tmp_path / "b")
    assert_same_weights(straight, resumed)
    ckpt = load_checkpoint(straight)
    if recipe != "demo-trades":
        assert ckpt["method"]["t"].shape == (10,)
        assert ckpt["eval_model"] is not None  # FAWA average: what evaluation loads
        other = load_checkpoint(resumed)["eval_model"]
        assert all(torch.equal(ckpt["eval_model"][k], other[k]) for k in other)


def test_temperature_pgd_evaluation_settings_and_report(tmp_path):
    from fastadv.eval.evaluate import evaluate
    from fastadv.analysis.report import build_report

    run = train(load_config("demo-adv", TINY[:4] + ["optim.epochs=1", "train.progress=false",
                                                    f"train.out_dir={tmp_path / 'run'}"]))
    out = evaluate(run, overrides=["data.limit_val=40", "eval.steps=2", "eval.temperatures=0.5,2"], progress=False)
    import json

    settings = json.loads((out / "eval.json").read_text())["settings"]
    assert [k for k in settings if k.startswith("tpgd")] == ["tpgd2-T0.5", "tpgd2-T2"]
    assert settings["tpgd2-T0.5"]["temperature"] == 0.5 and settings["tpgd2-T0.5"]["suite"] == "tpgd"
    build_report([out], tmp_path / "report")
    text = (tmp_path / "report" / "report.md").read_text()
    assert "PGD vs Temperature-PGD" in text and "classes that lose most" in text


def test_bad_temperatures_are_refused():
    from fastadv.errors import FastadvError

    with pytest.raises(FastadvError, match="eval.temperatures"):
        load_config("demo-adv", ["eval.temperatures=0.5,-1"])
