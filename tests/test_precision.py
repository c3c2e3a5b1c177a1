"""Issue 27: one precision policy (train.precision) owns which part of a step runs in which dtype.

The bf16 and fp16 policies run here on every CPU: PyTorch's CPU autocast computes them everywhere
(emulated where the CPU has no native bf16 / fp16 units), so the dtype checks need no skip. What
native units change is speed, which the bench measures, never a test."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from fastadv.attacks import PGD
from fastadv.config import load_config
from fastadv.config.schema import from_dict
from fastadv.errors import FastadvError
from fastadv.methods.adversarial import AdversarialTraining
from fastadv.runtime import precision
from fastadv.runtime.precision_policies import POLICIES, PRECISION_CHOICES
from fastadv.train import train_step

CPU = torch.device("cpu")
DTYPE = {None: torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class Recorder(nn.Module):
    """A conv + BN + K+M head classifier that records the dtype of its logits on every call."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 11))
        self.seen: list[tuple[bool, torch.dtype, torch.dtype]] = []  # (grad-enabled params?, input, logits)

    def forward(self, x):
        out = self.body(x)
        frozen = not self.body[0].weight.requires_grad  # the attack freezes the weights
        self.seen.append(("attack" if frozen else "update", x.dtype, out.dtype))
        return out


@pytest.mark.parametrize("name", list(POLICIES))
def test_each_policy_runs_a_step_with_each_part_in_its_dtype(name):
    """The attack's forwards run in the policy's attack dtype and the update's in its update dtype;
    the iterate (x + delta), the loss, BatchNorm's statistics and the weights stay fp32."""
    policy = POLICIES[name]
    model = Recorder()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    method = AdversarialTraining(PGD(eps=8 / 255, steps=2, alpha_ratio=0.25, num_classes=10), 10, delta=0.03)
    x, y = torch.rand(4, 3, 8, 8), torch.tensor([1, 2, 3, 4])
    loss, _ = train_step(method, model, opt, precision.scaler(policy, CPU), x, y, CPU, policy)
    attack = {d for part, _, d in model.seen if part == "attack"}
    update = {d for part, _, d in model.seen if part == "update"}
    assert attack == {DTYPE[policy.attack]} and update == {DTYPE[policy.update]}
    assert {i for _, i, _ in model.seen} == {torch.float32}  # every model input: fp32, cast at the first conv
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    bn = model.body[1]
    assert bn.running_mean.dtype == bn.running_var.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_lowp_input_ablation_rounds_the_iterate_and_the_others_do_not():
    """bf16-lowp-input stores x + delta in bf16 between steps (the ablation); bf16 keeps it fp32."""
    model = Recorder().eval()
    x, y = torch.rand(2, 3, 8, 8), torch.tensor([0, 5])
    attack = PGD(eps=8 / 255, steps=3, alpha=0.5 / 255, num_classes=10)
    out = {}
    for name in ("bf16", "bf16-lowp-input"):
        torch.manual_seed(0)
        with precision.training(POLICIES[name], CPU):
            out[name] = attack(model, x, y)
    lowp = out["bf16-lowp-input"]
    assert lowp.dtype == torch.float32 and torch.equal(lowp, lowp.to(torch.bfloat16).float())
    assert not torch.equal(out["bf16"], out["bf16"].to(torch.bfloat16).float())


def test_no_policy_active_leaves_the_callers_autocast():
    """fastadv eval: no training policy is active, so attacks run in eval.amp's autocast (here none)."""
    model = Recorder().eval()
    PGD(eps=8 / 255, steps=1, alpha=2 / 255, num_classes=10)(model, torch.rand(2, 3, 8, 8), torch.tensor([0, 1]))
    assert {d for _, _, d in model.seen} == {torch.float32}


def test_auto_resolves_per_device_and_bad_names_are_refused():
    assert precision.resolve("auto", torch.device("cuda")).name == "bf16"
    assert precision.resolve("auto", CPU).name == precision.auto_policy_name(CPU)
    with pytest.raises(FastadvError, match="train.precision='bf17' is not one of"):
        precision.resolve("bf17", CPU)
    with pytest.raises(FastadvError, match="train.precision"):
        load_config("demo-adv-plus", ["train.precision=bf17"])
    assert set(PRECISION_CHOICES) == {"auto", *POLICIES}


