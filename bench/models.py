"""Bench rows per architecture: PGD-10 Adv+ training images/sec and peak memory.

    python -m bench.models                                   # CPU: 64 px, batch 8; GPU: 224 px, batch 64
    python -m bench.models --arch resnet50 timm:convnext_tiny timm:vit_small_patch16_224 --size 224

Times fastadv.train.train_step (the Trainer's step) with Adv+ (PGD-10 on all K+M logits,
K = 1000, M = 1), the recipe's optimizer (SGD for ResNet-50, AdamW for the others), AMP on
CUDA, eager. Each architecture runs with channels_last on and off, so the rows show the
per-family choice fastadv.models.zoo makes (marked `*`). Prints a table; --json writes one.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
from pathlib import Path

import torch

from bench.measure import device_facts, time_it
from bench.workloads import DELTA, EPS, TRAIN_STEPS
from fastadv.attacks import PGD
from fastadv.config import ModelConfig, OptimConfig
from fastadv.methods.adversarial import AdversarialTraining
from fastadv.models import build_model
from fastadv.train.optim import build_optimizer
from fastadv.train import train_step

DEFAULT_ARCHS = ["resnet50", "timm:convnext_tiny", "timm:vit_small_patch16_224"]


def measure(arch: str, size: int, batch: int, channels_last: bool, device: torch.device, warmup: int,
            repeats: int) -> dict:
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, num_classes=1000, num_aux=1, pretrained=False, image_size=size))
    family_choice = model.channels_last
    model.channels_last = channels_last  # forced here to show both; the Trainer uses the family's choice
    model = model.to(device)
    x = torch.rand(batch, 3, size, size, device=device)
    y = torch.randint(0, 1000, (batch,), device=device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    optim = OptimConfig(name="sgd" if arch == "resnet50" else "adamw", lr=1e-4, weight_decay=0.05)
    optimizer = build_optimizer(model, optim)
    method = AdversarialTraining(PGD(eps=EPS, steps=TRAIN_STEPS, alpha_ratio=0.25, num_classes=1000, head="all"), 1000, delta=DELTA)
    scaler = torch.amp.GradScaler(device.type, enabled=False)
    amp = torch.bfloat16 if device.type == "cuda" else None
    t = time_it(lambda: train_step(method, model, optimizer, scaler, x, y, device, amp), device, warmup, repeats)
    row = {"arch": arch, "size": size, "batch": batch, "channels_last": channels_last,
           "family_choice": channels_last == family_choice, "optimizer": optim.name,
           "images_per_sec": batch / t.median_s, "ms_per_batch": 1e3 * t.median_s, "runs_s": t.runs_s,
           "peak_memory_mib": t.peak_mib, "parameters_m": sum(p.numel() for p in model.parameters()) / 1e6}
    del model, optimizer, x, y
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.models", description=__doc__.splitlines()[0])
    p.add_argument("--arch", nargs="+", default=DEFAULT_ARCHS)
    p.add_argument("--device", default="auto")
    p.add_argument("--size", type=int, default=0, help="image size (default 224 on a GPU, 64 on the CPU)")
    p.add_argument("--batch", type=int, default=0, help="batch size (default 64 on a GPU, 8 on the CPU)")
    p.add_argument("--repeats", type=int, default=0, help="timed runs (default 10 GPU, 3 CPU)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--json", help="also write the rows here")
    args = p.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    gpu = device.type == "cuda"
    size, batch = args.size or (224 if gpu else 64), args.batch or (64 if gpu else 8)
    repeats = args.repeats or (10 if gpu else 3)
    facts = device_facts(device)
    print(f"device: {facts['name']} ({device}), torch {facts['torch']}, {size} px, batch {batch}, "
          f"PGD-{TRAIN_STEPS} Adv+ train step, median of {repeats}", flush=True)
    rows = []
    for arch in args.arch:
        for cl in (True, False):
            r = measure(arch, size, batch, cl, device, args.warmup, repeats)
            rows.append(r)
            mark = "*" if r["family_choice"] else " "
            print(f"{mark} {arch:32s} channels_last={str(cl):5s} {r['optimizer']:5s} {r['images_per_sec']:8.2f} img/s "
                  f"{r['ms_per_batch']:9.1f} ms/batch {r['peak_memory_mib']:8.0f} MiB peak", flush=True)
    print("* = fastadv's per-family channels_last choice (fastadv.models.zoo.Arch.channels_last)")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": facts, "command": "python -m bench.models " + " ".join(
            sys.argv[1:]), "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
