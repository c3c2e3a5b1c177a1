"""From saved predictions to every metric of a model, without the model: eval dirs written by
`fastadv eval`, or one CSV per model from another tool (the ImageNet-X format).

Each model gets its settings (clean, PGD, ImageNet-C corruption/severity, and "real", the
ReaL re-scoring of the clean predictions) with class-wise errors, and a `suites` table saying
for clean / ReaL / ImageNet-C / ImageNet-X / PGD whether it was done or why it was skipped.
"""

from __future__ import annotations

from collections import Counter

import csv
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fastadv.analysis.comparable import evaluation_fields
from fastadv.analysis.audit import audit_eval_dir
from fastadv.analysis.imagenet_meta import NUM_CLASSES, SuiteSkipped, imagenet_val_labels, imagenet_wnids
from fastadv.analysis.metrics import corruption_errors, setting_metrics
from fastadv.analysis.predictions import Predictions, read_predictions
from fastadv.errors import FastadvError
from fastadv.eval.suites import (ATTACK, CLEAN, MODEL_RUN_KINDS, IMAGENET_C, IMAGENET_C_SETTING_SUITE, IMAGENET_C_SKIPPED, IMAGENET_X, REAL,
                            attack_keys, clean_setting, headline_field, setting_specs, suite_of, suite_specs)

FOREIGN = "predictions from another tool: one CSV per model holds clean predictions only"
_EXAMPLES = 3


@dataclass
class Sources:
    """Where the scorer finds what predictions do not carry."""

    real_labels: str | None = None  # ReaL lists; overrides eval.json's; None = imagenet-x's copy
    labels_csv: str | None = None  # file_name,true_class for CSVs without a true_class column
    export_dir: Path | None = None  # write ImageNet-X-format CSVs (ImageNet-1k ids) here


def _examples(items: list[str]) -> str:
    more = f", ... ({len(items) - _EXAMPLES} more)" if len(items) > _EXAMPLES else ""
    return ", ".join(items[:_EXAMPLES]) + more


def find_inputs(paths: list[str | Path]) -> list[Path]:
    """Expand each path: an eval dir (eval.json), a run dir (<run>/eval), a CSV file, or a folder
    of CSVs (one per model) or of run / eval dirs."""
    found: list[Path] = []
    for item in paths:
        p = Path(item)
        if p.is_file() and p.suffix == ".csv":
            found.append(p)
        elif (p / "eval.json").is_file():
            found.append(p)
        elif (p / "eval" / "eval.json").is_file():
            found.append(p / "eval")
        elif p.name == "predictions" and (p.parent / "eval.json").is_file():
            found.append(p.parent)  # the predictions/ folder of an eval dir: that eval dir
        elif p.is_dir():
            inner = sorted(x for x in p.iterdir() if x.suffix == ".csv" and x.is_file())
            inner += sorted(x for x in p.iterdir() if x.is_dir() and ((x / "eval.json").is_file()
                                                                        or (x / "eval" / "eval.json").is_file()))
            if not inner:
                raise FastadvError(f"{p} holds no eval.json, no <run>/eval/eval.json and no *.csv predictions; "
                                   "pass eval dirs, run dirs or a folder of prediction CSVs (one per model)")
            found += [x if x.suffix == ".csv" or (x / "eval.json").is_file() else x / "eval" for x in inner]
        else:
            raise FastadvError(f"{p} not found: pass eval dirs, run dirs or prediction CSVs")
    return found


def model_metrics(path: str | Path, sources: Sources | None = None) -> dict[str, Any]:
    """Every metric of one model from an eval dir or a single predictions CSV."""
    path = Path(path)
    sources = sources or Sources()
    if path.suffix == ".csv" and path.is_file():
        return _csv_model(path, sources)
    return _eval_dir_model(path, sources)


# ---------------------------------------------------------------- eval dirs


def _load_eval_json(eval_dir: Path) -> dict[str, Any]:
    path = eval_dir / "eval.json"
    if not path.is_file():
        raise FastadvError(f"{path} not found: pass an eval dir written by the evaluator.")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise FastadvError(f"{path} is not valid JSON ({e}); re-run the evaluation.") from e
    missing = [k for k in ("model", "num_classes", "settings") if k not in info]
    if missing or not isinstance(info.get("settings"), dict) or not info.get("settings"):
        raise FastadvError(f"{path} lacks {', '.join(missing) or 'a non-empty settings table'}; re-run the evaluation.")
    return info


