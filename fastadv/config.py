"""Typed run configuration: dataclasses, TOML recipes, `key=value` overrides, validation.

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

from fastadv.attacks import HEADS
from fastadv.errors import FastadvError
from fastadv.eval_options import RobustnessOptions
from fastadv.methods.registry import method_spec
from fastadv.recipe_files import read_recipe, recipe_descriptions, recipe_names  # noqa: F401 (re-exported)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


@dataclass
class ModelConfig:
    arch: str = "resnet50"  # any torchvision classification model with an `fc` head
    num_classes: int = 1000  # K
    num_aux: int = 0  # M extra label-augmentation logits (Adv+ uses 1: the "adv" op)
    pretrained: bool = True  # torchvision's default weights, from the local torch hub cache
    init: str = ""  # path to a state dict / fastadv checkpoint to start from instead
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)


@dataclass
class DataConfig:
    backend: str = "folder"  # auto (dali on a CUDA machine with DALI installed, else folder) | dali | ffcv | folder | demo
    path: str = ""  # dataset root holding train/ and val/ class folders
    train_dir: str = "train"
    val_dir: str = "val"
    image_size: int = 224  # train random-resized-crop size and val center-crop size
    val_resize: int = 256  # val: resize shorter side to this, then center crop
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


@dataclass
class MethodConfig:
    name: str = "adv-plus"  # a registered method: `fastadv recipes` lists them (fastadv.methods.registry)
    delta: float = 0.03  # label-augmentation weight of the op label (adv-plus)
    op_index: int = 0  # which of the M op labels marks an adversarial example
    clean_fraction: float = 0.0  # share of each batch trained clean with the plain label
    beta: float = 6.0  # TRADES: weight of the KL robustness term
    trades_init_std: float = 0.001  # TRADES: the KL attack starts at x + N(0, std^2)


@dataclass
class CfaConfig:
    """CFA (Wei et al. 2023): class-wise calibrated eps (CCM), beta (CCR), gated weight averaging (FAWA)."""

    ccm: bool = True  # eps_k = (lambda1 + t_k) * eps, t_k = last epoch's robust train accuracy of class k
    ccr: bool = True  # TRADES only: beta_k = (lambda2 + t_k) * beta, loss / (1 + beta_y)
    fawa: bool = True  # weight average, updated only when the worst class passes the gate
    lambda1: float = 0.5  # 0.5 for PGD-AT, 0.3 for TRADES (the recipes set it)
    lambda2: float = 0.5
    warmup_epochs: int = 1  # calibration and averaging start after this many epochs
    fawa_threshold: float = 0.2  # worst-class PGD accuracy on the held-out split needed to update
    fawa_decay: float = 0.85  # theta_bar = decay * theta_bar + (1 - decay) * theta
    fawa_gate: bool = True  # false = plain EMA every epoch (no worst-class gate)
    fawa_steps: int = 10  # PGD steps of the gate's evaluation on the held-out split


@dataclass
class OptimConfig:
    epochs: int = 10
    lr: float = 0.01
    min_lr_ratio: float = 1e-4  # cosine annealing ends at lr * min_lr_ratio
    momentum: float = 0.9
    weight_decay: float = 5e-5
    warmup_steps: int = 0


@dataclass
class TrainConfig:
    out_dir: str = "runs/run"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: str = "auto"  # auto (bf16 on CUDA, off on CPU) | bf16 | fp16 | off
    channels_last: bool = True
    compile: str = "auto"  # auto (on for CUDA, off on the CPU) | true | false
    compile_mode: str = "default"  # torch.compile mode: default | reduce-overhead (CUDA graphs) | max-autotune
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints (0 = epoch ends only)
    log_every: int = 20  # steps between JSONL log lines (clean batch accuracy is measured then)
    max_steps: int = 0  # stop after this many optimizer steps in total (0 = all epochs)
    progress: bool = True
    holdout_per_class: float = 0.0  # fraction of each class held out of training as a validation split (FAWA)
    # Under torchrun (see README, Multi-GPU): data.batch_size is per process, global batch = batch_size x world size.
    lr_scaling: str = "none"  # none | linear (optim.lr x world size) | sqrt (optim.lr x sqrt(world size))
    sync_batchnorm: bool = False  # BatchNorm statistics over the global batch (SyncBatchNorm; CUDA only)
    dist_timeout_s: float = 1800.0  # a collective waiting longer (a rank died or hangs) stops every rank with an error
    auto_resume: bool = False  # resume from out_dir's checkpoint when there is one (torchrun restarts always do)


@dataclass
class EvalConfig(RobustnessOptions):  # + subset, AutoAttack, masking checks, paper-code
    eps: float = 0.03
    steps: int = 40
    alpha: float = 0.0  # 0 = 2.5 * eps / steps
    random_start: bool = True
    batch_size: int = 0  # 0 = data.eval_batch_size
    seed: int = 0  # PGD random start and generated ImageNet-C noise
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
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config) if f.name != "name"}
BACKENDS = ("auto", "dali", "ffcv", "folder", "demo")
DALI_DEVICES = ("auto", "cpu", "gpu")
AMP_MODES = ("auto", "bf16", "fp16", "off")
COMPILE_CHOICES = ("auto", "true", "false")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
LR_SCALING = ("none", "linear", "sqrt")


# ----------------------------------------------------------------------------- loading
def _section_classes() -> dict[str, type]:
    hints = typing.get_type_hints(Config)
    return {name: hints[name] for name in SECTIONS}


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
        unknown = sorted(set(value) - known)
        if unknown:
            raise FastadvError(
                f"unknown field(s) {', '.join(key + '.' + u for u in unknown)}; "
                f"[{key}] has: {', '.join(sorted(known))}"
            )
        hints = typing.get_type_hints(cls)
        kwargs[key] = cls(**{k: _coerce(f"{key}.{k}", v, hints[k]) for k, v in value.items()})
    return Config(**kwargs)


def load_config(recipe: str, overrides: list[str] | None = None) -> Config:
    """Recipe (shipped name or .toml path, its `base =` chain merged in) plus `section.field=value` overrides, validated."""
    cfg = from_dict(read_recipe(recipe))
    for item in overrides or []:
        apply_override(cfg, item)
    validate(cfg)
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
        raise FastadvError(f"unknown config section {section!r} in {item!r}; known: {', '.join(SECTIONS)}")
    obj = getattr(cfg, section)
    hints = typing.get_type_hints(type(obj))
    if name not in hints:
        raise FastadvError(
            f"unknown field {key!r}; [{section}] has: {', '.join(sorted(hints))}"
        )
    setattr(obj, name, _coerce(key, _parse_text(text), hints[name]))


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


# -------------------------------------------------------------------------- validation
def check_eps(key: str, eps: float) -> None:
    """eps lives in [0, 1] pixel units; 8 almost always means 8/255."""
    if eps > 1:
        raise FastadvError(
            f"{key}={eps:g} is outside (0, 1]: eps is in [0, 1] pixel units. "
            f"Did you mean {eps:g}/255 = {eps / 255:.4f}? Write {key}={eps:g}/255"
        )
    if eps <= 0:
        raise FastadvError(f"{key}={eps:g} must be in (0, 1], e.g. 0.03 or 4/255")


def parse_temperatures(text: str) -> list[float]:
    """eval.temperatures: comma-separated positive numbers ("" = none)."""
    try:
        values = [float(Fraction(t.strip())) for t in text.split(",") if t.strip()]
    except (ValueError, ZeroDivisionError):
        values = [-1.0]
    if any(v <= 0 for v in values):
        raise FastadvError(f"eval.temperatures={text!r} must be comma-separated numbers > 0, e.g. 0.5,2")
    return values


def _choice(key: str, value: str, options: tuple[str, ...]) -> None:
    if value not in options:
        raise FastadvError(f"{key}={value!r} is not one of: {', '.join(options)}")


def validate(cfg: Config) -> None:
    """Reject bad values before anything runs, naming the field and the fix."""
    m, d, a, me, o, t, e = cfg.model, cfg.data, cfg.attack, cfg.method, cfg.optim, cfg.train, cfg.eval
    spec = method_spec(me.name)
    _choice("data.backend", d.backend, BACKENDS)
    _choice("train.amp", t.amp, AMP_MODES)
    _choice("train.compile", t.compile, COMPILE_CHOICES)
    _choice("train.compile_mode", t.compile_mode, COMPILE_MODES)
    _choice("attack.head", a.head, tuple(HEADS))
    if spec.adversarial:
        check_eps("attack.eps", a.eps)
    check_eps("eval.eps", e.eps)
    from fastadv.eval_options import validate_robustness_options  # AutoAttack, masking checks, paper-code

    validate_robustness_options(e)
    parse_temperatures(e.temperatures)
    for key, steps in (("attack.steps", a.steps), ("eval.steps", e.steps)):
        if steps < 1:
            raise FastadvError(f"{key}={steps} must be >= 1")
    for key, alpha in (("attack.alpha", a.alpha), ("eval.alpha", e.alpha)):
        if alpha < 0:
            raise FastadvError(f"{key}={alpha:g} must be > 0 (or 0 for the default step size)")
    if not 0 <= me.delta < 1:
        raise FastadvError(f"method.delta={me.delta:g} must be in [0, 1), e.g. 0.03")
    if not 0 <= me.clean_fraction <= 1:
        raise FastadvError(f"method.clean_fraction={me.clean_fraction:g} must be in [0, 1]")
    if a.temperature <= 0:
        raise FastadvError(f"attack.temperature={a.temperature:g} must be > 0 (1 = plain PGD)")
    if me.beta < 0:
        raise FastadvError(f"method.beta={me.beta:g} must be >= 0")
    if not 0 <= t.holdout_per_class < 1:
        raise FastadvError(f"train.holdout_per_class={t.holdout_per_class:g} must be in [0, 1), e.g. 0.02")
    c = cfg.cfa
    if not 0 <= c.fawa_decay < 1 or not 0 <= c.fawa_threshold <= 1 or c.warmup_epochs < 0 or c.fawa_steps < 1:
        raise FastadvError("cfa: need 0 <= fawa_decay < 1, 0 <= fawa_threshold <= 1, warmup_epochs >= 0, fawa_steps >= 1")
    for check in spec.checks:
        check(cfg)
    if spec.label_augmented:
        if m.num_aux < 1:
            raise FastadvError(f"method.name={me.name} needs model.num_aux >= 1 (the extra 'adv' label)")
        if not 0 <= me.op_index < m.num_aux:
            raise FastadvError(f"method.op_index={me.op_index} must be in [0, model.num_aux={m.num_aux})")
    if m.num_classes < 2:
        raise FastadvError(f"model.num_classes={m.num_classes} must be >= 2")
    if m.num_aux < 0:
        raise FastadvError(f"model.num_aux={m.num_aux} must be >= 0")
    for key, value in (
        ("data.batch_size", d.batch_size),
        ("data.eval_batch_size", d.eval_batch_size),
        ("data.image_size", d.image_size),
        ("optim.epochs", o.epochs),
    ):
        if value < 1:
            raise FastadvError(f"{key}={value} must be >= 1")
    if d.workers < 0:
        raise FastadvError(f"data.workers={d.workers} must be >= 0")
    if not 0 < d.min_scale <= 1:
        raise FastadvError(f"data.min_scale={d.min_scale:g} must be in (0, 1]")
    _choice("data.dali_device", d.dali_device, DALI_DEVICES)
    if d.timeout <= 0:
        raise FastadvError(f"data.timeout={d.timeout:g} must be > 0 (seconds)")
    if o.lr <= 0:
        raise FastadvError(f"optim.lr={o.lr:g} must be > 0")
    if not 0 < o.min_lr_ratio <= 1:
        raise FastadvError(f"optim.min_lr_ratio={o.min_lr_ratio:g} must be in (0, 1]")
    if t.checkpoint_every < 0 or t.log_every < 1 or t.max_steps < 0:
        raise FastadvError("train.checkpoint_every and train.max_steps must be >= 0, train.log_every >= 1")
    _choice("train.lr_scaling", t.lr_scaling, LR_SCALING)
    if t.dist_timeout_s <= 0:
        raise FastadvError(f"train.dist_timeout_s={t.dist_timeout_s:g} must be > 0 (seconds)")


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
