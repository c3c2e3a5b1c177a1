"""The report's figures (PNG via matplotlib's Agg canvas, no display needed): class-wise error
per setting, ImageNet-C error per corruption and severity, ImageNet-X error rate and error
ratio per factor. Each function returns the file name it wrote, or None when nothing to draw.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fastadv.runtime.fileio import atomic_write
from fastadv.eval import suites

CLASSWISE = "classwise_error.png"
IMAGENET_C = "imagenet_c_error.png"
IMAGENET_X = "imagenet_x_factors.png"
FIRST = (suites.CLEAN, suites.REAL)  # then the attacks' settings (suites.ATTACK), then the rest, in the models' order


def _save(fig: Figure, path: Path) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120), mode="wb")


def _grid(n: int, ncols: int, size: tuple[float, float]):
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False).reshape(-1)
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes


def classwise_figure(models: list[dict[str, Any]], out_dir: Path) -> str | None:
    """One panel per setting except ImageNet-C (clean, ReaL, the attacks first); classes sorted by error."""
    titles: dict[str, str] = {}
    for m in models:
        for key, s in m["settings"].items():
            if s.get("suite") != suites.IMAGENET_C_SETTING_SUITE:
                titles.setdefault(key, str(s.get("title", key)))
    keys = [k for k in FIRST if k in titles]
    keys += [k for k in titles if getattr(suites.spec_of(k), "kind", None) == suites.ATTACK and k not in keys]
    keys += [k for k in titles if k not in keys]
    if not keys:
        return None
    fig, axes = _grid(len(keys), 3, (5, 4))
    for ax, key in zip(axes, keys):
        plotted: list[float] = []
        for i, m in enumerate(models):
            if key not in m["settings"]:
                continue
            e = np.array([np.nan if x is None else x for x in m["settings"][key]["per_class_error"]], dtype=float)
            e = np.sort(e[~np.isnan(e)])[::-1] * 100
            ax.plot(np.arange(e.size), e, color=f"C{i % 10}", marker="o" if e.size <= 50 else None,
                    ms=3, label=m["model"])
            plotted += list(e)
        ax.set_title(titles[key])
        ax.set_xlabel("class rank (sorted by error, per model)")
        ax.set_ylabel("class error (%)")
        ax.set_ylim(*data_ylim(plotted))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    _save(fig, out_dir / CLASSWISE)
    return CLASSWISE


def data_ylim(values: list[float]) -> tuple[float, float]:
    """Error axis (%) fitted to the plotted values with a 5% margin, clipped to [0, 100]."""
    finite = [v for v in values if np.isfinite(v)]
    if not finite:
        return 0.0, 100.0
    lo, hi = min(finite), max(finite)
    pad = max(0.05 * (hi - lo), 0.5)
    return max(0.0, lo - pad), min(100.0, hi + pad)


def imagenet_c_figure(models: list[dict[str, Any]], out_dir: Path) -> str | None:
    """One panel per corruption: error (%) against severity, one line per model."""
    done = [(i, m) for i, m in enumerate(models) if m["suites"].get(suites.IMAGENET_C, {}).get("status") == "done"]
    if not done:
        return None
    names: list[str] = []
    for _, m in done:
        names += [c for c in m["suites"][suites.IMAGENET_C]["corruptions"] if c not in names]
    fig, axes = _grid(len(names), 5, (3.2, 2.8))
    for ax, name in zip(axes, names):
        plotted = []
        for i, m in done:
            per = m["suites"][suites.IMAGENET_C]["corruptions"].get(name)
            if per is None:
                continue
            sev = sorted(int(s) for s in per["errors"])
            err = [100 * per["errors"][s if s in per["errors"] else str(s)] for s in sev]
            ax.plot(sev, err, color=f"C{i % 10}", marker="o", ms=3, label=m["model"])
            plotted += err
        ax.set_title(name.replace("_", " "), fontsize="medium")
        ax.set_xticks([1, 2, 3, 4, 5])
        ax.set_xlabel("severity")
        ax.set_ylabel("error (%)")
        ax.set_ylim(*data_ylim(plotted))
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize="x-small")
    _save(fig, out_dir / IMAGENET_C)
    return IMAGENET_C


def imagenet_x_figure(models: list[dict[str, Any]], out_dir: Path) -> str | None:
    """Two panels: error rate (%) and error ratio per factor, grouped bars, one colour per model."""
    done = [(i, m) for i, m in enumerate(models) if m["suites"].get(suites.IMAGENET_X, {}).get("status") == "done"]
    if not done:
        return None
    factors = list(done[0][1]["suites"][suites.IMAGENET_X]["factors"])
    fig, axes = _grid(2, 1, (max(8.0, 0.6 * len(factors)), 3.6))
    width = 0.8 / len(done)
    x = np.arange(len(factors))
    for ax, field, label in ((axes[0], "error", "error rate (%)"), (axes[1], "error_ratio", "error ratio")):
        for j, (i, m) in enumerate(done):
            per = m["suites"][suites.IMAGENET_X]["factors"]
            scale = 100 if field == "error" else 1
            vals = [np.nan if per[f][field] is None else scale * per[f][field] for f in factors]
            ax.bar(x - 0.4 + width * (j + 0.5), vals, width, color=f"C{i % 10}", label=m["model"])
        if field == "error_ratio":
            ax.axhline(1.0, color="black", lw=0.8, ls="--")
        ax.set_xticks(x, [f.replace("_", " ") for f in factors], rotation=45, ha="right")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize="small")
    axes[0].set_title("ImageNet-X: error rate per factor (clean predictions)")
    axes[1].set_title("ImageNet-X: error ratio per factor, (1 - acc_f) / (1 - acc_avg)")
    _save(fig, out_dir / IMAGENET_X)
    return IMAGENET_X