def check_same_images(first: Predictions, other: Predictions) -> None:
    """All settings of one model must score the same images with the same labels."""
    a, b = set(first.file_names), set(other.file_names)
    if a != b:
        unknown, missing = sorted(b - a), sorted(a - b)
        raise FastadvError(
            f"{other.path} covers different images than {first.path}: {len(unknown)} unknown file name(s) "
            f"(e.g. {_examples(unknown) or '-'}), {len(missing)} missing row(s) (e.g. {_examples(missing) or '-'}). "
            "Re-run the evaluation of all settings together."
        )
    if first.true is not None and other.true is not None:
        label = dict(zip(first.file_names, first.true.tolist()))
        differ = [n for n, t in zip(other.file_names, other.true.tolist()) if label[n] != t]
        if differ:
            raise FastadvError(f"{other.path} and {first.path} disagree on true_class for {len(differ)} image(s) "
                               f"(e.g. {_examples(differ)}); they must come from the same dataset.")


def _run_method(eval_dir: Path, info: dict[str, Any]) -> str | None:
    """The training method of an eval.json written before it recorded one: [method] name of the
    config.toml beside the checkpoint (or above the eval dir) of a training run (train.jsonl there)."""
    from fastadv.config import tomllib

    checkpoint = Path(str(info.get("checkpoint") or eval_dir))
    for run in dict.fromkeys((checkpoint.parent, eval_dir.parent)):
        if (run / "config.toml").is_file() and (run / "train.jsonl").is_file():
            try:
                return str(tomllib.loads((run / "config.toml").read_text(encoding="utf-8"))["method"]["name"])
            except (tomllib.TOMLDecodeError, KeyError, TypeError):
                return None
    return None


def _eval_dir_model(eval_dir: Path, sources: Sources) -> dict[str, Any]:
    info = _load_eval_json(eval_dir)
    k = int(info["num_classes"])
    num_aux = int(info.get("num_aux", 0) or 0)
    names = [str(c) for c in info.get("class_names") or range(k)]
    if len(names) != k:
        raise FastadvError(f"{eval_dir / 'eval.json'}: {len(names)} class_names for num_classes={k}; re-run the evaluation.")
    settings: dict[str, Any] = {}
    loaded: dict[str, Predictions] = {}
    for key, setting_info in info["settings"].items():
        csv_path = eval_dir / "predictions" / f"{key}.csv"
        if not csv_path.is_file():
            raise FastadvError(f"{csv_path} not found, but eval.json lists setting {key!r}; re-run the evaluation.")
        preds = read_predictions(csv_path, k, num_outputs=k + num_aux)
        if loaded:
            check_same_images(next(iter(loaded.values())), preds)
        expected = (setting_info or {}).get("images")
        if isinstance(expected, int) and expected != len(preds):
            raise FastadvError(f"{csv_path} has {len(preds)} rows, eval.json says {expected} images: "
                               f"{abs(expected - len(preds))} row(s) {'missing' if len(preds) < expected else 'too many'}; "
                               "re-run the evaluation.")
        loaded[key] = preds
        settings[key] = {"suite": suite_of(key), **(setting_info or {}), **setting_metrics(preds, k)}
        if preds.extra and "broken_by" in preds.extra:  # AutoAttack: how many images each attack broke
            settings[key]["broken_by"] = dict(Counter(b or "robust" for b in preds.extra["broken_by"]))
    audit_eval_dir(eval_dir, info)  # the scoring rule's invariants, again on read (fastadv.analysis.audit)
    model = {
        "model": str(info["model"]), "arch": info.get("arch"), "num_classes": k, "num_aux": num_aux,
        "label_augmented": bool(info.get("label_augmented", num_aux > 0)), "class_names": names,
        "source": str(eval_dir), "eval_dir": str(eval_dir), "settings": settings, "suites": {},
        "subset": info.get("subset"), "method": info["method"] if "method" in info else _run_method(eval_dir, info),
        "evaluation": evaluation_fields(info),
    }
    clean = loaded.get(CLEAN)
    real_path = sources.real_labels or info.get("real_labels")
    _rescored_suites(model, clean, real_path, sources)
    model["suites"][IMAGENET_C] = _imagenet_c_suite(settings, (info.get("suites") or {}).get(IMAGENET_C))
    for suite in [s for kind in MODEL_RUN_KINDS for s in suite_specs(kind)]:
        done = [key for key in settings if settings[key].get("suite") == suite.name]
        model["suites"][suite.name] = ({"status": "done", "settings": done} if done else
                                       {"status": "skipped", "reason": f"no {suite.label} setting in eval.json"})
    return model


