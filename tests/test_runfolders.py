"""Issue 17: run folders a user can trust, and a CLI that tells them what happened (one test per item)."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fastadv.cli import main
from fastadv.runtime.runfolder import LOCK_NAME, RunLock, prepare_fresh

ROOT = Path(__file__).parent.parent
TINY = ["data.image_size=16", "data.limit_train=32", "data.limit_val=20", "data.batch_size=16",
        "attack.steps=1", "eval.steps=2", "optim.epochs=1", "train.log_every=1"]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_line_error(err: str) -> bool:
    lines = [s for s in err.splitlines() if s.startswith("fastadv: error:")]
    return len(lines) == 1 and "Traceback" not in err


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict:
    """One tiny demo-adv-plus run (trained, evaluated) shared by the tests; they copy it before changing it."""
    base = tmp_path_factory.mktemp("runs")
    run = base / "demo-adv-plus"
    out = subprocess.run([sys.executable, "-m", "fastadv", "train", "--recipe", "demo-adv-plus", "--out", str(run),
                          *TINY], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    ev = subprocess.run([sys.executable, "-m", "fastadv", "eval", str(run), "--no-progress"],
                        capture_output=True, text=True, timeout=600)
    assert ev.returncode == 0, ev.stderr
    return {"run": run, "train": out, "eval": ev}


def copy_run(trained, tmp_path: Path, name: str = "run") -> Path:
    dst = tmp_path / name
    shutil.copytree(trained["run"], dst)
    return dst


# 1 + 5: resume takes the saved config; only allowed overrides; the diff is printed; another dataset is refused
def test_resume_keeps_the_saved_config_from_another_directory(trained, tmp_path, monkeypatch, capsys):
    run = copy_run(trained, tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["train", "--resume", "--out", str(run), "attack.eps=0.1"]) == 2
    assert "attack.eps" in capsys.readouterr().err
    saved = json.loads((run / "dataset.json").read_text())
    (run / "dataset.json").write_text(json.dumps({**saved, "images": 999}))
    assert main(["train", "--resume", "--out", str(run), "optim.epochs=2"]) == 2
    assert "--allow-new-dataset" in capsys.readouterr().err
    (run / "dataset.json").write_text(json.dumps(saved))
    assert main(["train", "--resume", "--out", str(run), "optim.epochs=2", "train.progress=false"]) == 0
    out = capsys.readouterr().out
    assert "optim.epochs: 1 -> 2" in out
    config = (run / "config.toml").read_text()
    assert "limit_train = 32" in config and "epochs = 2" in config  # the saved limits, not the recipe's
    done = [json.loads(s) for s in (run / "train.jsonl").read_text().splitlines()][-1]
    assert done["event"] == "done" and done["epoch"] == 2 and done["step"] == 4


def test_paths_are_stored_absolute(tmp_path, monkeypatch):
    from fastadv.config import load_config
    from fastadv.runtime.runfolder import absolute_paths

    monkeypatch.chdir(tmp_path)
    cfg = load_config("demo-adv", ["data.path=data/imagenet", "model.init=w.pth", "eval.imagenet_c=generate"])
    absolute_paths(cfg)
    assert cfg.data.path == str(tmp_path / "data" / "imagenet") and cfg.model.init == str(tmp_path / "w.pth")
    assert cfg.eval.imagenet_c == "generate"


# 2: a folder holding a run is refused; --overwrite moves it aside
def test_training_into_a_finished_run_is_refused(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path)
    before = snapshot(run)
    assert main(["train", "--recipe", "demo-adv-plus", "--out", str(run), *TINY]) == 2
    err = capsys.readouterr().err
    assert one_line_error(err) and "--resume" in err and "--overwrite" in err
    assert snapshot(run) == before
    aside = prepare_fresh(run, overwrite=True)
    assert snapshot(aside) == {k: v for k, v in before.items() if k != LOCK_NAME}
    assert [p.name for p in run.iterdir()] == []  # a released lock leaves no file (issue 26 item 4)


# 3: one process at a time; a lock left by kill -9 is detected and taken over
def test_lock_refuses_a_second_process_and_survives_kill_9(trained, tmp_path, capsys, caplog):
    run = copy_run(trained, tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom fastadv.runtime.runfolder import RunLock\n"
                               f"RunLock({str(run)!r}, 'train').acquire(); print('locked', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["train", "--resume", "--out", str(run)]) == 2
        err = capsys.readouterr().err
        assert one_line_error(err) and "in use" in err and f"pid {holder.pid}" in err
        assert main(["eval", str(run), "--no-progress"]) == 2
        assert "in use" in capsys.readouterr().err
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with caplog.at_level("WARNING", logger="fastadv"):
        lock = RunLock(run, "eval").acquire()
    assert f"pid {holder.pid}" in lock.stale and "stale lock" in caplog.text
    lock.release()
    assert not (run / LOCK_NAME).exists()


# 4: files follow the umask
@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, mask, mode):
    from fastadv.runtime.fileio import atomic_write_bytes

    old = os.umask(mask)
    try:
        atomic_write_bytes(tmp_path / "f.bin", b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "f.bin").stat().st_mode) == mode


def test_run_files_are_not_0600(trained):
    for name in ("checkpoint.pt", "config.toml", "eval/eval.json", "eval/predictions/clean.csv"):
        assert stat.S_IMODE((trained["run"] / name).stat().st_mode) & 0o044, name


# 6: max_steps compresses the schedule, and says so
def test_max_steps_help_says_the_schedule_is_compressed(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    assert "train.max_steps" in text and "compresses the whole cosine" in text


# 7-12: one line, exit 2, nothing changed
def test_non_utf8_csvs_are_one_line_errors(tmp_path, capsys):
    preds = tmp_path / "model.csv"
    preds.write_bytes("file_name,predicted_class,predicted_probability,true_class\nk\xe4se.JPEG,1,0.5,1\n".encode("latin-1"))
    before = preds.read_bytes()
    assert main(["metrics", "--predictions", str(preds), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert one_line_error(err) and "UTF-8" in err and preds.read_bytes() == before
    from fastadv.errors import FastadvError
    from fastadv.analysis.scoring import _labels_from_csv

    labels = tmp_path / "labels.csv"
    labels.write_bytes("file_name,true_class\nk\xe4se.JPEG,1\n".encode("latin-1"))
    with pytest.raises(FastadvError, match="UTF-8"):
        _labels_from_csv(str(labels))


def test_disk_full_while_saving_keeps_the_checkpoint(trained, tmp_path, monkeypatch, capsys):
    import fastadv.runtime.fileio as fileio

    run = copy_run(trained, tmp_path)
    before = (run / "checkpoint.pt").read_bytes()
    real_fdopen = fileio.os.fdopen

    class Full:
        def __init__(self, f):
            self.f, self.written = f, 0

        def write(self, data):
            self.written += len(data)
            if self.written > 2**20:
                raise OSError(errno.ENOSPC, "No space left on device")
            return self.f.write(data)

        def __getattr__(self, name):
            return getattr(self.f, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    monkeypatch.setattr(fileio.os, "fdopen", lambda fd, mode, **kw: Full(real_fdopen(fd, mode, **kw)) if "b" in mode
                        else real_fdopen(fd, mode, **kw))
    assert main(["train", "--resume", "--out", str(run), "optim.epochs=2", "train.progress=false"]) == 2
    err = capsys.readouterr().err
    assert one_line_error(err) and "no space left" in err and "MiB" in err and "intact" in err
    assert (run / "checkpoint.pt").read_bytes() == before
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("command", [["train", "--recipe", "demo-adv"], ["eval", "RUN"], ["report", "RUN"],
                                     ["metrics", "--predictions", "RUN"]])
def test_out_pointing_at_a_file_is_refused(trained, tmp_path, capsys, command):
    target = tmp_path / "notes.txt"
    target.write_text("my notes")
    args = [str(trained["run"]) if a == "RUN" else a for a in command]
    assert main([*args, "--out", str(target)]) == 2
    err = capsys.readouterr().err
    assert one_line_error(err) and "existing file" in err and target.read_text() == "my notes"


def test_init_accepts_a_run_folder(trained):
    from fastadv.models.weights import read_file

    state = read_file(str(trained["run"]))
    assert state["format"] == "fastadv-checkpoint" and state["model"]


def test_refused_checkpoint_does_not_advise_an_unsafe_load(tmp_path, capsys):
    import torch

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    torch.save({"format": "fastadv-checkpoint", "x": Evil()}, tmp_path / "checkpoint.pt")
    before = (tmp_path / "checkpoint.pt").read_bytes()
    assert main(["eval", str(tmp_path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert one_line_error(err) and "weights_only" not in err and "would run code" in err and "system" in err
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_flat_folder_without_split_is_refused(tmp_path, capsys):
    from tests.test_cli import make_folder_dataset

    make_folder_dataset(tmp_path / "d")
    flat = tmp_path / "flat"
    shutil.move(str(tmp_path / "d" / "train"), flat)
    assert main(["train", "--recipe", "demo-adv", "--data", str(flat), "--out", str(tmp_path / "run"),
                 "data.backend=folder", "model.num_classes=3", *TINY]) == 2
    err = capsys.readouterr().err
    assert one_line_error(err) and "data.same_split=true" in err and not (tmp_path / "run" / "checkpoint.pt").exists()


# 13: config errors before torch is imported
def test_config_error_before_torch_import():
    code = ("import sys\nfrom fastadv.cli import main\nrc = main(['train', '--recipe', 'demo-adv', 'optim.epoch=2'])\n"
            "print('torch' in sys.modules)\nsys.exit(rc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "optim.epoch" in done.stderr
    assert done.stdout.strip() == "False"


# 14: summaries; `fastadv metrics` prints a table, not JSON
def test_train_and_eval_print_a_summary(trained, tmp_path, capsys):
    out = trained["train"].stdout
    assert "training finished" in out and "final loss" in out and "images/s" in out and "wall time" in out
    assert str(trained["run"] / "checkpoint.pt") in out
    ev = trained["eval"].stdout
    assert "setting" in ev and "accuracy" in ev and "clean" in ev and "pgd2" in ev
    assert main(["metrics", "--predictions", str(trained["run"]), "--out", str(tmp_path / "r")]) == 0
    table = capsys.readouterr().out
    assert "clean err" in table and "demo-adv-plus" in table and not table.lstrip().startswith("{")


# 15: Ctrl-C says how to resume
def test_ctrl_c_prints_the_resume_command(trained, tmp_path, monkeypatch, capsys):
    import fastadv.train

    run = copy_run(trained, tmp_path)

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(fastadv.train, "train", interrupted)
    assert main(["train", "--resume", "--out", str(run), "optim.epochs=2"]) == 130
    assert f"fastadv train --resume --out {run}" in capsys.readouterr().err


# 16: no carriage returns in a log file
def test_progress_in_a_log_is_plain_lines(trained):
    err = trained["train"].stderr
    assert "\r" not in err and "demo-adv-plus: 2/2 steps (100%)" in err


# 17: the report
def test_report_counts_skipped_images_and_states_its_formula(trained, tmp_path):
    from fastadv.analysis.figures import data_ylim

    assert main(["report", str(trained["run"]), "--out", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    assert "skipped images: none" in md and "(after - before) / before" in md and "name=NAME" in md
    lo, hi = data_ylim([40.0, 60.0])
    assert 35 <= lo < 40 and 60 < hi <= 65


# 18: --version, recipes, log names
def test_version_recipes_and_log_names(trained, capsys):
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip().startswith("fastadv 0.")
    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines and all(len(line.split(None, 1)) == 2 for line in lines)
    record = next(json.loads(s) for s in (trained["run"] / "train.jsonl").read_text().splitlines()
                  if json.loads(s)["event"] == "train")
    assert {"clean_acc", "trained_batch_acc", "adv_batch_acc"} <= set(record) and "train_acc" not in record


# 19: setup
def test_heavy_backends_are_optional_extras():
    import tomllib

    core = (ROOT / "requirements.txt").read_text()
    assert "nvidia-dali" not in core and "ffcv==" not in core
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "dali" in extras and "ffcv" in extras
    makefile = (ROOT / "Makefile").read_text()
    assert "pip install -q" not in makefile and "EXTRAS" in makefile


def test_make_train_reuses_a_finished_run(trained, tmp_path):
    runs = tmp_path / "runs"
    copy_run(trained, runs, "demo-adv-plus")
    before = (runs / "demo-adv-plus" / "checkpoint.pt").read_bytes()
    bin_dir = Path(sys.executable).parent
    done = subprocess.run(["make", "-C", str(ROOT), "-o", "install", "train-adv-plus", f"RUNS={runs}",
                           f"BIN={bin_dir}", f"VENV={bin_dir.parent}"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "finished run, reused" in done.stdout and "already evaluated" in done.stdout
    assert (runs / "demo-adv-plus" / "checkpoint.pt").read_bytes() == before


# 20: the README's demo numbers name their CPU
def test_readme_demo_numbers_name_the_cpu():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Measured: the demo")[1].split("\n## ")[0]
    assert "AMD EPYC" in section
