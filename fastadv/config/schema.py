"""Typed run configuration: the dataclass schema, `key=value` overrides, TOML output (loading: fastadv.config).

A recipe is a TOML file with one table per section below. Any field can be overridden on
the command line as `section.field=value` (floats accept fractions such as `4/255`).
"""

from __future__ import annotations

import dataclasses
import sys
import typing
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any

from fastadv.errors import FastadvError
from fastadv.runtime.hints import did_you_mean
from fastadv.config.eval_options import RobustnessOptions

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class ModelConfig:
    arch: str = "resnet50"  # any torchvision classifier (resnet50, convnext_tiny, vit_b_16) or timm:NAME
    num_classes: int = 1000  # K
    num_aux: int = 0  # M extra label-augmentation logits (Adv+ uses 1: the "adv" op)
    pretrained: bool = True  # the library's default weights (torchvision: local torch hub cache only)
    init: str = ""  # path to a state dict / fastadv checkpoint to start from instead
    # torchvision weights enum (ResNet50_Weights.IMAGENET1K_V2) | timm (download) | a file; see fastadv.models.weights
    weights: str = ""
    weights_ema: bool = False  # a checkpoint's EMA weights (timm state_dict_ema) instead of its state_dict
    # the weights file's classifier is not loaded: a new random head (K changes, e.g. fine-tuning ImageNet
    # weights on other classes); announced on stdout. Without it a classifier that does not fit is refused
    replace_head: bool = False
    # auto = the model's own mean/std (written into mean/std) | fixed = mean/std as given; a model.mean or
    # model.std given in the recipe or with --set is kept (and recorded as fixed)
    normalize: str = "auto"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    image_size: int = 0  # the size the network is built for (ViT position tables); 0 = data.image_size
    drop_path: float = 0.0  # stochastic depth rate (timm drop_path_rate / torchvision stochastic_depth_prob)
    kwargs: str = ""  # extra constructor arguments, TOML pairs: "depth = 2, embed_dim = 64"


@dataclass
class DataConfig:
    backend: str = "folder"  # auto (dali on a CUDA machine with DALI installed, else folder) | dali | ffcv | folder | demo
    path: str = ""  # dataset root holding train/ and val/ class folders
    train_dir: str = "train"
    val_dir: str = "val"
    same_split: bool = False  # data.path without train/ and val/: use its class folders for both (asked explicitly)
    image_size: int = 224  # train random-resized-crop size and val center-crop size
    val_resize: int = 256  # val: resize shorter side to this, then center crop
    # resize filter of the crops: auto (the model's own: timm pretrained_cfg / torchvision weights, written
    # back when the config loads) | bilinear | bicubic; ffcv always uses its own filter (docs/guides/models.md)
    interpolation: str = "auto"
    min_scale: float = 0.08  # RandomResizedCrop lower scale bound
    batch_size: int = 64  # per device, training
    eval_batch_size: int = 64
    workers: int = 4
    limit_train: int = 0  # use only the first N training images of a fixed shuffle (0 = all)
    limit_val: int = 0
    dali_device: str = "auto"  # dali decode: auto (mixed = nvJPEG on the GPU when the run is on CUDA) | cpu | gpu
    ffcv_train: str = ""  # .beton of the training split ("" = <path>/<train_dir>.beton)
    ffcv_val: str = ""  # .beton of the validation split ("" = <path>/<val_dir>.beton)
    timeout: float = 300.0  # seconds without a batch before the dali / ffcv loader raises (never hangs)


@dataclass
class AttackConfig:
    """The training attack (PGD l_inf in [0,1] pixel units)."""

    eps: float = 0.03
    alpha: float = 0.0  # 0 = eps / 4
    steps: int = 10
    random_start: bool = True
    head: str = "all"  # all = CE over K+M logits (paper) | k = CE over the K class logits
    temperature: float = 1.0  # Temperature-PGD: the attack's CE uses softmax(z / T); 1 = plain PGD
    model_mode: str = "eval"  # the model's mode while the training attack runs: eval (BatchNorm frozen) | train


@dataclass
class MethodConfig:
    name: str = "adv-plus"  # a registered method: `fastadv recipes` lists them (fastadv.methods.registry)
    delta: float = 0.03  # label-augmentation weight of the op label (adv-plus)
    op_index: int = 0  # which of the M op labels marks an adversarial example
    clean_fraction: float = 0.0  # share of each batch trained clean with the plain label
    beta: float = 6.0  # TRADES: weight of the KL robustness term
    trades_init_std: float = 0.001  # TRADES: the KL attack starts at x + N(0, std^2)
    trades_reference_forwards: bool = True  # TRADES: train-mode forwards x, x', x as its code (false: x, x' only)
    replays: int = 4  # Free AT: each minibatch is trained m times; the Trainer runs ceil(optim.epochs / m) epochs


