"""The fused kernels alone: achieved GB/s against the device's measured copy bandwidth."""

from __future__ import annotations

import torch

from bench.measure import time_it
from fastadv.kernels.reference import label_augmented_ce_reference, pgd_update_reference


def _triton_ready(device: torch.device) -> bool:
    if device.type != "cuda":
        return False
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def pgd_update_rows(device: torch.device, batch: int, size: int, warmup: int, repeats: int) -> list[dict]:
    """Reads x_adv, x, grad (fp32) and writes x_adv: 4 x numel x 4 bytes per call."""
    x = torch.rand(batch, 3, size, size, device=device)
    x_adv = (x + 0.01 * torch.randn_like(x)).clamp(0, 1)
    grad = torch.randn_like(x)
    eps = torch.full((batch,), 0.03, device=device)
    moved = 4 * x.numel() * 4
    paths = {"reference": lambda: pgd_update_reference(x_adv, x, grad, eps / 4, eps)}
    if _triton_ready(device):
        from fastadv.kernels.pgd_step import pgd_update_triton

        paths["triton"] = lambda: pgd_update_triton(x_adv, x, grad, eps / 4, eps)
    rows = []
    for path, fn in paths.items():
        t = time_it(fn, device, warmup, repeats)
        rows.append({"kernel": "pgd_update", "path": path, "shape": list(x.shape), "seconds": t.median_s,
                     "gb_per_s": moved / t.median_s / 1e9})
    return rows


def la_xent_rows(device: torch.device, batch: int, num_outputs: int, num_classes: int, warmup: int,
                 repeats: int) -> list[dict]:
    """Forward + backward over fp32 logits: reads logits twice, writes the gradient once."""
    logits = torch.randn(batch, num_outputs, device=device, requires_grad=True)
    y = torch.randint(0, num_classes, (batch,), device=device)
    moved = 3 * logits.numel() * 4

    def run(fn):
        def once():
            loss = fn(logits, y, num_classes, 0, 0.03)
            (g,) = torch.autograd.grad(loss, logits)
            return g
        return once

    paths = {"reference": run(label_augmented_ce_reference)}
    if _triton_ready(device):
        from fastadv.kernels.la_xent import label_augmented_ce_triton

        paths["triton"] = run(label_augmented_ce_triton)
    rows = []
    for path, fn in paths.items():
        t = time_it(fn, device, warmup, repeats)
        rows.append({"kernel": "label_augmented_ce (fwd+bwd)", "path": path, "shape": list(logits.shape),
                     "seconds": t.median_s, "gb_per_s": moved / t.median_s / 1e9})
    return rows


def add_copy_share(rows: list[dict], copy_gbs: float) -> list[dict]:
    """Each kernel row's GB/s as a percentage of the measured copy bandwidth (in place)."""
    for k in rows:
        k["percent_of_copy_bandwidth"] = 100 * k["gb_per_s"] / copy_gbs
    return rows
