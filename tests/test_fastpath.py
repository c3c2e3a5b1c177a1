"""The fast path against its references: whole-step compile (same numbers, no graph breaks, no
recompiles), no host syncs in the training step, early-stop PGD never above the last iterate."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from fastadv.runtime.precision_policies import POLICIES
from fastadv.runtime import compiled
from fastadv.attacks import PGD
from fastadv.attacks.linf import kl_attack_loop, pgd_ce_attack
from fastadv.methods.adversarial import AdversarialTraining
from fastadv.methods.base import forward_and_loss
from fastadv.methods.cfa import ClassWiseCalibration
from fastadv.methods.standard import StandardTraining
from fastadv.methods.trades import Trades, trades_forward_loss
from fastadv.train.step import FiniteGuard, train_step

FP32 = POLICIES["fp32"]  # train_step's precision policy: no autocast

K, M = 5, 1


class Tiny(nn.Module):
    def __init__(self, outputs: int = K + M) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, outputs))
        self.num_aux = outputs - K

    def forward(self, x):
        return self.body(x)


def batch(n: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=g), torch.randint(0, K, (n,), generator=g)


def adv_plus(steps: int = 2) -> AdversarialTraining:
    return AdversarialTraining(PGD(eps=8 / 255, steps=steps, alpha_ratio=0.25, num_classes=K), K, delta=0.1)


def step_once(method, model, x, y, lr=0.1, guard=None):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    return train_step(method, model, opt, scaler, x, y, torch.device("cpu"), FP32, guard=guard)


# ------------------------------------------------------------------ whole-step compile
needs_whole_step = pytest.mark.skipif(not compiled.whole_step_supported(),
                                      reason="this PyTorch cannot trace autograd.grad (model-only compile)")


@needs_whole_step
def test_step_functions_have_no_graph_breaks():
    """dynamo's explain on each compiled step function: one graph, zero breaks."""
    model = Tiny().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x, y = batch()
    eps = torch.full((6,), 8 / 255)
    with compiled.tracing_autograd():
        runs = [
            torch._dynamo.explain(pgd_ce_attack)(model, x, y, x.clone(), eps / 4, eps, 2, K, "all", 1.0),
            torch._dynamo.explain(kl_attack_loop)(model, x, x.clone(), torch.softmax(model(x)[:, :K], 1), eps / 4,
                                                  eps, 2, K),
        ]
    model.train()
    for p in model.parameters():
        p.requires_grad_(True)
    runs.append(torch._dynamo.explain(forward_and_loss)(model, x, y, torch.zeros(6, dtype=torch.long), 0.1, K))
    runs.append(torch._dynamo.explain(trades_forward_loss)(model, x, x, y, K, 6.0, False, True, None))
    for r in runs:
        assert r.graph_break_count == 0, r.break_reasons
        assert r.graph_count == 1