@dataclass
class CfaConfig:
    """CFA (Wei et al. 2023): class-wise calibrated eps (CCM), beta (CCR), gated weight averaging (FAWA)."""

    ccm: bool = True  # eps_k = (lambda1 + t_k) * eps, t_k = last epoch's robust train accuracy of class k
    ccr: bool = True  # TRADES only: beta_k = (lambda2 + t_k) * beta, loss / (1 + beta_y)
    fawa: bool = True  # weight average, updated only when the worst class passes the gate
    lambda1: float = 0.5  # 0.5 for PGD-AT, 0.3 for TRADES (the recipes set it)
    lambda2: float = 0.5
    warmup_epochs: int = 1  # calibration starts after this many epochs (-1 = the preset's begin epoch)
    preset: str = "paper"  # FAWA threshold / decay (and begin epoch) when left at -1: paper 0.2/0.85, code 0.24/0.88/10
    fawa_threshold: float = -1.0  # worst-class PGD accuracy on the held-out split needed to update (-1 = preset)
    fawa_decay: float = -1.0  # theta_bar = decay * theta_bar + (1 - decay) * theta (-1 = preset)
    fawa_after_warmup: bool = False  # true: FAWA also waits for warmup_epochs (the reference starts when the gate passes)
    normalize_from_start: bool = True  # TRADES+CFA: loss / (1 + beta_y) from epoch 1 (reference); false: once CCR starts
    ccm_step: str = "fixed"  # CCM attack step: fixed (eps/4 of the base eps, reference) | scaled (with each eps_k)
    fawa_gate: bool = True  # false = plain EMA every epoch (no worst-class gate)
    fawa_steps: int = 10  # PGD steps of the gate's evaluation on the held-out split


@dataclass
class DafaConfig:
    """DAFA (Lee et al. 2024): class weights from the class-similarity matrix after a warm-up."""

    lam: float = 1.0  # lambda: 1.0 for 10 classes, 1.5 for CIFAR-100 / STL-10 (reference)
    warmup_epochs: int = 70  # the similarity matrix is taken during this epoch; weights apply after it


@dataclass
class OptimConfig:
    epochs: int = 10
    lr: float = 0.01
    min_lr_ratio: float = 1e-4  # cosine annealing ends at lr * min_lr_ratio
    momentum: float = 0.9
    weight_decay: float = 5e-5
    warmup_steps: int = 0
    warmup_epochs: float = 0.0  # linear warm-up length in epochs (used when warmup_steps = 0)
    name: str = "sgd"  # sgd | adamw (decoupled decay; none on norms, biases and other 1-d parameters)
    betas: tuple[float, float] = (0.9, 0.999)  # adamw
    clip_grad_norm: float = 0.0  # clip the global gradient norm to this (0 = off)
    ema_decay: float = 0.0  # EMA of the weights per step, evaluated instead of the raw weights (0 = off)
    label_smoothing: float = 0.0  # s in [0, 1): training CE target (1 - s) onehot + s / K; attacks never smooth