@pytest.mark.parametrize("old,new", [("off", "fp32"), ("bf16", "bf16"), ("fp16", "fp16-scaled"), ("auto", "auto")])
def test_old_train_amp_is_read_as_train_precision(old, new):
    """A run folder's config.toml from before the policy (train.amp) resumes with the same meaning."""
    assert load_config("demo-adv-plus", [f"train.amp={old}"]).train.precision == new
    assert from_dict({"train": {"amp": old}}).train.precision == new


def test_the_run_records_its_policy(tmp_path):
    """config.toml holds the setting, train.jsonl and the checkpoint the policy it resolved to, and
    eval.json the checkpoint's policy beside its own eval precision."""
    from fastadv.eval.evaluate import evaluate
    from fastadv.train import train

    out = tmp_path / "run"
    cfg = load_config("demo-adv-plus", ["data.image_size=16", "data.limit_train=32", "data.limit_val=20",
                                        "data.batch_size=16", "attack.steps=1", "optim.epochs=1",
                                        "train.progress=false", "train.device=cpu", "train.precision=bf16-attack",
                                        "model.arch=resnet18", f"train.out_dir={out}", "eval.steps=1"])
    train(cfg)
    assert 'precision = "bf16-attack"' in (out / "config.toml").read_text()
    records = [json.loads(s) for s in (out / "train.jsonl").read_text().splitlines()]
    assert {"event": "precision", "requested": "bf16-attack", "policy": "bf16-attack",
            "summary": POLICIES["bf16-attack"].summary} in records
    assert torch.load(out / "checkpoint.pt", weights_only=False)["precision"] == "bf16-attack"
    info = json.loads((evaluate(out, progress=False) / "eval.json").read_text())
    assert info["train_precision"] == "bf16-attack" and info["precision"] == "fp32"


def test_precision_table_judges_seed_noise_by_overlapping_ranges():
    """bench.precision_table: a policy differs beyond seed noise only where its seed range and fp32's do
    not overlap, and never with a single seed on either side."""
    from bench.precision_table import markdown, summarize

    def row(policy, seed, err):
        return {"policy": policy, "seed": seed, "pgd40_error": err, "worst_class_pgd40_acc": 80.0,
                "pgd40_class_sd": 6.0, "autoattack_error": None}

    rows = [row("fp32", s, e) for s, e in enumerate((5.8, 6.1, 8.3))] + \
           [row("bf16", s, e) for s, e in enumerate((6.1, 6.4, 7.5))] + \
           [row("bf16-lowp-input", s, e) for s, e in enumerate((9.0, 9.5, 10.0))] + [row("bf16-attack", 0, 20.0)]
    summary = summarize(rows, {"bf16": {"mean": 8.1, "min": 6.8, "max": 10.2, "values": []}})
    assert summary["bf16"]["beyond_seed_noise"]["pgd40_error"] is False
    assert summary["bf16-lowp-input"]["beyond_seed_noise"]["pgd40_error"] is True
    assert summary["bf16-attack"]["beyond_seed_noise"] == {}  # one seed: not judged
    assert summary["bf16"]["pgd40_error"]["mean"] == pytest.approx((6.1 + 6.4 + 7.5) / 3)
    table = markdown(summary, ["fp32", "bf16", "bf16-lowp-input", "bf16-attack"])
    assert "| bf16-lowp-input | 0,1,2 | 9.50 (9.00-10.00) * worse |" in table and "8.1 (6.8-10.2)" in table


@pytest.mark.parametrize("native", [True, False])
def test_auto_is_bf16_on_cpus_with_native_bf16_only(monkeypatch, native):
    """The default chosen from the measured table: bf16 where the CPU has bf16 units, fp32 where bf16 is emulated."""
    from fastadv.runtime import hardware

    monkeypatch.setattr(hardware, "detect_cpu", lambda: hardware.CpuInfo(isa="AVX512", has_native_bf16=native))
    assert precision.resolve("auto", CPU).name == ("bf16" if native else "fp32")
