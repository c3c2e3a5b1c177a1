"""The one l_inf attack loop and the attacks built on it (PGD, FGSM, Temperature-PGD, TRADES' KL).

See the package docstring for the calling convention. Step sizes are always explicit:
a PGD is given either `alpha` (the step) or `alpha_ratio` (step = alpha_ratio * eps, per
sample when eps is per sample); nothing is defaulted silently. The config's documented
shorthand `attack.alpha = 0` (step eps / 4, docs/reference/methods.md: PGD) is resolved in one place,
`training_attack`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

from fastadv import kernels
from fastadv.runtime import compiled, precision
from fastadv.attacks import HEADS
from fastadv.attacks.loss import Eps, attack_loss  # noqa: F401 (re-exported)
from fastadv.config import ATTACK_MODEL_MODES, AttackConfig, check_eps
from fastadv.errors import FastadvError

TRAIN_ALPHA_RATIO = 0.25  # attack.alpha = 0 in a recipe: the training PGD steps eps / 4 (docs/reference/methods.md: PGD)

@contextlib.contextmanager
def attack_mode(model: nn.Module, mode: str = "eval") -> Iterator[None]:
    """Eval mode (or train mode: BatchNorm uses and updates batch statistics, as some reference
    codes attack) and frozen parameters for the duration of an attack, restored afterwards."""
    if mode not in ATTACK_MODEL_MODES:
        raise FastadvError(f"attack model mode {mode!r} must be one of {ATTACK_MODEL_MODES}")
    was_training = model.training
    frozen = [p for p in model.parameters() if p.requires_grad]
    model.train(mode == "train")
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
    (the DDP wrapper does, fastadv.runtime.distributed.wrap_model: the attack's frozen-parameter
    forwards must bypass DDP's gradient synchronization), else `model` itself."""
    return getattr(model, "attack_model", model)


def check_attack_args(eps: Eps, alpha: Eps, steps: int) -> None:
    """Clear errors for the usual mistakes (eps = 8 instead of 8/255, steps = 0, alpha <= 0).

    Per-sample eps / alpha tensors are checked for shape only: reading their values would be a
    device-to-host sync on every attack. They come from fastadv's own code (CFA's calibrated_eps
    clamps to [0, 1]); `check_eps_values` checks values where a caller can afford the sync.
    """
    if isinstance(eps, torch.Tensor):
        if eps.dim() > 1:
            raise FastadvError(f"per-sample eps must be a scalar or one value per sample [B]; got shape {tuple(eps.shape)}")
    else:
        check_eps("eps", float(eps))
    if steps < 1:
        raise FastadvError(f"steps={steps} must be >= 1")
    if not isinstance(alpha, torch.Tensor) and alpha <= 0:
        raise FastadvError("alpha (the PGD step size) must be > 0")


def check_eps_values(eps: torch.Tensor) -> None:
    """The value check of a per-sample eps (syncs: call it once, outside the hot loop)."""
    if eps.numel() and (eps.max() > 1 or eps.min() < 0):
        raise FastadvError(f"per-sample eps must lie in [0, 1] (pixel units); got range [{eps.min():g}, {eps.max():g}]")


def linf_attack(model: nn.Module, x: torch.Tensor, start: torch.Tensor, loss_fn: Callable[[torch.Tensor], torch.Tensor],
                *, alpha: Eps, eps: Eps, steps: int) -> torch.Tensor:
    """`steps` signed-gradient ascent steps on loss_fn(model(x_adv)) from `start`, each projected to
    the eps-ball around x and to [0, 1] by the fused update. The caller holds `attack_mode` and
    `precision.attack_region`; the forwards use `precision.fixed_weights` (weights cast once)."""
    model = precision.fixed_weights(model)
    lowp = precision.iterate_dtype()  # None: the iterate stays fp32 (every policy but the ablation)
    x_adv = start
    for _ in range(steps):
        x_adv.requires_grad_(True)
        (grad,) = torch.autograd.grad(loss_fn(model(x_adv)), x_adv)
        x_adv = kernels.pgd_update(x_adv.detach(), x, grad, alpha, eps)
        if lowp is not None:
            x_adv = x_adv.to(lowp).to(x_adv.dtype)
    return x_adv.detach()


