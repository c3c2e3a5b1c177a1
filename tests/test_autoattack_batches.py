"""AutoAttack over several eval batches, straight and interrupted-then-resumed, against ONE direct
pyautoattack `run_standard_evaluation` on all evaluated images (same eps, seed, version, bs = eval.batch_size),
and pyautoattack's chatter kept out of the output (issue 24)."""

from __future__ import annotations

import logging
import sys

import pytest
import torch

import fastadv.eval.evaluate as evaluate_module
from fastadv.attacks.auto_attack import AutoAttackRun, HeadView
from fastadv.analysis.predictions import read_predictions

EPS, QUERIES = 8 / 255, 30
ASK = ["eval.autoattack=true", "eval.autoattack_at_eval_eps=false", "eval.autoattack_version=custom",
       'eval.autoattack_attacks="square"', f"eval.square_queries={QUERIES}", "eval.steps=1", f"eval.eps={EPS}", f"eval.autoattack_eps={EPS}",
       "eval.batch_size=8", "eval.seed=5"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from fastadv.config import load_config
    from fastadv.train import train

    out = tmp_path_factory.mktemp("aa") / "run"
    train(load_config("demo-std", [f"train.out_dir={out}", "data.image_size=16", "data.limit_train=64",
                                   "data.limit_val=28", "data.batch_size=16", "model.arch=resnet18",
                                   "train.max_steps=6", "train.progress=false"]))
    return out


def _seen(monkeypatch, die_at: int = 0):
    """Record the model and each AutoAttack batch _predict_batch gets; raise KeyboardInterrupt at batch `die_at`."""
    original, seen = evaluate_module._predict_batch, {"model": None, "x": [], "y": [], "n": 0}

    def spy(model, batch, setting, *args, **kwargs):
        if setting.key == "autoattack":
            seen["n"] += 1
            if seen["n"] == die_at:
                raise KeyboardInterrupt
            seen["model"] = model
            seen["x"].append(batch.images.clone())
            seen["y"].append(batch.labels.clone())
        return original(model, batch, setting, *args, **kwargs)

    monkeypatch.setattr(evaluate_module, "_predict_batch", spy)
    return seen


def _direct_flags(model, x, y) -> list[int]:
    from pyautoattack import AutoAttack

    aa = AutoAttack(HeadView(model, 10), norm="Linf", eps=EPS, version="custom", attacks=["square"], seed=5)
    aa.square.n_queries = QUERIES
    _, y_adv = aa.run_standard_evaluation(x.float(), y, batch_size=8)
    return y_adv.eq(y).int().tolist()


def _flags(out) -> list[int]:
    return [int(v) for v in read_predictions(out / "predictions" / "autoattack.csv").extra["robust"]]


@pytest.mark.parametrize("grouping", ["whole", "batch"])
def test_flags_over_four_batches_equal_one_direct_call(run_dir, tmp_path, monkeypatch, grouping):
    seen = _seen(monkeypatch)
    out = evaluate_module.evaluate(run_dir, tmp_path / "eval", ASK + [f"eval.autoattack_grouping={grouping}"], progress=False)
    assert len(seen["x"]) == 4  # 28 images, eval.batch_size 8
    ours = _flags(out)
    direct = _direct_flags(seen["model"], torch.cat(seen["x"]), torch.cat(seen["y"]))
    assert 0 < sum(direct) < len(direct)  # some images broken, some not: the comparison means something
    assert ours == direct


def test_batch_grouping_interrupted_and_resumed_per_batch_equals_one_direct_call(run_dir, tmp_path, monkeypatch):
    ask = ASK + ["eval.autoattack_grouping=batch"]
    with monkeypatch.context() as m:
        _seen(m, die_at=3)
        with pytest.raises(KeyboardInterrupt):
            evaluate_module.evaluate(run_dir, tmp_path / "eval", ask, progress=False)
    assert list((tmp_path / "eval" / "partial").glob("autoattack.*.jsonl"))
    seen = _seen(monkeypatch)
    out = evaluate_module.evaluate(run_dir, tmp_path / "eval", ask, progress=False)
    assert len(seen["x"]) == 2  # batches 1 and 2 were read back
    x, y = evaluate_module_images(run_dir)
    assert _flags(out) == _direct_flags(seen["model"], x, y)


@pytest.mark.parametrize("phase", ["attack", "scoring"])
def test_whole_grouping_interrupted_and_rerun_equals_one_direct_call(run_dir, tmp_path, monkeypatch, phase):
    """Killed during the one AutoAttack run, or while its results are scored per batch: the rerun
    attacks the whole set again (no per-batch partials are written or read) and equals the direct call."""
    with monkeypatch.context() as m:
        if phase == "attack":
            def die(*args, **kwargs):
                raise KeyboardInterrupt
            m.setattr(AutoAttackRun, "run", die)
        else:
            _seen(m, die_at=3)
        with pytest.raises(KeyboardInterrupt):
            evaluate_module.evaluate(run_dir, tmp_path / "eval", ASK, progress=False)
    assert not list((tmp_path / "eval" / "partial").glob("autoattack.*.jsonl"))
    seen = _seen(monkeypatch)
    out = evaluate_module.evaluate(run_dir, tmp_path / "eval", ASK, progress=False)
    assert len(seen["x"]) == 4
    x, y = evaluate_module_images(run_dir)
    assert _flags(out) == _direct_flags(seen["model"], x, y)


def evaluate_module_images(run_dir):
    """All evaluated images and labels, in eval order (the resumed run did not see the first two batches)."""
    from fastadv.models.checkpoint import load_checkpoint, resolve_checkpoint
    from fastadv.config import apply_override, from_dict
    from fastadv.data import build_dataset, build_loader

    cfg = from_dict(load_checkpoint(resolve_checkpoint(run_dir))["config"])
    for item in ASK:
        apply_override(cfg, item)
    ds = build_dataset(cfg.data, "val")
    xs, ys = zip(*[(b.images, b.labels) for b in build_loader(cfg.data, "val", batch_size=8, shuffle=False, dataset=ds,
                                                             device="cpu")])
    return torch.cat(xs).float(), torch.cat(ys)


def test_pyautoattack_chatter_stays_out_of_the_output(capfd):
    """Its "setting parameters for standard version" (logger.info, once per batch) and print()s."""
    root = logging.getLogger()
    handler = logging.StreamHandler(sys.stdout)
    root.addHandler(handler)
    old = root.level
    root.setLevel(logging.INFO)
    try:
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10)).eval()
        x, y = torch.rand(4, 3, 8, 8), torch.arange(4)
        for _ in range(2):
            AutoAttackRun(eps=0.01, num_classes=10, version="standard", attacks=("apgd-ce",))(model, x, y)
    finally:
        root.removeHandler(handler)
        root.setLevel(old)
    out, err = capfd.readouterr()
    assert "setting parameters" not in out + err
    assert "version" not in out


