"""The short tables printed when train, eval and metrics finish: what happened and where the files are."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from fastadv.eval import suites


def grid(header: list[str], rows: list[list[str]]) -> str:
    """A plain-text table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *map(line, rows)])


def pairs(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def _pct(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{100 * value:.1f}%"


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min" if s < 7200 else f"{s / 3600:.1f} h"


def rate(images_per_sec: float) -> str:
    """A speed that reads: 120 img/s, 3.5 img/s, or 4.2 s/img below one image a second (AutoAttack on a CPU)."""
    if images_per_sec >= 10:
        return f"{images_per_sec:.0f} img/s"
    if images_per_sec >= 1:
        return f"{images_per_sec:.1f} img/s"
    return f"{1 / images_per_sec:.1f} s/img" if images_per_sec > 0 else "-"


def read_log(path: Path, start_line: int = 0) -> list[dict[str, Any]]:
    """The JSONL records from line `start_line` on (this invocation's part of an appended log)."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()[start_line:]
    return [json.loads(s) for s in lines if s.strip()]


def train_summary(out_dir: Path, start_line: int, wall_seconds: float) -> str:
    """Final loss and batch accuracies, mean img/s, steps, wall time, the files; from train.jsonl."""
    records = read_log(out_dir / "train.jsonl", start_line)
    steps = [r for r in records if r.get("event") == "train"]
    done = next((r for r in reversed(records) if r.get("event") == "done"), {})
    last = steps[-1] if steps else {}
    rates = [r["images_per_sec"] for r in steps if "images_per_sec" in r]
    rows = [("run", str(out_dir))]
    if last:
        # Measured differently: clean in eval mode after the step, adversarial in train mode (batch statistics)
        # during it, so early on adversarial can read above clean; the labels say which is which.
        rows += [("final loss", f"{last['loss']:.4f} (step {last['step']})"),
                 ("clean acc (last batch, eval mode, after the step)", _pct(last.get("clean_acc")))]
        if "adv_batch_acc" in last:
            rows.append(("adversarial acc (last batch, train mode, during the step)", _pct(last.get("adv_batch_acc"))))
    rows += [("images/s (mean of log lines)", f"{sum(rates) / len(rates):.0f}" if rates else "-"),
             ("steps / epochs", f"{done.get('step', '-')} / {done.get('epoch', '-')}"),
             ("skipped images", str(done.get("skipped_images", 0))),
             ("wall time", _seconds(wall_seconds)),
             ("checkpoint", str(out_dir / "checkpoint.pt")),
             *_validation_rows(records, wall_seconds, out_dir),
             ("log, config", f"{out_dir / 'train.jsonl'}, {out_dir / 'config.toml'}")]
    return "training finished\n" + pairs(rows)


def _validation_rows(records: list[dict[str, Any]], wall_seconds: float, out_dir: Path) -> list[tuple[str, str]]:
    """Robust validation: the last record's numbers, its cost (share of the wall time) and best.pt."""
    checks = [r for r in records if r.get("event") == "validation"]
    if not checks:
        return []
    last, spent = checks[-1], sum(r.get("seconds", 0.0) for r in checks)
    rows = [(f"validation ({last['split']}, {last['images']} images, {last['attack']}, step {last['step']})",
             f"clean {_pct(last['clean_acc'])}, robust {_pct(last['robust_acc'])}, worst class "
             f"{_pct(last['worst_class_robust_acc'])}, class SD {_pct(last['robust_class_sd'])}"),
            ("validation cost", f"{len(checks)} x, {_seconds(spent)} ({100 * spent / max(wall_seconds, 1e-9):.1f}% "
                                f"of the wall time)")]
    best = [r for r in checks if r.get("best")]
    if best:
        rows.append(("best.pt", f"{out_dir / 'best.pt'} ({best[-1]['criterion']} {_pct(best[-1][best[-1]['criterion']])}"
                                f", step {best[-1]['step']})"))
    return rows


def eval_summary(eval_dir: Path, wall_seconds: float) -> str:
    """Accuracy, images, img/s and skipped images per setting (ImageNet-C as one mean row); from eval.json."""
    info = json.loads((eval_dir / "eval.json").read_text(encoding="utf-8"))
    rows, corrupted = [], []
    for key, s in info["settings"].items():
        if suites.suite_of(key) == suites.IMAGENET_C_SETTING_SUITE:
            corrupted.append(s)
            continue
        rows.append([key, _pct(s.get("accuracy")), str(s["images"]), rate(s["images_per_sec"]),
                     str(s.get("skipped_images", 0))])
    if corrupted:
        accs = [s["accuracy"] for s in corrupted if s.get("accuracy") is not None]
        rows.append([f"imagenet-c ({len(corrupted)} settings, mean)", _pct(sum(accs) / len(accs) if accs else None),
                     str(sum(s["images"] for s in corrupted)),
                     rate(sum(s['images_per_sec'] for s in corrupted) / len(corrupted)),
                     str(sum(s.get("skipped_images", 0) for s in corrupted))])
    table = grid(["setting", "accuracy", "images", "speed", "skipped"], rows)
    return (f"evaluated {info['model']} ({info['checkpoint']}) in {_seconds(wall_seconds)}\n{table}\n"
            f"files: {eval_dir / 'eval.json'}, {eval_dir / 'predictions'}/")


def metrics_table(headline: dict[str, dict[str, Any]], report_dir: Path) -> str:
    """`fastadv metrics`: one row per model of the headline errors (in %), then where the report is.

    Every registered attack setting (fastadv.eval.suites, kind ATTACK) gets its K-head and K+M columns."""
    attacks = suites.setting_specs(suites.ATTACK)
    labels = [spec.label or spec.name for spec in attacks]
    names = [label if labels.count(label) == 1 else spec.name for label, spec in zip(labels, attacks)]  # unique
    columns = [(f"{name} err", suites.headline_field(spec, "error")) for name, spec in zip(names, attacks)]
    columns += [(f"{name} K+M err", suites.headline_field(spec, "error", kplusm=True))
                for name, spec in zip(names, attacks)]
    rows = []
    for model, h in headline.items():
        rows.append([model, _pct(h.get("clean_error")), _pct(h.get("real_error")),
                     *[_pct(h.get(field)) for _, field in columns], _pct(h.get("mce")),
                     _pct(h.get("imagenet_x_average_error")), ", ".join(sorted(h.get("skipped") or {})) or "-"])
    table = grid(["model", "clean err", "ReaL err", *[name for name, _ in columns], "mCE", "IN-X err", "skipped"], rows)
    return (f"{table}\n(errors in %; '-' = not evaluated)\n"
            f"report: {report_dir / 'report.html'} (also report.md); every metric: {report_dir / 'metrics.json'}")
