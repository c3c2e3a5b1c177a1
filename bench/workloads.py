"""What `make bench` times: the same workloads for fastadv's fast path and two baselines.

- research:  the common research loop: torchattacks-style PGD (fp32, eager, NCHW, parameters
             left requiring grad), dense soft-target CE, `loss.backward()`.
- eager-amp-cl: fastadv's own code with AMP (bf16 on CUDA) and channels_last, but eager and
             with the plain-torch kernels (FASTADV_TRITON=off).
- fastadv:   the fast path as `fastadv train` / `fastadv eval` run it by default (the Trainer's precision
             policy, cast-once weights for fixed-weight forwards and fused SGD on the CPU): on CUDA the
             whole step compiled (fastadv.runtime.compiled: the PGD loop and the training forward + loss
             as graphs; model-only where this PyTorch cannot trace autograd.grad), fused Triton
             kernels; on the CPU eager (compiling measured slower there), channels_last, bf16
             autocast where the CPU has native bf16; the Trainer's sync-free NaN guard.
The fastadv variants call the exact functions the Trainer and the evaluator call
(`PGD.__call__`, `fastadv.train.train_step`), so the benchmark times the shipped code.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

from fastadv.attacks import PGD
from fastadv.runtime.compiled import CompiledModel
from fastadv.config import ModelConfig
from fastadv.runtime.hardware import detect_cpu
from fastadv.kernels import label_augmented_target, reload_triton_mode, triton_available
from fastadv.methods.adversarial import AdversarialTraining
from fastadv.methods.fast import FreeAdversarialTraining
from fastadv.methods.standard import StandardTraining
from fastadv.models import build_model
from fastadv.runtime import precision
from fastadv.runtime.device import autocast
from fastadv.train import train_step
from fastadv.train.optim import sgd
from fastadv.train.step import FiniteGuard

EPS = 0.03
TRAIN_STEPS = 10
EVAL_STEPS = 40
DELTA = 0.03


@dataclass(frozen=True)
class Variant:
    name: str
    channels_last: bool
    amp: torch.dtype | None
    compile: bool
    fused_kernels: bool
    policy: str = ""  # the train.precision policy of its training workloads ("": bf16 if amp is bf16, else fp32)

    def precision_policy(self):
        return precision.POLICIES[self.policy or ("bf16" if self.amp == torch.bfloat16 else "fp32")]


def variants(device: torch.device, compile_on_cpu: bool = False, cpu_bf16: bool | None = None) -> list[Variant]:
    """The three variants. AMP is bf16 on CUDA, and on a CPU with native bf16 units
    (AVX512-BF16 / AMX, `fastadv.runtime.hardware.detect_cpu`; `cpu_bf16` overrides the detection);
    fp32 on other CPUs, where bf16 is emulated and slower."""
    if device.type == "cuda":
        amp = torch.bfloat16
    else:
        if cpu_bf16 is None:
            cpu_bf16 = detect_cpu().has_native_bf16
        amp = torch.bfloat16 if cpu_bf16 else None
    return [
        Variant("research", channels_last=False, amp=None, compile=False, fused_kernels=False),
        Variant("eager-amp-cl", channels_last=True, amp=amp, compile=False, fused_kernels=False),
        Variant("fastadv", channels_last=True, amp=amp, compile=device.type == "cuda" or compile_on_cpu,
                fused_kernels=True),
    ]


def policy_variants(fast: Variant, policies: list[str]) -> list[Variant]:
    """The fast path once per train.precision policy (`--policies`): "fastadv:<policy>", eval workloads in
    the policy's attack dtype. Side by side with the others; the targets judge "fastadv" alone."""
    out = []
    for name in policies:
        p = precision.POLICIES[name]
        out.append(Variant(f"fastadv:{name}", fast.channels_last, precision.DTYPES[p.attack], fast.compile,
                           fast.fused_kernels, policy=name))
    return out


def describe_path(variant: Variant, device: torch.device) -> dict[str, object]:
    """Which path a variant takes on `device`: precision, layout, compile, kernel implementation."""
    from fastadv.runtime.compiled import MODEL_ONLY, OFF, WHOLE_STEP, whole_step_supported

    triton = variant.fused_kernels and device.type == "cuda" and triton_available()
    return {
        "dtype": f"{str(variant.amp).replace('torch.', '')} autocast" if variant.amp else "float32",
        "precision_policy": variant.precision_policy().name if variant.name != "research" else "fp32 (research loop)",
        "channels_last": variant.channels_last,
        "compiled": variant.compile,
        "compile_mode": (WHOLE_STEP if whole_step_supported() else MODEL_ONLY) if variant.compile else OFF,
        "kernels": "triton" if triton else "reference",
    }


