"""Per-batch results of a long evaluation setting (AutoAttack: GPU-hours on ImageNet), so a killed
`fastadv eval` resumes where it stopped: <out>/partial/<key>.rank<r>.jsonl, one JSON line per batch.

Each batch's RNG is seeded from (eval.seed, batch number) (distributed.BatchShard), so a batch
computed after a resume equals the one an uninterrupted run computes, and the finished CSV is
identical. The first line fingerprints the setting and the request; a file from another setting,
checkpoint or config is ignored (and replaced), never mixed in. Any rank reads every rank's file,
so a resume with another number of ranks reuses the done batches too.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from fastadv.runtime import distributed


class ResumeFile:
    def __init__(self, folder: Path, key: str, fingerprint: dict[str, Any]) -> None:
        self.folder, self.key = folder, key
        self.fingerprint = json.loads(json.dumps(fingerprint, default=str))
        self.path = folder / f"{key.replace('/', '_')}.rank{distributed.rank_info().rank}.jsonl"
        self._file = None

    def load(self) -> dict[int, dict[str, Any]]:
        """Batches done by any rank with the same fingerprint: {batch number: its rows}."""
        done: dict[int, dict[str, Any]] = {}
        for path in sorted(self.folder.glob(f"{self.key.replace('/', '_')}.rank*.jsonl")):
            lines = path.read_text().splitlines()
            if not lines or _loads(lines[0]) != {"fingerprint": self.fingerprint}:
                continue
            for line in lines[1:]:
                item = _loads(line)  # a line cut short by the kill is skipped (that batch runs again)
                if isinstance(item, dict) and "batch" in item:
                    done[int(item["batch"])] = item["rows"]
        if self.path.is_file():  # keep what this rank had, then append
            kept = [p for p in (self.path.read_text().splitlines()[1:]) if isinstance(_loads(p), dict)]
            same = _loads(self.path.read_text().splitlines()[0]) == {"fingerprint": self.fingerprint}
        else:
            kept, same = [], False
        self.folder.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "w", encoding="utf-8")
        self._file.write(json.dumps({"fingerprint": self.fingerprint}) + "\n")
        for line in kept if same else []:
            self._file.write(line + "\n")
        self._file.flush()
        return done

    def add(self, batch: int, rows: dict[str, Any]) -> None:
        self._file.write(json.dumps({"batch": batch, "rows": rows}) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def finish(self) -> None:
        """The setting's CSV is written: the per-batch file is no longer needed."""
        if self._file is not None:
            self._file.close()
        self.path.unlink(missing_ok=True)


def _loads(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None


class DoneMarker:
    """A finished setting's eval.json entry and rows, kept in <out>/partial/<key>.done.json until eval.json
    is written: an interrupted `fastadv eval` reruns only the settings it had not finished."""

    def __init__(self, folder: Path, key: str, fingerprint: dict[str, Any]) -> None:
        self.fingerprint = json.loads(json.dumps(fingerprint, default=str))
        self.path = folder / f"{key.replace('/', '_')}.done.json"

    def load(self) -> tuple[dict[str, Any], dict[str, Any]] | None:
        """(entry, rows) of the same setting and request finished before, or None."""
        try:
            saved = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(saved, dict) or saved.get("fingerprint") != self.fingerprint:
            return None
        return saved["entry"], saved["rows"]

    def save(self, entry: dict[str, Any], rows: dict[str, Any]) -> None:
        from fastadv.runtime.fileio import atomic_write_text

        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps({"fingerprint": self.fingerprint, "entry": entry, "rows": rows}))


def done_marker(out: Path, setting, cfg, checkpoint: str, request: dict[str, Any]) -> DoneMarker:
    return DoneMarker(Path(out) / "partial", setting.key, _fingerprint(setting, cfg, checkpoint, request))


def resume_file(out: Path, setting, cfg, checkpoint: str, request: dict[str, Any]) -> ResumeFile:
    return ResumeFile(Path(out) / "partial", setting.key, _fingerprint(setting, cfg, checkpoint, request))


def _fingerprint(setting, cfg, checkpoint: str, request: dict[str, Any]) -> dict[str, Any]:
    """request: evaluate.request_of(cfg), passed in (this module sits below evaluate.py)."""
    from fastadv.eval.scoring_rule import SCORING_RULE

    e = cfg.eval
    return {"key": setting.key, "checkpoint": [checkpoint, os.stat(checkpoint).st_mtime_ns], "info": setting.info(), "request": request, "seed": e.seed,
                   "batch_size": e.batch_size or cfg.data.eval_batch_size, "model": cfg.model.__dict__,
            "scoring_rule": SCORING_RULE}  # batches scored under an older rule are attacked again