def _imagenet_c_suite(settings: dict[str, Any], recorded: dict[str, Any] | None) -> dict[str, Any]:
    if not recorded:
        return {"status": "skipped", "reason": IMAGENET_C_SKIPPED}
    if recorded.get("status") != "done":
        return {"status": "skipped", "reason": recorded.get("reason") or IMAGENET_C_SKIPPED}
    errors: dict[str, dict[int, float]] = {}
    for s in settings.values():
        if s.get("suite") == IMAGENET_C_SETTING_SUITE:
            errors.setdefault(s["corruption"], {})[int(s["severity"])] = s["error"]
    if not errors:
        return {"status": "skipped", "reason": "eval.json records ImageNet-C but lists no corruption setting"}
    cw_sd: dict[str, list[float]] = {}
    for s in settings.values():
        if s.get("suite") == IMAGENET_C_SETTING_SUITE:
            cw_sd.setdefault(s["corruption"], []).append(s["classwise"]["sd"])
    out = {"status": "done", **{k: v for k, v in recorded.items() if k != "status"}, **corruption_errors(errors)}
    for name, per in out["corruptions"].items():
        per["classwise_sd_mean"] = float(np.mean(cw_sd[name]))
    return out


# ---------------------------------------------------------------- ReaL and ImageNet-X


def _rescored_suites(model: dict[str, Any], clean: Predictions | None, real_path: str | None,
                     sources: Sources) -> None:
    """ReaL (as the setting "real") and ImageNet-X, both re-scoring the clean predictions."""
    from fastadv.analysis.imagenet_x import imagenet_x_suite
    from fastadv.analysis.real import real_suite

    suites = model["suites"]
    if clean is None:
        suites[CLEAN] = {"status": "skipped", "reason": f"no clean predictions (predictions/{CLEAN}.csv)"}
        reason = "needs the clean predictions, which are missing"
        suites[REAL] = suites[IMAGENET_X] = {"status": "skipped", "reason": reason}
        return
    suites[CLEAN] = {"status": "done", "setting": CLEAN}
    args = (clean.file_names, clean.predicted, clean.true, model["class_names"], model["num_classes"])
    try:
        real = real_suite(*args, path=real_path)
        model["settings"][REAL] = real
        suites[REAL] = {"status": "done", "setting": REAL, "source": real["source"]}
    except SuiteSkipped as e:
        suites[REAL] = {"status": "skipped", "reason": str(e)}
    try:
        export = None
        if sources.export_dir is not None:
            export = Path(sources.export_dir) / f"{_safe(model['model'])}.csv"
        suites[IMAGENET_X] = {"status": "done", **imagenet_x_suite(
            clean.file_names, clean.predicted, clean.probability, clean.true, model["class_names"],
            model["num_classes"], export=export)}
    except SuiteSkipped as e:
        suites[IMAGENET_X] = {"status": "skipped", "reason": str(e)}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "_", name) or "model"


# ---------------------------------------------------------------- CSVs from other tools


