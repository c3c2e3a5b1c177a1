"""The run's JSONL log: one JSON object per line, appended and flushed line by line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class JsonlLog:
    """Append-only JSON lines; every line is flushed so a killed run keeps its log."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path, self.enabled = path, enabled  # enabled on rank 0 only
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
