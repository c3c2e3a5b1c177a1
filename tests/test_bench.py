"""The benchmark harness runs end to end (tiny sizes) and its research baseline does the same work."""

from __future__ import annotations

import json

import torch

from bench import run
from bench.workloads import EPS, Variant, make_setup, research_pgd, workload
from fastadv.attacks import pgd_linf


def test_research_baseline_pgd_equals_fastadv_pgd():
    """Same op order in fp32 NCHW eager: the baseline computes exactly fastadv's attack."""
    variant = Variant("research", channels_last=False, amp=None, compile=False, fused_kernels=False)
    s = make_setup(variant, "resnet18", 10, 1, 2, 16, torch.device("cpu"))
    torch.manual_seed(1)
    base = research_pgd(s.model, s.x, s.y, EPS, EPS / 4, 2)
    torch.manual_seed(1)
    ours = pgd_linf(s.model, s.x, s.y, eps=EPS, alpha=EPS / 4, steps=2, num_classes=10, head="all")
    assert torch.equal(base, ours)


def test_every_workload_runs_for_every_variant():
    device = torch.device("cpu")
    for name in ("research", "eager-amp-cl", "fastadv"):
        variant = Variant(name, channels_last=name != "research", amp=None, compile=False, fused_kernels=True)
        s = make_setup(variant, "resnet18", 10, 1, 2, 16, device)
        for w in ("pgd10_attack", "adv_plus_train_step", "pgd40_eval", "clean_eval", "std_train_step",
                  "fgsm_rs_plus_train_step", "free_plus_train_step"):
            before = [p.detach().clone() for p in s.model.parameters()]
            workload(w, variant, s, 10, device)()
            changed = any(not torch.equal(a, p) for a, p in zip(before, s.model.parameters()))
            assert changed == w.endswith("train_step"), (name, w)  # attacks never touch the weights


def test_bench_writes_json(tmp_path):
    code = run.main(["--device", "cpu", "--arch", "resnet18", "--size", "16", "--batch", "2", "--repeats", "1",
                     "--warmup", "1", "--no-compile-on-cpu", "--skip-loaders", "--workloads", "pgd10_attack", "std_train_step",
                     "--out", str(tmp_path)])
    assert code == 0
    (path,) = tmp_path.glob("*.json")
    result = json.loads(path.read_text())
    assert result["device"]["kind"] == "cpu" and result["image_size"] == 16
    assert {r["variant"] for r in result["results"]} == {"research", "eager-amp-cl", "fastadv"}
    for r in result["results"]:
        assert r["images_per_sec"] > 0 and r["peak_memory_mib"] > 0 and r["x_research"] > 0
    assert {k["kernel"] for k in result["kernels"]} == {"pgd_update", "label_augmented_ce (fwd+bwd)"}
    assert result["targets"][0]["target"].startswith("CPU: pgd10_attack")
    assert set(result["cpu"]) >= {"isa", "has_native_bf16", "flags"}
    for name, variant in result["variants"].items():
        assert set(variant["path"]) == {"dtype", "channels_last", "compiled", "compile_mode", "kernels"}, name
        assert variant["path"]["kernels"] == "reference"  # no CUDA here: the Triton kernels are not used
