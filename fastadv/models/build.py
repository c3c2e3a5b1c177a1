"""build_model(): any torchvision or timm classifier with Normalize inside and a K+M output head.

Inputs are images in [0, 1]; the first module normalizes them with the model's own mean/std,
so attacks and their eps live in pixel units. The head has K class logits plus M
label-augmentation logits; the first K rows come from the loaded classifier, the M extra rows
start at zero. Architectures: fastadv.models.zoo; weight files and their layouts: fastadv.models.weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from fastadv.models import weights, zoo as model_zoo
from fastadv.config import ModelConfig
from fastadv.errors import FastadvError


class Normalize(nn.Module):
    """(x - mean) / std per channel, as buffers so they follow the model's device and dtype."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class RobustClassifier(nn.Module):
    """Normalize -> network; logits over K classes + M augmentation labels."""

    def __init__(self, net: nn.Module, normalize: Normalize, num_classes: int, num_aux: int,
                 head_path: str = "fc", channels_last: bool = True) -> None:
        super().__init__()
        self.normalize = normalize
        self.net = net
        self.num_classes = num_classes
        self.num_aux = num_aux
        self.head_path = head_path  # attribute path of the K+M Linear inside net
        self.channels_last = channels_last  # whether this family gains from channels_last (model_zoo decides)

    @property
    def head(self) -> nn.Linear:
        return self.net.get_submodule(self.head_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.channels_last:
            x = x.contiguous()  # transformers run NCHW (a no-op unless the caller passed channels_last)
        return self.net(self.normalize(x))


def _weights_source(cfg: ModelConfig) -> tuple[str, str] | None:
    """(kind, value) of the weights to load: init > weights > pretrained."""
    if cfg.init:
        return "file", cfg.init
    w = cfg.weights.strip()
    if w == "timm":
        return "timm", w
    if w:
        if Path(w).expanduser().is_file() or "/" in w or w.endswith((".pth", ".pt", ".safetensors", ".ckpt", ".bin")):
            return "file", w
        return "torchvision-enum", w
    if cfg.pretrained:
        return ("timm", "timm") if cfg.arch.startswith(model_zoo.TIMM_PREFIX) else ("torchvision-default", cfg.arch)
    return None


def _read_source(kind: str, value: str, arch: model_zoo.Arch, net_keys: set[str],
                 ema: bool = False) -> weights.LoadedWeights:
    if kind == "file":
        return weights.unwrap(weights.read_file(value), value, net_keys, ema)
    if ema:
        raise FastadvError(f"model.weights_ema=true reads a checkpoint file's EMA weights; {value!r} is not a file")
    if kind == "timm":
        if arch.library != "timm":
            raise FastadvError(f"model.weights=timm needs a timm architecture (model.arch=timm:NAME), not {arch.name!r}")
        return weights.LoadedWeights(weights.timm_pretrained_state(arch.name), f"timm {arch.name} pretrained", "timm")
    if kind == "torchvision-enum":
        state, name = weights.torchvision_weights_state(value)
        return weights.LoadedWeights(state, name, "torchvision")
    state, name = weights.default_weights_state(arch.name)
    return weights.LoadedWeights(state, name, "torchvision")


def build_model(cfg: ModelConfig) -> RobustClassifier:
    """Network by name (model_zoo), weights (fastadv.models.weights), Normalize first, K+M outputs.

    A weights file that carries its own input normalization (robustness, RobustBench) sets
    model.mean/std (written back to cfg, with cfg.normalize = "fixed", so the run records it).
    """
    if cfg.normalize == "auto":
        d = model_zoo.model_defaults(cfg.arch)
        cfg.mean, cfg.std = tuple(float(v) for v in d.mean), tuple(float(v) for v in d.std)
    net, arch = model_zoo.create_network(cfg, cfg.num_classes + cfg.num_aux)
    head_path = model_zoo.classifier_path(net, arch)
    model_zoo.zero_extra_rows(net.get_submodule(head_path), cfg.num_classes)
    source = _weights_source(cfg)
    if source is not None:
        loaded = _read_source(*source, arch, set(net.state_dict()), cfg.weights_ema)
        weights.load_into(net, loaded, head_path, cfg.num_classes, cfg.num_aux, cfg.replace_head)
        if loaded.mean is not None:
            cfg.mean, cfg.std, cfg.normalize = loaded.mean, loaded.std, "fixed"
    return RobustClassifier(net, Normalize(cfg.mean, cfg.std), cfg.num_classes, cfg.num_aux, head_path,
                            arch.channels_last)


def predict_k(logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Predictions use the first K logits only, everywhere (clean, corrupted, adversarial)."""
    return logits[:, :num_classes].argmax(dim=1)
