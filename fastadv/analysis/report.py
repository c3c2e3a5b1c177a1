"""The paper's report from saved predictions alone: metrics.json, report.md, report.html (one
self-contained file) and the figures, for every evaluated model side by side.

Table 1: clean / mCE / PGD-40 error; Table 2: class-wise mean and SD for clean, ReaL, PGD-40.
The attack columns, notes and suites rows come from the fastadv.eval.suites registry (one pair of
K-head / K+M columns per ATTACK). A suite without data appears as "skipped" with its reason,
never silently missing.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fastadv.errors import FastadvError
from fastadv.methods.registry import method_names, method_spec
from fastadv.analysis.comparable import check_comparable, describe, warning_lines
from fastadv.analysis.figures import classwise_figure, imagenet_c_figure, imagenet_x_figure
from fastadv.analysis.training_curves import add_training_figures
from fastadv.analysis.metrics import CORRUPTIONS, relative_change
from fastadv.analysis.report_robustness import add_sections, headline_fields, headline_lines
from fastadv.analysis.report_render import Bullets, Doc, Figure, Heading, Para, Table, to_html, to_markdown
from fastadv.analysis.scoring import Sources, find_inputs, headline, model_metrics
from fastadv.runtime.fileio import atomic_write
from fastadv.eval.suites import (ATTACK, CLEAN, IMAGENET_C, IMAGENET_C_SETTING_SUITE, IMAGENET_X, REAL, TPGD, SettingSpec,
                            attack_keys, setting_spec, setting_specs, suite_spec, suite_specs)
from fastadv.analysis.report_names import distinct_names
from fastadv.analysis.report_ranking import rank_methods, ranking_table, run_entry

DASH = "—"
SKIPPED = "skipped"


def _finite(obj: Any) -> Any:
    """NaN / inf -> None throughout, so metrics.json is strict JSON."""
    if isinstance(obj, float) and (math.isnan(obj) or math.isinf(obj)):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def _pct(x: float | None) -> str:
    return DASH if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def _cw(model: dict[str, Any], key: str | None, field: str) -> float | None:
    s = model["settings"].get(key) if key else None
    return None if s is None else s["classwise"][field]


def _err(model: dict[str, Any], key: str | None) -> float | None:
    s = model["settings"].get(key) if key else None
    return None if s is None else s["error"]


def _done(model: dict[str, Any], suite: str) -> bool:
    return model["suites"].get(suite, {}).get("status") == "done"


def _reason(model: dict[str, Any], suite: str) -> str:
    return model["suites"].get(suite, {}).get("reason", "not evaluated")


def _attacks(models: list[dict[str, Any]]) -> list[SettingSpec]:
    """The registered attacks the tables show: always_reported ones, and any a model was evaluated with."""
    return [spec for spec in setting_specs(ATTACK)
            if spec.always_reported or any(k or km for m in models for k, km in [attack_keys(m["settings"], spec)])]


def _attack_suites(attacks: list[SettingSpec]) -> list[str]:
    return list(dict.fromkeys(spec.suite for spec in attacks))


def _keys(model: dict[str, Any], spec: SettingSpec) -> tuple[str | None, str | None]:
    return attack_keys(model["settings"], spec)


def _title(models: list[dict[str, Any]], spec: SettingSpec) -> str:
    """The attack's display name from the first model that has one of its settings ("PGD-40")."""
    return spec.display(next((k for m in models for k in _keys(m, spec) if k), None))


def _role(model: dict[str, Any]) -> str | None:
    """Std / Adv / Adv+ from the registry entry of the method the run trained with (eval.json), never its name."""
    method = model.get("method")
    return (method_spec(method).role or None) if method in method_names() else None


def _pairs(models: list[dict[str, Any]]) -> list[tuple[str, dict, str, dict]]:
    """(label, before, label, after): the paper's Std/Adv/Adv+ pairs, else later models vs the first."""
    by_role: dict[str, dict] = {}
    for m in models:
        by_role.setdefault(_role(m) or "", m)
    by_role.pop("", None)
    if len(by_role) >= 2:
        order = [("Std", "Adv"), ("Std", "Adv+"), ("Adv", "Adv+")]
        return [(a, by_role[a], b, by_role[b]) for a, b in order if a in by_role and b in by_role]
    return [(models[0]["model"], models[0], m["model"], m) for m in models[1:]]


