"""Log sinks: where the trainer's records go (train.loggers). One file per sink, one small interface
(`Sink`), one line to register another:

    register_sink(SinkSpec("mysink", "fastadv.train.sinks.mysink:MySink", package="mypkg", extra="mysink"))

The trainer builds the sinks before any work (a sink whose package is missing is one line naming
the extra to install) and only rank 0 writes (under torchrun the others get no sinks).
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastadv.errors import FastadvError


class Sink:
    """The interface: `start` once with the resolved config, `write` every log record (train, validation,
    epoch_end, ...), `images` at each validation (clean / adversarial / perturbation batches), `close` at the end."""

    def __init__(self, out_dir: Path, cfg: Any) -> None:
        self.out_dir, self.cfg = Path(out_dir), cfg

    def start(self, config: dict[str, Any]) -> None:
        pass

    def write(self, record: dict[str, Any]) -> None:
        pass

    def images(self, step: int, grid: dict[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass(frozen=True)
class SinkSpec:
    name: str
    target: str  # "module:Class", imported only when the sink is used
    package: str = ""  # the import name it needs ("" = none)
    extra: str = ""  # pip extra that installs it ("" = in the default install)

    def check(self) -> None:
        if self.package and importlib.util.find_spec(self.package) is None:
            how = f"pip install 'fastadv[{self.extra}]'" if self.extra else f"pip install {self.package}"
            raise FastadvError(f"train.loggers: {self.name} needs the {self.package} package, which is not "
                               f"installed: {how} (or drop {self.name} from train.loggers)")


_SINKS: dict[str, SinkSpec] = {}


def register_sink(spec: SinkSpec) -> SinkSpec:
    _SINKS[spec.name] = spec
    return spec


def sink_names() -> list[str]:
    return list(_SINKS)


def check_loggers(names: list[str]) -> list[SinkSpec]:
    """The specs of train.loggers, refused (one line) when a name is unknown or its package missing."""
    specs = []
    for name in names:
        if name not in _SINKS:
            raise FastadvError(f"train.loggers: unknown logger {name!r}; known: {', '.join(_SINKS)}")
        _SINKS[name].check()
        specs.append(_SINKS[name])
    return specs


def build_sinks(names: list[str], out_dir: Path, cfg: Any, enabled: bool = True) -> "Sinks":
    specs = check_loggers(names)
    if not enabled:  # not rank 0: checked (every rank fails alike) but nothing is written
        return Sinks([])
    built = []
    for spec in specs:
        module, _, cls = spec.target.partition(":")
        built.append(getattr(importlib.import_module(module), cls)(out_dir, cfg))
    return Sinks(built)


class Sinks:
    """Every sink of a run, called in turn."""

    def __init__(self, sinks: list[Sink]) -> None:
        self.sinks = sinks

    @property
    def wants_images(self) -> bool:
        return any(type(s).images is not Sink.images for s in self.sinks)

    def start(self, config: dict[str, Any]) -> None:
        for s in self.sinks:
            s.start(config)

    def write(self, record: dict[str, Any]) -> None:
        for s in self.sinks:
            s.write(record)

    def images(self, step: int, grid: dict[str, Any]) -> None:
        for s in self.sinks:
            s.images(step, grid)

    def close(self) -> None:
        for s in self.sinks:
            s.close()


def scalars(record: dict[str, Any]) -> dict[str, float]:
    """The record's numbers (bools and lists left out), for the trackers."""
    return {k: float(v) for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def displayable(name: str, x: Any) -> Any:
    """An image batch in [0, 1]; the perturbation scaled from [-max, max] to [0, 1] (mid-grey = unchanged)."""
    x = x.float()
    if name == "perturbation":
        x = x / (2 * max(float(x.abs().max()), 1e-12)) + 0.5
    return x.clamp(0, 1)


def flat_config(config: dict[str, Any]) -> dict[str, Any]:
    """{"train.seed": 0, ...}: the resolved config as hyperparameters (lists joined as text)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in flat_config(value).items()})
        else:
            out[key] = ",".join(map(str, value)) if isinstance(value, (list, tuple)) else value
    return out


register_sink(SinkSpec("jsonl", "fastadv.train.sinks.jsonl:JsonlSink"))
register_sink(SinkSpec("tensorboard", "fastadv.train.sinks.tensorboard:TensorBoardSink", package="tensorboard"))
register_sink(SinkSpec("wandb", "fastadv.train.sinks.wandb:WandbSink", package="wandb", extra="wandb"))
register_sink(SinkSpec("mlflow", "fastadv.train.sinks.mlflow:MlflowSink", package="mlflow", extra="mlflow"))
