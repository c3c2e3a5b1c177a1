"""Evaluation precision is its own setting (eval.amp, fp32 by default on every device), never the run's
train.amp: a bf16-trained run is attacked in fp32 unless eval.amp=bf16 asks otherwise (issue 24)."""

from __future__ import annotations

import json

import pytest
import torch

from fastadv.config import load_config
from fastadv.errors import FastadvError
from fastadv.runtime.hardware import detect_cpu

TINY = ["data.image_size=16", "data.limit_train=32", "data.batch_size=16", "model.arch=resnet18",
        "train.max_steps=1", "train.progress=false", "train.precision=bf16", "train.device=cpu"]
EVAL = ["data.limit_val=16", "eval.steps=1"]
AUTOATTACK = ["eval.autoattack=true", "eval.autoattack_at_eval_eps=false", "eval.autoattack_version=custom",
              'eval.autoattack_attacks="apgd-ce"']


@pytest.fixture(scope="module")
def bf16_run(tmp_path_factory):
    from fastadv.train import train

    out = tmp_path_factory.mktemp("precision") / "run"
    return train(load_config("demo-std", TINY + [f"train.out_dir={out}"]))


def _evaluate_seeing_dtypes(run, out, overrides):
    """Evaluate; return eval.json and the dtypes of every Linear / Conv2d output the model produced."""
    from fastadv.eval.evaluate import evaluate

    seen: set[torch.dtype] = set()

    def hook(module, args, output):
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)) and isinstance(output, torch.Tensor):
            seen.add(output.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        done = evaluate(run, out, overrides, progress=False)
    finally:
        handle.remove()
    return json.loads((done / "eval.json").read_text()), seen


def test_bf16_trained_run_is_evaluated_in_fp32_by_default(bf16_run, tmp_path):
    from fastadv.cli import _evaluated

    info, seen = _evaluate_seeing_dtypes(bf16_run, tmp_path / "eval", EVAL + AUTOATTACK)
    assert seen == {torch.float32}, seen  # the old code attacked this run in bf16 (its train.amp)
    assert {"clean", "pgd1", "autoattack"} <= set(info["settings"]), list(info["settings"])  # AutoAttack in fp32 too
    assert info["precision"] == "fp32" and info["request"]["amp"] == "fp32" and info["eval_seed"] == 0
    # --skip-existing: same precision = done; another precision, or an eval.json from before eval.amp
    # (it ran under train.amp), is evaluated again
    asked = EVAL + AUTOATTACK
    assert _evaluated(str(bf16_run), str(tmp_path / "eval"), asked)
    assert not _evaluated(str(bf16_run), str(tmp_path / "eval"), asked + ["eval.amp=bf16"])
    path = tmp_path / "eval" / "eval.json"
    old = json.loads(path.read_text())
    del old["request"]["amp"]
    path.write_text(json.dumps(old))
    assert not _evaluated(str(bf16_run), str(tmp_path / "eval"), asked)


@pytest.mark.skipif(not detect_cpu().has_native_bf16, reason="this CPU has no native bf16 (AVX512-BF16 / AMX-BF16)")
def test_eval_amp_bf16_evaluates_in_bf16(bf16_run, tmp_path):
    info, seen = _evaluate_seeing_dtypes(bf16_run, tmp_path / "eval", EVAL + ["eval.amp=bf16"])
    assert torch.bfloat16 in seen
    assert info["precision"] == "bf16" and info["request"]["amp"] == "bf16"


@pytest.mark.parametrize("value", ["off", "fp16", "auto", "BF16"])
def test_bad_eval_amp_is_one_line_naming_the_choices(value):
    with pytest.raises(FastadvError) as err:
        load_config("demo-std", [f"eval.amp={value}"])
    assert str(err.value) == (f"eval.amp={value!r} is not one of: fp32, bf16 "
                              "(evaluation precision; fp32 is the default, bf16 is faster)")
