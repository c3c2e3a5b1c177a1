"""The method registry: one `MethodSpec` per training objective, looked up by name.

Everything outside a method asks the registry, never the method's name: config validation
(capabilities), `fastadv recipes` (descriptions), the CLI and the Trainer (`build_method`).
This module imports no torch, so a config is validated in well under a second; a spec's
factory is a "module:attribute" path imported on first use (or any callable).

Adding a method = its own file under fastadv/methods/ plus one `MethodSpec` line below (or a
`register_method(MethodSpec(...))` call from user code or a test).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fastadv.errors import FastadvError
from fastadv.runtime.hints import did_you_mean

if TYPE_CHECKING:  # pragma: no cover
    from fastadv.config.schema import Config


@dataclass(frozen=True)
class MethodSpec:
    """What the rest of fastadv may know about a method."""

    name: str
    description: str  # one line, shown by `fastadv recipes`
    factory: str | Callable[[Config, MethodSpec], Any]  # "module:Class.from_config" or a callable (cfg, spec)
    adversarial: bool = True  # trains on attacked inputs: the [attack] section applies (eps checked)
    label_augmented: bool = False  # trains with the LA target: needs model.num_aux >= 1 (Adv+)
    inner: str = ""  # a wrapper (CFA): the registered method it wraps and calibrates ("" = none)
    uses_holdout: bool = False  # its epoch-end hook reads the held-out split (train.holdout_per_class)
    checks: tuple[Callable[[Config], None], ...] = field(default=())  # extra validation, torch-free
    single_step: bool = False  # trains on one-step attacks (catastrophic overfitting): train.on_overfit=auto guards it
    cost: Callable[[Config], float] | None = None  # forward-pass equivalents per training image (None: the inner's)
    role: str = ""  # the paper's report column it fills: "Std", "Adv" or "Adv+" ("" = none; the report pairs by it)

    def build(self, cfg: Config) -> Any:
        factory = self.factory
        if isinstance(factory, str):
            module, _, attr = factory.partition(":")
            factory = importlib.import_module(module)
            for part in attr.split("."):
                factory = getattr(factory, part)
        return factory(cfg, self)


_REGISTRY: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec, *, replace: bool = False) -> MethodSpec:
    """Add a method; a second spec under a taken name is refused unless replace=True."""
    if spec.name in _REGISTRY and not replace:
        raise ValueError(f"a method named {spec.name!r} is registered already")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_method(name: str) -> None:
    _REGISTRY.pop(name, None)


def method_names() -> list[str]:
    return list(_REGISTRY)


def method_spec(name: str) -> MethodSpec:
    """The spec of `name`, or a FastadvError listing the registered methods."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise FastadvError(f"method.name={name!r}{did_you_mean(name, _REGISTRY)} is not one of: "
                           f"{', '.join(_REGISTRY)}") from None


def build_method(cfg: Config) -> Any:
    """The configured method, ready for `loss, stats = method(model, x, y)`."""
    return method_spec(cfg.method.name).build(cfg)


def forward_equivalents(cfg: Config) -> float | None:
    """Forward-pass equivalents per training image per epoch of optim.epochs (docs/reference/methods.md, costs: an
    input-gradient backward ~ 1 forward, a full backward ~ 2); wrappers add their own epoch-end work."""
    spec = method_spec(cfg.method.name)
    cost = spec.cost or (method_spec(spec.inner).cost if spec.inner else None)
    if cost is None:  # a method registered without a cost
        return None
    base = cost(cfg)
    if spec.uses_holdout and cfg.cfa.fawa:  # FAWA's gate: clean + PGD on the held-out split each epoch
        base += cfg.train.holdout_per_class * (2 * cfg.cfa.fawa_steps + 2)
    return float(base)


def _pgd_cost(cfg: Config) -> float:
    return 2 * cfg.attack.steps + 3  # K attack steps (forward + input backward) + forward + full backward


def _fgsm_cost(cfg: Config) -> float:
    return 2 + 3


