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

if TYPE_CHECKING:  # pragma: no cover
    from fastadv.config import Config


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
        raise FastadvError(f"method.name={name!r} is not one of: {', '.join(_REGISTRY)}") from None


def build_method(cfg: Config) -> Any:
    """The configured method, ready for `loss, stats = method(model, x, y)`."""
    return method_spec(cfg.method.name).build(cfg)


def _fawa_needs_holdout(cfg: Config) -> None:
    if cfg.cfa.fawa and cfg.train.holdout_per_class <= 0:
        raise FastadvError("cfa.fawa=true needs a held-out split: set train.holdout_per_class (CFA uses 0.02)")


_CFA = "fastadv.methods.cfa:ClassWiseCalibration.from_config"
for _spec in (
    MethodSpec("std", "clean training, plain one-hot label (Std)",
               "fastadv.methods.standard:StandardTraining.from_config", adversarial=False),
    MethodSpec("adv", "PGD adversarial training, plain one-hot label (Adv; Madry et al. 2018)",
               "fastadv.methods.adversarial:AdversarialTraining.from_config"),
    MethodSpec("adv-plus", "PGD adversarial training with the label-augmented 'adv' target, K+M logits (Adv+)",
               "fastadv.methods.adversarial:AdversarialTraining.from_config", label_augmented=True),
    MethodSpec("trades", "TRADES: clean CE + beta * KL(f(x) || f(x')) (Zhang et al. 2019)",
               "fastadv.methods.trades:Trades.from_config"),
    MethodSpec("cfa-at", "CFA on PGD-AT: class-wise eps (CCM) and gated weight averaging (FAWA; Wei et al. 2023)",
               _CFA, inner="adv", uses_holdout=True, checks=(_fawa_needs_holdout,)),
    MethodSpec("cfa-trades", "CFA on TRADES: class-wise eps and beta (CCM, CCR) and FAWA (Wei et al. 2023)",
               _CFA, inner="trades", uses_holdout=True, checks=(_fawa_needs_holdout,)),
    MethodSpec("adv-plus-cfa", "CFA on Adv+: class-wise eps (CCM) and FAWA around label-augmented PGD-AT",
               _CFA, label_augmented=True, inner="adv-plus", uses_holdout=True, checks=(_fawa_needs_holdout,)),
):
    register_method(_spec)
