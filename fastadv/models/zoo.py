"""Architectures by name: torchvision (`resnet50`) or timm (`timm:convnext_tiny`).

One place decides, per architecture: how the network is constructed (each library's own
constructor), where its classifier is and how it is replaced (timm's reset_classifier,
torchvision's last nn.Linear through its attribute path), which mean/std, input size and resize filter
it expects (timm's pretrained_cfg, torchvision's weights meta, else ImageNet defaults),
and whether channels_last helps (CNNs yes, transformers no).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import torch
import torchvision
from torch import nn

from fastadv.config.schema import ModelConfig
from fastadv.errors import FastadvError
from fastadv.runtime.hints import did_you_mean

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TIMM_PREFIX = "timm:"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# Attention models: channels_last gives them nothing (their tokens are [B, N, C] after the
# patch embedding) and costs a layout copy at the input; every other family is a CNN.
TRANSFORMER_FAMILIES = ("vit", "deit", "swin", "beit", "eva", "cait", "xcit", "maxvit", "mvit", "levit", "pit",
                        "twins", "crossvit", "flexivit", "coat", "tnt", "volo", "efficientformer", "davit")


@dataclass(frozen=True)
class Arch:
    library: str  # torchvision | timm
    name: str  # the library's model name

    @property
    def is_transformer(self) -> bool:
        base = self.name.split(".")[0].lower()
        return base.startswith(TRANSFORMER_FAMILIES)

    @property
    def channels_last(self) -> bool:
        """The one place that decides channels_last per family (bench/models.py shows why)."""
        return not self.is_transformer


def parse_arch(arch: str) -> Arch:
    if arch.startswith(TIMM_PREFIX):
        return Arch("timm", arch[len(TIMM_PREFIX):])
    return Arch("torchvision", arch)


def parse_kwargs(text: str) -> dict[str, Any]:
    """model.kwargs: extra constructor arguments as TOML `key = value` pairs, comma-separated."""
    if not text.strip():
        return {}
    try:
        return tomllib.loads(f"v = {{{text}}}")["v"]
    except tomllib.TOMLDecodeError as exc:
        raise FastadvError(f"model.kwargs={text!r} is not `key = value, ...` (TOML values, e.g. depth = 2): {exc}") from exc


@lru_cache(maxsize=None)
def _torchvision_names() -> frozenset[str]:
    return frozenset(torchvision.models.list_models(module=torchvision.models))


def _timm():
    try:
        import timm
    except ImportError as exc:  # pragma: no cover - timm is a dependency
        raise FastadvError("model.arch=timm:... needs timm: pip install timm (see requirements.txt)") from exc
    return timm


def check_arch(arch: str) -> Arch:
    a = parse_arch(arch)
    if a.library == "timm":
        timm = _timm()
        if not timm.is_model(a.name.split(".")[0]):
            raise FastadvError(f"model.arch={arch!r}: timm has no model {a.name!r} (see timm.list_models())")
    elif a.name not in _torchvision_names():
        raise FastadvError(f"model.arch={arch!r}{did_you_mean(a.name, _torchvision_names())} is not a torchvision "
                           f"classification model (e.g. resnet50, "
                           f"convnext_tiny, vit_b_16) nor a timm one (timm:NAME, e.g. timm:convnext_tiny)")
    return a


# ------------------------------------------------------------------ defaults of each model
@dataclass(frozen=True)
class ModelDefaults:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int
    interpolation: str
    source: str  # where the numbers come from


def model_defaults(arch: str) -> ModelDefaults:
    """Mean/std/input size/interpolation the model's own config states (no network access)."""
    a = check_arch(arch)
    if a.library == "timm":
        cfg = _timm().get_pretrained_cfg(a.name)
        if cfg is not None:
            return ModelDefaults(tuple(cfg.mean), tuple(cfg.std), int(cfg.input_size[-1]), cfg.interpolation,
                                 f"timm pretrained_cfg of {a.name}")
    else:
        try:
            weights = torchvision.models.get_model_weights(a.name).DEFAULT
        except (ValueError, AttributeError):
            weights = None
        if weights is not None:
            t = weights.transforms()
            return ModelDefaults(tuple(t.mean), tuple(t.std), int(t.crop_size[0]), t.interpolation.value,
                                 f"torchvision {weights}")
    return ModelDefaults(IMAGENET_MEAN, IMAGENET_STD, 224, "bilinear", "ImageNet defaults")


