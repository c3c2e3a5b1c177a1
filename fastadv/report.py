"""Markdown + JSON + figure report over several eval dirs, in the primary paper's layout."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fastadv.errors import FastadvError
from fastadv.metrics import model_metrics, relative_change
from fastadv.predictions import atomic_write

KNOWN = ("clean", "pgd40", "pgd40-kplusm")
MCE_SKIPPED = "ImageNet-C not evaluated: no ImageNet-C data configured"
REAL_SKIPPED = "ImageNet-ReaL labels apply only to the ImageNet validation set"
DASH = "—"
FIGURE = "classwise_error.png"
ROLES = (("adv-plus", "Adv+"), ("adv", "Adv"), ("std", "Std"))  # longest suffix first


def _finite(obj: Any) -> Any:
    """NaN -> None throughout, so metrics.json is strict JSON (NaN is not)."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def _pct(x: float | None) -> str:
    return DASH if x is None or math.isnan(x) else f"{100 * x:.2f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(r) + " |" for r in rows]


def _cw(model: dict[str, Any], key: str, field: str) -> float | None:
    s = model["settings"].get(key)
    return None if s is None else s["classwise"][field]


def _err(model: dict[str, Any], key: str) -> float | None:
    s = model["settings"].get(key)
    return None if s is None else s["error"]


def _role(name: str) -> str | None:
    """Std / Adv / Adv+ when the model name ends in std / adv / adv-plus after a separator."""
    low = name.lower()
    for suffix, role in ROLES:
        if low == suffix or any(low.endswith(sep + suffix) for sep in "-_./ "):
            return role
    return None


def _pairs(models: list[dict[str, Any]]) -> list[tuple[str, dict, str, dict]]:
    """(label, before, label, after) pairs: the paper's Std/Adv/Adv+ pairs, else later vs first."""
    by_role: dict[str, dict] = {}
    for m in models:
        by_role.setdefault(_role(m["model"]) or "", m)
    by_role.pop("", None)
    if len(by_role) >= 2:
        order = [("Std", "Adv"), ("Std", "Adv+"), ("Adv", "Adv+")]
        return [(a, by_role[a], b, by_role[b]) for a, b in order if a in by_role and b in by_role]
    return [(models[0]["model"], models[0], m["model"], m) for m in models[1:]]


def _paper_pgd(model: dict[str, Any]) -> float | None:
    """Error under the paper's attack: on all K+M logits (equal to the K-head attack when M = 0)."""
    return _err(model, "pgd40-kplusm") if "pgd40-kplusm" in model["settings"] else _err(model, "pgd40")


def _relative_lines(models: list[dict[str, Any]]) -> list[str]:
    lines = []
    for la, before, lb, after in _pairs(models):
        quantities = [
            ("clean error", _cw(before, "clean", "mean"), _cw(after, "clean", "mean")),
            ("PGD-40 error (K-head)", _cw(before, "pgd40", "mean"), _cw(after, "pgd40", "mean")),
            ("clean SD", _cw(before, "clean", "sd"), _cw(after, "clean", "sd")),
        ]
        if "pgd40-kplusm" in after["settings"] or "pgd40-kplusm" in before["settings"]:
            quantities.insert(2, ("PGD-40 error (paper attack, K+M)", _paper_pgd(before), _paper_pgd(after)))
        names = f" ({before['model']} → {after['model']})" if la != before["model"] else ""
        for what, b, a in quantities:
            if b is None or a is None:
                continue
            change = -100 * relative_change(b, a)  # shown as a signed change: negative = lower
            lines.append(
                f"- {lb} vs {la}{names}: {what} {change:+.2f}% relative ({_pct(b)}% → {_pct(a)}%)"
            )
    return lines or ["- (only one model: nothing to compare)"]


def _attack_note(models: list[dict[str, Any]]) -> str:
    """One line per distinct (eps, steps, alpha) of the PGD settings, naming who used it."""
    groups: dict[str, list[str]] = {}
    for m in models:
        for key in ("pgd40", "pgd40-kplusm"):
            s = m["settings"].get(key)
            if s is not None and "eps" in s:
                params = f"eps={s['eps']}, steps={s.get('steps')}, alpha={s.get('alpha')}"
                groups.setdefault(params, []).append(f"{m['model']} {key}")
    if len(groups) == 1:
        return f"Attack parameters (from eval.json): {next(iter(groups))} for every PGD setting."
    parts = [f"{params} ({', '.join(who)})" for params, who in groups.items()]
    return "Attack parameters (from eval.json): " + "; ".join(parts) + "." if parts else ""


