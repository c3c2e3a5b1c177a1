"""Validation of a run configuration: every bad value is refused before anything runs (and before
torch is imported), with a message naming the field and the fix. Method-specific rules come from
the method registry (fastadv.methods.registry), attack heads from fastadv.attacks.HEADS.
"""

from __future__ import annotations

from fractions import Fraction
from typing import TYPE_CHECKING

from fastadv.attacks import HEADS
from fastadv.attacks.autoattack_names import check_autoattack_names
from fastadv.config.eval_options import ATTACK_CONVENTIONS, AUTOATTACK_GROUPINGS, parse_eps_multiples
from fastadv.errors import FastadvError
from fastadv.methods.registry import method_spec
from fastadv.runtime.precision_policies import PRECISION_CHOICES

if TYPE_CHECKING:  # pragma: no cover
    from fastadv.config.schema import CfaConfig, Config, EvalConfig

BACKENDS = ("auto", "dali", "ffcv", "folder", "demo")
DALI_DEVICES = ("auto", "cpu", "gpu")
EVAL_AMP_MODES = ("fp32", "bf16")  # eval.amp: its own setting, never train.amp
COMPILE_CHOICES = ("auto", "true", "false")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
LR_SCALING = ("none", "linear", "sqrt")
OPTIMIZERS = ("sgd", "adamw")
NORMALIZE_MODES = ("auto", "fixed")
INTERPOLATIONS = ("auto", "bilinear", "bicubic")

ATTACK_MODEL_MODES = ("eval", "train")
ON_OVERFIT = ("auto", "off", "warn", "stop", "rollback")
CFA_PRESETS = {"paper": {"fawa_threshold": 0.2, "fawa_decay": 0.85, "warmup_epochs": 10},
               "code": {"fawa_threshold": 0.24, "fawa_decay": 0.88, "warmup_epochs": 10}}
CCM_STEPS = ("fixed", "scaled")


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


def resolved_cfa(c: CfaConfig, key: str) -> float:
    """A CFA setting: its own value, or the preset's (paper / code) when left at -1."""
    value = getattr(c, key)
    return CFA_PRESETS[c.preset][key] if value == -1 and c.preset in CFA_PRESETS else value


VALIDATE = ("auto", "holdout", "val", "off")
BEST = ("auto", "robust_acc", "worst_class_robust_acc", "off")


def _validate_watching(t) -> None:
    """Robust validation while training and best.pt (fastadv.train.validation); loggers are checked by the trainer."""
    _choice("train.validate", t.validate, VALIDATE)
    _choice("train.best", t.best, BEST)
    if t.validate == "holdout" and t.holdout_per_class <= 0:
        raise FastadvError("train.validate=holdout needs held-out data: set train.holdout_per_class (e.g. 0.02), "
                           "or train.validate=val for a fixed subset of the validation set")
    off = t.validate == "off" or (t.validate == "auto" and t.holdout_per_class <= 0)
    if off and t.best not in ("auto", "off"):
        raise FastadvError(f"train.best={t.best} needs robust validation: set train.validate=holdout (with "
                           f"train.holdout_per_class) or train.validate=val")
    if t.validate_every < 0 or t.validate_images < 0 or t.validate_steps < 1:
        raise FastadvError("train: need validate_every >= 0 (0 = each epoch), validate_images >= 0 (0 = all), "
                           "validate_steps >= 1")
    if not t.loggers:
        raise FastadvError('train.loggers is empty: keep at least "jsonl" (the run log the report reads)')


