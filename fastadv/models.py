"""build_model(): a torchvision classifier with Normalize inside and a K+M output head.

Inputs are images in [0, 1]; the first module normalizes them, so attacks and their eps
live in pixel units. The head has K class logits plus M label-augmentation logits; the
first K rows come from the pretrained classifier, the M extra rows start at zero.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

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
    """Normalize -> torchvision network; logits over K classes + M augmentation labels."""

    def __init__(self, net: nn.Module, normalize: Normalize, num_classes: int, num_aux: int) -> None:
        super().__init__()
        self.normalize = normalize
        self.net = net
        self.num_classes = num_classes
        self.num_aux = num_aux

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.normalize(x))


def _classifier_names() -> list[str]:
    return sorted(torchvision.models.list_models(module=torchvision.models))


def _pretrained_state(arch: str) -> dict[str, torch.Tensor]:
    """torchvision's default weights for `arch`, read from the local hub cache only (no download)."""
    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, AttributeError) as exc:
        raise FastadvError(f"torchvision has no pretrained weights for {arch!r}; set model.pretrained=false") from exc
    filename = Path(weights.url).name
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not cached.is_file():
        raise FastadvError(
            f"pretrained weights for {arch} ({weights}) are not available offline: expected {cached}. "
            f"Download {weights.url} on a machine with internet and copy it there (or set TORCH_HOME), "
            f"pass --init /path/to/{filename}, or train from scratch with model.pretrained=false"
        )
    return torch.load(cached, map_location="cpu", weights_only=True)


def _init_state(path: str) -> dict[str, torch.Tensor]:
    """Backbone weights from a file: a plain torchvision state dict or a fastadv checkpoint."""
    p = Path(path)
    if p.is_dir() and (p / "checkpoint.pt").is_file():  # a run folder: its checkpoint
        p = p / "checkpoint.pt"
    if not p.is_file():
        raise FastadvError(f"model.init={path!r} does not exist; pass a .pth state dict, a fastadv checkpoint or "
                           "a run folder holding checkpoint.pt")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, truncated files, non-torch files
        from fastadv.checkpoint import refusal_reason

        raise FastadvError(f"model.init={path!r} could not be read as a torch state dict: {refusal_reason(exc)}") from None
    if isinstance(obj, dict) and obj.get("format") == "fastadv-checkpoint":
        obj = {k.removeprefix("net."): v for k, v in obj["model"].items() if k.startswith("net.")}
    elif isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise FastadvError(f"model.init={path!r} is not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _load_backbone(net: nn.Module, state: dict[str, torch.Tensor], source: str, num_classes: int, num_aux: int) -> None:
    """Load weights; the K+M head takes the first K rows of a matching classifier, M rows zero."""
    fc: nn.Linear = net.fc
    head_w, head_b = state.pop("fc.weight", None), state.pop("fc.bias", None)
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise FastadvError(f"weights from {source} do not fit model.arch: {str(exc).splitlines()[1:3]}") from exc
    missing = [k for k in missing if not k.startswith("fc.")]
    if missing or unexpected:
        raise FastadvError(
            f"weights from {source} do not fit this architecture: missing {missing[:5]}, unexpected {unexpected[:5]} "
            f"(check model.arch)"
        )
    with torch.no_grad():
        if head_w is not None and head_w.shape[0] >= num_classes and head_w.shape[1] == fc.in_features:
            fc.weight[:num_classes].copy_(head_w[:num_classes])
            if head_b is not None:
                fc.bias[:num_classes].copy_(head_b[:num_classes])
        fc.weight[num_classes:].zero_()
        fc.bias[num_classes:].zero_()


def build_model(cfg: ModelConfig) -> RobustClassifier:
    """A torchvision network (fc-headed, e.g. ResNets) with Normalize first and K+M outputs."""
    if cfg.arch not in _classifier_names():
        raise FastadvError(f"model.arch={cfg.arch!r} is not a torchvision classification model (e.g. resnet50, resnet18)")
    net = torchvision.models.get_model(cfg.arch, weights=None)
    if not isinstance(getattr(net, "fc", None), nn.Linear):
        raise FastadvError(f"model.arch={cfg.arch!r} has no `fc` classifier; use a ResNet-style torchvision model")
    out = cfg.num_classes + cfg.num_aux
    net.fc = nn.Linear(net.fc.in_features, out)
    with torch.no_grad():
        net.fc.weight[cfg.num_classes:].zero_()
        net.fc.bias[cfg.num_classes:].zero_()
    if cfg.init:
        _load_backbone(net, _init_state(cfg.init), cfg.init, cfg.num_classes, cfg.num_aux)
    elif cfg.pretrained:
        _load_backbone(net, _pretrained_state(cfg.arch), f"torchvision {cfg.arch} weights", cfg.num_classes, cfg.num_aux)
    return RobustClassifier(net, Normalize(cfg.mean, cfg.std), cfg.num_classes, cfg.num_aux)


def predict_k(logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Predictions use the first K logits only, everywhere (clean, corrupted, adversarial)."""
    return logits[:, :num_classes].argmax(dim=1)