def _labels_from_csv(path: str) -> dict[str, int]:
    p = Path(path).expanduser()
    if not p.is_file():
        raise FastadvError(f"labels file {p} not found (--labels): expected a CSV with file_name,true_class")
    try:
        with open(p, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            column = next((c for c in ("true_class", "label") if c in (reader.fieldnames or [])), None)
            if "file_name" not in (reader.fieldnames or []) or column is None:
                raise FastadvError(f"labels file {p} needs the columns file_name and true_class (or label); "
                                   f"found {', '.join(reader.fieldnames or [])}")
            try:
                return {row["file_name"].strip(): int(row[column]) for row in reader}
            except (TypeError, ValueError) as e:
                raise FastadvError(f"labels file {p}: column {column} holds a non-integer ({e})") from e
    except UnicodeDecodeError as e:
        raise FastadvError(f"labels file {p} is not UTF-8 text (byte {e.start}); save it as UTF-8 CSV") from None


def _csv_model(path: Path, sources: Sources) -> dict[str, Any]:
    """One CSV = one model's clean predictions on ImageNet val, classes 0..999 (ImageNet-1k order).

    Without a true_class column the labels come from --labels, else from the ImageNet
    validation ground truth shipped in imagenet-x (filename_label.csv); the CSV must then
    cover exactly the labelled images (unknown file names and missing rows are errors).
    """
    preds = read_predictions(path, NUM_CLASSES)
    if preds.true is None:
        if sources.labels_csv:
            labels, origin = _labels_from_csv(sources.labels_csv), f"labels file {sources.labels_csv}"
        else:
            try:
                labels, origin = imagenet_val_labels(), "the ImageNet validation labels in imagenet-x"
            except SuiteSkipped as e:
                raise FastadvError(f"{path} has no true_class column and no labels were found ({e}); "
                                   "add true_class, or pass --labels file_name,true_class CSV") from e
        unknown = [n for n in preds.file_names if Path(n).name not in labels and n not in labels]
        if unknown:
            raise FastadvError(f"{path}: {len(unknown)} of {len(preds)} file name(s) unknown to {origin} "
                               f"({_examples(unknown)}); pass --labels with their classes or add true_class.")
        present = {Path(n).name for n in preds.file_names} | set(preds.file_names)
        missing = [n for n in labels if n not in present]
        if missing:
            raise FastadvError(f"{path}: {len(missing)} missing row(s): {origin} list(s) {len(labels)} images, the "
                               f"CSV {len(preds)} (e.g. {_examples(sorted(missing))}). For a subset pass --labels "
                               "with just those images, or add a true_class column.")
        true = [labels.get(n, labels.get(Path(n).name)) for n in preds.file_names]
        bad = [n for n, t in zip(preds.file_names, true) if not 0 <= t < NUM_CLASSES]
        if bad:
            raise FastadvError(f"{origin}: {len(bad)} class id(s) outside 0..{NUM_CLASSES - 1} (e.g. {_examples(bad)})")
        preds.true = np.asarray(true, dtype=np.int64)
    try:
        class_names = list(imagenet_wnids())
    except SuiteSkipped:
        class_names = [str(i) for i in range(NUM_CLASSES)]
    settings = {CLEAN: {**clean_setting().info(), **setting_metrics(preds, NUM_CLASSES)}}
    model = {"model": path.stem, "arch": None, "num_classes": NUM_CLASSES, "num_aux": 0, "label_augmented": False,
             "class_names": class_names, "source": str(path), "eval_dir": None, "settings": settings, "suites": {}}
    _rescored_suites(model, preds, sources.real_labels, sources)
    model["suites"][IMAGENET_C] = {"status": "skipped", "reason": FOREIGN}
    for suite in [s for kind in MODEL_RUN_KINDS for s in suite_specs(kind)]:
        model["suites"][suite.name] = {"status": "skipped", "reason": FOREIGN}
    return model


# ---------------------------------------------------------------- headline numbers


def headline(model: dict[str, Any]) -> dict[str, Any]:
    """The numbers of the paper's Tables 1 and 2 for one model (fractions; None when skipped)."""
    s = model["settings"]
    attacks = [(spec, *attack_keys(s, spec)) for spec in setting_specs(ATTACK)]

    def get(key: str | None, *path: str) -> float | None:
        value: Any = s.get(key) if key else None
        for p in path:
            value = value.get(p) if isinstance(value, dict) else None
        return None if value is None or (isinstance(value, float) and math.isnan(value)) else value

    c = model["suites"].get(IMAGENET_C, {})
    x = model["suites"].get(IMAGENET_X, {})
    ratios = {f: v["error_ratio"] for f, v in (x.get("factors") or {}).items() if v.get("error_ratio") is not None}
    worst = max(ratios, key=ratios.get) if ratios else None
    out = {
        "clean_error": get(CLEAN, "error"),
        "real_error": get(REAL, "error"),
        "mce": c.get("mce") if c.get("status") == "done" else None,
        "mce_alexnet": c.get("mce_alexnet") if c.get("status") == "done" else None,
        "mce_complete": c.get("complete") if c.get("status") == "done" else None,
    }
    for spec, k, km in attacks:
        out |= {headline_field(spec, "setting"): k, headline_field(spec, "error"): get(k, "error"),
                headline_field(spec, "error", kplusm=True): get(km, "error")}
    for name in (CLEAN, REAL):
        out |= {f"{name}_classwise_mean": get(name, "classwise", "mean"), f"{name}_classwise_sd": get(name, "classwise", "sd")}
    for spec, k, _ in attacks:
        out |= {headline_field(spec, "classwise_mean"): get(k, "classwise", "mean"),
                headline_field(spec, "classwise_sd"): get(k, "classwise", "sd")}
    return out | {
        "imagenet_x_average_error": x.get("average_error") if x.get("status") == "done" else None,
        "imagenet_x_worst_factor": worst, "imagenet_x_worst_error_ratio": ratios.get(worst) if worst else None,
        "skipped": {name: v["reason"] for name, v in model["suites"].items() if v.get("status") != "done"},
    }