def validate(cfg: Config) -> None:
    """Reject bad values before anything runs, naming the field and the fix."""
    m, d, a, me, o, t, e = cfg.model, cfg.data, cfg.attack, cfg.method, cfg.optim, cfg.train, cfg.eval
    spec = method_spec(me.name)
    _choice("data.backend", d.backend, BACKENDS)
    _choice("train.precision", t.precision, PRECISION_CHOICES)
    if e.amp not in EVAL_AMP_MODES:
        raise FastadvError(f"eval.amp={e.amp!r} is not one of: {', '.join(EVAL_AMP_MODES)} "
                           "(evaluation precision; fp32 is the default, bf16 is faster)")
    _choice("train.compile", t.compile, COMPILE_CHOICES)
    _choice("train.compile_mode", t.compile_mode, COMPILE_MODES)
    _choice("attack.head", a.head, tuple(HEADS))
    if spec.adversarial:
        check_eps("attack.eps", a.eps)
    check_eps("eval.eps", e.eps)
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
    _choice("attack.model_mode", a.model_mode, ATTACK_MODEL_MODES)
    _choice("train.on_overfit", t.on_overfit, ON_OVERFIT)
    if t.overfit_every < 0 or t.overfit_images < 1 or not 0 < t.overfit_drop <= 1:
        raise FastadvError("train: need overfit_every >= 0, overfit_images >= 1, 0 < overfit_drop <= 1")
    if me.replays < 1:
        raise FastadvError(f"method.replays={me.replays} must be >= 1 (Free AT uses 4)")
    if cfg.dafa.lam < 0 or cfg.dafa.warmup_epochs < 1:
        raise FastadvError("dafa: need lam >= 0 and warmup_epochs >= 1")
    _choice("cfa.preset", cfg.cfa.preset, tuple(CFA_PRESETS))
    _choice("cfa.ccm_step", cfg.cfa.ccm_step, CCM_STEPS)
    if not 0 <= t.holdout_per_class < 1:
        raise FastadvError(f"train.holdout_per_class={t.holdout_per_class:g} must be in [0, 1), e.g. 0.02")
    _validate_watching(t)
    c = cfg.cfa
    threshold, decay, warmup = (resolved_cfa(c, k) for k in ("fawa_threshold", "fawa_decay", "warmup_epochs"))
    if not 0 <= decay < 1 or not 0 <= threshold <= 1 or warmup < 0 or c.fawa_steps < 1:
        raise FastadvError("cfa: need 0 <= fawa_decay < 1, 0 <= fawa_threshold <= 1, warmup_epochs >= 0 (or -1 for "
                           "the preset's), fawa_steps >= 1")
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
    _validate_models(cfg)


def validate_robustness_options(e: EvalConfig) -> None:
    """AutoAttack, masking checks, paper-code: unknown names fail before any attack."""
    check_eps("eval.autoattack_eps", e.autoattack_eps)  # 4 instead of 4/255 -> "Did you mean 4/255"
    if e.attack_convention not in ATTACK_CONVENTIONS:
        raise FastadvError(f"eval.attack_convention={e.attack_convention!r} is not one of: {', '.join(ATTACK_CONVENTIONS)}")
    if e.autoattack_grouping not in AUTOATTACK_GROUPINGS:
        raise FastadvError(f"eval.autoattack_grouping={e.autoattack_grouping!r} is not one of: {', '.join(AUTOATTACK_GROUPINGS)} "
                           "(whole = as the official AutoAttack call, batch = one run per eval batch)")
    if e.square_queries < 0 or not 0 <= e.masking_tolerance < 1 or not 0 <= e.masking_zero < 1:
        raise FastadvError("eval.square_queries must be >= 0, eval.masking_tolerance and eval.masking_zero in [0, 1)")
    parse_eps_multiples(e.masking_eps)
    if e.autoattack:
        check_autoattack_names(e.autoattack_version, tuple(a.strip() for a in e.autoattack_attacks.split(",") if a.strip()))


def _validate_models(cfg: Config) -> None:
    """The architecture and optimizer fields (issue 15)."""
    m, o = cfg.model, cfg.optim
    _choice("optim.name", o.name, OPTIMIZERS)
    _choice("model.normalize", m.normalize, NORMALIZE_MODES)
    _choice("data.interpolation", cfg.data.interpolation, INTERPOLATIONS)
    if not 0 <= m.drop_path < 1:
        raise FastadvError(f"model.drop_path={m.drop_path:g} must be in [0, 1), e.g. 0.1")
    if m.image_size < 0:
        raise FastadvError(f"model.image_size={m.image_size} must be >= 0 (0 = data.image_size)")
    if o.warmup_steps < 0 or o.warmup_epochs < 0:
        raise FastadvError("optim.warmup_steps and optim.warmup_epochs must be >= 0")
    if o.clip_grad_norm < 0:
        raise FastadvError(f"optim.clip_grad_norm={o.clip_grad_norm:g} must be >= 0 (0 = off)")
    if not 0 <= o.label_smoothing < 1:
        raise FastadvError(f"optim.label_smoothing={o.label_smoothing:g} must be in [0, 1), e.g. 0.1 (0 = off)")
    if not 0 <= o.ema_decay < 1:
        raise FastadvError(f"optim.ema_decay={o.ema_decay:g} must be in [0, 1), e.g. 0.9999 (0 = off)")
    if not all(0 <= b < 1 for b in o.betas):
        raise FastadvError(f"optim.betas={list(o.betas)} must be two numbers in [0, 1), e.g. [0.9, 0.999]")
    if o.ema_decay and "cfa" in cfg.method.name and cfg.cfa.fawa:
        raise FastadvError("optim.ema_decay and cfa.fawa both average the weights for evaluation; "
                           "set optim.ema_decay=0 or cfa.fawa=false")
