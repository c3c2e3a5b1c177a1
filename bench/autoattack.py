"""AutoAttack's cost: images/sec of the suite on this device, and its work per image in model passes.

    python -m bench.autoattack                       # CPU: ResNet-18 at 32 px, 8 images, standard version
    python -m bench.autoattack --arch resnet50 --size 224 --images 64 --json out.json

Two cases bound the cost of `fastadv eval --suite autoattack` (fastadv.attacks.auto_attack, pyautoattack):
- "broken": a randomly initialised network, images labelled with its own clean prediction, so
  every image starts correct and APGD-CE (the first attack) breaks nearly all of them;
- "robust": the same network with its logits scaled by 1e-3 and class 0 ahead by a margin of 10,
  so no perturbation within eps changes the prediction (gradients stay non-zero) and
  every image goes through all four attacks of the standard version (APGD-CE, APGD-T, FAB-T, Square):
  the cost of an image that is robust, as most are for a robust ImageNet model.
Each case reports wall images/sec here and, counted by a wrapper, forward passes and input-gradient
backward passes per image. The per-image pass counts do not depend on the device, which is what
the full-ImageNet estimate in docs/guides/evaluation.md is computed from (a stated assumption about GPU throughput).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch
from torch import nn

from fastadv.attacks.auto_attack import AutoAttackRun
from fastadv.config import ModelConfig
from fastadv.models import build_model


class PassCounter(nn.Module):
    """Counts images through forward, and images whose input gradient a backward computed."""

    def __init__(self, net: nn.Module, robust: bool = False) -> None:
        super().__init__()
        self.net, self.constant = net, robust
        self.forward_images = 0
        self.backward_images = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.forward_images += x.shape[0]
        out = self.net(x)
        if self.constant:  # class 0 by a margin no eps-perturbation can overcome; gradients stay non-zero
            out = 1e-3 * out + 10.0 * nn.functional.one_hot(torch.zeros_like(out[:, 0], dtype=torch.long),
                                                            out.shape[1]).to(out.dtype)
        if x.requires_grad:
            n = x.shape[0]
            out.register_hook(lambda g: self._count_backward(n) or g)
        return out

    def _count_backward(self, n: int) -> None:
        self.backward_images += n


def measure(arch: str, size: int, images: int, num_classes: int, eps: float, robust: bool, version: str) -> dict:
    torch.manual_seed(0)
    net = build_model(ModelConfig(arch=arch, num_classes=num_classes, num_aux=0, pretrained=False)).eval()
    model = PassCounter(net, robust=robust).eval()
    x = torch.rand(images, 3, size, size)
    with torch.no_grad():
        y = model(x).argmax(1)  # every image starts correctly classified
    model.forward_images = 0
    run = AutoAttackRun(eps=eps, num_classes=num_classes, version=version)
    start = time.perf_counter()
    result = run.run(model, x, y)
    seconds = time.perf_counter() - start
    return {"case": "robust" if robust else "broken", "arch": arch, "size": size, "images": images,
            "version": version, "eps": eps, "seconds": seconds, "images_per_sec": images / seconds,
            "robust_after": sum(result.robust), "broken_by": sorted(set(result.broken_by) - {""}),
            "forwards_per_image": model.forward_images / images,
            "input_backwards_per_image": model.backward_images / images}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.autoattack", description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--classes", type=int, default=10, help="K (APGD-T / FAB-T use 9 target classes: K >= 10)")
    p.add_argument("--eps", type=float, default=4 / 255)
    p.add_argument("--version", default="standard")
    p.add_argument("--json", help="write the rows here")
    args = p.parse_args(argv)
    rows = [measure(args.arch, args.size, args.images, args.classes, args.eps, robust, args.version)
            for robust in (False, True)]
    for r in rows:
        print(f"{r['case']:>6}: {r['images_per_sec']:8.3f} img/s on {r['arch']} @ {r['size']} px "
              f"({r['seconds']:.1f} s for {r['images']}); per image {r['forwards_per_image']:.0f} forwards, "
              f"{r['input_backwards_per_image']:.0f} input-gradient backwards; robust after: {r['robust_after']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "torch": torch.__version__}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
