"""One scoring rule for every robustness row (issue 24): an image counts robust only if every attack ran
on it and none changed its scored prediction (argmax over K); a clean error is never robust."""

from __future__ import annotations

import types

import torch
from torch import nn

from fastadv.attacks import PGD
from fastadv.attacks.auto_attack import CLEAN_MISS, AutoAttackRun
from fastadv.config import Config
from fastadv.eval.scoring_rule import scored
from fastadv.eval.evaluate import _predict_batch
from fastadv.eval.suites import Setting

K = 3


class BrightExtra(nn.Module):
    """Class k = the brightest channel; the extra (M = 1) logit wins on bright images, so an attack on
    all K+M logits (raise the extra logit: brighten) wins over K+M without changing argmax over K."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(8.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(2, 3))
        extra = 40 * (m.mean(1, keepdim=True) - 0.5)
        return torch.cat([self.scale * m, extra], dim=1)


def _data(n: int = 24):
    torch.manual_seed(0)
    base = torch.rand(n, 3, 1, 1) * 0.5 + 0.35
    x = (base + 0.02 * torch.rand(n, 3, 8, 8)).clamp(0, 1)
    with torch.no_grad():
        y = BrightExtra()(x)[:, :K].argmax(1)
    y[:2] = (y[:2] + 1) % K  # two clean errors
    return x, y


def _cfg(aux: int = 1) -> Config:
    cfg = Config()
    cfg.model.num_classes, cfg.model.num_aux = K, aux
    return cfg


def _batch(x, y):
    return types.SimpleNamespace(images=x, labels=y, indices=torch.arange(len(y)), skipped=0)


def test_the_model_has_the_cases_the_rule_is_about():
    model, (x, y) = BrightExtra().eval(), _data()
    logits = model(x)
    k_ok, km_ok = logits[:, :K].argmax(1).eq(y), logits.argmax(1).eq(y)
    assert (k_ok & ~km_ok).sum() >= 3  # the extra logit wins on clean images the scoring rule calls correct
    assert (k_ok & km_ok).sum() >= 3


def test_autoattack_kplusm_attacks_every_image_the_k_head_calls_correct():
    model, (x, y) = BrightExtra().eval(), _data()
    run = AutoAttackRun(eps=0.08, num_classes=K, head="all", version="custom", attacks=("apgd-ce",), seed=0)
    x_adv, extra = run(model, x, y)
    with torch.no_grad():
        clean = model(x)[:, :K].argmax(1).eq(y)
        extra_wins = model(x).argmax(1).ne(y) & clean
        adv = model(x_adv)
    for i in range(len(y)):
        assert (extra["broken_by"][i] == CLEAN_MISS) == (not clean[i]), i  # old code: clean-error where K+M misses
        assert extra["attacked_on"][i] == ("" if not clean[i] else "k" if extra_wins[i] else "k+m")
        assert bool(extra["robust"][i]) == bool(clean[i] and adv[i, :K].argmax().eq(y[i])), i
    # the extra logit wins on some adversarial images that still count robust (the K head held)
    assert bool((adv.argmax(1).eq(K) & adv[:, :K].argmax(1).eq(y) & clean).any())


def test_eval_rows_score_one_rule_and_their_columns_agree():
    """_predict_batch: K+M AutoAttack and PGD K+M count no clean error and no unattacked image as robust."""
    model, (x, y) = BrightExtra().eval(), _data()
    cfg = _cfg()
    aa = AutoAttackRun(eps=0.08, num_classes=K, head="all", version="custom", attacks=("apgd-ce",), seed=0)
    pgd = PGD(eps=0.08, steps=5, alpha=0.02, num_classes=K, head="all")
    with torch.no_grad():
        clean_ok = model(x)[:, :K].argmax(1).eq(y).tolist()
    for setting in (Setting("autoattack-kplusm", "t", "autoattack", aa), Setting("pgd40-kplusm", "t", "pgd", pgd)):
        part = _predict_batch(model, _batch(x, y), setting, cfg, "cpu", None, K)
        correct = [p == t for p, t in zip(part["pred"], part["true"])]
        assert all(ok or not c for ok, c in zip(clean_ok, correct)), setting.key  # robust implies clean-correct
        if "robust" in part["extra"]:
            assert part["extra"]["robust"] == [int(c) for c in correct]
            assert [b == "" for b in part["extra"]["broken_by"]] == correct


class _ToTheLabel:
    """An 'attack' that returns an image the K head scores as the label: it must not make a clean error robust."""

    def __call__(self, model, x, y):
        out = torch.full_like(x, 0.3)
        out[torch.arange(len(y)), y] = 0.7
        return out


def test_a_clean_error_never_counts_robust_whatever_the_attack_returns():
    model, (x, y) = BrightExtra().eval(), _data()
    part = _predict_batch(model, _batch(x, y), Setting("paper-pgd40", "t", "paper_code", _ToTheLabel()), _cfg(),
                          "cpu", None, K)
    assert part["pred"][:2] != part["true"][:2] and part["pred"][2:] == part["true"][2:]


def test_scored_keeps_the_clean_prediction_of_a_clean_error():
    clean = torch.tensor([[3.0, 0, 0], [0, 3.0, 0]])
    adv = torch.tensor([[0, 3.0, 0], [0, 3.0, 0]])
    pred, logits = scored(clean, adv, torch.tensor([1, 1]), 3)
    assert pred.tolist() == [0, 1] and torch.equal(logits[0], clean[0])