@dataclass
class TrainConfig:
    out_dir: str = "runs/run"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    # The precision policy (fastadv.runtime.precision, docs/guides/precision.md): auto (bf16 on CUDA and
    # on CPUs with native bf16, else fp32) | fp32 | bf16 | bf16-attack | bf16-update | bf16-lowp-input | fp16-scaled.
    # Was train.amp (auto | bf16 | fp16 | off); old configs are read with that mapping.
    precision: str = "auto"
    channels_last: bool = True
    compile: str = "auto"  # auto (on for CUDA, off on the CPU) | true | false
    compile_mode: str = "default"  # torch.compile mode: default | reduce-overhead (CUDA graphs) | max-autotune
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints (0 = epoch ends only)
    log_every: int = 20  # steps between JSONL log lines (clean batch accuracy is measured then)
    # Stop after this many optimizer steps in total (0 = all epochs). The cosine lr schedule is then
    # compressed into these steps (it reaches optim.min_lr_ratio at the last one), not cut off.
    max_steps: int = 0
    progress: bool = True
    holdout_per_class: float = 0.0  # fraction of each class held out of training as a validation split (FAWA)
    # Under torchrun (see docs/guides/multi-gpu.md): data.batch_size is per process, global batch = batch_size x world size.
    lr_scaling: str = "none"  # none | linear (optim.lr x world size) | sqrt (optim.lr x sqrt(world size))
    sync_batchnorm: bool = False  # BatchNorm statistics over the global batch (SyncBatchNorm; CUDA only)
    dist_timeout_s: float = 1800.0  # a collective waiting longer (a rank died or hangs) stops every rank with an error
    on_overfit: str = "auto"  # catastrophic-overfitting guard: auto (warn for single-step methods, else off) | off | warn | stop | rollback
    overfit_every: int = 0  # optimizer steps between guard checks (0 = once per epoch)
    overfit_images: int = 256  # the guard's fixed held-out batch (held-out split if any, else the val split)
    overfit_drop: float = 0.2  # fires when PGD accuracy falls by more than this since the last good check and FGSM's does not
    auto_resume: bool = False  # resume from out_dir's checkpoint when there is one (torchrun restarts always do)
    # Robust validation while training (docs/guides/watching.md): clean + PGD accuracy per class on fixed images.
    validate: str = "auto"  # auto (the held-out split when train.holdout_per_class > 0, else off) | holdout | val | off
    validate_every: int = 0  # optimizer steps between validations (0 = each epoch end)
    validate_images: int = 512  # the first N images of the validation split (0 = all of them)
    validate_subset: str = ""  # eval.subset syntax (e.g. per-class:10), applied before validate_images
    validate_steps: int = 10  # PGD steps (eps = eval.eps, K-class head, seed = eval.seed)
    best: str = "auto"  # best.pt criterion: auto (robust_acc when validation is on) | robust_acc | worst_class_robust_acc | off
    loggers: list[str] = field(default_factory=lambda: ["jsonl"])  # log sinks: jsonl | tensorboard | wandb | mlflow


@dataclass
class EvalConfig(RobustnessOptions):  # + subset, AutoAttack, masking checks, paper-code
    eps: float = 0.03
    steps: int = 40
    alpha: float = 0.0  # 0 = 2.5 * eps / steps
    random_start: bool = True
    # PGD settings: a sample stops being attacked once an iterate fools the K head (counted broken);
    # false = the last iterate (the convention). early_stop_compact also drops such samples from the
    # batch when fewer than half remain (one host sync per step: saves the forward passes).
    early_stop: bool = False
    early_stop_compact: bool = False
    batch_size: int = 0  # 0 = data.eval_batch_size
    seed: int = 0  # PGD random start and generated ImageNet-C noise
    # Precision of every evaluation forward pass and attack: fp32 on every device (train.amp does
    # not apply: runs trained in bf16 and fp32 are attacked alike) | bf16 (autocast; faster, opt-in).
    amp: str = "fp32"
    # ImageNet-C: "" = not evaluated (reported as skipped) | a released folder
    # <corruption>/<severity>/<wnid>/*.JPEG | "generate" (from the val images, cached as JPEG q85)
    imagenet_c: str = ""
    imagenet_c_cache: str = ""  # where "generate" writes ("" = ~/.cache/fastadv/imagenet-c/<key>)
    corruptions: str = "common"  # common (the 15 of mCE) | all (+ the 4 extra) | comma-separated names
    severities: str = "1,2,3,4,5"
    real_labels: str = ""  # ReaL label lists ("" = real.json shipped inside the imagenet-x package)
    temperatures: str = ""  # Temperature-PGD settings, e.g. "0.5,2" (K-class head, same eps/steps as PGD)


@dataclass
class Config:
    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    cfa: CfaConfig = field(default_factory=CfaConfig)
    dafa: DafaConfig = field(default_factory=DafaConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        # Dotted keys ("model.mean") the recipe or an override set; not a field: never saved or compared.
        self.given_keys: set[str] = set()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config) if f.name != "name"}

# ----------------------------------------------------------------------------- loading
def _section_classes() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {name: hints[name] for name in SECTIONS}


# Fields renamed since runs were first written: (section, old) -> (new field, old value -> new value).
# A run folder's config.toml from before the rename resumes and evaluates with the same meaning.
RENAMED: dict[tuple[str, str], tuple[str, dict[str, str]]] = {
    ("train", "amp"): ("precision", {"auto": "auto", "off": "fp32", "bf16": "bf16", "fp16": "fp16-scaled"}),
}