def _markdown(models: list[dict[str, Any]], eval_dirs: list[Path]) -> str:
    out = [
        "# fastadv class-wise robustness report",
        "",
        "Made by `fastadv.report.build_report` from the per-image prediction CSVs of the eval "
        "dirs below; every number is recomputed from those files alone, so the report does not "
        "depend on the machine or device that rendered it. Errors are top-1 error rates in %.",
        "",
        *[f"- `{d}` ({m['model']}, {m['arch'] or 'arch ?'}, K={m['num_classes']}, M={m['num_aux']})"
          for d, m in zip(eval_dirs, models)],
        "",
        "## Table 1: error rates (%)",
        "",
    ]
    rows = [[m["model"], _pct(_err(m, "clean")), "skipped", _pct(_err(m, "pgd40")),
             _pct(_err(m, "pgd40-kplusm")) if m["label_augmented"] else DASH] for m in models]
    out += _table(["model", "Clean", "mCE", "PGD-40 (K-head)", "PGD-40 (K+M, LA only)"], rows)
    out += ["", f"mCE: skipped ({MCE_SKIPPED}).",
            "", "PGD-40 (K-head) attacks the K class logits only (the adaptive attack for "
            "label-augmented models); PGD-40 (K+M) attacks all K+M logits as the paper does.",
            "", _attack_note(models), "", "## Table 2: class-wise error (%)", ""]
    rows = [[m["model"], _pct(_cw(m, "clean", "mean")), _pct(_cw(m, "clean", "sd")), "skipped",
             "skipped", _pct(_cw(m, "pgd40", "mean")), _pct(_cw(m, "pgd40", "sd"))] for m in models]
    out += _table(["model", "clean mean", "clean SD", "ReaL mean", "ReaL SD", "PGD-40 mean", "PGD-40 SD"], rows)
    out += ["", f"ReaL: skipped ({REAL_SKIPPED}).",
            "", "SD is the population standard deviation across classes (ddof = 0). PGD-40 here is "
            "the K-head attack; the K+M attack's class-wise numbers are in the detail below.",
            "", "## Class-wise detail (%)", ""]
    rows = []
    for m in models:
        for key, s in m["settings"].items():
            cw = s["classwise"]
            worst = DASH if cw["worst_class"] is None else m["class_names"][cw["worst_class"]]
            if cw["worst_ties"] > 1:
                worst += f" (+{cw['worst_ties'] - 1} tied)"
            rows.append([m["model"], key, _pct(cw["mean"]), _pct(cw["sd"]), worst,
                         _pct(cw["worst"]), _pct(cw["worst10_mean"]), str(cw["n_classes"])])
    out += _table(["model", "setting", "mean", "SD", "worst class", "worst error",
                   "worst 10% mean", "classes"], rows)
    out += ["", "## Relative changes", "",
            "As in the paper's text: (before - after) / before of the class-wise mean error "
            "(or SD), shown signed (negative = lower error after).", "", *_relative_lines(models)]
    extra = [[m["model"], key, str(s.get("title", key)), str(s["images"]), _pct(s["error"]),
              _pct(s["classwise"]["mean"]), _pct(s["classwise"]["sd"]), _pct(s["classwise"]["worst"])]
             for m in models for key, s in m["settings"].items() if key not in KNOWN]
    if extra:
        out += ["", "## Further settings", ""]
        out += _table(["model", "setting", "title", "images", "error", "cw mean", "cw SD", "worst"], extra)
    out += ["", "## Figure", "", f"![class-wise error per setting]({FIGURE})", "",
            "Class-wise error per setting; each model's classes are sorted from worst to best "
            "(x = class rank), so the curves compare error distributions, not individual classes.", ""]
    return "\n".join(out)


def _figure(models: list[dict[str, Any]], path: Path) -> None:
    """One panel per setting (known ones first), one curve per model in a fixed colour."""
    titles: dict[str, str] = {}
    for m in models:
        for key, s in m["settings"].items():
            titles.setdefault(key, str(s.get("title", key)))
    keys = [k for k in KNOWN if k in titles] + [k for k in titles if k not in KNOWN]
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig = Figure(figsize=(5 * ncols, 4 * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).reshape(-1)
    for ax in axes[len(keys):]:
        ax.set_visible(False)
    for ax, key in zip(axes, keys):
        for i, m in enumerate(models):
            if key not in m["settings"]:
                continue
            e = np.array([np.nan if x is None else x for x in m["settings"][key]["per_class_error"]])
            e = np.sort(e[~np.isnan(e)])[::-1] * 100
            ax.plot(np.arange(e.size), e, color=f"C{i % 10}", marker="o" if e.size <= 50 else None,
                    ms=3, label=m["model"])
        ax.set_title(titles[key])
        ax.set_xlabel("class rank (sorted by error, per model)")
        ax.set_ylabel("class error (%)")
        ax.set_ylim(-2, 102)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120), mode="wb")


def build_report(eval_dirs: list[Path], out_dir: Path) -> dict[str, Any]:
    """Write metrics.json, report.md and classwise_error.png into out_dir; return the metrics."""
    if not eval_dirs:
        raise FastadvError("build_report needs at least one eval dir.")
    eval_dirs = [Path(d) for d in eval_dirs]
    models = [_finite(model_metrics(d)) for d in eval_dirs]
    seen: dict[str, Path] = {}
    for d, m in zip(eval_dirs, models):
        if m["model"] in seen:
            raise FastadvError(
                f"Model name {m['model']!r} appears in both {seen[m['model']]} and {d}; "
                "pass each model once, or give the runs distinct names."
            )
        seen[m["model"]] = d
    metrics = {
        "units": "errors are fractions in [0, 1]; SD is the population SD across classes (ddof = 0)",
        "skipped": {"mCE": MCE_SKIPPED, "ReaL": REAL_SKIPPED},
        "models": models,
    }
    out_dir = Path(out_dir)
    atomic_write(out_dir / "metrics.json", lambda f: f.write(json.dumps(metrics, indent=2, allow_nan=False) + "\n"))
    atomic_write(out_dir / "report.md", lambda f: f.write(_markdown(models, eval_dirs)))
    _figure(models, out_dir / FIGURE)
    return metrics
