"""l_inf attacks in [0, 1] pixel space: PGD, FGSM and Temperature-PGD's loss (REFERENCE.md §2).

Calling convention of torchattacks: `x_adv = attack(model, x, y)`. During an attack the
model runs in eval mode (BatchNorm uses running statistics) with parameter gradients
switched off, so only the input gradient is computed; its previous mode and
`requires_grad` flags are restored afterwards.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from fastadv import kernels
from fastadv.config import check_eps
from fastadv.errors import FastadvError

HEADS = ("k", "all")


@contextlib.contextmanager
def attack_mode(model: nn.Module) -> Iterator[None]:
    """Eval mode and frozen parameters for the duration of an attack, restored afterwards."""
    was_training = model.training
    frozen = [p for p in model.parameters() if p.requires_grad]
    model.eval()
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)
        model.train(was_training)


def attack_view(model: nn.Module) -> nn.Module:
    """The module an attack calls: `model.attack_model` when the training model carries one
    (the DDP wrapper does, fastadv.distributed.wrap_model: the attack's frozen-parameter
    forwards must bypass DDP's gradient synchronization), else `model` itself."""
    return getattr(model, "attack_model", model)


def check_attack_args(eps: float | torch.Tensor, alpha: float | torch.Tensor, steps: int) -> None:
    """Clear errors for the usual mistakes (eps = 8 instead of 8/255, steps = 0, alpha <= 0)."""
    if isinstance(eps, torch.Tensor):
        if eps.numel() and (eps.max() > 1 or eps.min() < 0):
            raise FastadvError(f"per-sample eps must lie in [0, 1] (pixel units); got range [{eps.min():g}, {eps.max():g}]")
    else:
        check_eps("eps", float(eps))
    if steps < 1:
        raise FastadvError(f"steps={steps} must be >= 1")
    bad_alpha = (alpha < 0).any() if isinstance(alpha, torch.Tensor) else alpha <= 0  # per-sample eps may be 0
    if bad_alpha:
        raise FastadvError("alpha (the PGD step size) must be > 0")


def attack_loss(logits: torch.Tensor, y: torch.Tensor, num_classes: int, head: str, temperature: float = 1.0) -> torch.Tensor:
    """Mean cross-entropy the attack maximizes: over the K class logits or over all K+M logits.

    temperature != 1 divides the logits first (Temperature-PGD, REFERENCE.md §7).
    """
    if head == "k":
        logits = logits[:, :num_classes]
    if temperature != 1.0:
        logits = logits / temperature
    return kernels.label_augmented_ce(logits, y, num_classes)


@dataclass(frozen=True)
class PGD:
    """Projected gradient descent in the l_inf ball, last iterate returned.

    eps: scalar, or per-sample eps passed at call time. alpha: step size (scalar) or, if
    `alpha_ratio` is set, alpha = alpha_ratio * eps per sample. head: "k" attacks the K-class
    head, "all" the K+M logits of a label-augmented model (identical when M = 0).
    """

    eps: float
    steps: int
    alpha: float = 0.0
    alpha_ratio: float = 0.25
    random_start: bool = True
    num_classes: int = 1000
    head: str = "all"
    temperature: float = 1.0

    def __post_init__(self) -> None:
        if self.alpha < 0 or self.alpha_ratio <= 0:
            raise FastadvError(f"alpha={self.alpha:g} must be > 0 (0 selects the default alpha = alpha_ratio * eps)")
        check_attack_args(self.eps, self.alpha if self.alpha > 0 else self.alpha_ratio, self.steps)
        if self.head not in HEADS:
            raise FastadvError(f"attack head {self.head!r} must be one of {HEADS}")
        if self.temperature <= 0:
            raise FastadvError(f"temperature={self.temperature:g} must be > 0")

    def step_size(self, eps: float | torch.Tensor) -> float | torch.Tensor:
        return self.alpha if self.alpha > 0 else eps * self.alpha_ratio

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
        eps_used: float | torch.Tensor = self.eps if eps is None else eps
        if isinstance(eps_used, torch.Tensor):
            check_attack_args(eps_used, self.step_size(eps_used), self.steps)
        return pgd_linf(
            model, x, y,
            eps=eps_used,
            alpha=self.step_size(eps_used),
            steps=self.steps,
            random_start=self.random_start,
            num_classes=self.num_classes,
            head=self.head,
            temperature=self.temperature,
        )


def pgd_linf(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    alpha: float | torch.Tensor,
    steps: int,
    random_start: bool = True,
    num_classes: int,
    head: str = "all",
    temperature: float = 1.0,
) -> torch.Tensor:
    """PGD l_inf (torchattacks convention): random start, mean CE, last iterate, [0,1] box."""
    x = x.detach()
    model = attack_view(model)
    with attack_mode(model):
        x_adv = kernels.random_start(x, eps) if random_start else x.clone()
        for _ in range(steps):
            x_adv.requires_grad_(True)
            loss = attack_loss(model(x_adv), y, num_classes, head, temperature)
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = kernels.pgd_update(x_adv.detach(), x, grad, alpha, eps)
    return x_adv.detach()


def fgsm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    num_classes: int,
    random_start: bool = False,
    head: str = "all",
) -> torch.Tensor:
    """FGSM: one step of size eps, or 1.25 eps from a random start ("fast is better than free")."""
    alpha = eps * 1.25 if random_start else eps
    return pgd_linf(model, x, y, eps=eps, alpha=alpha, steps=1, random_start=random_start, num_classes=num_classes, head=head)


def trades_kl_attack(
    model: nn.Module,
    x: torch.Tensor,
    *,
    eps: float | torch.Tensor,
    alpha: float | torch.Tensor,
    steps: int,
    num_classes: int,
    init_std: float = 0.001,
) -> torch.Tensor:
    """TRADES' inner maximization: PGD on KL(f(x) || f(x')) over the K class logits,
    starting at x + N(0, init_std^2) (Zhang et al. 2019, their reference code)."""
    x = x.detach()
    model = attack_view(model)
    with attack_mode(model):
        with torch.no_grad():
            p_clean = torch.softmax(model(x)[:, :num_classes].float(), dim=1)
        x_adv = x + init_std * torch.randn(x.shape, dtype=x.dtype, device=x.device)
        for _ in range(steps):
            x_adv.requires_grad_(True)
            log_p_adv = torch.log_softmax(model(x_adv)[:, :num_classes].float(), dim=1)
            loss = torch.nn.functional.kl_div(log_p_adv, p_clean, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_adv)
            x_adv = kernels.pgd_update(x_adv.detach(), x, grad, alpha, eps)
    return x_adv.detach()
