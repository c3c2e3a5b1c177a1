"""Every evaluation setting and suite in one registry: its key, what runs, its display name, how
it is scored. evaluate, analysis.scoring, analysis.report, analysis.figures and the ImageNet-C
code take keys, key parsing and display names from here only.

A *setting* is one pass over the validation images that writes predictions/<key>.csv: "clean",
PGD-n on the K-class head ("pgd40"), PGD-n on all K+M logits ("pgd40-kplusm", label-augmented
models only: it can raise its loss through an auxiliary logit, so it overstates robustness,
docs/reference/methods.md: LA), Temperature-PGD ("tpgd40-T0.5") and each ImageNet-C corruption and severity
("imagenet-c/<corruption>/<severity>"). A *suite* is a row of the metrics' suites table
("clean", "real", "imagenet_c", "imagenet_x", "pgd"): done, or skipped with its reason. ReaL and
ImageNet-X run nothing; they re-score the clean predictions.

A new evaluation attack is one registration (here, or in a module that registers itself on
import), and evaluate, scoring and the report pick it up (tables, headline, notes, figures):

    register_suite(SuiteSpec("autoattack", "AutoAttack", ATTACK))      # its own suites-table row
    register_setting(SettingSpec(
        "autoattack", ATTACK, suite="autoattack", label="AutoAttack",
        keys=(r"autoattack-k", r"autoattack-kplusm"),                # K-head key, K+M key
        build=autoattack_settings,                                   # cfg -> [Setting(...), ...]
        title=lambda key: "AutoAttack"))

Torch-free: the builders import the attacks lazily, so the analysis side imports this freely.
AutoAttack, the masking checks and paper-code register from suites_robustness.py, which
fastadv/eval/__init__.py imports: any import of fastadv.eval.* registers them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

# suite names (the suites table in metrics.json) and setting keys
CLEAN = "clean"  # the clean setting and its suite
REAL = "real"  # the ReaL re-scoring of the clean predictions: a setting in metrics.json and a suite
IMAGENET_C = "imagenet_c"  # the ImageNet-C suite (eval.json "suites", metrics' suites table)
IMAGENET_X = "imagenet_x"  # the ImageNet-X suite
PGD = "pgd"  # the PGD suite, and the "suite" field of its settings
TPGD = "tpgd"  # the "suite" field of Temperature-PGD settings
IMAGENET_C_SETTING_SUITE = "imagenet-c"  # the "suite" field of each corruption/severity setting
OTHER = "other"  # the suite of a key no registered setting writes

# kinds of settings and suites
RUN = "run"  # evaluate runs the model on clean images (clean)
ATTACK = "attack"  # a robustness attack: K-head and K+M columns in Tables 1/2, headline numbers
ANALYSIS = "analysis"  # an attack compared class by class with an ATTACK's K-head setting (T-PGD)
CORRUPTION = "corruption"  # ImageNet-C: evaluate's ImageNet-C pass runs it, one setting per (corruption, severity)
RESCORED = "rescored"  # no model: re-scores the clean predictions (ReaL, ImageNet-X)
CHECK = "check"  # gradient-masking checks: attacks whose accuracies the report compares (pass/fail)
CONVENTION = "convention"  # the same attack under another convention (the paper's code), shown side by side
MODEL_RUN_KINDS = (ATTACK, CHECK, CONVENTION)  # suites done iff a model has one of their settings

IMAGENET_C_SKIPPED = "no ImageNet-C data configured (eval.imagenet_c; make eval IMAGENET_C=/path or IMAGENET_C=generate)"
DEFAULT_PGD_STEPS = 40  # the report's PGD title when no model has a PGD setting ("PGD-40")


@dataclass(frozen=True)
class Setting:
    """One evaluation pass: predictions/<key>.csv. attack: `x_adv = attack(model, x, y)`, None = the images
    as loaded. fields: the rest of its eval.json entry (attack parameters, corruption and severity)."""

    key: str
    title: str
    suite: str
    attack: Callable[..., Any] | None = None
    fields: Mapping[str, Any] = field(default_factory=dict)
    resumable: bool = False  # evaluate keeps per-batch results and resumes after a kill (long attacks)

    def info(self) -> dict[str, Any]:
        return {"title": self.title, "suite": self.suite, **self.fields}


@dataclass(frozen=True)
class SettingSpec:
    """A kind of setting (a registry entry).

    kind: RUN | ATTACK | ANALYSIS | CORRUPTION. suite: the "suite" field of its settings; for an
    ATTACK also the suites-table row it reports under (a registered SuiteSpec). keys: regular
    expressions (full match) of the keys it writes; an ATTACK gives (K-head key, K+M key).
    build: cfg -> the settings evaluate runs for that config ([] = not asked for); None when
    evaluate runs it elsewhere (ImageNet-C). label: short display name ("PGD"); title(key): the
    display name for one of its keys, or its default for None ("PGD-40"). params(info): one line of
    attack parameters from a setting's eval.json entry, or None. always_reported: an ATTACK whose
    table columns appear even when no model has its settings. compare_to: an ANALYSIS compares
    with this ATTACK's K-head setting. The name also prefixes its headline numbers (pgd_error).
    """

    name: str
    kind: str
    suite: str
    keys: tuple[str, ...]
    build: Callable[[Any], list[Setting]] | None = None
    label: str = ""
    title: Callable[[str | None], str] | None = None
    params: Callable[[Mapping[str, Any]], str | None] = lambda info: None
    always_reported: bool = False
    compare_to: str | None = None

    def matches(self, key: str) -> bool:
        return any(re.fullmatch(p, key) for p in self.keys)

    def display(self, key: str | None = None) -> str:
        return self.title(key) if self.title else (self.label or self.name)


@dataclass(frozen=True)
class SuiteSpec:
    """A row of the suites table: name (metrics.json key), label (display name), kind, and the
    report's one-line detail of a done suite (from its suites-table entry)."""

    name: str
    label: str
    kind: str
    detail: Callable[[Mapping[str, Any]], str] = lambda s: ", ".join(s.get("settings", []))


