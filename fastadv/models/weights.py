"""Weights from the field, mapped onto fastadv's network: every format the field publishes.

Sources (model.weights / model.init): a torchvision weights enum name (local hub cache only),
"timm" (timm's pretrained download), or a local file in one of these layouts:
- plain / torchvision state dict, optionally under "state_dict" or "model", optional "module." prefix
- timm: .pth (plain, or a train checkpoint's "state_dict") and .safetensors
- MadryLab robustness: {"model": {"module.model.*", "module.normalizer.*", "module.attacker.*"}}
- RobustBench model zoo: {"normalize.mean", "normalize.std", "model.*"} (inputs in [0, 1], the
  normalization inside the file); optional "state_dict" wrapper and "module." prefix
- a fastadv checkpoint ("net.*", "normalize.*")
Files carrying their own normalization (robustness, RobustBench, fastadv) set the model's
Normalize to it. Every load is weights_only (safetensors for .safetensors); a shape mismatch
is refused naming the first bad key; missing / unexpected keys are refused in one line.
"""

from __future__ import annotations

import logging
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from fastadv.errors import FastadvError

log = logging.getLogger("fastadv")

NORMALIZER_KEYS = {  # format -> (mean key, std key) after the "module." prefix is gone
    "robustness": ("normalizer.new_mean", "normalizer.new_std"),
    "robustbench": ("normalize.mean", "normalize.std"),
    "fastadv": ("normalize.mean", "normalize.std"),
}


@dataclass
class LoadedWeights:
    state: dict[str, torch.Tensor]  # keys of the bare network (as RobustClassifier.net has them)
    source: str  # what the user named, for messages
    layout: str  # plain | robustness | robustbench | fastadv | timm-checkpoint | safetensors
    mean: tuple[float, ...] | None = None  # the file's own input normalization, if it carries one
    std: tuple[float, ...] | None = None


def _unsafe_pickle(path: Path, exc: Exception) -> FastadvError:
    return FastadvError(
        f"refused to load {path}: it is a pickle that needs more than tensors to load ({exc}). Such a file can run "
        f"code when loaded, so fastadv does not open it. Convert it to a plain state dict or .safetensors in an "
        f"environment you trust (the code that wrote it), then pass that file")


def read_file(path: str | Path) -> dict:
    """The raw object in a weights file: safetensors, or torch.load(weights_only=True)."""
    p = Path(path).expanduser()
    if p.is_dir() and (p / "checkpoint.pt").is_file():  # a run folder: its checkpoint
        p = p / "checkpoint.pt"
    if not p.is_file():
        raise FastadvError(f"weights file {path!r} does not exist; pass the path of a .pth / .pt / .safetensors file "
                           "or a run folder holding checkpoint.pt")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p), device="cpu")
        except (SafetensorError, OSError, ValueError) as exc:
            raise FastadvError(f"{path} could not be read as .safetensors: {exc}") from exc
    try:
        return torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(exc))
        if found:
            raise _unsafe_pickle(p, f"it references {found.group(1)}") from None
        raise FastadvError(f"{path} could not be read as a torch state dict (not a torch file, or truncated)") from None
    except Exception as exc:  # truncated files, non-torch files
        raise FastadvError(f"{path} could not be read as a torch state dict: {exc}") from exc


def _tensor_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items()}


def unwrap(obj, source: str, net_keys: set[str]) -> LoadedWeights:
    """Find the network's state dict in `obj` and map its keys to the bare network's."""
    if isinstance(obj, dict) and obj.get("format") == "fastadv-checkpoint":
        state = obj.get("eval_model") or obj["model"]
        mean, std = state.get("normalize.mean"), state.get("normalize.std")
        return LoadedWeights({k[4:]: v for k, v in state.items() if k.startswith("net.")}, source, "fastadv",
                             *_norm(mean, std))
    layout = "plain"
    if not _tensor_dict(obj) and isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict", "state_dict_ema"):
            if _tensor_dict(obj.get(key)):
                layout = {"state_dict": "timm-checkpoint", "model": "robustness"}.get(key, "plain")
                obj = obj[key]
                break
    if not _tensor_dict(obj):
        keys = list(obj)[:6] if isinstance(obj, dict) else type(obj).__name__
        raise FastadvError(f"{source} holds no state dict of tensors (found {keys}); pass a state dict, a timm / "
                           f"torchvision / robustness / RobustBench checkpoint or a .safetensors file")
    state = dict(obj)
    while state and all(k.startswith("module.") for k in state):
        state = _strip(state, "module.")
    mean = std = None
    if any(k.startswith("normalizer.") for k in state) or any(k.startswith("attacker.") for k in state):
        layout = "robustness"
        mean, std = state.get("normalizer.new_mean"), state.get("normalizer.new_std")
        state = {k[6:]: v for k, v in state.items() if k.startswith("model.")}
    elif "normalize.mean" in state or _prefixed_fits(state, "model.", net_keys):
        layout = "robustbench" if "normalize.mean" in state else layout
        mean, std = state.get("normalize.mean"), state.get("normalize.std")
        state = {k[6:]: v for k, v in state.items() if k.startswith("model.")}
    if layout == "robustness" and mean is None:
        layout = "plain"
    return LoadedWeights(state, source, layout, *_norm(mean, std))


