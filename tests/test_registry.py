"""The method registry: capabilities live on the spec, never in name checks; a new method is one registration."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from fastadv.config import load_config
from fastadv.errors import FastadvError
from fastadv.methods import MethodBase, MethodSpec, build_method, method_names, method_spec, register_method
from fastadv.methods.registry import unregister_method
from fastadv.train import train

PACKAGE = Path(__file__).resolve().parents[1] / "fastadv"
REGISTRY = PACKAGE / "methods" / "registry.py"


@dataclass
class ToyMethod(MethodBase):
    """Clean training on images flipped left-right: a method the project does not ship."""

    num_classes: int
    calls: int = 0

    @classmethod
    def from_config(cls, cfg, spec):
        return cls(num_classes=cfg.model.num_classes)

    def __call__(self, model, x, y):
        self.calls += 1
        logits = model(torch.flip(x, dims=[3]))
        loss = torch.nn.functional.cross_entropy(logits[:, : self.num_classes], y)
        return loss, {"train_acc": (logits[:, : self.num_classes].argmax(1) == y).float().mean()}

    def state_dict(self):
        return {"calls": self.calls}


@pytest.fixture
def toy():
    spec = register_method(MethodSpec("toy-flip", "clean training on mirrored images (test only)",
                                      ToyMethod.from_config, adversarial=False))
    yield spec
    unregister_method("toy-flip")


def test_a_new_method_is_one_registration_and_trains(tmp_path, toy):
    cfg = load_config("demo-std", ["method.name=toy-flip", f"train.out_dir={tmp_path}", "data.image_size=16",
                                   "data.limit_train=64", "data.batch_size=16", "model.arch=resnet18",
                                   "train.max_steps=1", "train.progress=false"])
    assert isinstance(build_method(cfg), ToyMethod)
    ckpt = torch.load(train(cfg), weights_only=True)
    assert ckpt["progress"]["step"] == 1
    assert ckpt["method"] == {"calls": 1}  # the base class's hooks were called, its own state_dict saved


def test_unknown_method_lists_the_registered_ones():
    with pytest.raises(FastadvError, match="method.name='nope' is not one of: std, adv, adv-plus"):
        load_config("demo-std", ["method.name=nope"])


def test_capabilities_come_from_the_spec(toy):
    assert method_spec("adv-plus").label_augmented and not method_spec("adv").label_augmented
    assert method_spec("cfa-trades").inner == "trades" and method_spec("cfa-at").inner == "adv"
    with pytest.raises(FastadvError, match="num_aux >= 1"):
        load_config("demo-adv-plus", ["model.num_aux=0"])
    with pytest.raises(FastadvError, match="held-out split"):
        load_config("demo-cfa-at", ["train.holdout_per_class=0"])
    load_config("demo-std", ["method.name=toy-flip", "attack.eps=8"])  # not adversarial: attack.eps unused
    with pytest.raises(FastadvError, match="8/255"):
        load_config("demo-adv", ["attack.eps=8"])
    with pytest.raises(ValueError, match="registered already"):
        register_method(MethodSpec("adv", "again", ToyMethod.from_config))


def _name_tests(path: Path, names: set[str]) -> list[str]:
    """Comparisons (==, !=, in) and startswith/endswith calls that involve a method name constant."""
    tree = ast.parse(path.read_text(), filename=str(path))

    def constants(node: ast.AST) -> list[str]:
        return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            hit = [c for c in constants(node) if c in names]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("startswith", "endswith"):
            hit = [c for c in constants(node) if any(n.startswith(c) or n.endswith(c) for n in names)]
        else:
            continue
        found += [f"{path.relative_to(PACKAGE)}:{node.lineno}: {ast.unparse(node)}" for _ in hit[:1]]
    return found


def test_no_module_tests_a_method_name_outside_the_registry():
    names = set(method_names())
    offenders = [hit for path in sorted(PACKAGE.rglob("*.py")) if path != REGISTRY for hit in _name_tests(path, names)]
    assert not offenders, "method names belong to fastadv/methods/registry.py only:\n" + "\n".join(offenders)


def test_the_trainer_asks_no_hasattr_of_methods():
    for path in sorted((PACKAGE / "train").glob("*.py")):
        tree = ast.parse(path.read_text())
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                 and n.func.id in ("hasattr", "getattr") and "method" in ast.unparse(n)]
        assert not calls, f"{path.name}: {[ast.unparse(c) for c in calls]}: call MethodBase's hooks unconditionally"