@contextmanager
def kernel_path(fused: bool) -> Iterator[None]:
    """The fast-path dispatch on (Triton where it applies, cast-once weights where they pay) or off
    (the plain-torch kernels, autocast's own per-forward casts) for the duration."""
    old = os.environ.get("FASTADV_TRITON")
    os.environ["FASTADV_TRITON"] = "auto" if fused else "off"
    reload_triton_mode()
    try:
        with precision.cast_once(fused):
            yield
    finally:
        if old is None:
            os.environ.pop("FASTADV_TRITON", None)
        else:
            os.environ["FASTADV_TRITON"] = old
        reload_triton_mode()


# --------------------------------------------------------------------------- research loop
def research_pgd(model, x, y, eps: float, alpha: float, steps: int) -> torch.Tensor:
    """torchattacks.PGD as commonly used: eval mode, random start, autograd.grad, last iterate."""
    model.eval()
    adv = torch.clamp(x + torch.empty_like(x).uniform_(-eps, eps), 0, 1).detach()
    for _ in range(steps):
        adv.requires_grad = True
        cost = F.cross_entropy(model(adv), y)
        grad = torch.autograd.grad(cost, adv)[0]
        adv = adv.detach() + alpha * grad.sign()
        delta = torch.clamp(adv - x, min=-eps, max=eps)
        adv = torch.clamp(x + delta, min=0, max=1).detach()
    return adv


def research_train_step(model, optimizer, x, y, soft_target: torch.Tensor | None, attack: bool,
                        steps: int = TRAIN_STEPS, alpha: float = EPS / 4) -> None:
    x_train = research_pgd(model, x, y, EPS, alpha, steps) if attack else x
    model.train()
    logits = model(x_train)
    if soft_target is None:
        loss = F.cross_entropy(logits, y)
    else:
        loss = -(soft_target * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


# --------------------------------------------------------------------------- the workloads
@dataclass
class Setup:
    """A model and a batch prepared for one variant."""

    model: torch.nn.Module  # the module holding the parameters
    run_model: torch.nn.Module  # what is called (compiled or not)
    x: torch.Tensor
    y: torch.Tensor
    optimizer: torch.optim.Optimizer


def make_setup(variant: Variant, arch: str, num_classes: int, num_aux: int, batch: int, size: int,
               device: torch.device) -> Setup:
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch=arch, num_classes=num_classes, num_aux=num_aux, pretrained=False)).to(device)
    x = torch.rand(batch, 3, size, size, device=device)
    y = torch.randint(0, num_classes, (batch,), device=device)
    if variant.channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    run_model = CompiledModel(model) if variant.compile else model  # whole-step where supported
    # The fast path steps with the Trainer's optimizer (fused SGD where it pays: train.optim.FUSED_SGD_DEVICES);
    # the baselines with PyTorch's default SGD.
    make_sgd = sgd if variant.fused_kernels else torch.optim.SGD
    optimizer = make_sgd(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-5)
    return Setup(model, run_model, x, y, optimizer)


def setup_mib(s: Setup) -> float:
    """Memory a setup holds between calls: parameters, buffers, optimizer state, the batch."""
    tensors = {id(t): t for t in [*s.model.parameters(), *s.model.buffers(), s.x, s.y]}
    for state in s.optimizer.state.values():
        tensors.update({id(t): t for t in state.values() if isinstance(t, torch.Tensor)})
    return sum(t.numel() * t.element_size() for t in tensors.values()) / 2**20


def in_kernel_path(variant: Variant, fn: Callable[[], object]) -> Callable[[], object]:
    """`fn` run under the variant's kernel path (interleaved timing switches path every call)."""
    def call() -> object:
        with kernel_path(variant.fused_kernels):
            return fn()
    return call


