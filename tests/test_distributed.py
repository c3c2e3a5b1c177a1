"""torchrun (gloo, CPU, 2 processes): DDP matches one process, sharded eval, resume across world sizes, failures.

Equality with one process needs the same global batch (2 x 4 = 1 x 8), no random start
(each rank draws its own noise) and no BatchNorm: BatchNorm normalizes over each rank's 4
images, and PyTorch's SyncBatchNorm, which would make that the global 8, has no CPU
implementation. So these runs swap BatchNorm for GroupNorm (per-sample, so batch-size
independent) through a launcher script; everything else is the shipped code path.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from fastadv.models.checkpoint import load_checkpoint
from fastadv.config import load_config
from fastadv.runtime.distributed import BatchShard, lr_factor
from fastadv.errors import FastadvError
from fastadv.eval.evaluate import evaluate
from fastadv.models import build_model as shipped_build_model
from fastadv.train import Trainer, train

HERE = Path(__file__).resolve().parent
TINY = ["data.image_size=16", "data.limit_train=32", "data.limit_val=40", "data.eval_batch_size=16",
        "attack.steps=2", "attack.random_start=false", "eval.steps=2", "optim.epochs=2",
        "train.progress=false", "train.log_every=2", "train.checkpoint_every=1"]
PER_RANK, GLOBAL = "data.batch_size=4", "data.batch_size=8"  # 4 steps per epoch either way
TORCHRUN_TIMEOUT = 240

LAUNCHER = f"""
import sys
sys.path.insert(0, {str(HERE)!r})
import fastadv.train.loop
from test_distributed import without_batchnorm
fastadv.train.loop.build_model = without_batchnorm(fastadv.train.loop.build_model)
from fastadv.cli import main
sys.exit(main(sys.argv[1:]))
"""


def without_batchnorm(build):
    """build_model with every BatchNorm2d replaced by GroupNorm(1, C) (see the module docstring)."""

    def build_model(cfg):
        model = build(cfg)
        for parent in list(model.modules()):
            for name, child in list(parent.named_children()):
                if isinstance(child, nn.BatchNorm2d):
                    setattr(parent, name, nn.GroupNorm(1, child.num_features))
        return model

    return build_model


def torchrun(tmp: Path, args: list[str], nproc: int = 2, env: dict[str, str] | None = None,
             restarts: int = 0, no_bn: bool = True, timeout: float = TORCHRUN_TIMEOUT) -> subprocess.CompletedProcess:
    """`torchrun --standalone --nproc_per_node N <launcher or -m fastadv> args`, with a wall-clock limit."""
    target = ["-m", "fastadv"]
    if no_bn:
        launcher = tmp / "launch_no_bn.py"
        launcher.write_text(LAUNCHER)
        target = [str(launcher)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
           "--max-restarts", str(restarts), "--monitor-interval", "0.5", *target, *args]
    full_env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    full_env.update({"OMP_NUM_THREADS": "1", **(env or {})})
    # Own process group: whatever torchrun leaves behind (a hung rank) is killed with it.
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def train_args(out: Path, *extra: str) -> list[str]:
    return ["train", "--recipe", "demo-adv-plus", "--out", str(out), *TINY, PER_RANK, *extra]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run)["model"]


def assert_close_weights(a: Path, b: Path, exact: bool = False) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k in wa:
        if exact:
            assert torch.equal(wa[k], wb[k]), k
        else:
            torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5, msg=k)


def log_lines(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "train.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("distributed")


@pytest.fixture(scope="module")
def single_run(work) -> Path:
    """One process, global batch 8, no BatchNorm."""
    out = work / "single"
    mp = pytest.MonkeyPatch()
    mp.setattr("fastadv.train.loop.build_model", without_batchnorm(shipped_build_model))
    try:
        train(load_config("demo-adv-plus", TINY + [GLOBAL, f"train.out_dir={out}"]))
    finally:
        mp.undo()
    return out


@pytest.fixture(scope="module")
def ddp_run(work) -> Path:
    """Two processes x batch 4, no BatchNorm."""
    out = work / "ddp"
    done = torchrun(work, train_args(out))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def died_run(work) -> tuple[Path, subprocess.CompletedProcess, float]:
    """Two processes; rank 1 exits(1) when it reaches step 5 (test-only FASTADV_TEST_DIE_AT_STEP)."""
    out = work / "died"
    start = time.perf_counter()
    done = torchrun(work, train_args(out), env={"FASTADV_TEST_DIE_AT_STEP": "5"})
    return out, done, time.perf_counter() - start


def test_two_processes_match_one_process_with_the_same_global_batch(single_run, ddp_run):
    assert_close_weights(single_run, ddp_run)
    one = [r for r in log_lines(single_run) if r["event"] == "train"]
    two = [r for r in log_lines(ddp_run) if r["event"] == "train"]
    assert [r["step"] for r in two] == [2, 4, 6, 8]  # rank 0 logs, once
    assert [r["loss"] for r in two] == pytest.approx([r["loss"] for r in one], rel=1e-4)
    ckpt = load_checkpoint(ddp_run)
    assert ckpt["progress"]["world_size"] == 2 and ckpt["progress"]["global_batch"] == 8
    rngs = ckpt["rng_per_rank"]
    assert len(rngs) == 2 and not torch.equal(rngs[0]["cpu"], rngs[1]["cpu"])  # each rank its own stream


def test_a_dead_rank_stops_the_job_with_an_error(died_run):
    out, done, seconds = died_run
    assert done.returncode != 0
    assert seconds < 120
    assert "exitcode  : 1" in done.stderr or "exitcode: 1" in done.stderr, done.stderr[-2000:]
    assert 4 <= load_checkpoint(out)["progress"]["step"] <= 5  # checkpoint_every=1 kept the last steps


def test_resume_from_two_processes_to_one(work, died_run, single_run, monkeypatch):
    """The 2-process checkpoint (step 4 or 5 of 8) resumed by one process with batch 8 ends where
    the one-process run ends: same data order by global sample, same schedule."""
    out = work / "two-to-one"
    shutil.copytree(died_run[0], out)
    monkeypatch.setattr("fastadv.train.loop.build_model", without_batchnorm(shipped_build_model))
    resumed = train(load_config("demo-adv-plus", TINY + [GLOBAL, f"train.out_dir={out}"]), resume=out)
    assert_close_weights(single_run, resumed)
    event = next(r for r in log_lines(out) if r["event"] == "resume")
    assert (event["from_world_size"], event["world_size"], event["global_batch"]) == (2, 1, 8)


def test_torchrun_restart_resumes_from_the_last_checkpoint(work, ddp_run):
    """--max-restarts 1: rank 1 dies at step 5, torchrun restarts both, training resumes and ends
    with the weights of the uninterrupted 2-process run."""
    out = work / "restarted"
    done = torchrun(work, train_args(out), env={"FASTADV_TEST_DIE_AT_STEP": "5"}, restarts=1)
    assert done.returncode == 0, done.stderr[-3000:]
    assert_close_weights(ddp_run, out, exact=True)
    assert any(r["event"] == "resume" for r in log_lines(out))


def test_a_hung_rank_stops_the_job_within_the_timeout(work):
    out = work / "hung"
    start = time.perf_counter()
    done = torchrun(work, train_args(out, "train.dist_timeout_s=8"), env={"FASTADV_TEST_HANG_AT_STEP": "2"})
    assert done.returncode != 0
    assert time.perf_counter() - start < 120
    assert "train.dist_timeout_s=8" in done.stderr, done.stderr[-2000:]


def test_sharded_evaluation_writes_the_single_process_predictions(work):
    """PGD with random start (seeded per batch) over 40 images in batches of 16: rank 0 takes
    batches 0 and 2, rank 1 batch 1; the gathered CSVs are byte-identical to one process's."""
    run = work / "eval-model"
    train(load_config("demo-adv-plus", TINY + [GLOBAL, "train.max_steps=2", f"train.out_dir={run}"]))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as torchrun's workers (OMP_NUM_THREADS=1): the same CPU kernels, the same rounding
    try:
        single = evaluate(run, work / "eval-one", ["eval.random_start=true"], progress=False)
    finally:
        torch.set_num_threads(threads)
    done = torchrun(work, ["eval", str(run), "--out", str(work / "eval-two"), "--no-progress",
                           "--set", "eval.random_start=true"], no_bn=False)
    assert done.returncode == 0, done.stderr[-3000:]
    csvs = sorted(p.relative_to(single) for p in single.rglob("*.csv"))
    assert len(csvs) >= 3  # clean, pgd2, pgd2-kplusm
    for rel in csvs:
        assert (work / "eval-two" / rel).read_bytes() == (single / rel).read_bytes(), rel
    info = json.loads((work / "eval-two" / "eval.json").read_text())
    assert all(s["images"] == 40 for s in info["settings"].values())


