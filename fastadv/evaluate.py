"""Evaluate a checkpoint: clean and PGD-40 predictions per validation image, saved as CSV.

Label-augmented models (M > 0) get two PGD settings: the adaptive attack on the K-class
head ("pgd40") and the paper-faithful attack on all K+M logits ("pgd40-kplusm"), because
the latter can raise its loss through an auxiliary logit without changing the K-class
prediction and so overstates robustness (REFERENCE.md §3).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from fastadv.attacks import PGD
from fastadv.checkpoint import load_checkpoint, resolve_checkpoint
from fastadv.config import apply_override, from_dict, validate
from fastadv.data import build_dataset, build_loader
from fastadv.errors import FastadvError
from fastadv.models import build_model, predict_k
from fastadv.predictions import write_predictions
from fastadv.train import amp_dtype, autocast, prepare_model, resolve_device, to_device


@dataclass(frozen=True)
class Setting:
    key: str
    title: str
    attack: PGD | None = None

    def info(self) -> dict[str, Any]:
        if self.attack is None:
            return {"title": self.title}
        a = self.attack
        return {"title": self.title, "eps": a.eps, "eps_255": a.eps * 255, "steps": a.steps,
                "alpha": a.step_size(a.eps), "random_start": a.random_start, "head": a.head}


def settings_for(cfg) -> list[Setting]:
    e, m = cfg.eval, cfg.model
    alpha = e.alpha if e.alpha > 0 else 2.5 * e.eps / e.steps
    name = f"pgd{e.steps}"

    def pgd(head: str) -> PGD:
        return PGD(eps=e.eps, steps=e.steps, alpha=alpha, random_start=e.random_start, num_classes=m.num_classes, head=head)

    out = [Setting("clean", "clean")]
    if m.num_aux:
        out.append(Setting(name, f"PGD-{e.steps} (K-class head, adaptive)", pgd("k")))
        out.append(Setting(f"{name}-kplusm", f"PGD-{e.steps} (all K+M logits, as in the paper)", pgd("all")))
    else:
        out.append(Setting(name, f"PGD-{e.steps}", pgd("k")))
    return out


def evaluate(run: str | Path, out_dir: str | Path | None = None, overrides: list[str] | None = None,
             progress: bool = True) -> Path:
    """Write <out_dir>/predictions/<setting>.csv and <out_dir>/eval.json; returns out_dir.

    `run` is a run folder or checkpoint file; overrides (e.g. data.path=..., eval.eps=4/255)
    change the saved config for this evaluation only. out_dir defaults to <run folder>/eval.
    """
    ckpt_path = resolve_checkpoint(run)
    ckpt = load_checkpoint(ckpt_path)
    cfg = from_dict(ckpt["config"])
    for item in overrides or []:
        apply_override(cfg, item)
    cfg.model.pretrained, cfg.model.init = False, ""  # the checkpoint carries the weights
    validate(cfg)
    out = Path(out_dir) if out_dir else ckpt_path.parent / "eval"
    device = resolve_device(cfg.train.device)
    amp = amp_dtype(cfg.train.amp, device)
    model = build_model(cfg.model)
    model.load_state_dict(ckpt["model"])
    model = prepare_model(model, device, cfg.train.channels_last).eval()
    dataset = build_dataset(cfg.data, "val")
    if dataset.num_classes != cfg.model.num_classes:
        raise FastadvError(
            f"the validation data has {dataset.num_classes} classes, the model {cfg.model.num_classes}: "
            f"check data.path ({cfg.data.path or cfg.data.backend})"
        )
    batch_size = cfg.eval.batch_size or cfg.data.eval_batch_size
    info: dict[str, Any] = {
        "model": cfg.name, "checkpoint": str(ckpt_path), "arch": cfg.model.arch,
        "num_classes": cfg.model.num_classes, "num_aux": cfg.model.num_aux,
        "label_augmented": cfg.model.num_aux > 0, "class_names": list(dataset.classes),
        "data": {"backend": cfg.data.backend, "path": cfg.data.path, "images": len(dataset)},
        "device": str(device), "settings": {},
    }
    for setting in settings_for(cfg):
        torch.manual_seed(cfg.eval.seed)  # the attack's random start repeats run to run
        loader = build_loader(cfg.data, "val", batch_size=batch_size, shuffle=False, dataset=dataset, device=device)
        start = time.perf_counter()
        rows = _predict(model, loader, setting, cfg, device, amp, progress)
        seconds = time.perf_counter() - start
        names = [dataset.file_names[i] for i in rows["index"]]
        write_predictions(out / "predictions" / f"{setting.key}.csv", names, rows["pred"], rows["prob"], rows["true"])
        info["settings"][setting.key] = {**setting.info(), "images": len(names), "seconds": seconds,
                                         "images_per_sec": len(names) / max(seconds, 1e-9),
                                         "skipped_images": rows["skipped"]}
    (out / "eval.json").write_text(json.dumps(info, indent=2))
    return out


def _predict(model, loader, setting: Setting, cfg, device, amp, progress: bool) -> dict[str, Any]:
    k = cfg.model.num_classes
    index, pred, prob, true, skipped = [], [], [], [], 0
    for batch in tqdm(loader, desc=f"{cfg.name}: {setting.key}", unit="batch", disable=not progress, dynamic_ncols=True):
        skipped += batch.skipped
        if batch.images.shape[0] == 0:
            continue
        x = to_device(batch.images, device, cfg.train.channels_last)
        y = batch.labels.to(device)
        with autocast(device, amp):
            if setting.attack is not None:
                x = setting.attack(model, x, y)
            with torch.no_grad():
                logits = model(x).float()
        p = torch.softmax(logits[:, :k], dim=1)
        pred.append(predict_k(logits, k).cpu())
        prob.append(p.max(dim=1).values.cpu())
        true.append(batch.labels.cpu())
        index.append(batch.indices.cpu())
    cat = (lambda xs: torch.cat(xs).tolist() if xs else [])
    return {"index": cat(index), "pred": cat(pred), "prob": cat(prob), "true": cat(true), "skipped": skipped}