def pgd_linf(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: Eps, alpha: Eps, steps: int,
             num_classes: int, random_start: bool = True, head: str = "all", temperature: float = 1.0,
             model_mode: str = "eval", early_stop: bool = False, compact: bool = False) -> torch.Tensor:
    """PGD l_inf (torchattacks convention): random start, mean CE, last iterate, [0,1] box.

    early_stop / compact: see `fastadv.attacks.early_stop` (evaluation only). A whole-step
    compiled model (fastadv.runtime.compiled) runs the loop as one compiled graph.
    """
    x = x.detach()
    model = attack_view(model)
    with attack_mode(model, model_mode), precision.attack_region(x.device):
        # The random start is drawn eagerly on every path: the same RNG stream, the same start, whether the
        # loop then runs eagerly or as one compiled graph (inductor's RNG would draw other numbers).
        start = kernels.random_start(x, eps) if random_start else x.clone()
        if early_stop:
            from fastadv.attacks.early_stop import early_stop_pgd

            return early_stop_pgd(precision.fixed_weights(model), x, y, start, alpha=alpha, eps=eps, steps=steps,
                                  num_classes=num_classes, head=head, temperature=temperature, compact=compact)
        if compiled.whole_step(model) and precision.iterate_dtype() is None:
            return compiled.call(pgd_ce_attack, model, x, y, start, compiled.per_sample(alpha, x),
                                 compiled.per_sample(eps, x), steps, num_classes, head, float(temperature))
        return linf_attack(model, x, start, lambda logits: attack_loss(logits, y, num_classes, head, temperature),
                           alpha=alpha, eps=eps, steps=steps)


def pgd_ce_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, start: torch.Tensor, alpha: torch.Tensor,
                  eps: torch.Tensor, steps: int, num_classes: int, head: str, temperature: float) -> torch.Tensor:
    """The whole PGD loop from `start` (`steps` forward + input gradient + fused update) with explicit
    arguments only: what `fastadv.runtime.compiled.call` compiles into one graph. alpha, eps: [B]."""
    x_adv = start
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        loss = attack_loss(model(x_adv), y, num_classes, head, temperature)
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = kernels.pgd_update(x_adv.detach(), x, grad, alpha, eps)
    return x_adv.detach()


def kl_attack_loop(model: nn.Module, x: torch.Tensor, start: torch.Tensor, p_clean: torch.Tensor,
                   alpha: torch.Tensor, eps: torch.Tensor, steps: int, width: int | None) -> torch.Tensor:
    """TRADES' KL attack loop with explicit arguments (compiled whole by `fastadv.runtime.compiled.call`)."""
    x_adv = start
    for _ in range(steps):
        x_adv = x_adv.detach().requires_grad_(True)
        log_p_adv = torch.log_softmax(model(x_adv)[:, :width].float(), dim=1)
        loss = torch.nn.functional.kl_div(log_p_adv, p_clean, reduction="sum")
        (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = kernels.pgd_update(x_adv.detach(), x, grad, alpha, eps)
    return x_adv.detach()


@dataclass(frozen=True, kw_only=True)
class PGD:
    """Projected gradient descent in the l_inf ball, last iterate returned.

    eps: scalar, or per-sample eps passed at call time. The step: `alpha`, or `alpha_ratio`
    (alpha = alpha_ratio * eps, per sample); exactly one of the two. head: "k" attacks the
    K-class head, "all" the K+M logits of a label-augmented model (identical when M = 0).
    temperature != 1: Temperature-PGD. model_mode: "eval" (default, BatchNorm frozen) or
    "train" (the mode some reference training codes attack in: CFA's PGD-AT, Wong et al.'s FGSM).
    """

    eps: float
    steps: int
    num_classes: int
    alpha: float | None = None
    alpha_ratio: float | None = None
    random_start: bool = True
    head: str = "all"
    temperature: float = 1.0
    model_mode: str = "eval"
    early_stop: bool = False  # evaluation: stop attacking samples once fooled (fastadv.attacks.early_stop)
    compact: bool = False  # with early_stop: drop them from the batch (one host sync per step)

    def __post_init__(self) -> None:
        check_eps("eps", float(self.eps))
        if self.model_mode not in ATTACK_MODEL_MODES:
            raise FastadvError(f"attack model_mode {self.model_mode!r} must be one of {ATTACK_MODEL_MODES}")
        if self.steps < 1:
            raise FastadvError(f"steps={self.steps} must be >= 1")
        if (self.alpha is None) == (self.alpha_ratio is None):
            raise FastadvError("give the PGD step size as exactly one of alpha (e.g. 2/255) or alpha_ratio "
                               "(step = alpha_ratio * eps, e.g. 0.25)")
        if (self.alpha is not None and self.alpha <= 0) or (self.alpha_ratio is not None and self.alpha_ratio <= 0):
            raise FastadvError(f"alpha={self.alpha}, alpha_ratio={self.alpha_ratio}: the PGD step size must be > 0")
        if self.head not in HEADS:
            raise FastadvError(f"attack head {self.head!r} must be one of {tuple(HEADS)}")
        if self.temperature <= 0:
            raise FastadvError(f"temperature={self.temperature:g} must be > 0")

    def step_size(self, eps: Eps) -> Eps:
        return self.alpha if self.alpha is not None else eps * self.alpha_ratio

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: torch.Tensor | None = None,
                 alpha: Eps | None = None) -> torch.Tensor:
        """eps: per-sample eps [B] (class-wise methods); alpha: a step overriding the configured one."""
        eps_used: Eps = self.eps if eps is None else eps
        step = self.step_size(eps_used) if alpha is None else alpha
        if isinstance(eps_used, torch.Tensor) or isinstance(step, torch.Tensor):
            check_attack_args(eps_used, step, self.steps)
        return pgd_linf(model, x, y, eps=eps_used, alpha=step, steps=self.steps,
                        random_start=self.random_start, num_classes=self.num_classes, head=self.head,
                        temperature=self.temperature, model_mode=self.model_mode,
                        early_stop=self.early_stop, compact=self.compact)