@pytest.mark.slow
@needs_whole_step
def test_whole_step_matches_eager_and_never_recompiles():
    """Compiled Adv+ step == eager step (inductor RNG = eager RNG), then no recompile, no break."""
    from torch._dynamo.utils import counters

    eager_model = Tiny()
    comp_model = copy.deepcopy(eager_model)
    wrapped = compiled.CompiledModel(comp_model)
    assert compiled.compile_mode_of(wrapped) == compiled.WHOLE_STEP
    x, y = batch()
    with torch._inductor.config.patch(fallback_random=True):
        torch.manual_seed(1)
        loss_e, stats_e = step_once(adv_plus(), eager_model, x, y)
        torch.manual_seed(1)
        loss_c, stats_c = step_once(adv_plus(), wrapped, x, y)
    torch.testing.assert_close(loss_c, loss_e, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats_c["train_logits"], stats_e["train_logits"], rtol=1e-5, atol=1e-6)
    for (name, a), b in zip(comp_model.state_dict().items(), eager_model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    # further steps of the same shape (new data, another lr): zero recompiles, zero graph breaks
    counters.clear()
    method = adv_plus()
    opt = torch.optim.SGD(comp_model.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    for i in range(3):
        for g in opt.param_groups:
            g["lr"] = 0.1 / (i + 1)
        x, y = batch(seed=10 + i)
        train_step(method, wrapped, opt, scaler, x, y, torch.device("cpu"), FP32, guard=FiniteGuard())
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
    assert sum(counters["recompiles"].values()) == 0 if "recompiles" in counters else True
    assert counters["stats"].get("unique_graphs", 0) == 0, dict(counters["stats"])  # nothing new compiled


def test_model_only_fallback_without_trace_autograd_ops(monkeypatch):
    """Where dynamo cannot trace autograd.grad (torch 2.11) the wrapper compiles the model only."""
    monkeypatch.setattr(compiled, "whole_step_supported", lambda: False)
    wrapped = compiled.CompiledModel(Tiny())
    assert not compiled.whole_step(wrapped)
    assert compiled.compile_mode_of(wrapped) == compiled.MODEL_ONLY
    assert compiled.compile_mode_of(Tiny()) == compiled.OFF


# ------------------------------------------------------------------ no host syncs
SYNC_OPS = {"_local_scalar_dense", "nonzero", "nonzero_static", "is_nonzero", "masked_select", "equal", "allclose",
            "bincount", "unique", "_unique", "_unique2", "unique_consecutive", "unique_dim", "repeat_interleave",
            "masked_scatter", "item", "histc"}


class NoSync(TorchDispatchMode):
    """Raises on every aten op that makes the host wait for a device value (on CUDA)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.overloadpacket.__name__ if hasattr(func, "overloadpacket") else str(func)
        if name in SYNC_OPS:
            raise AssertionError(f"host sync: aten.{name}")
        if name in ("index", "index_put", "index_put_", "_index_put_impl_"):
            indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
            if any(i is not None and i.dtype == torch.bool for i in indices):
                raise AssertionError(f"host sync: boolean-mask aten.{name}")
        return func(*args, **kwargs)


def _refuse(name):
    def refuse(self, *args, **kwargs):
        raise AssertionError(f"host sync: Tensor.{name}")
    return refuse


def cfa_at() -> ClassWiseCalibration:
    m = ClassWiseCalibration(inner=adv_plus(), num_classes=K, eps=8 / 255, warmup_epochs=1)
    m.epochs_done, m.t = 1, torch.linspace(0.1, 0.9, K)  # calibrating: per-sample eps, counts per class
    return m


@pytest.mark.parametrize("name", ["std", "adv", "adv-plus", "trades", "cfa-at"])
def test_train_step_has_no_host_sync(name, monkeypatch):
    methods = {
        "std": lambda: StandardTraining(K),
        "adv": lambda: AdversarialTraining(PGD(eps=8 / 255, steps=2, alpha_ratio=0.25, num_classes=K), K),
        "adv-plus": adv_plus,
        "trades": lambda: Trades(eps=8 / 255, steps=2, num_classes=K, alpha_ratio=0.25),
        "cfa-at": cfa_at,
    }
    method, model, guard = methods[name](), Tiny(), FiniteGuard()
    x, y = batch()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    train_step(method, model, opt, scaler, x, y, torch.device("cpu"), FP32, guard=guard)  # buffers, momentum
    for attr in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, attr, _refuse(attr))
    with NoSync():
        loss, stats = train_step(method, model, opt, scaler, x, y, torch.device("cpu"), FP32, guard=guard)
    monkeypatch.undo()
    assert torch.isfinite(loss)
    guard.check()  # the one sync, outside the step
    if name == "cfa-at":
        assert float(method.total.sum()) == 2 * len(y)


def test_no_sync_mode_catches_the_usual_offenders(monkeypatch):
    """The detector is not vacuous: boolean indexing, bincount and item() are caught."""
    t = torch.arange(4.0)
    for bad in (lambda: t[t > 1], lambda: torch.bincount(t.long()), lambda: t.sum().item()):
        with pytest.raises(AssertionError, match="host sync"), NoSync():
            bad()
    monkeypatch.setattr(torch.Tensor, "__bool__", _refuse("__bool__"))
    with pytest.raises(AssertionError, match="host sync"):
        bool(t.sum() > 0)


def test_finite_guard_names_the_first_bad_step():
    guard = FiniteGuard(first_step=5)
    for v in (1.0, float("nan"), float("inf"), 2.0):
        guard.record(torch.tensor(v))
    with pytest.raises(Exception, match="nan at step 6"):
        guard.check(lambda step: f" at step {step}")
    ok = FiniteGuard()
    ok.record(torch.tensor(1.0))
    ok.check()


# ------------------------------------------------------------------ early-stop PGD
class Linear(nn.Module):
    """A weakly robust classifier: linear on 4 class patterns (clean accuracy ~1, PGD breaks many)."""

    def __init__(self, patterns: torch.Tensor) -> None:
        super().__init__()
        self.fc = nn.Linear(patterns[0].numel(), K, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_((patterns - patterns.mean(0)).flatten(1))
        self.forwarded = 0

    def forward(self, x):
        self.forwarded += x.shape[0]
        return self.fc(x.flatten(1))


def weak_model_and_data(n: int = 64):
    g = torch.Generator().manual_seed(0)
    patterns = torch.rand(K, 3, 8, 8, generator=g)
    y = torch.randint(0, K, (n,), generator=g)
    x = (0.5 + 0.15 * (patterns[y] - 0.5) + 0.12 * torch.randn(n, 3, 8, 8, generator=g)).clamp(0, 1)
    return Linear(patterns), x, y


def robust(model, attack, x, y, seed=0):
    torch.manual_seed(seed)
    x_adv = attack(model, x, y)
    with torch.no_grad():
        return model(x_adv).argmax(1) == y, x_adv


@pytest.mark.parametrize("compact", [False, True])
def test_early_stop_never_above_last_iterate(compact):
    model, x, y = weak_model_and_data()
    base = dict(eps=10 / 255, steps=40, alpha=2.5 * (10 / 255) / 40, num_classes=K, head="k")
    last_ok, last_adv = robust(model, PGD(**base), x, y)
    model.forwarded = 0
    early_ok, early_adv = robust(model, PGD(**base, early_stop=True, compact=compact), x, y)
    forwarded = model.forwarded - len(y)  # minus the final scoring forward
    assert 0.1 < last_ok.float().mean() < 0.9  # weakly robust: the comparison means something
    assert not (early_ok & ~last_ok).any()  # never higher, sample by sample
    assert early_ok.float().mean() <= last_ok.float().mean()
    if not compact:  # samples never fooled follow the last-iterate trajectory exactly
        assert torch.equal(early_adv[early_ok], last_adv[early_ok])
        assert forwarded == 40 * len(y)
    else:
        assert (early_ok == last_ok).float().mean() > 0.8
        assert forwarded < 0.75 * 40 * len(y)  # PGD-40 on a weakly robust model: fewer forward passes


def test_early_stop_is_an_evaluation_setting_field(tmp_path):
    from fastadv.config import Config, apply_override
    from fastadv.eval.suites import pgd_settings, setting_spec

    cfg = Config()
    apply_override(cfg, "eval.early_stop=true")
    (s,) = pgd_settings(cfg) if not cfg.model.num_aux else pgd_settings(cfg)[:1]
    assert s.attack.early_stop and s.info()["early_stop"] is True
    assert "early stop" in setting_spec("pgd").params(s.info())
    assert "last iterate" in setting_spec("pgd").params(pgd_settings(Config())[0].info())
