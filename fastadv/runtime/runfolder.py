"""The run folder a user trusts with days of GPU time: one writer at a time, never silently replaced.

A run folder holds config.toml (the configuration, also inside every checkpoint),
checkpoint.pt, train.jsonl, dataset.json (the training data's fingerprint), eval/ and
report/, and `.fastadv.lock` while a process works in it. This module decides what may
happen to it: `RunLock` (one process at a time; a lock left by a killed process is noticed
and taken over), `prepare_fresh` (a folder holding a run is refused, or moved aside with
--overwrite, never deleted), `resume_config` (resume takes the saved configuration; only
RESUMABLE fields may change, and the changes are listed) and the dataset fingerprint check.
It imports no torch: the CLI validates all of this before the first heavy import.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import logging
import os
import socket
import sys
from pathlib import Path
from typing import Any

from fastadv.config import Config, apply_override, from_dict, validate
from fastadv.errors import FastadvError
from fastadv.runtime.fileio import atomic_write_text

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

log = logging.getLogger("fastadv")

LOCK_NAME = ".fastadv.lock"
CONFIG_NAME = "config.toml"
DATASET_NAME = "dataset.json"
RUN_FILES = ("checkpoint.pt", "best.pt", "train.jsonl", CONFIG_NAME, DATASET_NAME, "eval", "report")

# Fields a resume may change: how long to train, where the (moved) data lives, and how the run
# is executed or logged. Everything else would silently change what the checkpoint was trained on.
RESUMABLE = ("optim.epochs", "train.max_steps", "data.path", "data.ffcv_train", "data.ffcv_val", "data.workers",
             "data.timeout", "data.eval_batch_size", "train.device", "train.compile", "train.compile_mode",
             "train.progress", "train.log_every", "train.checkpoint_every", "train.dist_timeout_s",
             "train.auto_resume", "train.loggers", "eval.")

# Config fields holding file system paths: stored absolute so resume and eval work from any directory.
PATH_FIELDS = ("data.path", "data.ffcv_train", "data.ffcv_val", "model.init", "eval.real_labels",
               "eval.imagenet_c", "eval.imagenet_c_cache")


# ------------------------------------------------------------------------------ the lock
class RunLock:
    """An exclusive flock on <folder>/.fastadv.lock, held while a process trains or evaluates there.

    The kernel drops a flock when its process ends, however it ends (kill -9 included), so a
    lock is never stuck; the file's text (pid, host, command) is cleared on a normal release,
    so text found in an unlocked file means its writer was killed: that is reported.
    """

    def __init__(self, folder: str | os.PathLike, command: str) -> None:
        self.folder, self.command = Path(folder), command
        self.path = self.folder / LOCK_NAME
        self.fd: int | None = None
        self.stale: str = ""  # the text of a lock left by a killed process, if one was taken over
        self.created = False  # the folder did not exist before acquire()

    def acquire(self) -> RunLock:
        self.created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                if exc.errno in (errno.EAGAIN, errno.EACCES):
                    raise FastadvError(f"{self.folder} is in use ({holder}); wait for it to finish, or use another "
                                       f"folder") from None
                raise
            try:  # the holder we waited for may have unlinked the file on release: lock the file now there
                if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
                    break
            except FileNotFoundError:
                pass
            os.close(fd)
        self.stale = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip()
        if self.stale:
            old = self.stale.split(" on ")[0]
            log.warning("%s: taking over a stale lock: %s ended without releasing it (%s)",
                        self.folder, old, self.stale)
        when = datetime.datetime.now().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}: fastadv {self.command} since {when}\n".encode(), 0)
        self.fd = fd
        return self

    def release(self) -> None:
        """Unlock and remove the lock file (and the folder, when this lock created it and it stayed empty):
        a command refused before it wrote anything leaves nothing behind."""
        if self.fd is None:
            return
        os.ftruncate(self.fd, 0)
        self.path.unlink(missing_ok=True)  # while still locked: a waiting process re-checks the inode
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None
        if self.created:
            try:
                self.folder.rmdir()
            except OSError:  # not empty: the command wrote something
                pass

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def is_main_process() -> bool:
    """Rank 0 under torchrun (or no torchrun): the one process that locks and writes the run folder."""
    return os.environ.get("RANK", "0") == "0"


class NoLock:
    """Stands in for RunLock on the other torchrun ranks (rank 0 holds the folder for all)."""

    stale = ""

    def __enter__(self) -> NoLock:
        return self

    def __exit__(self, *exc: object) -> None:
        pass


def lock(folder: str | os.PathLike, command: str) -> RunLock | NoLock:
    return RunLock(folder, command) if is_main_process() else NoLock()


# ------------------------------------------------------------------------------ fresh runs
def holds_run(folder: Path) -> list[str]:
    """The run files `folder` already holds (empty: nothing would be overwritten)."""
    return [name for name in RUN_FILES if (folder / name).exists()]


def check_out_path(path: str | None, flag: str = "--out") -> None:
    """An output folder must not be an existing file."""
    if path and Path(path).expanduser().exists() and not Path(path).expanduser().is_dir():
        raise FastadvError(f"{flag} {path} is an existing file, not a folder; pass a folder path (it is created)")


# What training writes before its first checkpoint: without a checkpoint (and no eval/report) these
# are the leftovers of an interrupted start, not a run; the same command starts again over them.
STARTUP_FILES = ("train.jsonl", CONFIG_NAME, DATASET_NAME)


def unstarted_leftovers(folder: Path) -> list[str]:
    """The files an interrupted start left when no checkpoint was written (empty: a run, or nothing)."""
    found = holds_run(folder)
    return found if found and set(found) <= set(STARTUP_FILES) else []


def prepare_fresh(folder: Path, overwrite: bool) -> Path | None:
    """Refuse to train into a folder holding a run, or (overwrite) move its run aside; returns where to."""
    from fastadv.runtime.hints import command

    leftovers = unstarted_leftovers(folder)
    if leftovers:
        for name in leftovers:
            (folder / name).unlink()
        print(f"{folder}: an earlier start was stopped before its first checkpoint; starting again "
              f"(removed {', '.join(leftovers)})")
        return None
    found = holds_run(folder)
    if not found:
        return None
    if not overwrite:
        raise FastadvError(
            f"{folder} already holds a run ({', '.join(found)}); continue it with `{command('train', '--resume', '--out', folder)}`, "
            f"or start over with --overwrite (make: FORCE=1; the old run is moved aside, nothing is deleted), "
            f"or choose another --out")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    aside = folder.with_name(f"{folder.name}.old-{stamp}")
    n = 1
    while aside.exists():
        aside, n = folder.with_name(f"{folder.name}.old-{stamp}-{n}"), n + 1
    aside.mkdir()
    for entry in folder.iterdir():
        if entry.name != LOCK_NAME:
            entry.rename(aside / entry.name)
    return aside


# ------------------------------------------------------------------------------ paths
def absolute_paths(cfg: Config) -> None:
    """Store every path field absolute (in place): the saved config then works from any directory."""
    for key in PATH_FIELDS:
        section, name = key.split(".")
        obj = getattr(cfg, section)
        value = getattr(obj, name)
        if value and not (key == "eval.imagenet_c" and value == "generate"):
            setattr(obj, name, str(Path(value).expanduser().absolute()))


# ------------------------------------------------------------------------------ resume
def saved_config(folder: Path) -> Config:
    """The configuration saved in a run folder (config.toml, written when training starts)."""
    path = folder / CONFIG_NAME
    if not path.is_file():
        raise FastadvError(f"{folder} has no {CONFIG_NAME}: it is not a fastadv run folder (or it was never "
                           f"trained); start a run with --recipe and --out {folder}")
    try:
        return from_dict(tomllib.loads(path.read_text(encoding="utf-8")))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise FastadvError(f"{path} is not a readable TOML config ({exc}); restore it from the checkpoint's "
                           f"copy or start a new run") from None


def _flat(cfg: Config) -> dict[str, Any]:
    out: dict[str, Any] = {"name": cfg.name}
    for section, values in cfg.to_dict().items():
        if isinstance(values, dict):
            out.update({f"{section}.{k}": v for k, v in values.items()})
    return out


def config_changes(before: Config, after: Config) -> dict[str, tuple[Any, Any]]:
    a, b = _flat(before), _flat(after)
    return {k: (a[k], b[k]) for k in a if a[k] != b[k]}


def resumable(key: str) -> bool:
    return any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESUMABLE)


def resume_config(folder: Path, overrides: list[str]) -> tuple[Config, dict[str, tuple[Any, Any]]]:
    """The saved config of `folder` with `overrides` applied; refuses a change outside RESUMABLE."""
    saved = saved_config(folder)
    cfg = from_dict(saved.to_dict())
    for item in overrides:
        apply_override(cfg, item)
    absolute_paths(cfg)
    cfg.train.out_dir = saved.train.out_dir  # compared apart: the folder may have moved
    changes = config_changes(saved, cfg)
    refused = [k for k in changes if not resumable(k)]
    if refused:
        listed = ", ".join(f"{k} ({changes[k][0]!r} -> {changes[k][1]!r})" for k in refused)
        raise FastadvError(
            f"cannot resume {folder} with a different {listed}: it changes what the checkpoint was trained on. "
            f"Resume may change only {', '.join(r.rstrip('.') + ('.*' if r.endswith('.') else '') for r in RESUMABLE)}; "
            f"to train differently start a new run (--out elsewhere, --init {folder} to start from its weights)")
    cfg.train.out_dir = str(folder)
    validate(cfg)
    return cfg, changes


def describe_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    if not changes:
        return "resuming with the saved configuration unchanged"
    lines = [f"  {k}: {old!r} -> {new!r}" for k, (old, new) in changes.items()]
    note = ""
    if {"optim.epochs", "train.max_steps"} & set(changes):
        note = "\n  (the cosine learning-rate schedule follows the new length from the resumed step on)"
    return "resuming with the saved configuration, changed:\n" + "\n".join(lines) + note


def save_config(folder: Path, text: str) -> None:
    atomic_write_text(folder / CONFIG_NAME, text)


# ------------------------------------------------------------------------------ dataset fingerprint
def dataset_fingerprint(dataset: Any) -> dict[str, Any]:
    """What identifies the training data: its class list and image count."""
    return {"classes": [str(c) for c in dataset.classes], "images": len(dataset)}


def check_dataset(source: Path, out: Path, found: dict[str, Any], resuming: bool, allow_new: bool) -> None:
    """On resume, refuse other data than the run was trained on (unless allow_new); record it in `out`."""
    path = source / DATASET_NAME
    if resuming and path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        diffs = []
        if saved.get("images") != found["images"]:
            diffs.append(f"{found['images']} training images, the run was trained on {saved.get('images')}")
        if saved.get("classes") != found["classes"]:
            diffs.append(f"{len(found['classes'])} classes {found['classes'][:3]}..., the run had "
                         f"{len(saved.get('classes') or [])} {(saved.get('classes') or [])[:3]}...")
        if diffs and not allow_new:
            raise FastadvError(f"the training data differs from the one {source} was trained on ("
                               + "; ".join(diffs) + "): check data.path, or pass --allow-new-dataset to continue "
                               "on this data anyway")
    if is_main_process():
        atomic_write_text(out / DATASET_NAME, json.dumps(found, indent=1) + "\n")

