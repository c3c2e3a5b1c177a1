"""Training: the loop (loop.py), what a checkpoint holds (state.py), the learning-rate schedule
(schedule.py), the JSONL run log (runlog.py) and the one optimizer step shared with the
benchmark (step.py). Each piece is testable alone; `train(cfg)` runs them together.
"""

from fastadv.train.loop import Trainer, train
from fastadv.train.runlog import JsonlLog
from fastadv.train.schedule import cosine_lr
from fastadv.train.state import Progress, TrainState, rng_state, set_rng_state
from fastadv.train.step import train_step

__all__ = ["JsonlLog", "Progress", "TrainState", "Trainer", "cosine_lr", "rng_state", "set_rng_state", "train",
           "train_step"]
