"""AutoAttack suite (issue 14): exact flags vs pyautoattack, K-head view, resume, subsets, masking checks, errors."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from fastadv.eval import suites, suites_robustness
from fastadv.analysis.masking import FAIL, PASS, masking_checks
from fastadv.attacks.auto_attack import AutoAttackRun, HeadView
from fastadv.attacks.paper_convention import PaperCodePGD
from fastadv.config import Config, validate
from fastadv.data.eval_subset import per_class_indices, robustbench_ids, select_subset
from fastadv.errors import FastadvError


def _tiny(k: int = 10, aux: int = 0) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(24, k + aux)).eval()


def _data(model: nn.Module, n: int = 16, k: int = 10):
    torch.manual_seed(1)
    x = torch.rand(n, 3, 16, 16)
    with torch.no_grad():
        y = model(x)[:, :k].argmax(1)
    y[:2] = (y[:2] + 1) % k  # two clean misses
    return x, y


def test_flags_equal_a_direct_pyautoattack_call():
    from pyautoattack import AutoAttack

    model = _tiny()
    x, y = _data(model)
    attacks = ("apgd-ce", "apgd-t", "square")
    run = AutoAttackRun(eps=0.05, num_classes=10, version="custom", attacks=attacks, seed=3, square_queries=30)
    x_ours, extra = run(model, x, y)
    aa = AutoAttack(model, norm="Linf", eps=0.05, version="custom", attacks=list(attacks), seed=3)
    aa.square.n_queries = 30
    x_direct, y_direct = aa.run_standard_evaluation(x, y, batch_size=len(x))
    assert extra["robust"] == y_direct.eq(y).int().tolist()
    assert torch.equal(x_ours, x_direct)
    assert extra["broken_by"][:2] == ["clean-error", "clean-error"]
    assert all((b == "") == bool(r) for b, r in zip(extra["broken_by"], extra["robust"]))


@pytest.mark.slow
def test_standard_version_equals_direct_call():
    from pyautoattack import AutoAttack

    model = _tiny()
    x, y = _data(model, n=6)
    _, extra = AutoAttackRun(eps=0.1, num_classes=10, seed=0)(model, x, y)
    _, y_direct = AutoAttack(model, norm="Linf", eps=0.1, version="standard", seed=0).run_standard_evaluation(
        x, y, batch_size=len(x))
    assert extra["robust"] == y_direct.eq(y).int().tolist()


def test_k_head_view_is_what_gets_attacked():
    model = _tiny(k=4, aux=1)
    seen = []
    run = AutoAttackRun(eps=0.05, num_classes=4, head="k", version="custom", attacks=("apgd-ce",))
    aa = run.build(model, "cpu")
    assert isinstance(aa.model, HeadView) and aa.model.num_classes == 4
    aa.model.register_forward_hook(lambda m, i, o: seen.append(o.shape[1]))
    x, y = _data(model, n=4, k=4)
    aa.run_standard_evaluation(x, y, batch_size=4)
    assert seen and set(seen) == {4}
    everything = AutoAttackRun(eps=0.05, num_classes=4, head="all", version="custom", attacks=("apgd-ce",))
    assert everything.build(model, "cpu").model(x).shape[1] == 5


def test_bad_input_is_one_clear_error():
    cfg = Config()
    cfg.eval.autoattack_eps = 4
    with pytest.raises(FastadvError, match="4/255"):
        validate(cfg)
    with pytest.raises(FastadvError, match="unknown AutoAttack attack name"):
        AutoAttackRun(eps=0.03, num_classes=4, version="custom", attacks=("apgd-ce", "pgd"))
    with pytest.raises(FastadvError, match="autoattack_version"):
        AutoAttackRun(eps=0.03, num_classes=4, version="fast")
    cfg = Config()
    cfg.eval.autoattack_grouping = "batches"
    with pytest.raises(FastadvError, match=r"eval.autoattack_grouping='batches' is not one of: whole, batch"):
        validate(cfg)


class _Data:
    def __init__(self, n_per_class: int, k: int = 3):
        self.classes = [f"n0{c}" for c in range(k)]
        self.labels = [c for c in range(k) for _ in range(n_per_class)]
        self.file_names = [f"img{i}.JPEG" for i in range(len(self.labels))]
        self.num_classes = k


def test_per_class_subset_draws_n_per_class_the_same_every_time():
    d = _Data(10)
    a, info = select_subset(d, "per-class:4", seed=7)
    b, _ = select_subset(d, "per-class:4", seed=7)
    assert a.indices == b.indices and len(a) == 12
    assert [a.labels.count(c) for c in range(3)] == [4, 4, 4] and info["classes_under_5"] == ["n00", "n01", "n02"]
    assert per_class_indices(d.labels, 4, 8) != a.indices


def test_subset_file_naming_missing_images_is_an_error(tmp_path):
    d = _Data(2)
    good = tmp_path / "ids.txt"
    good.write_text("n00/img0.JPEG\nimg5.JPEG\n")
    sub, _ = select_subset(d, str(good), 0)
    assert sub.file_names == ["img0.JPEG", "img5.JPEG"]
    bad = tmp_path / "bad.txt"
    bad.write_text("n00/img0.JPEG\nn02/missing.JPEG\n")
    with pytest.raises(FastadvError, match="1 of its 2 images are not in the validation data"):
        select_subset(d, str(bad), 0)
    ids = robustbench_ids()
    assert len(ids) == 5000 and len(set(ids)) == 5000
    with pytest.raises(FastadvError, match="5000 of its 5000"):
        select_subset(d, "robustbench-5k", 0)


def test_paper_code_pgd_uses_normalized_eps_own_label_no_box():
    model = _tiny(k=4, aux=1)
    x, _ = _data(model, n=4, k=4)
    std = (0.2, 0.3, 0.4)
    x_adv = PaperCodePGD(std=std, eps=0.03, step=0.01, steps=5)(model, x)
    delta = (x_adv - x).abs().amax(dim=(0, 2, 3))
    assert torch.all(delta <= torch.tensor(std) * 0.03 + 1e-6) and torch.all(delta > torch.tensor(std) * 0.02)
    x1 = torch.ones_like(x)
    assert (PaperCodePGD(std=std, steps=3)(model, x1) > 1).any()  # no [0, 1] box


# ---------------------------------------------------------------- masking checks


class _Quantize(nn.Module):
    """Non-differentiable input quantization (zero gradient): masks gradients."""

    def forward(self, x):
        return torch.round(x * 4) / 4


def _settings_model(attack_model, source=None, aux=0, steps=(10, 40, 100), mults=(0.5, 1, 16)):
    """Run the masking attacks (and PGD on K / K+M) on tiny data; a model dict the checks read."""
    from fastadv.attacks import PGD, TransferPGD  # noqa: F401

    torch.manual_seed(0)
    k = 4
    x = torch.rand(64, 3, 8, 8)
    with torch.no_grad():
        y = attack_model(x)[:, :k].argmax(1)
    settings = {}

    def acc(key, attack, **fields):
        torch.manual_seed(0)
        xa = attack(attack_model, x, y)
        xa = xa[0] if isinstance(xa, tuple) else xa
        with torch.no_grad():
            err = attack_model(xa)[:, :k].argmax(1).ne(y).float().mean().item()
        settings[key] = {"suite": suites.suite_of(key), "error": err, "tolerance": 0.01, "zero": 0.02, **fields}

    eps = 0.05
    for n in steps:
        key = suites_robustness.mask_pgd_key(n) if n in suites_robustness.MASK_STEPS else f"pgd{n}"
        acc(key, PGD(eps=eps, steps=n, alpha=2.5 * eps / n, num_classes=k, head="k"))
    if aux:
        acc("pgd40-kplusm", PGD(eps=eps, steps=40, alpha=2.5 * eps / 40, num_classes=k, head="all"))
    for m in mults:
        e = min(1.0, m * eps)
        acc(suites_robustness.mask_eps_key(m), PGD(eps=e, steps=20, alpha=2.5 * e / 20, num_classes=k, head="k"), multiple=m)
    for key, name in ((suites_robustness.MASK_APGD, "apgd-ce"), (suites_robustness.MASK_SQUARE, "square")):
        acc(key, AutoAttackRun(eps=eps, num_classes=k, version="standard", attacks=(name,), square_queries=300))
    if source is not None:
        acc(suites_robustness.MASK_TRANSFER, lambda m, xx, yy: PGD(eps=eps, steps=40, alpha=2.5 * eps / 40, num_classes=k,
                                                        head="k")(source, xx, yy))
    return {"settings": settings}


def _plain(aux=0):
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(192, 4 + aux)).eval()


def _status(model, check_words):
    return next(c["status"] for c in masking_checks(model) if check_words in c["check"])


def test_checks_pass_on_a_plain_model():
    plain = _plain(aux=1)
    m = _settings_model(plain, source=_plain(aux=1), aux=1)
    statuses = {c["check"]: c["status"] for c in masking_checks(m)}
    assert set(statuses.values()) == {PASS}, masking_checks(m)


def test_eps_square_and_transfer_checks_fail_on_quantized_input():
    plain = _plain()
    masked = nn.Sequential(_Quantize(), plain).eval()
    m = _settings_model(masked, source=plain)
    assert _status(m, "falls with eps") == FAIL
    assert _status(m, "Square") == FAIL
    assert _status(m, "transfer") == FAIL


class _UndoAfter(torch.autograd.Function):
    """Identity forward; backward gives the true gradient for the first 10 calls after a no-grad
    forward, then its negative: more PGD steps undo the attack (masking that the steps check sees)."""

    calls = [0]

    @staticmethod
    def forward(ctx, x):
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g):
        _UndoAfter.calls[0] += 1
        return g if _UndoAfter.calls[0] <= 10 else -g


class _StepsMasked(nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x):
        if not torch.is_grad_enabled() or not x.requires_grad:
            if not torch.is_grad_enabled():
                _UndoAfter.calls[0] = 0
            return self.net(x)
        return self.net(_UndoAfter.apply(x))


class _KHeadMasked(torch.autograd.Function):
    """Zero gradient unless the loss reads the auxiliary logits too: masks only the K-head attacker."""

    @staticmethod
    def forward(ctx, z, k):
        ctx.k = k
        return z.view_as(z)

    @staticmethod
    def backward(ctx, g):
        return (g if g[:, ctx.k:].abs().sum() > 0 else torch.zeros_like(g)), None


def test_steps_check_fails_when_more_steps_undo_the_attack():
    m = _settings_model(_StepsMasked(_plain()).eval(), mults=(1,))
    assert _status(m, "PGD steps") == FAIL


def test_k_head_check_fails_when_only_the_k_head_gradient_is_masked():
    plain = _plain(aux=1)

    class Masked(nn.Module):
        def forward(self, x):
            return _KHeadMasked.apply(plain(x), 4)

    m = _settings_model(Masked().eval(), aux=1, mults=(1,))
    assert _status(m, "K-head") == FAIL


# ---------------------------------------------------------------- a killed AutoAttack run resumes


def test_resumed_autoattack_run_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    """Kill the AutoAttack setting after its first batch; the rerun reads that batch back and the CSVs match
    (eval.autoattack_grouping=batch: the whole-set grouping has no per-batch resume, test_autoattack_batches.py)."""
    import fastadv.eval.evaluate as evaluate_module
    from fastadv.config import load_config
    from fastadv.train import train

    cfg = load_config("demo-std", [f"train.out_dir={tmp_path / 'run'}", "data.image_size=16", "data.limit_train=32",
                                   "data.limit_val=24", "data.batch_size=16", "data.eval_batch_size=8",
                                   "model.arch=resnet18", "train.max_steps=1", "train.progress=false"])
    train(cfg)
    ask = ["eval.autoattack=true", "eval.autoattack_at_eval_eps=false", "eval.autoattack_version=custom",
           'eval.autoattack_attacks="apgd-ce"', "eval.steps=2", "eval.eps=8/255", "eval.autoattack_eps=8/255", "eval.autoattack_grouping=batch"]
    straight = evaluate_module.evaluate(tmp_path / "run", tmp_path / "straight", ask, progress=False)

    original, calls = evaluate_module._predict_batch, {"n": 0}

    class Killed(Exception):
        pass

    def dies_on_the_second_autoattack_batch(model, batch, setting, *args, **kwargs):
        if setting.resumable:
            calls["n"] += 1
            if calls["n"] == 2:
                raise Killed()
        return original(model, batch, setting, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(evaluate_module, "_predict_batch", dies_on_the_second_autoattack_batch)
        with pytest.raises(Killed):
            evaluate_module.evaluate(tmp_path / "run", tmp_path / "resumed", ask, progress=False)
    assert list((tmp_path / "resumed" / "partial").glob("*.jsonl"))  # the first batch was kept
    resumed = evaluate_module.evaluate(tmp_path / "run", tmp_path / "resumed", ask, progress=False)
    info = json.loads((resumed / "eval.json").read_text())
    keys = [k for k, s in info["settings"].items() if s.get("resumed_batches")]
    assert keys, "the rerun read no batch back"
    for csv_path in sorted((straight / "predictions").glob("*.csv")):
        assert csv_path.read_bytes() == (resumed / "predictions" / csv_path.name).read_bytes(), csv_path.name
