"""Time one SGD step (momentum 0.9, weight decay) over ResNet-50's parameters: PyTorch's default
for-loop, foreach and fused implementations side by side, interleaved (what FUSED_SGD_DEVICES in
fastadv/train/optim.py was decided from).

    python -m bench.optimizer_step [--repeats 15] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision

IMPLEMENTATIONS = {"for-loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    model = torchvision.models.resnet50(num_classes=1001).to(args.device)
    for q in model.parameters():
        q.grad = torch.randn_like(q)
    opts = {k: torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-5, **kw)
            for k, kw in IMPLEMENTATIONS.items()}
    times: dict[str, list[float]] = {k: [] for k in opts}
    for opt in opts.values():
        opt.step()  # warm-up: momentum buffers exist
    for r in range(args.repeats):
        names = list(opts)[r % len(opts):] + list(opts)[:r % len(opts)]
        for name in names:
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            opts[name].step()
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
    print(f"SGD step over ResNet-50 ({sum(q.numel() for q in model.parameters()) / 1e6:.1f} M parameters), "
          f"{args.device}, torch {torch.__version__}, median of {args.repeats} interleaved repeats:")
    for name, t in times.items():
        print(f"  {name:9s} {1e3 * statistics.median(t):7.1f} ms  ({1e3 * min(t):.1f}-{1e3 * max(t):.1f})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