_SETTINGS: dict[str, SettingSpec] = {}
_SUITES: dict[str, SuiteSpec] = {}


def register_setting(spec: SettingSpec) -> SettingSpec:
    if spec.name in _SETTINGS:
        raise ValueError(f"evaluation setting {spec.name!r} is registered already")
    _SETTINGS[spec.name] = spec
    return spec


def unregister_setting(name: str) -> None:
    _SETTINGS.pop(name, None)


def register_suite(spec: SuiteSpec) -> SuiteSpec:
    if spec.name in _SUITES:
        raise ValueError(f"suite {spec.name!r} is registered already")
    _SUITES[spec.name] = spec
    return spec


def unregister_suite(name: str) -> None:
    _SUITES.pop(name, None)


def setting_specs(kind: str | None = None) -> list[SettingSpec]:
    """Registered setting kinds in registration order (the order evaluate runs them)."""
    return [s for s in _SETTINGS.values() if kind is None or s.kind == kind]


def setting_spec(name: str) -> SettingSpec:
    return _SETTINGS[name]


def suite_specs(kind: str | None = None) -> list[SuiteSpec]:
    """Registered suites in the order of the suites table."""
    return [s for s in _SUITES.values() if kind is None or s.kind == kind]


def suite_spec(name: str) -> SuiteSpec:
    return _SUITES[name]


def settings_for(cfg) -> list[Setting]:
    """Every setting evaluate runs on the model for this config, in registry order (ImageNet-C apart)."""
    return [s for spec in setting_specs() if spec.build is not None for s in spec.build(cfg)]


def spec_of(key: str) -> SettingSpec | None:
    """The registered kind of setting that writes `key`, or None."""
    return next((spec for spec in _SETTINGS.values() if spec.matches(key)), None)


def suite_of(key: str) -> str:
    """The suite of a setting key (eval.json's own "suite" field takes precedence)."""
    spec = spec_of(key)
    return spec.suite if spec else OTHER


def attack_keys(settings: Mapping[str, Any], spec: SettingSpec) -> tuple[str | None, str | None]:
    """(K-head key, K+M key) of an ATTACK among a model's settings, e.g. ("pgd40", "pgd40-kplusm")."""
    k = next((key for key in settings if re.fullmatch(spec.keys[0], key)), None)
    km = next((key for key in settings if len(spec.keys) > 1 and re.fullmatch(spec.keys[1], key)), None)
    return k, km


def headline_field(spec: SettingSpec, what: str, kplusm: bool = False) -> str:
    """An ATTACK's headline field in metrics.json: pgd_setting, pgd_error, pgd_kplusm_error, pgd_classwise_sd."""
    return f"{spec.name}_kplusm_{what}" if kplusm else f"{spec.name}_{what}"


# ---------------------------------------------------------------- clean, PGD, T-PGD


def clean_setting(cfg=None) -> Setting:
    return Setting(CLEAN, "clean", CLEAN)


def eval_step_size(eval_cfg) -> float:
    """eval.alpha, or 2.5 * eps / steps when it is 0 (Madry et al.)."""
    return eval_cfg.alpha if eval_cfg.alpha > 0 else 2.5 * eval_cfg.eps / eval_cfg.steps


