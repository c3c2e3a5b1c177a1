"""`fastadv eval --weights FILE --arch NAME`: the class-wise report card of a published model.

Builds a config (a recipe, default demo-std for the demo data and imagenet-std otherwise),
loads the weights (fastadv.models.weights: any layout the field publishes), writes a run folder
(config.toml and a fastadv checkpoint whose config records the weights source), then runs
the ordinary evaluation and report on it. A folder that already holds a run is refused.
"""

from __future__ import annotations

import json
from pathlib import Path

from fastadv.models.checkpoint import CHECKPOINT_NAME, fingerprint, save_checkpoint
from fastadv.analysis.report import build_report
from fastadv.config import load_config, to_toml
from fastadv.errors import FastadvError
from fastadv.runtime.fileio import atomic_write


def default_recipe(data: str | None) -> str:
    return "demo-std" if data in (None, "", "demo") else "imagenet-std"


def weights_config(weights: str, arch: str, data: str | None, out: str, recipe: str | None = None,
                   overrides: list[str] | None = None):
    """The config of an evaluation-only run of `weights` (recipe defaults + the weights + overrides)."""
    q = json.dumps  # a TOML basic string
    items = [f"model.arch={q(arch)}", f"model.weights={q(weights)}", "model.pretrained=false", 'model.init=""',
             "model.num_aux=0", f"train.out_dir={q(out)}"]
    items += ["data.backend=demo"] if data in (None, "", "demo") else [f"data.path={q(data)}"]
    cfg = load_config(recipe or default_recipe(data), items + list(overrides or []))
    if cfg.model.replace_head:
        raise FastadvError("model.replace_head=true would evaluate a new random classifier, not the file's; "
                           "leave it out of fastadv eval --weights (it is for training a new head)")
    cfg.name = f"{Path(weights).stem if Path(weights).suffix else weights}"
    return cfg


def evaluate_weights(weights: str, arch: str, data: str | None = None, out: str | None = None,
                     recipe: str | None = None, overrides: list[str] | None = None, progress: bool = True) -> Path:
    """Evaluate a weights file without training; returns the run folder (eval/ and report/ inside)."""
    from fastadv.eval.evaluate import evaluate
    from fastadv.models import build_model

    out_dir = Path(out or f"runs/eval-{Path(weights).stem or arch.replace(':', '-')}")
    if (out_dir / CHECKPOINT_NAME).exists() or (out_dir / "config.toml").exists():
        raise FastadvError(f"{out_dir} already holds a run (checkpoint.pt / config.toml); pass another --out")
    cfg = weights_config(weights, arch, data, str(out_dir), recipe, overrides)
    model = build_model(cfg.model)  # reads the file, maps its keys; sets model.mean/std if the file carries them
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write(out_dir / "config.toml", lambda f: f.write(to_toml(cfg)))
    save_checkpoint(out_dir / CHECKPOINT_NAME, {
        "config": cfg.to_dict(), "fingerprint": fingerprint(cfg), "model": model.state_dict(), "eval_model": None,
        "weights_source": {"weights": weights, "arch": arch}, "progress": {"epoch": 0, "step": 0},
    })
    eval_dir = evaluate(out_dir, progress=progress)
    build_report([eval_dir], out_dir / "report")
    return out_dir
