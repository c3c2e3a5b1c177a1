"""A PyTorch CPU bf16 bug found while testing issue 29 (no fastadv code involved):

    python -m bench.torch_bf16_grad_repro            # 16 px, batch 3: some of 12 identical runs go wrong
    python -m bench.torch_bf16_grad_repro 32 64      # the demo's size: none did

One forward + backward of torchvision's ResNet-18 under CPU bf16 autocast, the same seed and input
every run. The weight gradient of layer4.0.conv1 is sometimes garbage (> 1e6; the rest of the runs
agree to the bit). fp32 never, 32 px never (measured: PyTorch 2.15.0, Intel Xeon with AMX-BF16).
"""

from __future__ import annotations

import sys

import torch
import torchvision


def run(size: int, batch: int, runs: int = 12, bf16: bool = True) -> list[str]:
    bad = []
    for _ in range(runs):
        torch.manual_seed(0)
        model = torchvision.models.resnet18(num_classes=11)
        x, y = torch.rand(batch, 3, size, size), torch.randint(0, 10, (batch,))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        loss.backward()
        worst = max(model.named_parameters(), key=lambda kv: kv[1].grad.abs().max())
        if worst[1].grad.abs().max() > 1e6:
            bad.append(worst[0])
    return bad


if __name__ == "__main__":
    size, batch = (int(a) for a in (sys.argv[1:3] if len(sys.argv) >= 3 else (16, 3)))
    bad = run(size, batch)
    print(f"torch {torch.__version__}, {size} px, batch {batch}: {len(bad)} of 12 runs had a gradient > 1e6"
          + (f" (in {sorted(set(bad))})" if bad else ""))