def test_eval_refuses_to_write_eval_json_over_a_violated_invariant(run_dir, tmp_path, monkeypatch):
    from fastadv.errors import FastadvError

    out = evaluate_module.evaluate(run_dir, tmp_path / "eval", ASK, progress=False)
    before = (out / "eval.json").read_bytes()

    def every_image_robust(extra, pred, true, clean_ok):
        return {**extra, "robust": [1] * len(pred), "broken_by": [""] * len(pred)} if "robust" in extra else extra

    monkeypatch.setattr(evaluate_module, "reconcile", every_image_robust)
    with pytest.raises(FastadvError, match=r"autoattack\.csv: image .*both robust and broken"):
        evaluate_module.evaluate(run_dir, tmp_path / "eval", ASK, progress=False)
    assert (out / "eval.json").read_bytes() == before


def test_run_with_batch_size_equals_one_direct_call_images_included():
    """AutoAttackRun.run(..., batch_size=bs) over 4 chunks: flags and adversarial images equal one
    direct run_standard_evaluation with the same bs (what eval.autoattack_grouping=whole relies on)."""
    from pyautoattack import AutoAttack

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 10)).eval()
    x = torch.rand(32, 3, 8, 8)
    with torch.no_grad():
        y = model(x).argmax(1)  # every image clean-correct
    run = AutoAttackRun(eps=0.015, num_classes=10, version="custom", attacks=("apgd-ce", "square"), seed=5,
                        square_queries=30)
    ours = run.run(model, x, y, batch_size=8)
    aa = AutoAttack(HeadView(model, 10), norm="Linf", eps=0.015, version="custom", attacks=["apgd-ce", "square"],
                    seed=5, device="cpu")
    aa.square.n_queries = 30
    x_adv, y_adv = aa.run_standard_evaluation(x, y, batch_size=8)
    assert 0 < sum(ours.robust) < 32
    assert ours.robust == y_adv.eq(y).tolist()
    assert torch.equal(ours.x_adv, x_adv)
