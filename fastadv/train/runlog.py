"""The run's JSONL log: one JSON object per line, appended and flushed line by line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


# The methods' batch statistics, named in the log for what they measure: both are taken in train
# mode on the step's own forward pass, so for adv / adv-plus (every input attacked) they are equal.
LOG_NAMES = {
    "train_acc": "trained_batch_acc",  # accuracy on the inputs the step trained on (adversarial for adv/adv-plus)
    "adv_acc": "adv_batch_acc",  # accuracy on the step's adversarial inputs
}


def log_names(scalars: dict[str, Any]) -> dict[str, Any]:
    """Rename the methods' stats for the log (see LOG_NAMES); clean_acc is measured apart, in eval mode."""
    return {LOG_NAMES.get(k, k): v for k, v in scalars.items()}


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
