"""Evaluate a checkpoint: one predictions CSV per setting (clean, PGD-40, T-PGD, ImageNet-C) and eval.json.

Which settings exist, their keys, titles and attacks come from fastadv.eval.suites (settings_for);
this module only runs them: whole batches per rank, a fixed RNG per batch, rank 0 writes.
ImageNet-C (released folders or generated, eval.imagenet_c) writes one CSV per corruption and
severity. ReaL and ImageNet-X need no model: the analysis re-scores the clean predictions.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from pathlib import Path
from typing import Any

import torch

from fastadv.runtime import distributed
from fastadv.analysis.audit import audit_eval_dir
from fastadv.analysis.predictions import write_predictions
from fastadv.models.checkpoint import BEST_NAME, load_checkpoint, resolve_checkpoint
from fastadv.config import apply_override, from_dict, validate
from fastadv.config.recipe_files import check_data_is_read
from fastadv.data import build_dataset, build_loader
from fastadv.data.eval_subset import select_subset
from fastadv.data.imagenet_c import ImageNetCDataset, check_imagenet_c_root
from fastadv.errors import FastadvError
from fastadv.eval.scoring_rule import reconcile, scored
from fastadv.eval.whole_set import attack_whole_set, runs_whole
from fastadv.eval.resume import ResumeFile, done_marker, resume_file  # noqa: F401 (ResumeFile: a type hint)
from fastadv.runtime.fileio import atomic_write_text
from fastadv.eval.imagenet_c_generate import default_cache, generate_imagenet_c, parse_corruptions, parse_severities
from fastadv.models import build_model, predict_k
from fastadv.runtime.progress import progress_bar
from fastadv.runtime import precision
from fastadv.runtime.device import autocast, eval_amp_dtype, maybe_compile, prepare_model, to_device
from fastadv.eval.suites import CLEAN, IMAGENET_C, IMAGENET_C_SKIPPED, Setting, imagenet_c_setting, settings_for


def evaluate(run: str | Path, out_dir: str | Path | None = None, overrides: list[str] | None = None,
             progress: bool = True, checkpoint: str = "last") -> Path:
    """Write <out_dir>/predictions/<setting>.csv and <out_dir>/eval.json; returns out_dir.

    `run` is a run folder or checkpoint file; overrides (e.g. data.path=..., eval.eps=4/255)
    change the saved config for this evaluation only. out_dir defaults to <run folder>/eval
    (<run folder>/eval-best for best.pt). checkpoint: "last" (checkpoint.pt) or "best" (best.pt).
    """
    ckpt_path = resolve_checkpoint(run, checkpoint)
    ckpt = load_checkpoint(ckpt_path)
    cfg = from_dict(ckpt["config"])
    for item in overrides or []:
        apply_override(cfg, item)
    given_path = [o.partition("=")[2] for o in overrides or [] if o.partition("=")[0].strip() == "data.path"]
    check_data_is_read(given_path[-1] if given_path else None, cfg)  # a demo run would ignore --data
    cfg.model.pretrained, cfg.model.init, cfg.model.weights = False, "", ""  # the checkpoint carries the weights
    validate(cfg)
    out = Path(out_dir) if out_dir else ckpt_path.parent / eval_folder_name(ckpt_path)
    # Under torchrun each rank evaluates whole batches of its own and rank 0 writes (fastadv.runtime.distributed).
    device = distributed.setup(cfg.train.device, cfg.train.dist_timeout_s)[1]
    progress = progress and distributed.is_main()
    amp = eval_amp_dtype(cfg.eval.amp)  # eval.amp (fp32 by default), never the run's train.amp
    model = build_model(cfg.model)
    model.load_state_dict(ckpt.get("eval_model") or ckpt["model"])  # eval_model: e.g. the FAWA weight average
    model = prepare_model(model, device, cfg.train.channels_last).eval()
    model = maybe_compile(model, cfg.train.compile, cfg.train.compile_mode, device)  # the fast path on a GPU
    dataset = build_dataset(cfg.data, "val")
    if dataset.num_classes != cfg.model.num_classes:
        raise FastadvError(
            f"the validation data has {dataset.num_classes} classes, the model {cfg.model.num_classes}: "
            f"check data.path ({cfg.data.path or cfg.data.backend})"
        )
    dataset, subset = select_subset(dataset, cfg.eval.subset, cfg.eval.seed)  # a bad list fails before any attack
    settings = settings_for(cfg)  # builds (and so validates) every attack before the first one runs
    batch_size = cfg.eval.batch_size or cfg.data.eval_batch_size
    info: dict[str, Any] = {
        "model": cfg.name, "checkpoint": str(ckpt_path), "arch": cfg.model.arch,
        "method": None if "weights_source" in ckpt else cfg.method.name,  # --weights: not trained here
        "num_classes": cfg.model.num_classes, "num_aux": cfg.model.num_aux,
        "label_augmented": cfg.model.num_aux > 0, "class_names": list(dataset.classes),
        "data": {"backend": cfg.data.backend, "path": cfg.data.path, "images": len(dataset)},
        "device": str(device), "precision": cfg.eval.amp, "eval_seed": cfg.eval.seed,
        # the policy the weights were trained in (train.precision resolved on the training device; the
        # setting itself for checkpoints from before the policy was recorded, None for --weights)
        "train_precision": None if "weights_source" in ckpt else ckpt.get("precision") or cfg.train.precision,
        "settings": {}, "best": ckpt.get("best"),
    }
    info["request"] = request_of(cfg)
    info["real_labels"] = cfg.eval.real_labels or None
    info["subset"] = subset
    clean_rows: dict[str, Any] = {}
    for setting in settings:
        rows = _run_setting(model, dataset, cfg.data, setting, cfg, device, amp, batch_size, out, info, progress)
        if setting.key == CLEAN:
            clean_rows = rows
    info["suites"] = {IMAGENET_C: _imagenet_c(model, dataset, clean_rows, cfg, device, amp, batch_size,
                                              out, info, progress)}
    if distributed.is_main():
        audit_eval_dir(out, info)  # a violated invariant: one line, exit 2, the old eval.json kept
        atomic_write_text(out / "eval.json", json.dumps(info, indent=2))
        shutil.rmtree(out / "partial", ignore_errors=True)  # every setting is in eval.json now
    return out


def eval_folder_name(ckpt_path: Path) -> str:
    """eval/ for checkpoint.pt (and any other file), eval-best/ for best.pt: the two never mix."""
    return "eval-best" if ckpt_path.name == BEST_NAME else "eval"


def describe_checkpoint(ckpt_path: Path) -> str:
    """One line: which checkpoint an evaluation reads."""
    if ckpt_path.name == BEST_NAME:
        return f"evaluating {ckpt_path} (best.pt: the best robust-validation checkpoint)"
    return f"evaluating {ckpt_path} (the last checkpoint; --checkpoint best for best.pt)"


def request_of(cfg) -> dict[str, Any]:
    """What was asked of this evaluation beyond the checkpoint (`eval --skip-existing` compares it)."""
    e = cfg.eval
    return {"data_path": cfg.data.path, "imagenet_c": e.imagenet_c, "corruptions": e.corruptions,
            "severities": e.severities, "real_labels": e.real_labels, "eps": e.eps, "steps": e.steps,
            "temperatures": e.temperatures, "subset": e.subset, "autoattack": e.autoattack,
            "autoattack_eps": e.autoattack_eps, "autoattack_version": e.autoattack_version,
            "autoattack_attacks": e.autoattack_attacks, "masking_checks": e.masking_checks,
            "transfer_from": e.transfer_from, "attack_convention": e.attack_convention,
            # always: an eval.json without it ran under train.amp (bf16 for a bf16 run), so it is redone
            "amp": e.amp,
            # only when on: requests recorded before the option existed stay equal to the default's
            # with AutoAttack runs (its suite, or masking's APGD-CE/Square): before the option, they ran per batch
            **({"autoattack_grouping": e.autoattack_grouping} if e.autoattack or e.masking_checks else {}),
            **({"early_stop": True, "early_stop_compact": e.early_stop_compact} if e.early_stop else {})}


def _run_setting(model, dataset, data_cfg, setting: Setting, cfg, device, amp, batch_size: int, out: Path,
                 info: dict[str, Any], progress: bool) -> dict[str, Any]:
    """Predict one setting over `dataset`, write predictions/<key>.csv and its eval.json entry."""
    # This rank's whole batches; the RNG is seeded per batch from (eval.seed, batch number), so the attack's
    # random start, and every prediction, is the same with any number of ranks and from run to run.
    marker = done_marker(out, setting, cfg, info["checkpoint"], info["request"])
    kept = marker.load()
    if kept is not None and (out / "predictions" / f"{setting.key}.csv").is_file():  # finished before a kill
        entry, rows = kept
        info["settings"][setting.key] = {**entry, "reused": True}
        return rows
    shard = distributed.BatchShard(dataset, batch_size, cfg.eval.seed)
    loader = build_loader(data_cfg, "val", batch_size=batch_size, shuffle=False, dataset=shard.dataset, device=device)
    start = time.perf_counter()
    batches = zip(shard.batch_ids, shard.batches(loader))
    if runs_whole(setting, cfg):  # one AutoAttack over the shard, as the official call; no per-batch partials
        setting, batches, partial = *attack_whole_set(model, batches, setting, cfg, device, amp, batch_size), None
    else:
        partial = resume_file(out, setting, cfg, info["checkpoint"], info["request"]) if setting.resumable else None
    rows = shard.gather(_predict(model, batches, setting, cfg, device, amp, progress, len(shard.dataset), partial))
    seconds = time.perf_counter() - start
    names = [dataset.file_names[i] for i in rows["index"]]
    if distributed.is_main():
        extra = {n.partition(":")[2]: v for n, v in rows.items() if n.startswith("extra:")}
        write_predictions(out / "predictions" / f"{setting.key}.csv", names, rows["pred"], rows["prob"], rows["true"],
                          extra=extra)
    info["settings"][setting.key] = {**setting.info(), "images": len(names), "seconds": seconds,
                                     "images_per_sec": len(names) / max(seconds, 1e-9),
                                     "accuracy": sum(p == t for p, t in zip(rows["pred"], rows["true"])) / max(len(names), 1),
                                     "skipped_images": rows["skipped"], "resumed_batches": rows["resumed"]}
    if distributed.is_main():
        marker.save(info["settings"][setting.key], rows)
    if partial is not None:
        partial.finish()  # after the gather (every rank's rows are in) and rank 0's CSV
    return rows


def _imagenet_c(model, dataset, clean_rows: dict[str, Any], cfg, device, amp, batch_size: int, out: Path,
                info: dict[str, Any], progress: bool) -> dict[str, Any]:
    """One ImageNet-C setting per corruption and severity (suites.imagenet_c_setting) on the images the clean pass scored."""
    spec = cfg.eval.imagenet_c.strip()
    if not spec:
        return {"status": "skipped", "reason": IMAGENET_C_SKIPPED}
    corruptions, severities = parse_corruptions(cfg.eval.corruptions), parse_severities(cfg.eval.severities)
    keep = {dataset.file_names[i]: dataset.classes[dataset.labels[i]] for i in clean_rows["index"]}
    if spec == "generate":
        if not hasattr(dataset, "paths"):
            raise FastadvError("eval.imagenet_c=generate corrupts the validation images on disk: it needs "
                               f"ImageNet-style class folders (data.backend=folder), not data.backend={cfg.data.backend}")
        val_root = Path(dataset.root)
        root = Path(cfg.eval.imagenet_c_cache).expanduser() if cfg.eval.imagenet_c_cache else default_cache(
            val_root, cfg.eval.seed, cfg.data.image_size, cfg.data.val_resize)
        chosen = [i for i, n in enumerate(dataset.file_names) if n in keep]
        failed = generate_imagenet_c(
            [dataset.paths[i] for i in chosen], [dataset.labels[i] for i in chosen], dataset.classes,
            [dataset.file_names[i] for i in chosen], root, corruptions, severities, cfg.eval.seed,
            cfg.data.image_size, cfg.data.val_resize, val_root, workers=cfg.data.workers, progress=progress)
        for name in failed:
            keep.pop(name, None)
        source = {"source": "generated", "path": str(root), "seed": cfg.eval.seed, "jpeg_quality": 85}
    else:
        root = Path(spec).expanduser()
        source = {"source": "released", "path": str(root)}
    check_imagenet_c_root(root, corruptions, severities)
    folder_cfg = dataclasses.replace(cfg.data, backend="folder")
    for c in corruptions:
        for s in severities:
            ds = ImageNetCDataset(root, c, s, dataset.classes, cfg.data.image_size, keep)
            setting = imagenet_c_setting(c, s)
            rows = _run_setting(model, ds, folder_cfg, setting, cfg, device, amp, batch_size, out, info, progress)
            ds.check_sizes(sorted(set(range(len(ds))) - set(rows["index"])))
    return {"status": "done", **source, "corruptions": corruptions, "severities": severities,
            "images": len(keep)}


def _predict(model, batches, setting: Setting, cfg, device, amp, progress: bool, images: int,
             partial: "ResumeFile | None" = None) -> dict[str, Any]:
    """Predict every (batch number, batch); an attack with `returns_extras` also gives per-image CSV columns.
    With `partial`, batches done before a kill are read back instead of attacked again."""
    k = cfg.model.num_classes
    with autocast(device, amp):
        model = precision.fixed_weights(model)  # the weights are fixed for the whole pass: cast once (eval.amp=bf16)
    done = partial.load() if partial is not None else {}
    rows: dict[str, Any] = {"index": [], "pred": [], "prob": [], "true": [], "skipped": 0, "extra": {}, "resumed": 0}
    bar = progress_bar(total=images, desc=f"{cfg.name}: {setting.key}", unit="img", disable=not progress,
                       every=max(1, images // 10))
    for number, batch in batches:
        rows["skipped"] += batch.skipped
        if number in done:
            part, rows["resumed"] = done[number], rows["resumed"] + 1
        elif batch.images.shape[0] == 0:
            continue
        else:
            part = _predict_batch(model, batch, setting, cfg, device, amp, k)
            if partial is not None:
                partial.add(number, part)
        for name in ("index", "pred", "prob", "true"):
            rows[name] += part[name]
        for name, values in part["extra"].items():
            rows["extra"].setdefault(name, []).extend(values)
        bar.update(len(part["index"]))
    bar.close()
    extra = rows.pop("extra")
    # gather merges list fields row by row: one list per extra column, re-assembled after
    rows.update({f"extra:{name}": values for name, values in extra.items()})
    return rows


def _predict_batch(model, batch, setting: Setting, cfg, device, amp, k: int) -> dict[str, Any]:
    x = to_device(batch.images, device, cfg.train.channels_last)
    y = batch.labels.to(device)
    extra: dict[str, list] = {}
    clean_logits = None
    with autocast(device, amp):
        if setting.attack is not None:
            with torch.no_grad():
                clean_logits = model(x).float()
            x = setting.attack(model, x, y)
            if getattr(setting.attack, "returns_extras", False):
                x, extra = x
        with torch.no_grad():
            logits = model(x).float()
    if clean_logits is None:
        pred = predict_k(logits, k)
    else:  # the one scoring rule (fastadv.eval.scoring_rule): a clean error stays an error
        pred, logits = scored(clean_logits, logits, y, k)
    p = torch.softmax(logits[:, :k], dim=1)
    pred_list, true = pred.cpu().tolist(), batch.labels.tolist()
    if clean_logits is not None:
        extra = reconcile(extra, pred_list, true, predict_k(clean_logits, k).eq(y).cpu().tolist())
    return {"index": batch.indices.tolist(), "pred": pred_list,
            "prob": p.max(dim=1).values.cpu().tolist(), "true": true, "extra": extra}
