"""Issue 26: a new user's first hour: printed commands run, interrupts never dead-end, eval resumes, messages guide."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastadv.cli import build_parser, main
from fastadv.runtime.runfolder import LOCK_NAME

ROOT = Path(__file__).parent.parent


def parse_args(argv: list[str]):
    from fastadv.cli_grammar import parse_args as parse

    return parse(build_parser(), argv)
TINY = ["data.image_size=16", "data.limit_train=32", "data.limit_val=16", "data.batch_size=16",
        "data.eval_batch_size=8", "attack.steps=1", "eval.steps=2", "optim.epochs=1", "train.log_every=1",
        "train.progress=false"]


def bare_shell_env() -> dict[str, str]:
    """A fresh shell after `make install`: the venv is not activated, so `fastadv` is not on PATH."""
    venv_bin = str(Path(sys.executable).parent)
    path = [p for p in os.environ.get("PATH", "").split(os.pathsep) if p and Path(p) != Path(venv_bin)]
    env = {**os.environ, "PATH": os.pathsep.join(path or ["/usr/bin", "/bin"])}
    env.pop("VIRTUAL_ENV", None)
    return env


def runs_in_a_bare_shell(cmd: str, cwd: Path) -> subprocess.CompletedProcess:
    """Run a printed command (plus --help, so it only parses) in a shell without the venv on PATH, from the
    folder it was printed in (`cwd`: a hint may name `.venv/bin/fastadv` relative to it)."""
    return subprocess.run(cmd + " --help", shell=True, cwd=cwd, env=bare_shell_env(), capture_output=True,
                          text=True, timeout=120)


def printed_command(text: str, after: str) -> str:
    return text.split(after, 1)[1].strip().splitlines()[0].strip().strip("`")


@pytest.fixture(scope="module")
def unfinished(tmp_path_factory) -> Path:
    """A tiny demo-std run stopped after 1 of its 2 steps (train.max_steps=1): a checkpoint, not finished."""
    run = tmp_path_factory.mktemp("runs") / "demo-std"
    assert main(["train", "--recipe", "demo-std", "--out", str(run), *TINY, "train.max_steps=1"]) == 0
    return run


# 1: every printed hint is a command that runs in the user's shell
def test_hints_run_without_the_venv_on_path(unfinished, tmp_path, monkeypatch, capsys):
    import fastadv.train

    monkeypatch.setattr(fastadv.train, "train", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt))
    assert main(["train", "--resume", "--out", str(unfinished)]) == 130
    ctrl_c = printed_command(capsys.readouterr().err, "continue with:")
    assert main(["train", "--recipe", "demo-std", "--out", str(unfinished)]) == 2
    refusal = printed_command(capsys.readouterr().err, "continue it with `").split("`")[0]
    for cmd in (ctrl_c, refusal):
        assert "train --resume --out" in cmd
        done = runs_in_a_bare_shell(cmd, Path.cwd())  # the user's shell is where the hint was printed
        assert done.returncode == 0, (cmd, done.stderr)


# 2: make continues an unfinished run of the same configuration; another one is refused naming FORCE=1
def test_continue_resumes_the_same_configuration_and_refuses_another(unfinished, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(unfinished, run)
    assert main(["train", "--recipe", "demo-std", "--out", str(run), *TINY, "attack.steps=2", "--continue"]) == 2
    err = capsys.readouterr().err
    assert "another configuration" in err and "FORCE=1" in err and "attack.steps" in err
    assert main(["train", "--recipe", "demo-std", "--out", str(run), *TINY, "--continue"]) == 0
    out = capsys.readouterr().out
    assert "continuing its unfinished run" in out
    steps = [json.loads(s)["step"] for s in (run / "train.jsonl").read_text().splitlines()
             if json.loads(s).get("event") == "train"]
    assert steps == [1, 2]  # step 1 from the first start, step 2 continued, none repeated
    dry = subprocess.run(["make", "-n", "-C", str(ROOT), "-o", "install", "train-adv-plus"], capture_output=True,
                         text=True, timeout=60)
    assert "--continue" in dry.stdout
    forced = subprocess.run(["make", "-n", "-C", str(ROOT), "-o", "install", "train-adv-plus", "FORCE=1"],
                            capture_output=True, text=True, timeout=60)
    assert "--overwrite" in forced.stdout and "--continue" not in forced.stdout


# 3: an interrupt before the first checkpoint is no dead end: the same command starts again
def test_interrupt_before_the_first_checkpoint_then_the_same_command(tmp_path, monkeypatch, capsys):
    import fastadv.train

    run = tmp_path / "run"
    argv = ["train", "--recipe", "demo-std", "--out", str(run), *TINY]

    def starts_then_interrupted(cfg, **kwargs):
        (run / "config.toml").write_text("name = 'x'\n")
        (run / "train.jsonl").write_text("")
        (run / "dataset.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(fastadv.train, "train", starts_then_interrupted)
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "no checkpoint was written yet" in err and "train --recipe demo-std" in err
    started = []
    monkeypatch.setattr(fastadv.train, "train", lambda cfg, **kwargs: started.append(cfg))
    monkeypatch.setattr("fastadv.eval.summary.train_summary", lambda *a: "summary")
    assert main(argv) == 0, capsys.readouterr().err
    assert started and "starting again" in capsys.readouterr().out


# 4: SIGTERM saves a checkpoint at the next step boundary, releases the lock, and the run resumes
@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_and_releases_the_lock(tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "fastadv", "train", "--recipe", "demo-std", "--out", str(run),
                             *TINY, "data.limit_train=4000", "train.checkpoint_every=0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = run / "train.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (log.is_file() and '"event": "train"' in log.read_text()):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM (checkpoint saved at step" in err and "train --resume --out" in err
    saved = int(re.search(r"saved at step (\d+)", err).group(1))
    assert (run / "checkpoint.pt").is_file() and not (run / LOCK_NAME).exists()
    import torch

    assert torch.load(run / "checkpoint.pt", weights_only=False)["progress"]["step"] == saved


def test_sigusr1_during_the_loop_is_deferred_to_the_step_boundary():
    from fastadv.runtime.stop_signals import STOP, Stopped

    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        STOP.install()
        STOP.armed = True
        os.kill(os.getpid(), signal.SIGUSR1)  # in the loop: recorded, the loop saves and stops
        assert STOP.received == signal.SIGUSR1
        STOP.armed = False
        with pytest.raises(Stopped):
            os.kill(os.getpid(), signal.SIGTERM)  # outside the loop: stops at once, like Ctrl-C
    finally:
        STOP.armed, STOP.received = False, None
        for s, h in old.items():
            signal.signal(s, h)


def test_refused_commands_leave_no_lock_and_no_folder(tmp_path, capsys):
    out = tmp_path / "never"
    assert main(["train", "--recipe", "imagenet-adv-plus", "--data", str(tmp_path / "nonexistent"),
                 "--out", str(out), "model.pretrained=false"]) == 2
    assert not out.exists(), list(out.iterdir())
    bad = tmp_path / "ckpts" / "bad.pt"
    bad.parent.mkdir()
    bad.write_bytes(b"not a checkpoint")
    assert main(["eval", str(bad), "--no-progress"]) == 2
    assert sorted(p.name for p in bad.parent.iterdir()) == ["bad.pt"]


# 5: an interrupted eval keeps its finished settings; the rerun recomputes none of them
def test_interrupted_eval_keeps_finished_settings(unfinished, tmp_path, monkeypatch, capsys):
    import fastadv.eval.evaluate as ev

    ask = ["--set", "eval.temperatures=0.5", "--no-progress"]
    straight = tmp_path / "straight"
    assert main(["eval", str(unfinished), "--out", str(straight), *ask]) == 0
    original, calls, order = ev._predict_batch, [], []

    def counted(model, batch, setting, *args, **kwargs):
        if setting.key not in order:
            order.append(setting.key)
        calls.append(setting.key)
        if interrupt and len(order) == 3:
            raise KeyboardInterrupt
        return original(model, batch, setting, *args, **kwargs)

    monkeypatch.setattr(ev, "_predict_batch", counted)
    out = tmp_path / "eval"
    interrupt = True
    assert main(["eval", str(unfinished), "--out", str(out), *ask]) == 130
    err = capsys.readouterr().err
    assert "the same command continues" in err and f"eval {unfinished}" in err
    finished = order[:2]
    calls.clear()
    interrupt = False
    assert main(["eval", str(unfinished), "--out", str(out), *ask]) == 0
    assert not set(finished) & set(calls), "a finished setting was computed again"
    info = json.loads((out / "eval.json").read_text())
    assert all(info["settings"][k].get("reused") for k in finished) and not (out / "partial").exists()
    for csv in sorted((straight / "predictions").glob("*.csv")):
        assert csv.read_bytes() == (out / "predictions" / csv.name).read_bytes(), csv.name


# 6: one grammar: KEY=VALUE anywhere, on train and eval; unknown flags get the subcommand's usage and a suggestion
def test_overrides_on_both_sides_of_an_option():
    args = parse_args(["train", "--recipe", "R", "model.arch=X", "--out", "D", "data.image_size=16"])
    assert args.overrides == ["model.arch=X", "data.image_size=16"] and args.out == "D"
    args = parse_args(["eval", "runs/a", "eval.eps=4/255", "--no-progress", "--set", "eval.steps=2", "eval.seed=1"])
    assert args.runs == ["runs/a"] and sorted(args.overrides) == ["eval.eps=4/255", "eval.seed=1", "eval.steps=2"]


def test_unknown_flags_and_names_suggest_the_closest(capsys):
    with pytest.raises(SystemExit) as exc:
        parse_args(["eval", "runs/a", "--no-progess"])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "usage: fastadv eval" in err and "did you mean --no-progress?" in err
    with pytest.raises(SystemExit):
        parse_args(["train", "--recipe", "R", "--epochs", "3"])
    assert "usage: fastadv train" in (err := capsys.readouterr().err) and "optim.epochs=VALUE" in err
    for argv, hint in ((["--recipe", "demo-adv-pls"], "did you mean demo-adv-plus?"),
                       (["--recipe", "demo-std", "optim.epoch=2"], "did you mean optim.epochs?"),
                       (["--recipe", "demo-std", "method.name=adv-pls"], "did you mean adv-plus?"),
                       (["--recipe", "demo-std", "model.arch=resnet5"], "did you mean resnet50?")):
        assert main(["train", *argv, "--out", "/nonexistent/x"]) == 2
        assert hint in capsys.readouterr().err


# 8: summaries say how each number was measured, and slow rates read
def test_summaries_label_modes_and_slow_rates(tmp_path):
    from fastadv.eval.summary import eval_summary, train_summary

    (tmp_path / "train.jsonl").write_text(json.dumps({"event": "train", "step": 2, "loss": 1.0, "clean_acc": 0.03,
                                                      "adv_batch_acc": 0.65, "images_per_sec": 5.0}) + "\n")
    text = train_summary(tmp_path, 0, 1.0)
    assert "clean acc (last batch, eval mode" in text and "adversarial acc (last batch, train mode" in text
    (tmp_path / "eval.json").write_text(json.dumps({"model": "m", "checkpoint": "c", "settings": {
        "autoattack": {"accuracy": 0.5, "images": 10, "images_per_sec": 0.25},
        "clean": {"accuracy": 0.9, "images": 10, "images_per_sec": 250.0}}}))
    table = eval_summary(tmp_path, 1.0)
    assert "4.0 s/img" in table and "250 img/s" in table and " 0 " not in table.split("\n", 2)[2]