def workload(name: str, variant: Variant, s: Setup, num_classes: int, device: torch.device) -> Callable[[], object]:
    """A zero-argument callable running one batch of `name` for `variant`."""
    num_aux = s.model.num_aux
    train_attack = PGD(eps=EPS, steps=TRAIN_STEPS, alpha_ratio=0.25, num_classes=num_classes, head="all")
    eval_attack = PGD(eps=EPS, steps=EVAL_STEPS, alpha=2.5 * EPS / EVAL_STEPS, num_classes=num_classes, head="k")
    free_noise: dict[str, torch.Tensor] = {}
    if variant.name == "research":
        soft = label_augmented_target(s.y, num_classes, num_aux, 0, DELTA).float() if num_aux else None
        return {
            "pgd10_attack": lambda: research_pgd(s.model, s.x, s.y, EPS, EPS / 4, TRAIN_STEPS),
            "adv_plus_train_step": lambda: research_train_step(s.model, s.optimizer, s.x, s.y, soft, attack=True),
            "pgd40_eval": lambda: _research_eval(s, num_classes),
            "clean_eval": lambda: _research_clean(s, num_classes),
            "std_train_step": lambda: research_train_step(s.model, s.optimizer, s.x, s.y, None, attack=False),
            "fgsm_rs_plus_train_step": lambda: research_train_step(s.model, s.optimizer, s.x, s.y, soft, attack=True,
                                                                   steps=1, alpha=1.25 * EPS),
            "free_plus_train_step": lambda: research_free_replay(s, soft, free_noise),
        }[name]
    # Both variants run the Trainer's precision policy for their dtype; eager-amp-cl with the fast-path
    # dispatch off (plain-torch kernels, autocast re-casting weights every forward: `in_kernel_path`).
    policy = variant.precision_policy()
    scaler = precision.scaler(policy, device)
    guard = FiniteGuard()  # the Trainer's NaN check: on the device, no sync per step
    adv_plus = AdversarialTraining(train_attack, num_classes, delta=DELTA if num_aux else 0.0)
    std = StandardTraining(num_classes)
    fgsm_rs_plus = AdversarialTraining(PGD(eps=EPS, steps=1, alpha_ratio=1.25, num_classes=num_classes, head="all"),
                                       num_classes, delta=DELTA if num_aux else 0.0)
    free_plus = FreeAdversarialTraining(eps=EPS, alpha=EPS, num_classes=num_classes, replays=4,
                                        delta=DELTA if num_aux else 0.0)

    def attack() -> torch.Tensor:
        with precision.training(policy, device):  # as inside a training step
            return train_attack(s.run_model, s.x, s.y)

    eval_model: dict[str, torch.nn.Module] = {}

    def eval_forward() -> torch.nn.Module:
        """The model `fastadv eval` calls in a pass over many batches (evaluate._predict: one cast-once
        view where the dispatch uses it, else the model itself)."""
        if "model" not in eval_model:
            eval_model["model"] = precision.fixed_weights(s.run_model)
        return eval_model["model"]

    def evaluate() -> torch.Tensor:
        s.model.eval()
        with autocast(device, variant.amp):
            model = eval_forward()
            x_adv = eval_attack(model, s.x, s.y)
            with torch.no_grad():
                return model(x_adv).argmax(dim=1)

    def clean() -> torch.Tensor:
        s.model.eval()
        with autocast(device, variant.amp), torch.no_grad():
            return eval_forward()(s.x).argmax(dim=1)

    def step(method):
        return train_step(method, s.run_model, s.optimizer, scaler, s.x, s.y, device, policy, guard=guard)

    return {
        "pgd10_attack": attack,
        "clean_eval": clean,
        "adv_plus_train_step": lambda: step(adv_plus),
        "pgd40_eval": evaluate,
        "std_train_step": lambda: step(std),
        "fgsm_rs_plus_train_step": lambda: step(fgsm_rs_plus),
        # one replay = one optimizer step; Free AT runs epochs / m, so its schedule's img/s is this rate
        "free_plus_train_step": lambda: step(free_plus),
    }[name]


def research_free_replay(s: Setup, soft: torch.Tensor | None, state: dict[str, torch.Tensor]) -> None:
    """One Free AT replay as their code writes it: noise leaf, one backward, noise += eps sign(grad)."""
    noise = state.get("noise", torch.zeros_like(s.x)).requires_grad_(True)
    s.model.train()
    logits = s.model((s.x + noise).clamp(0, 1))
    loss = F.cross_entropy(logits, s.y) if soft is None else -(soft * torch.log_softmax(logits, 1)).sum(1).mean()
    s.optimizer.zero_grad()
    loss.backward()
    state["noise"] = (noise.detach() + EPS * noise.grad.sign()).clamp(-EPS, EPS)
    s.optimizer.step()


def _research_clean(s: Setup, num_classes: int) -> torch.Tensor:
    s.model.eval()
    with torch.no_grad():
        return s.model(s.x)[:, :num_classes].argmax(dim=1)


def _research_eval(s: Setup, num_classes: int) -> torch.Tensor:
    x_adv = research_pgd(s.model, s.x, s.y, EPS, 2.5 * EPS / EVAL_STEPS, EVAL_STEPS)
    with torch.no_grad():
        return s.model(x_adv)[:, :num_classes].argmax(dim=1)


# Forward passes per image of each workload (docs/reference/methods.md, costs): an input-gradient backward
# costs about one forward, a full backward about two.
FORWARDS_PER_IMAGE = {
    "pgd10_attack": 2 * TRAIN_STEPS,
    "adv_plus_train_step": 2 * TRAIN_STEPS + 3,
    "pgd40_eval": 2 * EVAL_STEPS + 1,
    "clean_eval": 1,
    "std_train_step": 3,
    "fgsm_rs_plus_train_step": 2 + 3,  # one attack step + the training step
    "free_plus_train_step": 3,  # per replay: one forward, one full backward (weights and input)
}
WORKLOADS = tuple(FORWARDS_PER_IMAGE)
