"""Ranking of training methods from saved results: each method's runs (one per seed) grouped by
method.name from their config.toml, ranked by worst-class PGD robust accuracy (higher first) and
by the SD across classes of robust accuracy (lower first), each as mean ± SD over the seeds, with
the method's cost: forward-pass equivalents per image (fastadv.methods.registry.forward_equivalents)
and the measured training images/sec (median of the run's train.jsonl lines).
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from fastadv.eval import suites
from fastadv.config import from_dict, tomllib
from fastadv.errors import FastadvError
from fastadv.methods.registry import forward_equivalents


def run_dir_of(eval_path: Path) -> Path | None:
    """The run folder (with config.toml) an eval dir belongs to, or None."""
    for candidate in (eval_path, eval_path.parent):
        if (candidate / "config.toml").is_file():
            return candidate
    return None


def train_images_per_sec(run_dir: Path) -> float | None:
    log = run_dir / "train.jsonl"
    if not log.is_file():
        return None
    rates = []
    for line in log.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("event") == "train" and rec.get("images_per_sec"):
            rates.append(float(rec["images_per_sec"]))
    return statistics.median(rates) if rates else None


def run_entry(model: dict[str, Any], eval_path: Path) -> dict[str, Any] | None:
    """One run's numbers, or None when it has no run config or no PGD setting."""
    run = run_dir_of(Path(eval_path))
    keys = suites.attack_keys(model["settings"], suites.setting_spec(suites.PGD))
    if run is None or not keys or not keys[0] or keys[0] not in model["settings"]:
        return None
    try:
        cfg = from_dict(tomllib.loads((run / "config.toml").read_text()))
    except (tomllib.TOMLDecodeError, FastadvError):
        return None
    cw = model["settings"][keys[0]]["classwise"]
    return {"method": cfg.method.name, "seed": cfg.train.seed, "model": model["model"],
            "worst_robust_acc": None if cw["worst"] is None else 1 - cw["worst"],
            "robust_sd": cw["sd"], "forward_equivalents": forward_equivalents(cfg),
            "images_per_sec": train_images_per_sec(run)}


def _mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    values = [v for v in values if v is not None]
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.pstdev(values) if len(values) > 1 else 0.0)


def rank_methods(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per method (its seeds pooled), with rank_worst (1 = best worst class) and rank_sd (1 = lowest SD)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        groups.setdefault(e["method"], []).append(e)
    rows = []
    for method, runs in groups.items():
        worst, worst_sd = _mean_sd([r["worst_robust_acc"] for r in runs])
        sd, sd_sd = _mean_sd([r["robust_sd"] for r in runs])
        ips, _ = _mean_sd([r["images_per_sec"] for r in runs])
        rows.append({"method": method, "seeds": sorted(r["seed"] for r in runs), "worst_robust_acc": worst,
                     "worst_robust_acc_sd_over_seeds": worst_sd, "robust_sd": sd, "robust_sd_sd_over_seeds": sd_sd,
                     "forward_equivalents": runs[0]["forward_equivalents"], "images_per_sec": ips})

    def order(key: str, reverse: bool) -> None:
        ranked = sorted((r for r in rows if r[key] is not None), key=lambda r: r[key], reverse=reverse)
        for i, r in enumerate(ranked, 1):
            r["rank_" + ("worst" if key == "worst_robust_acc" else "sd")] = i

    order("worst_robust_acc", True)
    order("robust_sd", False)
    return sorted(rows, key=lambda r: r.get("rank_worst", len(rows) + 1))


def ranking_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    def pm(m: float | None, s: float | None) -> str:
        return "—" if m is None else f"{100 * m:.2f} ± {100 * (s or 0):.2f}"

    header = ["method", "seeds", "worst-class robust acc (%)", "rank", "class SD of robust acc (%)", "rank",
              "forward passes / image", "train img/s"]
    body = [[r["method"], ",".join(map(str, r["seeds"])), pm(r["worst_robust_acc"], r["worst_robust_acc_sd_over_seeds"]),
             str(r.get("rank_worst", "—")), pm(r["robust_sd"], r["robust_sd_sd_over_seeds"]), str(r.get("rank_sd", "—")),
             "—" if r["forward_equivalents"] is None else f"{r['forward_equivalents']:.1f}",
             "—" if r["images_per_sec"] is None else f"{r['images_per_sec']:.0f}"] for r in rows]
    return header, body
