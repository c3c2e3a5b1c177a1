"""Configuration, the bottom layer: the typed run config and where its values come from.

Owns the dataclass schema (schema.py: sections, fields, defaults, `key=value` overrides, TOML
output), the recipe files (recipe_files.py: shipped recipes/ by name or a .toml path, `base =`
inheritance), the options shared by `[eval]` and the suites (eval_options.py) and the validation
that runs before torch is imported (validation.py). Callers import the names below from here.

Layers, bottom up: schema and eval_options; the registries validation reads (method specs,
attack heads, AutoAttack names); validation; this module's load_config, which also asks the
model zoo what the architecture decides. Modules inside fastadv/config/ import each other
directly, never this __init__ (tests/test_import_graph.py).
"""

from __future__ import annotations

from fastadv.config.recipe_files import read_recipe, recipe_descriptions, recipe_names
from fastadv.config.schema import (
    SECTIONS, AttackConfig, CfaConfig, Config, DafaConfig, DataConfig, EvalConfig, MethodConfig, ModelConfig,
    OptimConfig, TrainConfig, apply_override, from_dict, to_toml, tomllib,
)
from fastadv.config.validation import (
    ATTACK_MODEL_MODES, CFA_PRESETS, check_eps, parse_temperatures, resolved_cfa, validate,
)

__all__ = ["ATTACK_MODEL_MODES", "CFA_PRESETS", "SECTIONS", "AttackConfig", "CfaConfig", "Config", "DafaConfig",
           "DataConfig", "EvalConfig", "MethodConfig", "ModelConfig", "OptimConfig", "TrainConfig", "apply_override",
           "check_eps", "from_dict", "load_config", "parse_temperatures", "read_recipe", "recipe_descriptions",
           "recipe_names", "resolved_cfa", "to_toml", "tomllib", "validate"]


def load_config(recipe: str, overrides: list[str] | None = None) -> Config:
    """Recipe (shipped name or .toml path, its `base =` chain merged in) plus `section.field=value` overrides, validated."""
    cfg = from_dict(read_recipe(recipe))
    for item in overrides or []:
        apply_override(cfg, item)
    validate(cfg)
    from fastadv.models.zoo import resolve_model_config  # imports torch and timm

    resolve_model_config(cfg)  # what the model's own config decides, recorded in cfg
    return cfg
