"""The speed switches (channels_last, bf16 autocast, torch.compile) against the plain eager fp32 path."""

from __future__ import annotations

import json
import math

import pytest

from fastadv.config import load_config
from fastadv.train import train

BASE = ["data.image_size=16", "data.limit_train=64", "data.batch_size=32", "attack.steps=2",
        "optim.epochs=1", "train.progress=false", "train.log_every=1"]


def losses(tmp_path, name, *switches):
    cfg = load_config("demo-adv-plus", BASE + [f"train.out_dir={tmp_path / name}", *switches])
    train(cfg)
    lines = [json.loads(s) for s in (tmp_path / name / "train.jsonl").read_text().splitlines()]
    return [r["loss"] for r in lines if r["event"] == "train"]


def test_channels_last_matches_contiguous(tmp_path):
    ref = losses(tmp_path, "ref", "train.channels_last=false")
    got = losses(tmp_path, "cl", "train.channels_last=true")
    assert got == pytest.approx(ref, rel=1e-3)


def test_bf16_autocast_stays_close_to_fp32(tmp_path):
    ref = losses(tmp_path, "ref", "train.amp=off")
    got = losses(tmp_path, "bf16", "train.amp=bf16")
    assert got == pytest.approx(ref, rel=0.05)


@pytest.mark.slow
def test_compiled_training_matches_eager(tmp_path):
    """torch.compile of the model (attack and training step) on the CPU; ~1 min of compiling."""
    ref = losses(tmp_path, "ref", "train.compile=false")
    got = losses(tmp_path, "compiled", "train.compile=true")
    assert got[0] == pytest.approx(ref[0], rel=1e-4)  # same weights, same attack: same first loss
    # After one update, fused kernels' rounding flips the sign of a few tiny input-gradient
    # entries, so the adversarial examples and losses drift apart slightly.
    assert got == pytest.approx(ref, rel=2e-2)


def test_fp16_autocast_with_grad_scaler_trains(tmp_path):
    """fp16 (for cards without fast bf16) goes through the GradScaler: same first loss, finite after.

    (The scaler starts at 2**16 and skips the updates whose gradients overflow while it calibrates,
    so later losses are not comparable step for step.)"""
    small = ["data.limit_train=16", "data.batch_size=8", "attack.steps=1"]  # fp16 convolutions are slow on CPUs
    ref = losses(tmp_path, "ref", "train.amp=off", *small)
    got = losses(tmp_path, "fp16", "train.amp=fp16", *small)
    assert got[0] == pytest.approx(ref[0], rel=0.01)
    assert all(math.isfinite(v) for v in got)
