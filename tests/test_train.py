"""Trainer: methods learn, exact resume (in-process crash and a killed process), NaN stop, bad resumes."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastadv.models.checkpoint import load_checkpoint
from fastadv.config import load_config
from fastadv.errors import FastadvError, NonFiniteLossError
from fastadv.methods import build_method
from fastadv.models import build_model
from fastadv.train import Trainer, cosine_lr, train

TINY = [
    "data.image_size=16", "data.limit_train=96", "data.limit_val=40", "data.batch_size=32",
    "attack.steps=2", "eval.steps=2", "optim.epochs=2", "train.progress=false", "train.log_every=2",
]


def tiny(recipe: str, out: Path, *extra: str):
    return load_config(recipe, TINY + [f"train.out_dir={out}", *extra])


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


@pytest.mark.parametrize("recipe", ["demo-std", "demo-adv", "demo-adv-plus"])
def test_each_method_lowers_its_loss_on_a_tiny_batch(recipe):
    cfg = load_config(recipe, ["data.image_size=16"])
    torch.manual_seed(0)
    model = build_model(cfg.model)
    method = build_method(cfg)
    x, y = torch.rand(16, 3, 16, 16), torch.arange(16) % 10
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(15):
        model.train()
        loss, stats = method(model, x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        assert 0 <= stats["train_acc"].item() <= 1
    assert losses[-1] < 0.7 * losses[0]


def test_cosine_schedule_ends_at_the_floor():
    assert cosine_lr(0, 100, 0.01, 1e-4) == pytest.approx(0.01)
    assert cosine_lr(50, 100, 0.01, 1e-4) == pytest.approx(0.01 * (1 + 1e-4) / 2)
    assert cosine_lr(100, 100, 0.01, 1e-4) == pytest.approx(0.01 * 1e-4)


class Crash(Exception):
    pass


def crash_at(monkeypatch, step: int) -> None:
    """Make the Trainer die when it is about to run optimizer step `step` + 1."""
    original = Trainer._train_step

    def step_or_crash(self, *args, **kwargs):
        if self.progress.step == step:
            raise Crash()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Trainer, "_train_step", step_or_crash)


@pytest.mark.parametrize("crash_step, extra", [(3, []), (4, ["train.checkpoint_every=2"])])
def test_resume_after_a_crash_gives_identical_weights(tmp_path, monkeypatch, crash_step, extra):
    """3 steps per epoch: crash at an epoch end (resume from its checkpoint) or mid-epoch."""
    straight = train(tiny("demo-adv-plus", tmp_path / "straight", *extra))
    cfg = tiny("demo-adv-plus", tmp_path / "crashed", *extra)
    with monkeypatch.context() as m:
        crash_at(m, crash_step)
        with pytest.raises(Crash):
            train(cfg)
    saved = load_checkpoint(tmp_path / "crashed")["progress"]
    assert 0 < saved["step"] <= crash_step
    resumed = train(cfg, resume=tmp_path / "crashed")
    assert_same_weights(straight, resumed)
    log = [json.loads(line) for line in (tmp_path / "crashed" / "train.jsonl").read_text().splitlines()]
    train_lines = [r for r in log if r["event"] == "train"]
    assert {"loss", "clean_acc", "trained_batch_acc", "adv_batch_acc", "lr", "images_per_sec", "skipped_images"} <= set(train_lines[0])


def test_resume_after_the_process_is_killed(tmp_path):
    """A real SIGKILL of `fastadv train`, then `--resume`: the same weights as a straight run."""
    args = TINY + ["optim.epochs=4", "train.checkpoint_every=1"]
    # Both runs in fresh processes: same thread count, so the same float rounding.
    base = [sys.executable, "-m", "fastadv", "train", "--recipe", "demo-adv", *args]
    subprocess.run(base + ["--out", str(tmp_path / "straight")], check=True, capture_output=True, timeout=600)
    straight = tmp_path / "straight" / "checkpoint.pt"
    out = tmp_path / "killed"
    cmd = base + ["--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = out / "checkpoint.pt"
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "training ended before it could be killed"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    step_at_kill = load_checkpoint(ckpt)["progress"]["step"]
    assert step_at_kill < 12
    done = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert_same_weights(straight, ckpt)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = tiny("demo-std", tmp_path / "run", "train.checkpoint_every=1")
    calls = {"n": 0}
    from fastadv.methods.standard import StandardTraining

    original = StandardTraining.__call__

    def poisoned(self, model, x, y):
        loss, stats = original(self, model, x, y)
        calls["n"] += 1
        return (loss * float("nan") if calls["n"] == 3 else loss), stats

    monkeypatch.setattr(StandardTraining, "__call__", poisoned)
    ckpt = tmp_path / "run" / "checkpoint.pt"
    with pytest.raises(NonFiniteLossError, match="step 3 .*intact") as info:
        train(cfg)
    assert "nan" in str(info.value)
    state = load_checkpoint(ckpt)
    assert state["progress"]["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    digest = hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert digest == hashlib.sha256(ckpt.read_bytes()).hexdigest()


def test_resume_into_another_recipe_lists_the_mismatch(tmp_path):
    train(tiny("demo-adv-plus", tmp_path / "a", "train.max_steps=1"))
    cfg = tiny("demo-std", tmp_path / "a", "model.arch=resnet34")
    with pytest.raises(FastadvError) as info:
        Trainer(cfg, resume=tmp_path / "a")
    message = str(info.value)
    for expected in ("model.arch", "resnet18", "resnet34", "model.num_aux", "method.name", "adv-plus", "std"):
        assert expected in message


def test_non_fastadv_checkpoints_are_refused(tmp_path):
    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(2)}, plain)
    with pytest.raises(FastadvError, match="not a fastadv checkpoint.*--init"):
        load_checkpoint(plain)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00garbage")
    with pytest.raises(FastadvError, match="could not be read as a fastadv checkpoint: it is not a torch file"):
        load_checkpoint(garbage)
    with pytest.raises(FastadvError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing")


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A crash while saving leaves the previous checkpoint intact and no temp files behind."""
    from fastadv.models import checkpoint

    path = tmp_path / "checkpoint.pt"
    checkpoint.save_checkpoint(path, {"progress": {"step": 1}})
    before = path.read_bytes()

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", broken_save)
    with pytest.raises(OSError):
        checkpoint.save_checkpoint(path, {"progress": {"step": 2}})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]


def test_clean_fraction_trains_the_first_samples_clean_with_the_plain_label():
    cfg = load_config("demo-adv-plus", ["data.image_size=16", "method.clean_fraction=0.25", "attack.steps=1"])
    method = build_method(cfg)
    model = build_model(cfg.model)
    x, y = torch.rand(8, 3, 16, 16), torch.arange(8) % 10
    x_train, ops = method.inputs(model, x, y)
    assert ops.tolist() == [-1, -1, 0, 0, 0, 0, 0, 0]
    assert torch.equal(x_train[:2], x[:2])
    assert not torch.equal(x_train[2:], x[2:])
    assert ((x_train - x).abs().amax() <= cfg.attack.eps + 1e-6)
