"""Models side by side must have been evaluated alike: same eval.eps, eval.steps, precision (eval.amp),
eval.subset and eval.seed. A report mixing them is refused (one line naming the field and both
values, exit 2) unless `--allow-mixed`, which builds it under a loud warning at the top.

An eval.json written before a field was recorded has it unknown (None): never guessed, said so at
the top of the report. Precision is the one that matters most: before eval.amp existed, a run was
evaluated under its own train.amp, so a bf16-trained run was attacked in bf16.
"""

from __future__ import annotations

from typing import Any

from fastadv.errors import FastadvError

# (field in model["evaluation"], the config key that sets it)
FIELDS = (("eps", "eval.eps"), ("steps", "eval.steps"), ("precision", "eval.amp"), ("subset", "eval.subset"),
          ("seed", "eval.seed"))
UNKNOWN_WHY = {"precision": "their eval.json predates eval.amp, so they were evaluated under the run's train.amp "
                            "(bf16 for a bf16-trained run)"}


def evaluation_fields(info: dict[str, Any]) -> dict[str, Any]:
    """What made this evaluation, from its eval.json; None where it was not recorded."""
    request = info.get("request") or {}
    seed = info.get("eval_seed")
    if seed is None:  # older eval.json: a seeded subset or an AutoAttack setting may have recorded it
        seed = (info.get("subset") or {}).get("seed")
    return {"eps": request.get("eps"), "steps": request.get("steps"), "precision": info.get("precision"),
            "subset": request.get("subset"), "seed": seed}


def _show(key: str, value: Any) -> str:
    if key == "eval.subset" and value == "":
        return '"" (all images)'
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _groups(models: list[dict[str, Any]], name: str) -> tuple[dict[Any, list[dict]], list[dict]]:
    """Models by recorded value of one field, and those where it is unknown (CSVs from other tools: skipped)."""
    groups: dict[Any, list[dict]] = {}
    unknown = []
    for m in models:
        ev = m.get("evaluation")
        if ev is None:
            continue
        if ev.get(name) is None:
            unknown.append(m)
        else:
            groups.setdefault(ev[name], []).append(m)
    return groups, unknown


def mixed(models: list[dict[str, Any]]) -> list[tuple[str, dict[Any, list[dict]]]]:
    """(config key, {value: models}) for every field with more than one recorded value."""
    out = []
    for name, key in FIELDS:
        groups = _groups(models, name)[0]
        if len(groups) > 1:
            out.append((key, groups))
    return out


def check_comparable(models: list[dict[str, Any]], allow_mixed: bool = False) -> None:
    """Refuse models evaluated differently, naming the first such field and two of its values."""
    found = mixed(models)
    if not found or allow_mixed:
        return
    key, groups = found[0]
    (va, (a, *_)), (vb, (b, *_)) = list(groups.items())[:2]
    also = f" (also different: {', '.join(k for k, _ in found[1:])})" if len(found) > 1 else ""
    raise FastadvError(f"{a['source']} was evaluated with {key}={_show(key, va)} but {b['source']} with "
                       f"{key}={_show(key, vb)}{also}: not comparable side by side; re-evaluate one with the other's "
                       f"value (fastadv eval RUN --set {key}=...), or pass --allow-mixed to report them under a warning")


def warning_lines(models: list[dict[str, Any]]) -> list[str]:
    """The top-of-report lines: fields that differ between models (--allow-mixed), and unknown ones."""
    lines = []
    for key, groups in mixed(models):
        values = "; ".join(f"{_show(key, v)} for {', '.join(m['model'] for m in ms)}" for v, ms in groups.items())
        lines.append(f"**WARNING: NOT COMPARABLE SIDE BY SIDE** (--allow-mixed): the models were evaluated with "
                     f"different {key}: {values}. Differences below mix this with the models' own.")
    for name, key in FIELDS:
        unknown = _groups(models, name)[1]
        if unknown:
            why = UNKNOWN_WHY.get(name, f"their eval.json does not record {key}")
            lines.append(f"**Warning**: {key} unknown for {', '.join(m['model'] for m in unknown)}: {why}; "
                         f"re-evaluate (`fastadv eval RUN`) to record it.")
    return lines


def describe(model: dict[str, Any]) -> str:
    """One model's evaluation settings, for its line in the report's list of inputs."""
    ev = model.get("evaluation")
    if ev is None:
        return "evaluation settings not recorded"
    return ", ".join(f"{key}={'unknown' if ev.get(name) is None else _show(key, ev[name])}" for name, key in FIELDS)