def _mce(model: dict[str, Any], field: str) -> str:
    c = model["suites"].get(IMAGENET_C, {})
    if c.get("status") != "done":
        return SKIPPED
    value = _pct(c.get(field))
    return value if c.get("complete") else f"{value} (partial: {len(c.get('mce_corruptions', []))}/{len(CORRUPTIONS)})"


def _skip_notes(models: list[dict[str, Any]], suite: str, label: str) -> list[str]:
    """One line per distinct skip reason of a suite, naming the models it applies to."""
    groups: dict[str, list[str]] = {}
    for m in models:
        if not _done(m, suite):
            groups.setdefault(_reason(m, suite), []).append(m["model"])
    every = len(models)
    return [f"{label}: skipped for {'every model' if len(who) == every else ', '.join(who)}: {reason}."
            for reason, who in groups.items()]


def _skipped_images(model: dict[str, Any]) -> str:
    """Undecodable images the evaluation skipped, per setting (eval.json's skipped_images)."""
    counts = {k: s.get("skipped_images") for k, s in model["settings"].items() if s.get("skipped_images") is not None}
    if not counts:
        return "skipped images: not recorded"
    if not any(counts.values()):
        return "skipped images: none"
    return "skipped images: " + ", ".join(f"{n} in {k}" for k, n in counts.items() if n)


def _relative_lines(models: list[dict[str, Any]]) -> list[str]:
    lines = []
    attacks = _attacks(models)
    for la, before, lb, after in _pairs(models):
        keys = [(spec.display(_keys(after, spec)[0] or _keys(before, spec)[0]), *_keys(before, spec), *_keys(after, spec))
                for spec in attacks]
        quantities = [
            ("clean error", _cw(before, CLEAN, "mean"), _cw(after, CLEAN, "mean")),
            ("ReaL error", _cw(before, REAL, "mean"), _cw(after, REAL, "mean")),
            ("mCE (unnormalized)", before["suites"].get(IMAGENET_C, {}).get("mce"),
             after["suites"].get(IMAGENET_C, {}).get("mce")),
        ]
        for title, kb, kmb, ka, kma in keys:
            quantities += [
                (f"{title} error (K-head)", _cw(before, kb, "mean"), _cw(after, ka, "mean")),
                (f"{title} error (paper attack, K+M)", _cw(before, kmb or kb, "mean") if kma else None,
                 _cw(after, kma, "mean")),
            ]
        quantities.append(("clean SD", _cw(before, CLEAN, "sd"), _cw(after, CLEAN, "sd")))
        quantities += [(f"{title} SD (K-head)", _cw(before, kb, "sd"), _cw(after, ka, "sd")) for title, kb, _, ka, _ in keys]
        names = f" ({before['model']} → {after['model']})" if la != before["model"] else ""
        for what, b, a in quantities:
            if b is None or a is None:
                continue
            change = -100 * relative_change(b, a)  # shown signed: negative = lower error after
            text = "n/a (before is 0)" if math.isnan(change) else f"{change + 0.0:+.2f}% relative".replace("-0.00", "+0.00")
            lines.append(f"{lb} vs {la}{names}: {what} {text} ({_pct(b)}% → {_pct(a)}%)")
    return lines or ["(only one model: nothing to compare)"]


def _attack_note(models: list[dict[str, Any]], spec: SettingSpec) -> str:
    groups: dict[str, list[str]] = {}
    for m in models:
        for key in _keys(m, spec):
            s = m["settings"].get(key) if key else None
            params = spec.params(s) if s is not None else None
            if params is not None:
                groups.setdefault(params, []).append(f"{m['model']} {key}")
    if not groups:
        return ""
    if len(groups) == 1:
        return f"Attack parameters (from eval.json): {next(iter(groups))} for every {spec.label} setting."
    return "Attack parameters (from eval.json): " + "; ".join(f"{p} ({', '.join(w)})" for p, w in groups.items()) + "."