# --------------------------------------------------------------------------- in one process
def test_resume_with_another_global_batch_keeps_the_position_in_samples(tmp_path):
    """Batch 4 stopped after 3 steps (12 samples); resumed with batch 8: batch 1, step 1."""
    out = tmp_path / "run"
    train(load_config("demo-std", TINY + ["data.batch_size=4", "train.max_steps=3", f"train.out_dir={out}"]))
    progress = load_checkpoint(out)["progress"]
    assert (progress["samples_in_epoch"], progress["global_batch"], progress["world_size"]) == (12, 4, 1)
    trainer = Trainer(load_config("demo-std", TINY + [GLOBAL, f"train.out_dir={out}"]), resume=out)
    assert (trainer.progress.epoch, trainer.progress.batch_in_epoch, trainer.progress.step) == (0, 1, 1)


def test_auto_resume_picks_up_the_run_folder(tmp_path):
    out = tmp_path / "run"
    train(load_config("demo-std", TINY + [GLOBAL, "train.max_steps=2", f"train.out_dir={out}"]))
    fresh = Trainer(load_config("demo-std", TINY + [GLOBAL, f"train.out_dir={out}"]))
    assert fresh.progress.step == 0
    auto = Trainer(load_config("demo-std", TINY + [GLOBAL, "train.auto_resume=true", f"train.out_dir={out}"]))
    assert auto.progress.step == 2


def test_one_process_shard_is_the_whole_dataset_and_lr_rules():
    data = list(range(10))
    shard = BatchShard(data, 4, seed=0)
    assert shard.dataset is data and shard.batch_ids == [0, 1, 2]
    rows = {"index": [0, 1], "pred": [3, 4], "skipped": 0}
    assert shard.gather(rows) == rows
    assert (lr_factor("none", 8), lr_factor("linear", 8), lr_factor("sqrt", 4)) == (1.0, 8.0, 2.0)


def test_distributed_settings_are_validated():
    with pytest.raises(FastadvError, match="train.lr_scaling"):
        load_config("demo-std", ["train.lr_scaling=quadratic"])
    with pytest.raises(FastadvError, match="train.dist_timeout_s"):
        load_config("demo-std", ["train.dist_timeout_s=0"])
