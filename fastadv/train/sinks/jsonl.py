"""The run's own log, train.jsonl (fastadv.train.runlog): every record, one JSON line each."""

from __future__ import annotations

from fastadv.train.runlog import JsonlLog
from fastadv.train.sinks import Sink


class JsonlSink(Sink):
    def __init__(self, out_dir, cfg) -> None:
        super().__init__(out_dir, cfg)
        self.log = JsonlLog(self.out_dir / "train.jsonl")

    def write(self, record) -> None:
        self.log.write(record)
