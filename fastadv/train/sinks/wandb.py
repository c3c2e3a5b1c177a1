"""Weights & Biases (extra `wandb`): an offline run in <run>/wandb (`wandb sync` uploads it later)."""

from __future__ import annotations

import wandb

from fastadv.train.sinks import Sink, displayable, scalars


class WandbSink(Sink):
    def __init__(self, out_dir, cfg) -> None:
        super().__init__(out_dir, cfg)
        self.run = None

    def start(self, config) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(mode="offline", dir=str(self.out_dir), project="fastadv", name=self.cfg.name,
                              config=config)

    def write(self, record) -> None:
        event = record.get("event")
        if self.run is None or event not in ("train", "validation"):
            return
        values = {f"{event}/{k}": v for k, v in scalars(record).items() if k != "step"}
        self.run.log(values, step=int(record.get("step", 0)))

    def images(self, step, grid) -> None:
        if self.run is not None:
            self.run.log({f"validation/{k}": [wandb.Image(x.permute(1, 2, 0).numpy())
                                                for x in displayable(k, v)] for k, v in grid.items()}, step=step)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
