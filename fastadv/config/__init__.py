"""Configuration, the bottom layer: the typed run config and where its values come from.

Owns the dataclass schema (schema.py: sections, fields, defaults, `key=value` overrides, TOML
output), the recipe files (recipe_files.py: shipped recipes/ by name or a .toml path, `base =`
inheritance), the options shared by `[eval]` and the suites (eval_options.py) and the validation
that runs before torch is imported (validation.py). Callers import the names below from here.
"""

from fastadv.config.schema import (  # noqa: F401 (the public configuration API)
    ATTACK_MODEL_MODES, CFA_PRESETS, SECTIONS, AttackConfig, CfaConfig, Config, DafaConfig, DataConfig, EvalConfig,
    MethodConfig, ModelConfig, OptimConfig, TrainConfig, apply_override, check_eps, from_dict, load_config,
    parse_temperatures, read_recipe, recipe_descriptions, recipe_names, resolved_cfa, to_toml, tomllib, validate,
)
