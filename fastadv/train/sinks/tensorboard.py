"""TensorBoard event files in <run>/tensorboard (`tensorboard --logdir runs`): the train and validation
scalars, a clean / adversarial / perturbation image grid at each validation, the config as hparams."""

from __future__ import annotations

from torch.utils.tensorboard import SummaryWriter
from torch.utils.tensorboard.summary import hparams

from fastadv.train.sinks import Sink, displayable, flat_config, scalars

GROUPS = {"train": "train", "validation": "validation", "epoch_end": "epoch"}


class TensorBoardSink(Sink):
    def __init__(self, out_dir, cfg) -> None:
        super().__init__(out_dir, cfg)
        self.writer = SummaryWriter(log_dir=str(self.out_dir / "tensorboard"))

    def start(self, config) -> None:
        params = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in flat_config(config).items()}
        # written into this run's own event file (add_hparams would open a sub-run folder)
        for summary in hparams(params, {"validation/robust_acc": 0.0}):
            self.writer.file_writer.add_summary(summary)

    def write(self, record) -> None:
        group = GROUPS.get(record.get("event", ""))
        if group is None:
            return
        step = int(record.get("step", 0))
        for key, value in scalars(record).items():
            if key != "step":
                self.writer.add_scalar(f"{group}/{key}", value, step)
        self.writer.flush()

    def images(self, step, grid) -> None:
        for name, x in grid.items():
            self.writer.add_images(f"validation/{name}", displayable(name, x), step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
