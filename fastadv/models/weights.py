"""Weights from the field, mapped onto fastadv's network: every format the field publishes.

Sources (model.weights / model.init): a torchvision weights enum name (local hub cache only),
"timm" (timm's pretrained download), or a local file in one of these layouts:
- plain / torchvision state dict, optionally under "state_dict" or "model", optional "module." prefix
- timm: .pth (plain, or a CheckpointSaver train checkpoint's "state_dict"; its "state_dict_ema" with
  model.weights_ema=true) and .safetensors
- MadryLab robustness: {"model": {"module.model.*", "module.normalizer.*", "module.attacker.*"}}
- RobustBench model zoo: {"normalize.mean", "normalize.std", "model.*"} (inputs in [0, 1], the
  normalization inside the file); optional "state_dict" wrapper and "module." prefix
- a fastadv checkpoint ("net.*", "normalize.*")
Files carrying their own normalization (robustness, RobustBench, fastadv) set the model's
Normalize to it. Every load is weights_only (fastadv.torchfile; safetensors for .safetensors); a
shape mismatch is refused naming the first bad key; missing / unexpected keys are refused in one
line; a classifier that does not fit is refused (check_head) unless model.replace_head=true.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from fastadv.models import torchfile
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
    num_aux: int | None = None  # M of the file's head, where the file says (fastadv checkpoints)


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
    return torchfile.load(p, "weights")  # weights_only + timm's args Namespace; bad files named in words


def _tensor_dict(obj) -> bool:
    return isinstance(obj, dict) and bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in state.items()}


def unwrap(obj, source: str, net_keys: set[str], ema: bool = False) -> LoadedWeights:
    """Find the network's state dict in `obj` and map its keys to the bare network's.

    ema (model.weights_ema): the file's weight average instead of its raw weights: timm's
    state_dict_ema (CheckpointSaver with --model-ema) or a fastadv checkpoint's eval_model."""
    if isinstance(obj, dict) and obj.get("format") == "fastadv-checkpoint":
        if ema and not obj.get("eval_model"):
            raise FastadvError(f"model.weights_ema=true but {source} has no weight average (its run had no "
                               f"optim.ema_decay / FAWA); set model.weights_ema=false")
        state = obj.get("eval_model") or obj["model"]
        mean, std = state.get("normalize.mean"), state.get("normalize.std")
        file_aux = (obj.get("config") or {}).get("model", {}).get("num_aux")
        return LoadedWeights({k[4:]: v for k, v in state.items() if k.startswith("net.")}, source, "fastadv",
                             *_norm(mean, std), num_aux=file_aux)
    layout = "plain"
    if ema:
        if not (isinstance(obj, dict) and _tensor_dict(obj.get("state_dict_ema"))):
            keys = list(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
            raise FastadvError(f"model.weights_ema=true but {source} has no state_dict_ema (found {keys}); timm's "
                               f"CheckpointSaver writes one when trained with --model-ema. Set model.weights_ema=false")
        obj, layout = obj["state_dict_ema"], "timm-checkpoint EMA"
    elif not _tensor_dict(obj) and isinstance(obj, dict):
        for key in ("state_dict", "model", "model_state_dict", "state_dict_ema"):
            if _tensor_dict(obj.get(key)):
                layout = {"state_dict": "timm-checkpoint", "model": "robustness",
                          "state_dict_ema": "timm-checkpoint EMA"}.get(key, "plain")
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
    return torchfile.load(cached, "torchvision weights")


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


def load_into(net: nn.Module, loaded: LoadedWeights, head_path: str, num_classes: int, num_aux: int = 0,
              replace_head: bool = False) -> None:
    """Load `loaded` into `net`: every tensor must fit, the classifier included (check_head).

    The head takes the first K rows of the file's classifier; the M extra rows stay zero. With
    replace_head (model.replace_head=true) the file's classifier is not loaded: the network keeps
    its new random head, and one line on stdout says so."""
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
    file_shape = "none" if head_w is None else str(tuple(head_w.shape))
    if replace_head:
        announce(f"model.replace_head=true: the classifier {head_path}.weight of {loaded.source} ({file_shape}) is not "
                 f"loaded; this model trains a new random ({head.out_features}, {head.in_features}) head")
    else:
        check_head(loaded, head_path, head_w, head_b, head, num_classes, num_aux)
    net.load_state_dict(state, strict=False)
    with torch.no_grad():
        if not replace_head:
            head.weight[:num_classes].copy_(head_w[:num_classes])
            if head.bias is not None:
                head.bias[:num_classes].copy_(head_b[:num_classes])
        head.weight[num_classes:].zero_()
        if head.bias is not None:
            head.bias[num_classes:].zero_()
    log.info("loaded %s (%s layout): %d tensors, 0 missing, 0 unexpected; classifier %s", loaded.source,
             loaded.layout, len(state), "replaced" if replace_head else f"first {num_classes} of {file_shape} rows")


def check_head(loaded: LoadedWeights, head_path: str, head_w, head_b, head: nn.Linear, num_classes: int,
               num_aux: int) -> None:
    """The file's classifier fits: width = the head's input width, K rows (+ up to the model's M, or the
    file's own M where it says), a bias where the model has one. Anything else is refused: loading
    part of it, or a random head in its place, would evaluate a model nobody trained."""
    width, k = head.in_features, num_classes
    rows_ok = {k + m for m in range(num_aux + 1)} | ({k + loaded.num_aux} if loaded.num_aux else set())
    fits = (head_w is not None and head_w.ndim == 2 and head_w.shape[1] == width and head_w.shape[0] in rows_ok
            and (head.bias is None or (head_b is not None and tuple(head_b.shape) == (head_w.shape[0],))))
    if fits:
        return
    wanted = f"({k}, {width})" + (f" or up to ({k + num_aux}, {width}) with the M={num_aux} extra logits" if num_aux else "")
    found = "none" if head_w is None else str(tuple(head_w.shape))
    if head_w is not None and head.bias is not None and (head_b is None or head_b.shape[0] != head_w.shape[0]):
        found += f" with bias {None if head_b is None else tuple(head_b.shape)}"
    more = (f"; if its extra rows are label-augmentation logits set model.num_aux={head_w.shape[0] - k}"
            if head_w is not None and head_w.ndim == 2 and head_w.shape[0] > k + num_aux and head_w.shape[1] == width else "")
    raise FastadvError(
        f"the classifier of {loaded.source} does not fit this model: {head_path}.weight is {found} in the file, "
        f"model.num_classes={k} needs {wanted}{more}; to start a new classifier on purpose (e.g. fine-tuning on "
        f"other classes) set model.replace_head=true (check model.arch / model.num_classes otherwise)")


def announce(line: str) -> None:
    """One visible line on stdout (rank 0 only under torchrun): things the user must not miss."""
    if os.environ.get("RANK", "0") == "0":
        print(line, flush=True)