def _renamed_fields(section: str, table: dict[str, Any]) -> dict[str, Any]:
    """`table` with renamed fields (RENAMED) under their new names and values; the new name wins."""
    out = dict(table)
    for (sec, old), (new, values) in RENAMED.items():
        if sec == section and old in out:
            value = out.pop(old)
            out.setdefault(new, values.get(value, value) if isinstance(value, str) else value)
    return out


def from_dict(raw: dict[str, Any]) -> Config:
    """Build a Config from nested dicts (a recipe or a checkpoint's saved config)."""
    classes = _section_classes()
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key == "name":
            kwargs["name"] = str(value)
            continue
        if key not in classes:
            raise FastadvError(f"unknown config section [{key}]; known: {', '.join(classes)}")
        if not isinstance(value, dict):
            raise FastadvError(f"config section [{key}] must be a table, got {value!r}")
        cls = classes[key]
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(_renamed_fields(key, value)) - known)
        if unknown:
            raise FastadvError(
                f"unknown field(s) {', '.join(key + '.' + u for u in unknown)}"
                f"{did_you_mean(unknown[0], known) if len(unknown) == 1 else ''}; "
                f"[{key}] has: {', '.join(sorted(known))}"
            )
        value = _renamed_fields(key, value)
        hints = typing.get_type_hints(cls)
        kwargs[key] = cls(**{k: _coerce(f"{key}.{k}", v, hints[k]) for k, v in value.items()})
    cfg = Config(**kwargs)
    cfg.given_keys = {f"{section}.{k}" for section, v in raw.items() if isinstance(v, dict) for k in v}
    return cfg


def apply_override(cfg: Config, item: str) -> None:
    """Apply one `section.field=value` override in place."""
    if "=" not in item:
        raise FastadvError(f"override {item!r} must look like section.field=value, e.g. attack.eps=4/255")
    key, text = item.split("=", 1)
    if key == "name":
        cfg.name = text
        return
    if "." not in key:
        raise FastadvError(f"override key {key!r} must be section.field, e.g. optim.epochs=2")
    section, name = key.split(".", 1)
    if section not in SECTIONS:
        raise FastadvError(f"unknown config section {section!r} in {item!r}{did_you_mean(section, SECTIONS)}; "
                           f"known: {', '.join(SECTIONS)}")
    obj = getattr(cfg, section)
    if (section, name) in RENAMED:
        new, values = RENAMED[section, name]
        key, name, text = f"{section}.{new}", new, values.get(text, text)
    hints = typing.get_type_hints(type(obj))
    if name not in hints:
        raise FastadvError(
            f"unknown field {key!r}{did_you_mean(key, [f'{section}.{h}' for h in hints])}; "
            f"[{section}] has: {', '.join(sorted(hints))}"
        )
    setattr(obj, name, _coerce(key, _parse_text(text), hints[name]))
    cfg.given_keys.add(key)


def _parse_text(text: str) -> Any:
    """Parse an override value as a TOML value when possible, else keep the string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def _coerce(key: str, value: Any, typ: Any) -> Any:
    origin = typing.get_origin(typ)
    try:
        if typ is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            if isinstance(value, bool):
                return value
            raise ValueError
        if typ is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if typ is float:
            if isinstance(value, str):
                return float(Fraction(value.strip()))  # accepts "4/255"
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if typ is str:
            if isinstance(value, bool):
                return "true" if value else "false"
            return str(value)
        if origin is list:  # a TOML list, or comma-separated text on the command line
            items = [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else list(value)
            return [_coerce(key, v, typing.get_args(typ)[0]) for v in items]
        if origin is tuple:
            items = list(value) if not isinstance(value, str) else value.split(",")
            args = typing.get_args(typ)
            if len(items) != len(args):
                raise ValueError
            return tuple(_coerce(key, v, t) for v, t in zip(items, args))
    except (ValueError, TypeError, ZeroDivisionError):
        pass
    else:
        return value
    raise FastadvError(f"{key}={value!r} is not a valid {getattr(typ, '__name__', typ)}")


def to_toml(cfg: Config) -> str:
    """Write a config back as TOML (saved next to each run for the record)."""

    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, (tuple, list)):
            return "[" + ", ".join(fmt(x) for x in v) + "]"
        return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'

    lines = [f"name = {fmt(cfg.name)}"]
    for section in SECTIONS:
        lines.append(f"\n[{section}]")
        for key, value in dataclasses.asdict(getattr(cfg, section)).items():
            lines.append(f"{key} = {fmt(value)}")
    return "\n".join(lines) + "\n"