def _suite_rows(models: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for m in models:
        for suite in suite_specs():
            s = m["suites"].get(suite.name, {})
            if s.get("status") == "done":
                rows.append([m["model"], suite.label, "done", suite.detail(s)])
            else:
                rows.append([m["model"], suite.label, SKIPPED, s.get("reason", "not evaluated")])
    return rows


def _document(models: list[dict[str, Any]], figures: dict[str, str | None]) -> Doc:
    doc = Doc("fastadv class-wise robustness report")
    attacks = _attacks(models)
    titles = [_title(models, spec) for spec in attacks]
    doc.add(
        *[Para(line) for line in warning_lines(models)],  # models evaluated differently / unknown: first
        Para("Made by `fastadv metrics` / `fastadv report` from the per-image prediction CSVs below; every number "
             "is recomputed from those files alone (no model, no GPU). Errors are top-1 error rates in %; SD is the "
             "population standard deviation across classes (ddof = 0). Models are named by their config's `name` "
             "(give runs compared side by side distinct names: `fastadv train ... name=NAME` or "
             "`fastadv eval RUN --set name=NAME`). Images that could not be decoded were skipped and are counted."),
        *[Para(line) for line in headline_lines(models)],
        Bullets([f"`{m['source']}` ({m['model']}, {m['arch'] or 'arch ?'}, K={m['num_classes']}, M={m['num_aux']}; "
                 f"{_skipped_images(m)}; {describe(m)})" for m in models]),
        Heading(2, "Suites"), Table(["model", "suite", "status", "details / reason"], _suite_rows(models), 99),
        Heading(2, "Table 1: error rates (%)"),
        Table(["model", "Clean", "mCE (paper, unnormalized)", "mCE (AlexNet-normalized)",
               *[h for t in titles for h in (f"{t} (K-head)", f"{t} (K+M, LA only)")]],
              [[m["model"], _pct(_err(m, CLEAN)), _mce(m, "mce"), _mce(m, "mce_alexnet"),
                *[c for spec in attacks for c in (_pct(_err(m, _keys(m, spec)[0])) if _done(m, spec.suite) else SKIPPED,
                                                  _pct(_err(m, _keys(m, spec)[1])) if m["label_augmented"] else DASH)]]
               for m in models]),
    )
    notes = _skip_notes(models, IMAGENET_C, "mCE")
    for suite in _attack_suites(attacks):
        notes += _skip_notes(models, suite, suite_spec(suite).label)
    notes.append("mCE (paper) = mean over the 15 corruptions of CE_c = mean over severities 1-5 of the error; the "
                 "AlexNet-normalized mCE divides each CE_c by AlexNet's error on that corruption first.")
    for spec, t in zip(attacks, titles):
        notes.append(f"{t} (K-head) attacks the K class logits only (the adaptive attack for label-augmented "
                     f"models); {t} (K+M) attacks all K+M logits as the paper does.")
        if _attack_note(models, spec):
            notes.append(_attack_note(models, spec))
    doc.add(Bullets(notes), Heading(2, "Table 2: class-wise error (%)"))
    rows = []
    for m in models:
        real = [_pct(_cw(m, REAL, "mean")), _pct(_cw(m, REAL, "sd"))] if _done(m, REAL) else [SKIPPED] * 2
        rows.append([m["model"], _pct(_cw(m, CLEAN, "mean")), _pct(_cw(m, CLEAN, "sd")), *real,
                     *[c for spec in attacks for c in (_pct(_cw(m, _keys(m, spec)[0], "mean")),
                                                       _pct(_cw(m, _keys(m, spec)[0], "sd")))]])
    doc.add(Table(["model", "clean mean", "clean SD", "ReaL mean", "ReaL SD",
                   *[h for t in titles for h in (f"{t} mean", f"{t} SD")]], rows))
    k_head = (f"{titles[0]} here is the K-head attack; the K+M attack's numbers are in the detail." if len(titles) == 1
              else f"{' and '.join(titles)} here are the K-head attacks; the K+M attacks' numbers are in the detail."
              if titles else "")
    doc.add(Bullets(_skip_notes(models, REAL, "ReaL") + [
        "Class-wise mean and SD over classes (ddof = 0). ReaL groups the images with a non-empty ReaL list by "
        f"their original class. {k_head}".rstrip()]))
    _classwise_detail(doc, models)
    add_sections(doc, models)
    _imagenet_c_section(doc, models, figures.get(IMAGENET_C))
    _imagenet_x_section(doc, models, figures.get(IMAGENET_X))
    _temperature_section(doc, models)
    doc.add(Heading(2, "Relative changes"),
            Para("(after - before) / before of the class-wise mean error (or SD; mCE as is), in %: negative = lower "
                 "error after (the paper's \"reduced by x%\" is the same number without the minus sign)."),
            Bullets(_relative_lines(models)))
    doc.add(Heading(2, "Figure: class-wise error per setting"))
    if figures.get("classwise"):
        doc.add(Figure(figures["classwise"], "class-wise error per setting",
                       "Class-wise error per setting; each model's classes sorted from worst to best (x = class rank), "
                       "so the curves compare error distributions, not individual classes."))
    return doc


def _classwise_detail(doc: Doc, models: list[dict[str, Any]]) -> None:
    rows = []
    for m in models:
        for key, s in m["settings"].items():
            if s.get("suite") == IMAGENET_C_SETTING_SUITE:
                continue
            cw = s["classwise"]
            worst = DASH if cw["worst_class"] is None else m["class_names"][cw["worst_class"]]
            if cw["worst_ties"] > 1:
                worst += f" (+{cw['worst_ties'] - 1} tied)"
            rows.append([m["model"], key, str(s.get("title", key)), str(s["images"]), _pct(s["error"]), _pct(cw["mean"]),
                         _pct(cw["sd"]), worst, _pct(cw["worst"]), _pct(cw["worst10_mean"]), str(cw["n_classes"])])
    doc.add(Heading(2, "Class-wise detail (%)"),
            Table(["model", "setting", "title", "images", "top-1 error", "class mean", "class SD", "worst class",
                   "worst error", "worst 10% mean", "classes"], rows, 3),
            Para("Worst 10% mean: the mean error of the ceil(10%) worst classes (at least one). Per-class errors of "
                 "every setting, ImageNet-C included, are in metrics.json."))


def _temperature_section(doc: Doc, models: list[dict[str, Any]]) -> None:
    """Class-wise attack analysis: per-class robust error under PGD vs Temperature-PGD (eval.temperatures)."""
    rows = []
    spec = setting_spec(TPGD)
    for m in models:
        base = _keys(m, setting_spec(spec.compare_to))[0]
        for key, s in m["settings"].items():
            if s.get("suite") != spec.suite or base is None:
                continue
            before = m["settings"][base]["per_class_error"]
            after = s["per_class_error"]
            gains = sorted(((a - b, c) for c, (b, a) in enumerate(zip(before, after)) if a is not None and b is not None),
                           reverse=True)
            losers = ", ".join(f"{m['class_names'][c]} (+{100 * d:.1f})" for d, c in gains[:5] if d > 0) or "none"
            harder = sum(1 for d, _ in gains if d > 0)
            rows.append([m["model"], f"{s.get('temperature', key)}", _pct(_cw(m, base, "mean")), _pct(_cw(m, key, "mean")),
                         _pct(_cw(m, base, "worst")), _pct(_cw(m, key, "worst")), f"{harder}/{len(gains)}", losers])
    if not rows:
        return
    doc.add(Heading(2, "Class-wise attack analysis: PGD vs Temperature-PGD (%)"),
            Table(["model", "T", "PGD class mean", "T-PGD class mean", "PGD worst", "T-PGD worst",
                   "classes with higher error", "classes that lose most (+points)"], rows, 2),
            Para("Temperature-PGD attacks CE(softmax(z / T), y) on the K-class head with the PGD setting's eps, steps "
                 "and step size (our reconstruction of Tian et al. 2021). The last column lists the classes whose "
                 "robust error rises most under T-PGD relative to PGD."))


def _imagenet_c_section(doc: Doc, models: list[dict[str, Any]], figure: str | None) -> None:
    doc.add(Heading(2, "ImageNet-C: error per corruption and severity (%)"))
    done = [m for m in models if _done(m, IMAGENET_C)]
    notes = _skip_notes(models, IMAGENET_C, suite_spec(IMAGENET_C).label)
    if done:
        rows = []
        for m in done:
            for name, per in m["suites"][IMAGENET_C]["corruptions"].items():
                errs = per["errors"]
                sev = [_pct(errs.get(s, errs.get(str(s)))) for s in range(1, 6)]
                rows.append([m["model"], name, *sev, _pct(per["ce"]), DASH if per["ce_alexnet"] is None
                             else f"{100 * per['ce_alexnet']:.2f}", _pct(per.get("classwise_sd_mean"))])
        doc.add(Table(["model", "corruption", "s1", "s2", "s3", "s4", "s5", "CE", "CE / AlexNet", "class SD (mean over s)"],
                      rows, 2))
        notes.append("CE = mean error over the evaluated severities; CE / AlexNet in % of AlexNet's error. Corruptions "
                     "outside the 15 of mCE (speckle_noise, gaussian_blur, spatter, saturate) have no AlexNet value.")
    doc.add(Bullets(notes))
    if figure:
        doc.add(Figure(figure, "ImageNet-C error per corruption and severity",
                       "ImageNet-C top-1 error against severity, one panel per corruption, one line per model."))


def _imagenet_x_section(doc: Doc, models: list[dict[str, Any]], figure: str | None) -> None:
    doc.add(Heading(2, "ImageNet-X: error rate and error ratio per factor"))
    done = [m for m in models if _done(m, IMAGENET_X)]
    notes = _skip_notes(models, IMAGENET_X, suite_spec(IMAGENET_X).label)
    if done:
        factors = list(done[0]["suites"][IMAGENET_X]["factors"])
        header = ["factor"] + [h for m in done for h in (f"{m['model']} images", f"{m['model']} error %",
                                                            f"{m['model']} error ratio")]
        rows = []
        for f in factors:
            row = [f]
            for m in done:
                v = m["suites"][IMAGENET_X]["factors"][f]
                row += [str(v["images"]), _pct(v["error"]),
                        DASH if v["error_ratio"] is None else f"{v['error_ratio']:.3f}"]
            rows.append(row)
        rows.append(["(annotated subset)"] + [c for m in done for c in (
            str(m["suites"][IMAGENET_X]["images"]), _pct(m["suites"][IMAGENET_X]["average_error"]), "1.000")])
        doc.add(Table(header, rows))
        notes.append("Computed with the imagenet-x package's own functions (compute_factor_accuracies, error_ratio) "
                     "on the clean predictions: error ratio = (1 - acc_f) / (1 - acc_avg) over the annotated images; "
                     "top factor, prototypes filtered, as its get_factor_accuracies.")
    doc.add(Bullets(notes))
    if figure:
        doc.add(Figure(figure, "ImageNet-X error rate and error ratio per factor",
                       "ImageNet-X: error rate (top) and error ratio (bottom) per factor of variation."))


def build_report(inputs: list[str | Path], out_dir: str | Path, sources: Sources | None = None,
                 allow_mixed: bool = False) -> dict[str, Any]:
    """Write metrics.json, report.md, report.html and the figures into out_dir; return the metrics.

    `inputs`: eval dirs, run dirs, prediction CSVs (one per model) or folders of them.
    """
    if not inputs:
        raise FastadvError("build_report needs at least one eval dir or predictions CSV.")
    out_dir = Path(out_dir)
    sources = sources or Sources()
    if sources.export_dir is None:
        sources.export_dir = out_dir / "imagenet_x_predictions"
    paths = find_inputs(list(inputs))
    models = [_finite(model_metrics(p, sources)) for p in paths]
    distinct_names(paths, models)  # runs of one recipe share its name: each gets its folder
    check_comparable(models, allow_mixed)  # models evaluated differently: refused before anything is written
    out_dir.mkdir(parents=True, exist_ok=True)
    figures = {"classwise": classwise_figure(models, out_dir), IMAGENET_C: imagenet_c_figure(models, out_dir),
               IMAGENET_X: imagenet_x_figure(models, out_dir)}
    metrics = {
        "units": "errors are fractions in [0, 1]; SD is the population SD across classes (ddof = 0)",
        "headline": {m["model"]: _finite(headline(m) | headline_fields(m)) for m in models},
        "figures": figures,
        "evaluation_warnings": warning_lines(models),
        "models": models,
    }
    doc = _document(models, figures)
    figures.update(add_training_figures(doc, models, paths, out_dir))  # from each run's train.jsonl
    ranking = rank_methods([e for e in (run_entry(m, p) for m, p in zip(models, paths)) if e is not None])
    if ranking:
        metrics["ranking"] = _finite(ranking)
        header, body = ranking_table(ranking)
        doc.add(Heading(2, "Methods ranked: worst-class robust accuracy and class SD (mean ± SD over seeds)"),
                Table(header, body),
                Para("PGD is the K-head setting above. Forward passes per image per epoch of optim.epochs "
                     "(docs/reference/methods.md, costs: input-gradient backward ~ 1, full backward ~ 2); img/s is the median of "
                     "each run's train.jsonl, averaged over seeds, on the machine that trained it."))
    atomic_write(out_dir / "metrics.json", lambda f: f.write(json.dumps(metrics, indent=2, allow_nan=False) + "\n"))
    atomic_write(out_dir / "report.md", lambda f: f.write(to_markdown(doc)))
    atomic_write(out_dir / "report.html", lambda f: f.write(to_html(doc, out_dir)))
    return metrics
