"""PGD / FGSM against a straightforward reference, and the attack's invariants."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastadv.attacks import PGD, fgsm, pgd_linf
from fastadv.errors import FastadvError
from fastadv.kernels import pgd_update


class TinyNet(nn.Module):
    """Conv + BatchNorm + linear head with K + M outputs (BatchNorm to test eval mode)."""

    def __init__(self, k: int = 5, m: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, k + m)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def straightforward_pgd(model, x, y, eps, alpha, steps, num_classes, head="all"):
    """torchattacks' PGD loop written out plainly (same op order), for comparison."""
    model.eval()
    adv = x.clone().detach() + torch.empty_like(x).uniform_(-1, 1) * eps
    adv = torch.clamp(adv, 0, 1).detach()
    for _ in range(steps):
        adv.requires_grad = True
        logits = model(adv)
        if head == "k":
            logits = logits[:, :num_classes]
        loss = F.cross_entropy(logits, y)
        grad = torch.autograd.grad(loss, adv, retain_graph=False, create_graph=False)[0]
        adv = adv.detach() + alpha * grad.sign()
        delta = torch.clamp(adv - x, min=-eps, max=eps)
        adv = torch.clamp(x + delta, min=0, max=1).detach()
    return adv


@pytest.fixture
def setup():
    torch.manual_seed(0)
    model = TinyNet()
    x = torch.rand(6, 3, 9, 7)
    y = torch.randint(0, 5, (6,))
    return model, x, y


@pytest.mark.parametrize("head", ["all", "k"])
def test_pgd_bit_identical_to_reference_loop(setup, head):
    model, x, y = setup
    torch.manual_seed(123)
    expected = straightforward_pgd(model, x, y, eps=0.03, alpha=0.0075, steps=5, num_classes=5, head=head)
    torch.manual_seed(123)
    got = pgd_linf(model, x, y, eps=0.03, alpha=0.0075, steps=5, num_classes=5, head=head)
    assert torch.equal(got, expected)


def test_pgd_invariants_per_sample_eps(setup):
    model, x, y = setup
    x[0] = 0.0  # box edges
    x[1] = 1.0
    eps = torch.tensor([0.0, 0.01, 0.03, 0.1, 0.5, 1.0])
    adv = PGD(eps=0.03, steps=7, alpha_ratio=0.3, num_classes=5)(model, x, y, eps=eps)
    dist = (adv - x).abs().flatten(1).amax(dim=1)
    assert torch.all(dist <= eps + 1e-6)
    assert torch.all(adv >= 0) and torch.all(adv <= 1)
    assert torch.equal(adv[0], x[0])  # eps = 0 leaves the image unchanged
    assert dist[4] > 0.03  # the large budgets are actually used, not clipped to the scalar eps


def test_sign_of_zero_gradient_is_zero():
    x = torch.full((2, 3, 4, 4), 0.5)
    grad = torch.zeros_like(x)
    grad[0, 0, 0, 0] = 1e-30
    out = pgd_update(x.clone(), x, grad, 0.1, 0.3)
    assert out[0, 0, 0, 0] == pytest.approx(0.6)
    out[0, 0, 0, 0] = 0.5
    assert torch.equal(out, x)


def test_attack_restores_mode_and_leaves_batchnorm_and_weights_alone(setup):
    model, x, y = setup
    model.train()
    model.bn.running_mean.uniform_()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    PGD(eps=0.03, steps=3, alpha_ratio=0.25, num_classes=5)(model, x, y)
    assert model.training
    assert all(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters())  # input gradient only
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    model.eval()
    PGD(eps=0.03, steps=2, alpha_ratio=0.25, num_classes=5)(model, x, y)
    assert not model.training


def test_pgd_increases_the_loss(setup):
    model, x, y = setup
    model.eval()
    clean = F.cross_entropy(model(x), y, reduction="none")
    adv = pgd_linf(model, x, y, eps=0.1, alpha=0.02, steps=10, num_classes=5, random_start=False)
    assert (F.cross_entropy(model(adv), y, reduction="none") >= clean - 1e-6).all()


def test_fgsm_is_one_signed_step(setup):
    model, x, y = setup
    x = x.clamp(0.2, 0.8)
    adv = fgsm(model, x, y, eps=0.05, num_classes=5)
    d = (adv - x).abs()
    full_step = (d - 0.05).abs() < 1e-6
    assert torch.all(full_step | (d == 0))
    assert full_step.float().mean() > 0.9


def test_k_head_attack_ignores_aux_logits(setup):
    """With head='k', changing only the auxiliary logit row does not change the attack."""
    model, x, y = setup
    torch.manual_seed(5)
    a = pgd_linf(model, x, y, eps=0.03, alpha=0.01, steps=3, num_classes=5, head="k")
    with torch.no_grad():
        model.fc.weight[5:].normal_()
        model.fc.bias[5:].normal_()
    torch.manual_seed(5)
    b = pgd_linf(model, x, y, eps=0.03, alpha=0.01, steps=3, num_classes=5, head="k")
    assert torch.equal(a, b)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(eps=8.0, steps=10), "8/255"),
        (dict(eps=0.0, steps=10), "(0, 1]"),
        (dict(eps=0.03, steps=0), "steps"),
        (dict(eps=0.03, steps=10, alpha=-0.1), "alpha"),
    ],
)
def test_bad_attack_arguments(kwargs, message):
    with pytest.raises(FastadvError, match=message.replace("(", r"\(").replace(")", r"\)").replace("/", "/")):
        PGD(num_classes=5, **kwargs)
