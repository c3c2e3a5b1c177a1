"""PGD as the primary paper's public code runs it (f-amerehi/LA notebook, cleverhans; docs/reference/methods.md).

Differences from the standard PGD (fastadv.attacks.linf, docs/reference/methods.md: PGD), each on purpose:
- the label is the model's own prediction over all K+M logits on the clean image (cleverhans y=None);
- the loss is cross-entropy over all K+M logits;
- eps and the step are in normalized-input units: the pixel perturbation of channel c is at most
  eps * sigma_c (0.03 -> about 1.7/255 with ImageNet's sigma), the step 0.01 * sigma_c;
- no clipping to the [0, 1] image box (only the projection to the eps ball).
Random start U(-eps, eps) (normalized units), last iterate returned. Scoring stays argmax over K.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from fastadv.attacks.linf import attack_mode, attack_view
from fastadv.errors import FastadvError


@dataclass(frozen=True, kw_only=True)
class PaperCodePGD:
    std: tuple[float, ...]  # the model's per-channel normalization sigma (model.std)
    eps: float = 0.03
    step: float = 0.01
    steps: int = 40
    random_start: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.eps <= 1 or self.step <= 0 or self.steps < 1:
            raise FastadvError(f"paper-code PGD: need 0 < eval.paper_eps <= 1 (normalized units, the paper's 0.03), "
                               f"eval.paper_step > 0, steps >= 1; got {self.eps:g}, {self.step:g}, {self.steps}")

    def pixel_eps(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sigma = torch.tensor(self.std, dtype=like.dtype, device=like.device).view(1, -1, 1, 1)
        return self.eps * sigma, self.step * sigma

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """y is ignored: the label is the model's own argmax over all K+M logits."""
        x = x.detach()
        model = attack_view(model)
        eps, step = self.pixel_eps(x)
        with attack_mode(model):
            with torch.no_grad():
                label = model(x).float().argmax(dim=1)
            x_adv = x + (torch.rand_like(x) * 2 - 1) * eps if self.random_start else x.clone()
            for _ in range(self.steps):
                x_adv.requires_grad_(True)
                loss = F.cross_entropy(model(x_adv).float(), label)
                (grad,) = torch.autograd.grad(loss, x_adv)
                x_adv = x_adv.detach() + step * grad.sign()
                x_adv = x + torch.maximum(torch.minimum(x_adv - x, eps), -eps)
        return x_adv.detach()
