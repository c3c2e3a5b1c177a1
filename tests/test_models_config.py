"""Model construction (Normalize inside, K+M head, weights) and config parsing/validation."""

from __future__ import annotations

import pytest
import torch
import torchvision

from fastadv.config import ModelConfig, apply_override, load_config, recipe_names, to_toml, from_dict, Config
from fastadv.errors import FastadvError
from fastadv.models import build_model, predict_k


def test_normalize_is_the_first_module_and_matches_torchvision():
    cfg = ModelConfig(arch="resnet18", num_classes=10, num_aux=0, pretrained=False)
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    assert list(dict(model.named_children()))[0] == "normalize"
    x = torch.rand(2, 3, 32, 32)
    mean = torch.tensor(cfg.mean).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std).view(1, 3, 1, 1)
    assert torch.allclose(model(x), model.net((x - mean) / std))


def test_k_plus_m_head_from_init_weights(tmp_path):
    torch.manual_seed(0)
    source = torchvision.models.resnet18(num_classes=10)
    path = tmp_path / "resnet18.pth"
    torch.save(source.state_dict(), path)
    model = build_model(ModelConfig(arch="resnet18", num_classes=10, num_aux=2, pretrained=False, init=str(path)))
    fc = model.net.fc
    assert fc.out_features == 12
    assert torch.equal(fc.weight[:10], source.fc.weight) and torch.equal(fc.bias[:10], source.fc.bias)
    assert torch.count_nonzero(fc.weight[10:]) == 0 and torch.count_nonzero(fc.bias[10:]) == 0
    assert torch.equal(model.net.conv1.weight, source.conv1.weight)


def test_resnet50_architecture_has_1001_outputs_for_adv_plus():
    model = build_model(ModelConfig(arch="resnet50", num_classes=1000, num_aux=1, pretrained=False))
    assert model.net.fc.in_features == 2048 and model.net.fc.out_features == 1001
    logits = torch.zeros(3, 1001)
    logits[:, 1000] = 10.0  # the aux logit never becomes a prediction
    logits[:, 7] = 1.0
    assert predict_k(logits, 1000).tolist() == [7, 7, 7]


def test_pretrained_weights_offline_give_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FastadvError, match="not available offline.*--init"):
        build_model(ModelConfig(arch="resnet18", num_classes=1000, pretrained=True))


def test_bad_init_files(tmp_path):
    with pytest.raises(FastadvError, match="does not exist"):
        build_model(ModelConfig(arch="resnet18", pretrained=False, init=str(tmp_path / "nope.pth")))
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(FastadvError, match="could not be read"):
        build_model(ModelConfig(arch="resnet18", pretrained=False, init=str(junk)))
    wrong = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet50().state_dict(), wrong)
    with pytest.raises(FastadvError, match="do not fit"):
        build_model(ModelConfig(arch="resnet18", pretrained=False, init=str(wrong)))


def test_unknown_arch():
    with pytest.raises(FastadvError, match="not a torchvision"):
        build_model(ModelConfig(arch="resnet5000"))


def test_every_shipped_recipe_loads_and_round_trips():
    names = recipe_names()
    assert {"demo-std", "demo-adv", "demo-adv-plus", "imagenet-std", "imagenet-adv", "imagenet-adv-plus"} <= set(names)
    for name in names:
        cfg = load_config(name)
        assert cfg.name == name
        import tomllib
        again = from_dict(tomllib.loads(to_toml(cfg)))
        assert again == cfg


def test_paper_defaults_in_imagenet_recipe():
    cfg = load_config("imagenet-adv-plus")
    assert (cfg.model.arch, cfg.model.num_aux, cfg.attack.eps, cfg.attack.steps, cfg.method.delta) == ("resnet50", 1, 0.03, 10, 0.03)
    assert (cfg.optim.epochs, cfg.optim.lr, cfg.optim.momentum, cfg.data.batch_size) == (10, 0.01, 0.9, 64)
    assert (cfg.eval.steps, cfg.eval.eps) == (40, 0.03)


def test_overrides_parse_types_and_fractions():
    cfg = load_config("demo-adv", ["attack.eps=4/255", "optim.epochs=3", "train.compile=true", "data.path=/tmp/x y"])
    assert cfg.attack.eps == pytest.approx(4 / 255)
    assert cfg.optim.epochs == 3 and cfg.train.compile == "true" and cfg.data.path == "/tmp/x y"


@pytest.mark.parametrize(
    "override, message",
    [
        ("attack.eps=8", "8/255"),
        ("eval.eps=16", "16/255"),
        ("attack.eps=0", r"\(0, 1\]"),
        ("attack.steps=0", "attack.steps=0 must be >= 1"),
        ("attack.alpha=-1", "attack.alpha"),
        ("method.delta=1", r"method.delta=1 must be in \[0, 1\)"),
        ("method.delta=-0.1", "method.delta"),
        ("optim.epochs=two", "not a valid int"),
        ("attack.epsilon=0.1", "unknown field"),
        ("atack.eps=0.1", "unknown config section"),
        ("method.name=mart", "not one of"),
        ("noequals", "section.field=value"),
    ],
)
def test_bad_values_are_rejected_before_anything_runs(override, message):
    with pytest.raises(FastadvError, match=message):
        load_config("demo-adv-plus", [override])


def test_adv_plus_needs_an_aux_logit():
    with pytest.raises(FastadvError, match="num_aux >= 1"):
        load_config("demo-adv-plus", ["model.num_aux=0"])


def test_unknown_recipe_lists_the_shipped_ones():
    with pytest.raises(FastadvError, match="demo-adv-plus"):
        load_config("no-such-recipe")