def _free_cost(cfg: Config) -> float:
    """m replays of 3F per minibatch over ceil(E / m) epochs, per image per epoch of E."""
    m, epochs = cfg.method.replays, cfg.optim.epochs
    return 3 * m * -(-epochs // m) / epochs


def _trades_cost(cfg: Config) -> float:
    # the clean forward of the attack, K attack steps, then 3 (or 2) train-mode forwards with full backwards
    return 1 + 2 * cfg.attack.steps + (9 if cfg.method.trades_reference_forwards else 6)


def _one_step(cfg: Config) -> None:
    if cfg.attack.steps != 1:
        raise FastadvError(f"method.name={cfg.method.name} takes one attack step; set attack.steps=1 "
                           f"(got {cfg.attack.steps})")


def _trades_attack_options(cfg: Config) -> None:
    """TRADES' KL attack honours attack.head and attack.model_mode; these two it cannot honour."""
    if not cfg.attack.random_start:
        raise FastadvError(f"method.name={cfg.method.name}: TRADES' KL attack starts at x + N(0, std^2) (at x "
                           "itself its gradient is 0); set attack.random_start=true and method.trades_init_std "
                           "for the start's size")
    if cfg.attack.temperature != 1.0:
        raise FastadvError(f"method.name={cfg.method.name}: attack.temperature applies to the cross-entropy "
                           "attacks, TRADES' KL attack has none; set attack.temperature=1")


def _no_label_smoothing(cfg: Config) -> None:
    """Free AT's attack step reads the input gradient of the training backward: smoothing would reach it."""
    if cfg.optim.label_smoothing > 0:
        raise FastadvError(f"method.name={cfg.method.name}: Free AT takes its attack step from the training "
                           "backward, so optim.label_smoothing would smooth the attack too; set "
                           "optim.label_smoothing=0 (or train fgsm-rs, whose attack has its own backward)")


def _fawa_needs_holdout(cfg: Config) -> None:
    if cfg.cfa.fawa and cfg.train.holdout_per_class <= 0:
        raise FastadvError("cfa.fawa=true needs a held-out split: set train.holdout_per_class (CFA uses 0.02)")


_CFA = "fastadv.methods.cfa:ClassWiseCalibration.from_config"
_DAFA = "fastadv.methods.dafa:ClassWeighting.from_config"
_FGSM_RS = "fastadv.methods.fast:fgsm_rs_from_config"
_FREE = "fastadv.methods.fast:FreeAdversarialTraining.from_config"
for _spec in (
    MethodSpec("std", "clean training, plain one-hot label (Std)",
               "fastadv.methods.standard:StandardTraining.from_config", adversarial=False, cost=lambda cfg: 3,
               role="Std"),
    MethodSpec("adv", "PGD adversarial training, plain one-hot label (Adv; Madry et al. 2018)",
               "fastadv.methods.adversarial:AdversarialTraining.from_config", cost=_pgd_cost, role="Adv"),
    MethodSpec("adv-plus", "PGD adversarial training with the label-augmented 'adv' target, K+M logits (Adv+)",
               "fastadv.methods.adversarial:AdversarialTraining.from_config", label_augmented=True, cost=_pgd_cost,
               role="Adv+"),
    MethodSpec("trades", "TRADES: clean CE + beta * KL(f(x) || f(x')) (Zhang et al. 2019)",
               "fastadv.methods.trades:Trades.from_config", checks=(_trades_attack_options,), cost=_trades_cost),
    MethodSpec("cfa-at", "CFA on PGD-AT: class-wise eps (CCM) and gated weight averaging (FAWA; Wei et al. 2023)",
               _CFA, inner="adv", uses_holdout=True, checks=(_fawa_needs_holdout,)),
    MethodSpec("cfa-trades", "CFA on TRADES: class-wise eps and beta (CCM, CCR) and FAWA (Wei et al. 2023)",
               _CFA, inner="trades", uses_holdout=True, checks=(_fawa_needs_holdout, _trades_attack_options)),
    MethodSpec("adv-plus-cfa", "CFA on Adv+: class-wise eps (CCM) and FAWA around label-augmented PGD-AT",
               _CFA, label_augmented=True, inner="adv-plus", uses_holdout=True, checks=(_fawa_needs_holdout,)),
    MethodSpec("fgsm-rs", "FGSM from a uniform random start, step 1.25 eps, plain label (Wong et al. 2020)",
               _FGSM_RS, single_step=True, checks=(_one_step,), cost=_fgsm_cost),
    MethodSpec("fgsm-rs-plus", "FGSM-RS with the label-augmented 'adv' target, K+M logits (FGSM-RS+LA)",
               _FGSM_RS, label_augmented=True, single_step=True, checks=(_one_step,), cost=_fgsm_cost),
    MethodSpec("free", "Free AT: each minibatch replayed m times, delta carried, epochs / m (Shafahi et al. 2019)",
               _FREE, single_step=True, checks=(_no_label_smoothing,), cost=_free_cost),
    MethodSpec("free-plus", "Free AT with the label-augmented 'adv' target, K+M logits (Free+LA)",
               _FREE, label_augmented=True, single_step=True, checks=(_no_label_smoothing,),
               cost=_free_cost),
    MethodSpec("dafa-trades", "DAFA on TRADES: class weights from class similarity scale loss, eps, step (Lee et al. 2024)",
               _DAFA, inner="trades", checks=(_trades_attack_options,)),
    MethodSpec("dafa-at", "DAFA on PGD-AT: class weights from class similarity scale loss, eps, step (Lee et al. 2024)",
               _DAFA, inner="adv"),
):
    register_method(_spec)