def _prefixed_fits(state: dict[str, torch.Tensor], prefix: str, net_keys: set[str]) -> bool:
    """Every key carries `prefix` and stripping it matches the network better than not."""
    if not all(k.startswith(prefix) for k in state):
        return False
    stripped = {k[len(prefix):] for k in state}
    return len(stripped & net_keys) > len(set(state) & net_keys)


def _norm(mean, std) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
    if mean is None or std is None:
        return None, None
    return tuple(float(v) for v in mean.flatten()), tuple(float(v) for v in std.flatten())


def torchvision_weights_state(name: str) -> tuple[dict[str, torch.Tensor], str]:
    """A torchvision weights enum (e.g. ResNet50_Weights.IMAGENET1K_V2 or an arch's DEFAULT), from the
    local torch hub cache only: fastadv never downloads at run time."""
    try:
        weights = torchvision.models.get_weight(name)
    except (ValueError, KeyError, AttributeError) as exc:
        raise FastadvError(f"model.weights={name!r} is not a torchvision weights name (e.g. ResNet50_Weights.IMAGENET1K_V2), "
                           f"'timm', or an existing file") from exc
    return _cached(weights), str(weights)


def default_weights_state(arch: str) -> tuple[dict[str, torch.Tensor], str]:
    """torchvision's DEFAULT weights of `arch` (model.pretrained=true), local hub cache only."""
    try:
        weights = torchvision.models.get_model_weights(arch).DEFAULT
    except (ValueError, AttributeError) as exc:
        raise FastadvError(f"torchvision has no pretrained weights for {arch!r}; set model.pretrained=false") from exc
    return _cached(weights), f"torchvision {arch} weights"


def _cached(weights) -> dict[str, torch.Tensor]:
    filename = Path(weights.url).name
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    if not cached.is_file():
        raise FastadvError(
            f"pretrained weights {weights} are not available offline: expected {cached}. "
            f"Download {weights.url} on a machine with internet and copy it there (or set TORCH_HOME), "
            f"pass --init /path/to/{filename}, or train from scratch with model.pretrained=false"
        )
    return torch.load(cached, map_location="cpu", weights_only=True)


def timm_pretrained_state(name: str) -> dict[str, torch.Tensor]:
    """timm's own pretrained weights (downloads through huggingface_hub: needs network or its cache)."""
    import timm

    try:
        net = timm.create_model(name, pretrained=True)
    except Exception as exc:  # network errors come in many types (OSError, httpx, hub errors)
        raise FastadvError(f"timm could not fetch pretrained weights for {name!r} ({type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:160] if str(exc) else ''}); without network download the "
                           f"file elsewhere and pass it as model.weights=/path/to/file.safetensors") from None
    return net.state_dict()


def load_into(net: nn.Module, loaded: LoadedWeights, head_path: str, num_classes: int) -> None:
    """Load `loaded` into `net`; the head takes the first K rows of a fitting classifier, M rows stay zero."""
    state = dict(loaded.state)
    head = net.get_submodule(head_path)
    head_w, head_b = state.pop(f"{head_path}.weight", None), state.pop(f"{head_path}.bias", None)
    own = net.state_dict()
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            raise FastadvError(
                f"weights from {loaded.source} do not fit this architecture: first mismatch {key}: file "
                f"{tuple(value.shape)}, model {tuple(own[key].shape)} (check model.arch / model.kwargs)")
    missing = [k for k in own if k not in state and not k.startswith(f"{head_path}.")]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        raise FastadvError(
            f"weights from {loaded.source} ({loaded.layout} layout) do not fit this architecture: "
            f"{len(missing)} missing {missing[:4]}, {len(unexpected)} unexpected {unexpected[:4]} (check model.arch)")
    net.load_state_dict(state, strict=False)
    head_note = "head: random init (file has none that fits)"
    with torch.no_grad():
        if head_w is not None and head_w.shape[0] >= num_classes and head_w.shape[1] == head.in_features:
            head.weight[:num_classes].copy_(head_w[:num_classes])
            if head_b is not None and head.bias is not None:
                head.bias[:num_classes].copy_(head_b[:num_classes])
            head_note = f"head: first {num_classes} of the file's {head_w.shape[0]} rows"
        head.weight[num_classes:].zero_()
        if head.bias is not None:
            head.bias[num_classes:].zero_()
    log.info("loaded %s (%s layout): %d tensors, 0 missing, 0 unexpected; %s", loaded.source, loaded.layout,
             len(state), head_note)