# ------------------------------------------------------------------ construction and head
def create_network(cfg: ModelConfig, num_outputs: int) -> tuple[nn.Module, Arch]:
    """The library's own constructor, random init, with `num_outputs` logits and drop-path."""
    a = check_arch(cfg.arch)
    kwargs = parse_kwargs(cfg.kwargs)
    fixed_size = cfg.image_size > 0
    try:
        if a.library == "timm":
            timm = _timm()
            pcfg = timm.get_pretrained_cfg(a.name)
            if fixed_size and pcfg is not None and pcfg.fixed_input_size:
                kwargs.setdefault("img_size", cfg.image_size)  # ViT/Swin position tables are built for one size
            if cfg.drop_path:
                kwargs.setdefault("drop_path_rate", cfg.drop_path)
            net = timm.create_model(a.name, pretrained=False, **kwargs)
        else:
            if fixed_size and a.name.startswith("vit_"):
                kwargs.setdefault("image_size", cfg.image_size)
            if cfg.drop_path:
                kwargs.setdefault("stochastic_depth_prob", cfg.drop_path)  # torchvision's name (ConvNeXt, Swin, ...)
            net = torchvision.models.get_model(a.name, weights=None, **kwargs)
    except TypeError as exc:
        raise FastadvError(f"model.arch={cfg.arch!r} does not take these arguments (model.kwargs / model.drop_path / "
                           f"model.image_size): {exc}") from exc
    replace_head(net, a, num_outputs)
    return net, a


def classifier_path(net: nn.Module, arch: Arch) -> str:
    """Attribute path of the final classifier Linear (e.g. fc, classifier.2, heads.head, head.fc)."""
    if arch.library == "timm":
        target = net.get_classifier()
        for name, module in net.named_modules():
            if module is target:
                return name
        raise FastadvError(f"timm model {arch.name} has no Linear classifier fastadv can extend with the M extra logits")
    last = None
    for name, module in net.named_modules():
        if isinstance(module, nn.Linear):
            last = name
    if last is None:
        raise FastadvError(f"torchvision model {arch.name} has no nn.Linear classifier (fastadv needs one for K+M logits)")
    return last


def replace_head(net: nn.Module, arch: Arch, num_outputs: int) -> str:
    """A fresh Linear head with num_outputs rows, through the library's own API; returns its path."""
    if arch.library == "timm":
        net.reset_classifier(num_outputs)
        path = classifier_path(net, arch)
        if not isinstance(net.get_submodule(path), nn.Linear):
            raise FastadvError(f"timm model {arch.name}'s classifier is not a Linear; fastadv needs one for K+M logits")
        return path
    path = classifier_path(net, arch)
    old: nn.Linear = net.get_submodule(path)
    parent_path, _, leaf = path.rpartition(".")
    parent = net.get_submodule(parent_path) if parent_path else net
    setattr(parent, leaf, nn.Linear(old.in_features, num_outputs, bias=old.bias is not None))
    return path


def zero_extra_rows(head: nn.Linear, num_classes: int) -> None:
    """The M label-augmentation rows start at zero."""
    with torch.no_grad():
        head.weight[num_classes:].zero_()
        if head.bias is not None:
            head.bias[num_classes:].zero_()


# What data.interpolation=auto becomes for each filter a model's config may name: the two the data
# backends implement; every other torchvision InterpolationMode / PIL filter maps to the nearest of them
# (lower-order filters to bilinear, lanczos to bicubic); unknown or missing names to bilinear.
SUPPORTED_INTERPOLATION = {"bilinear": "bilinear", "bicubic": "bicubic", "nearest": "bilinear",
                           "nearest-exact": "bilinear", "box": "bilinear", "hamming": "bilinear",
                           "lanczos": "bicubic"}


def supported_interpolation(name: str) -> str:
    return SUPPORTED_INTERPOLATION.get(str(name).lower(), "bilinear")


def resolve_model_config(cfg) -> None:
    """Fill what the model's own config decides, in place, so the run's config.toml records it:
    model.image_size (0 = data.image_size), model.mean/std for model.normalize=auto and
    data.interpolation=auto. Values the recipe or --set gave (cfg.given_keys) win: a given
    model.mean or model.std is kept and model.normalize recorded as "fixed". Called once, by
    load_config; a resumed run or an evaluation reads the saved, resolved values."""
    m, d, given = cfg.model, cfg.data, getattr(cfg, "given_keys", set())
    if m.image_size == 0:
        m.image_size = d.image_size
    if m.normalize != "auto" and d.interpolation != "auto":
        return
    defaults = model_defaults(m.arch)
    if m.normalize == "auto":
        if "model.mean" not in given:
            m.mean = tuple(float(v) for v in defaults.mean)
        if "model.std" not in given:
            m.std = tuple(float(v) for v in defaults.std)
        if {"model.mean", "model.std"} & given:
            m.normalize = "fixed"
    if d.interpolation == "auto":
        d.interpolation = supported_interpolation(defaults.interpolation)
