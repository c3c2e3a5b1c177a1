"""Class-wise gap curves over training (docs/guides/watching.md): the report reads the robust-validation
records ({"event": "validation"}) of each run's train.jsonl, next to its eval/ folder, and draws
the mean, worst-class and class SD of robust accuracy per validation (one line per run), and the
per-class robust accuracy over training of one run as a heat-map (classes sorted by final accuracy).
Saved files only: no model, no GPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from fastadv.analysis.figures import _grid, _save
from fastadv.analysis.report_render import Doc, Figure, Heading

CURVES = "classwise_gap_curves.png"
HEATMAP = "classwise_heatmap.png"
PANELS = (("robust_acc", "mean robust accuracy (%)"), ("worst_class_robust_acc", "worst-class robust accuracy (%)"),
          ("robust_class_sd", "class SD of robust accuracy (%)"))


def validation_records(path: str | Path) -> list[dict[str, Any]]:
    """A run's validation records in step order; a step validated twice (a resumed run) counts once (the last)."""
    p = Path(path)
    log = (p.parent if p.is_dir() else p.parent.parent) / "train.jsonl"  # <run>/eval or <run>/eval/<x>.csv
    if not log.is_file():
        return []
    by_step: dict[int, dict[str, Any]] = {}
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        if isinstance(r, dict) and r.get("event") == "validation":
            by_step[int(r["step"])] = r
    return [by_step[s] for s in sorted(by_step)]


def gap_curves_figure(runs: list[tuple[str, list[dict[str, Any]]]], out_dir: Path) -> str | None:
    """Three panels (mean, worst class, class SD of robust accuracy) against the epoch, one line per run."""
    runs = [(name, recs) for name, recs in runs if recs]
    if not runs:
        return None
    fig, axes = _grid(len(PANELS), 3, (5, 4))
    for ax, (field, label) in zip(axes, PANELS):
        for i, (name, recs) in enumerate(runs):
            ax.plot([r["epoch"] for r in recs], [100 * r[field] for r in recs], color=f"C{i % 10}", marker="o",
                    ms=3, label=name)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    fig.suptitle(f"robust validation over training ({runs[0][1][-1].get('attack', 'PGD')}, "
                 f"{runs[0][1][-1].get('images')} images, {runs[0][1][-1].get('split')})")
    _save(fig, out_dir / CURVES)
    return CURVES


def heatmap_figure(name: str, recs: list[dict[str, Any]], class_names: list[str], out_dir: Path) -> str | None:
    """Per-class robust accuracy (rows: classes sorted by final accuracy, best on top) x validation (columns)."""
    if not recs:
        return None
    acc = np.array([[np.nan if a is None else a for a in r["robust_acc_per_class"]] for r in recs], dtype=float).T
    order = np.argsort(-np.nan_to_num(acc[:, -1], nan=-1.0), kind="stable")
    fig, axes = _grid(1, 1, (max(5.0, 0.25 * len(recs) + 3), max(3.0, 0.12 * len(order) + 1.5)))
    ax = axes[0]
    image = ax.imshow(100 * acc[order], aspect="auto", cmap="viridis", vmin=0, vmax=100, interpolation="nearest")
    fig.colorbar(image, ax=ax, label="robust accuracy (%)")
    ax.set_xticks(range(len(recs)), [f"{r['epoch']:g}" for r in recs], fontsize="small")
    if len(order) <= 40:
        ax.set_yticks(range(len(order)), [class_names[i] if i < len(class_names) else str(i) for i in order],
                      fontsize="small")
    ax.set_xlabel("epoch")
    ax.set_ylabel("class (sorted by final robust accuracy)")
    ax.set_title(f"{name}: per-class robust accuracy over training")
    _save(fig, out_dir / HEATMAP)
    return HEATMAP


def add_training_figures(doc: Doc, models: list[dict[str, Any]], paths: list[Any], out_dir: Path) -> dict[str, Any]:
    """The report section and its figures; the heat-map shows the last run that has validation records."""
    runs = [(m["model"], validation_records(p)) for m, p in zip(models, paths)]
    curves = gap_curves_figure(runs, out_dir)
    if curves is None:  # no run was validated while training (train.validate): no section
        return {"gap_curves": None, "heatmap": None}
    doc.add(Heading(2, "Figure: class-wise robustness gap over training"))
    last = max(i for i, (_, recs) in enumerate(runs) if recs)
    heat = heatmap_figure(runs[last][0], runs[last][1], list(models[last].get("class_names") or []), out_dir)
    doc.add(Figure(curves, "class-wise gap curves",
                   "Robust validation while training (train.jsonl): mean, worst-class and class SD of robust "
                   "accuracy, one line per run, on the fixed images each record names (held-out split or a val "
                   "subset): not the final evaluation."),
            Figure(heat, "per-class robust accuracy over training",
                   f"{runs[last][0]}: robust accuracy of every class at each validation, classes sorted by final "
                   f"accuracy (best on top)."))
    return {"gap_curves": curves, "heatmap": heat}