def FGSM(*, eps: float, num_classes: int, random_start: bool = False, head: str = "all") -> PGD:  # noqa: N802
    """FGSM: one step of size eps, or 1.25 eps from a random start ("fast is better than free")."""
    return PGD(eps=eps, steps=1, num_classes=num_classes, alpha_ratio=1.25 if random_start else 1.0,
               random_start=random_start, head=head)


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: Eps, num_classes: int,
         random_start: bool = False, head: str = "all") -> torch.Tensor:
    """FGSM on (x, y) with a scalar or per-sample eps (see FGSM)."""
    alpha = eps * 1.25 if random_start else eps
    return pgd_linf(model, x, y, eps=eps, alpha=alpha, steps=1, random_start=random_start, num_classes=num_classes,
                    head=head)


def training_attack(a: AttackConfig, num_classes: int) -> PGD:
    """The [attack] section as a PGD; attack.alpha = 0 means the documented eps / 4."""
    step = {"alpha": a.alpha} if a.alpha > 0 else {"alpha_ratio": TRAIN_ALPHA_RATIO}
    return PGD(eps=a.eps, steps=a.steps, num_classes=num_classes, random_start=a.random_start, head=a.head,
               temperature=a.temperature, model_mode=a.model_mode, **step)


def trades_kl_attack(model: nn.Module, x: torch.Tensor, *, eps: Eps, alpha: Eps, steps: int, num_classes: int,
                     init_std: float = 0.001, head: str = "k", model_mode: str = "eval") -> torch.Tensor:
    """TRADES' inner maximization: PGD on KL(f(x) || f(x')) (sum-reduced) over the K class logits
    (head "k"; "all": all K+M logits), starting at x + N(0, init_std^2), the model in eval mode
    (Zhang et al. 2019, their reference code; model_mode="train" on request)."""
    x = x.detach()
    model = attack_view(model)
    width = num_classes if head == "k" else None
    with attack_mode(model, model_mode), precision.attack_region(x.device):
        with torch.no_grad():
            p_clean = torch.softmax(model(x)[:, :width].float(), dim=1)
        start = x + init_std * torch.randn(x.shape, dtype=x.dtype, device=x.device)
        if compiled.whole_step(model) and precision.iterate_dtype() is None:
            return compiled.call(kl_attack_loop, model, x, start, p_clean, compiled.per_sample(alpha, x),
                                 compiled.per_sample(eps, x), steps, width)

        def kl(logits: torch.Tensor) -> torch.Tensor:
            log_p_adv = torch.log_softmax(logits[:, :width].float(), dim=1)
            return torch.nn.functional.kl_div(log_p_adv, p_clean, reduction="sum")

        return linf_attack(model, x, start, kl, alpha=alpha, eps=eps, steps=steps)


class BoundAttack:
    """torchattacks-style: the model bound at construction, `x_adv = atk(x, y)`."""

    def __init__(self, attack: PGD, model: nn.Module) -> None:
        self.attack, self.model = attack, model

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.attack(self.model, x, y)


def bound(attack: PGD, model: nn.Module) -> BoundAttack:
    """`atk = bound(PGD(eps=..., ...), model)`; then `atk(x, y)`, as torchattacks users write it."""
    return BoundAttack(attack, model)