def _pgd_setting(cfg, key: str, title: str, suite: str, head: str, temperature: float | None = None) -> Setting:
    from fastadv.attacks import PGD as PGDAttack

    e = cfg.eval
    alpha = eval_step_size(e)
    attack = PGDAttack(eps=e.eps, steps=e.steps, alpha=alpha, random_start=e.random_start,
                       num_classes=cfg.model.num_classes, head=head,
                       temperature=1.0 if temperature is None else temperature,
                       early_stop=e.early_stop, compact=e.early_stop and e.early_stop_compact)
    fields = {"eps": attack.eps, "eps_255": attack.eps * 255, "steps": attack.steps, "alpha": alpha,
              "random_start": attack.random_start, "head": attack.head, "early_stop": attack.early_stop,
              "early_stop_compact": attack.compact}
    if temperature is not None:
        fields["temperature"] = attack.temperature
    return Setting(key, title, suite, attack, fields)


def pgd_settings(cfg) -> list[Setting]:
    """PGD-n on the K head; a label-augmented model (M > 0) also gets PGD-n on all K+M logits."""
    steps = cfg.eval.steps
    key = f"pgd{steps}"
    if not cfg.model.num_aux:
        return [_pgd_setting(cfg, key, f"PGD-{steps}", PGD, "k")]
    return [_pgd_setting(cfg, key, f"PGD-{steps} (K-class head, adaptive)", PGD, "k"),
            _pgd_setting(cfg, f"{key}-kplusm", f"PGD-{steps} (all K+M logits, as in the paper)", PGD, "all")]


def tpgd_settings(cfg) -> list[Setting]:
    """Temperature-PGD on the K head, one setting per eval.temperatures value."""
    from fastadv.config import parse_temperatures

    steps = cfg.eval.steps
    return [_pgd_setting(cfg, f"tpgd{steps}-T{t:g}", f"Temperature-PGD-{steps} (T = {t:g}, K-class head)",
                         TPGD, "k", t) for t in parse_temperatures(cfg.eval.temperatures)]


def _pgd_title(key: str | None) -> str:
    match = re.fullmatch(r"t?pgd(\d+)(?:-.*)?", key) if key else None
    return f"PGD-{match.group(1) if match else DEFAULT_PGD_STEPS}"


def _pgd_params(info: Mapping[str, Any]) -> str | None:
    if "eps" not in info:
        return None
    mode = "early stop (broken at any iterate)" if info.get("early_stop") else "last iterate"
    return (f"eps={info['eps']:.4g} ({info['eps'] * 255:.3g}/255), steps={info.get('steps')}, "
            f"alpha={info.get('alpha'):.4g}, {mode}")


# ---------------------------------------------------------------- ImageNet-C


def imagenet_c_key(corruption: str, severity: int) -> str:
    return f"imagenet-c/{corruption}/{severity}"


def imagenet_c_setting(corruption: str, severity: int) -> Setting:
    """One ImageNet-C corruption at one severity (run on the corrupted copies of the clean images)."""
    return Setting(imagenet_c_key(corruption, severity), f"ImageNet-C {corruption} severity {severity}",
                   IMAGENET_C_SETTING_SUITE, None, {"corruption": corruption, "severity": severity})


# ---------------------------------------------------------------- the registry


register_setting(SettingSpec(CLEAN, RUN, CLEAN, (r"clean",), build=lambda cfg: [clean_setting(cfg)], label="clean"))
register_setting(SettingSpec(PGD, ATTACK, PGD, (r"pgd(\d+)", r"pgd(\d+)-kplusm"), build=pgd_settings, label="PGD",
                             title=_pgd_title, params=_pgd_params, always_reported=True))
register_setting(SettingSpec(TPGD, ANALYSIS, TPGD, (r"tpgd(\d+)-T(.+)",), build=tpgd_settings,
                             label="Temperature-PGD", title=_pgd_title, compare_to=PGD))
register_setting(SettingSpec(IMAGENET_C_SETTING_SUITE, CORRUPTION, IMAGENET_C_SETTING_SUITE, (r"imagenet-c/([^/]+)/(\d+)",),
                             label="ImageNet-C"))

register_suite(SuiteSpec(CLEAN, "clean", RUN, lambda s: ""))
register_suite(SuiteSpec(REAL, "ImageNet-ReaL", RESCORED, lambda s: f"labels {s.get('source')}"))
register_suite(SuiteSpec(IMAGENET_C, "ImageNet-C", CORRUPTION,
                         lambda s: f"{s.get('source')} {s.get('path')}, {len(s.get('corruptions', {}))} "
                                   f"corruption(s) x severities {s.get('severities')}"))
register_suite(SuiteSpec(IMAGENET_X, "ImageNet-X", RESCORED,
                         lambda s: f"{s.get('images')} annotated images, {s.get('which_factor')} factor"))
register_suite(SuiteSpec(PGD, "PGD", ATTACK))
