"""Issue 15: any torchvision / timm model (K+M head, one Adv+ step, PGD, save, resume, evaluate),
the weights layouts of the field (each loads with equal logits; mismatches and code-running pickles
are refused), AdamW / EMA / clipping, and `fastadv eval --weights`."""

from __future__ import annotations

import json
from collections import OrderedDict

import pytest
import torch
import torchvision
from torch import nn

from fastadv.runtime.precision_policies import POLICIES
from fastadv.attacks import PGD
from fastadv.models.checkpoint import load_checkpoint
from fastadv.config import ModelConfig, load_config
from fastadv.errors import FastadvError
from fastadv.methods import build_method
from fastadv.methods.cfa import fawa_update
from fastadv.models import build_model
from fastadv.train.optim import WeightEma, build_optimizer, clip_gradients
from fastadv.train.schedule import lr_at
from fastadv.train import cosine_lr, train, train_step

FP32 = POLICIES["fp32"]  # train_step's precision policy: no autocast

timm = pytest.importorskip("timm")

TINY_SWIN = "window_size = 2, embed_dim = 16, depths = [1, 1], num_heads = [1, 2]"
TINY_VIT = "patch_size = 8, depth = 1, embed_dim = 32, num_heads = 2"
TINY_CONVNEXT = "depths = [1, 1, 1, 1], dims = [8, 16, 32, 64]"
ARCHS = [  # (arch, kwargs, image size, transformer)
    pytest.param("resnet18", "", 16, False, id="torchvision-resnet18"),
    pytest.param("vit_b_16", "", 16, True, id="torchvision-vit_b_16", marks=pytest.mark.slow),  # 86 M parameters
    pytest.param("timm:convnext_atto", TINY_CONVNEXT, 32, False, id="timm-convnext"),
    pytest.param("timm:vit_tiny_patch16_224", TINY_VIT, 16, True, id="timm-vit"),
    pytest.param("timm:swin_tiny_patch4_window7_224", TINY_SWIN, 16, True, id="timm-swin"),
]


def tiny_cfg(out, arch: str, kwargs: str, size: int, *extra: str):
    return load_config("demo-adv-plus", [
        f'model.arch="{arch}"', f'model.kwargs="{kwargs}"', f"data.image_size={size}", "data.limit_train=32",
        "data.limit_val=20", "data.batch_size=16", "data.eval_batch_size=20", "attack.steps=1", "eval.steps=1",
        "optim.epochs=1", "train.progress=false", "train.log_every=1", f'train.out_dir="{out}"', "train.channels_last=true",
        *extra])


@pytest.mark.parametrize("arch, kwargs, size, transformer", ARCHS)
def test_every_family_trains_attacks_saves_resumes_and_evaluates(tmp_path, arch, kwargs, size, transformer):
    from fastadv.eval.evaluate import evaluate

    cfg = tiny_cfg(tmp_path / "run", arch, kwargs, size, "optim.name=adamw", "optim.ema_decay=0.5",
                   "optim.clip_grad_norm=1.0", "train.max_steps=1")
    torch.manual_seed(0)
    model = build_model(cfg.model)
    assert model.head.out_features == 11 and torch.count_nonzero(model.head.weight[10:]) == 0
    assert model.channels_last is (not transformer)
    # one Adv+ step through the Trainer's own train_step, then PGD on the K head
    x, y = torch.rand(4, 3, size, size), torch.arange(4)
    opt = build_optimizer(model, cfg.optim)
    before = [p.detach().clone() for p in model.parameters()]
    loss, _ = train_step(build_method(cfg), model, opt, torch.amp.GradScaler("cpu", enabled=False), x, y,
                         torch.device("cpu"), FP32, clip_grad_norm=1.0)
    assert torch.isfinite(loss) and any(not torch.equal(a, p) for a, p in zip(before, model.parameters()))
    x_adv = PGD(eps=0.03, steps=2, alpha_ratio=0.25, num_classes=10, head="k")(model.eval(), x, y)
    assert (x_adv - x).abs().max() <= 0.03 + 1e-6 and 0 <= x_adv.min() and x_adv.max() <= 1
    # save (1 step), resume to the end of the epoch (2 steps), evaluate the EMA weights
    train(cfg)
    cfg2 = tiny_cfg(tmp_path / "run", arch, kwargs, size, "optim.name=adamw", "optim.ema_decay=0.5",
                    "optim.clip_grad_norm=1.0")
    path = train(cfg2, resume=tmp_path / "run")
    ckpt = load_checkpoint(path)
    assert ckpt["progress"]["step"] == 2 and ckpt["ema"]["average"] is not None
    assert ckpt["eval_model"].keys() == ckpt["model"].keys()
    out = evaluate(tmp_path / "run", progress=False)
    info = json.loads((out / "eval.json").read_text())
    assert info["arch"] == arch and info["settings"]["clean"]["images"] == 20 and "pgd1" in info["settings"]


def test_torchvision_heads_are_found_through_their_own_attribute_paths():
    cases = {"resnet18": "fc", "convnext_tiny": "classifier.2", "efficientnet_b0": "classifier.1", "swin_t": "head"}
    for arch, path in cases.items():
        m = build_model(ModelConfig(arch=arch, num_classes=7, num_aux=2, pretrained=False))
        assert m.head_path == path and m.head.out_features == 9, arch
        assert m.eval()(torch.rand(1, 3, 32, 32)).shape == (1, 9)


def test_model_normalization_comes_from_the_models_own_config():
    vit = build_model(ModelConfig(arch="timm:vit_tiny_patch16_224", num_classes=3, pretrained=False, kwargs=TINY_VIT,
                                  image_size=16))
    assert vit.normalize.mean.flatten().tolist() == [0.5, 0.5, 0.5]  # timm pretrained_cfg (augreg)
    fixed = build_model(ModelConfig(arch="timm:vit_tiny_patch16_224", num_classes=3, pretrained=False, kwargs=TINY_VIT,
                                    image_size=16, normalize="fixed", mean=(0.1, 0.2, 0.3), std=(1, 1, 1)))
    assert torch.allclose(fixed.normalize.mean.flatten(), torch.tensor([0.1, 0.2, 0.3]))
    cfg = load_config("demo-adv-plus-vit")
    assert cfg.model.mean == (0.5, 0.5, 0.5) and cfg.model.image_size == 32  # recorded in the run's config


# --------------------------------------------------------------------------- weights layouts
class ImageNormalizer(nn.Module):  # RobustBench's (robustbench.model_zoo.architectures.utils_architectures)
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("mean", torch.as_tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.as_tensor(std).view(1, 3, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


class InputNormalize(nn.Module):  # MadryLab robustness (robustness/helpers.py)
    def __init__(self, mean, std):
        super().__init__()
        self.register_buffer("new_mean", torch.as_tensor(mean)[..., None, None])
        self.register_buffer("new_std", torch.as_tensor(std)[..., None, None])

    def forward(self, x):
        return (torch.clamp(x, 0, 1) - self.new_mean) / self.new_std


MEAN, STD = (0.4, 0.45, 0.5), (0.2, 0.25, 0.3)


def _resnet():
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


def _robustness_file(path):
    net = _resnet()
    normalizer = InputNormalize(MEAN, STD)

    class AttackerModel(nn.Module):  # keys: normalizer.*, model.*, attacker.normalize.*, attacker.model.*
        def __init__(self):
            super().__init__()
            self.normalizer, self.model = normalizer, net
            self.attacker = nn.Module()
            self.attacker.normalize, self.attacker.model = normalizer, net

    wrapped = nn.DataParallel(AttackerModel())  # adds the module. prefix, as their checkpoints have
    torch.save({"model": wrapped.state_dict(), "epoch": 90, "optimizer": {}, "schedule": {}}, path)
    return lambda x: net(normalizer(x))


def _robustbench_file(path):
    net = _resnet()
    model = nn.Sequential(OrderedDict([("normalize", ImageNormalizer(MEAN, STD)), ("model", net)]))
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    return model


def _plain_file(path, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)):
    net = _resnet()
    torch.save(net.state_dict(), path)
    return lambda x: net(ImageNormalizer(mean, std)(x))


def _timm_file(path):
    torch.manual_seed(0)
    net = timm.create_model("convnext_atto", num_classes=10, depths=[1, 1, 1, 1], dims=[8, 16, 32, 64]).eval()
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(net.state_dict(), str(path))
    else:  # timm's train.py checkpoint layout
        torch.save({"epoch": 3, "arch": "convnext_atto", "state_dict": net.state_dict(), "version": 2}, path)
    return lambda x: net(ImageNormalizer((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))(x))


LAYOUTS = {
    "plain": ("resnet18", "", "r18.pth", _plain_file),
    "torchvision": ("resnet18", "", "resnet18-f37072fd.pth", _plain_file),
    "robustness": ("resnet18", "", "imagenet_linf_4.pt", _robustness_file),
    "robustbench": ("resnet18", "", "Salman2020Do_R18.pt", _robustbench_file),
    "timm-pth": ("timm:convnext_atto", TINY_CONVNEXT, "convnext.pth.tar", _timm_file),
    "timm-safetensors": ("timm:convnext_atto", TINY_CONVNEXT, "model.safetensors", _timm_file),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_each_layout_loads_with_the_source_models_logits(tmp_path, layout):
    arch, kwargs, name, write = LAYOUTS[layout]
    source = write(tmp_path / name)
    cfg = ModelConfig(arch=arch, kwargs=kwargs, num_classes=10, num_aux=1, pretrained=False, weights=str(tmp_path / name))
    model = build_model(cfg).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        want, got = source(x), model(x)
    assert torch.allclose(got[:, :10], want, atol=1e-5), (got[:, :10] - want).abs().max()
    assert torch.count_nonzero(got[:, 10]) == 0  # the M row starts at zero
    if layout in ("robustness", "robustbench"):  # the file's own normalization, recorded in the config
        assert cfg.mean == pytest.approx(MEAN) and cfg.normalize == "fixed"


def test_a_mismatched_file_is_refused_naming_the_key(tmp_path):
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "r34.pth")
    with pytest.raises(FastadvError, match=r"do not fit.*unexpected \['layer1.2"):
        build_model(ModelConfig(arch="resnet18", pretrained=False, weights=str(tmp_path / "r34.pth")))
    torch.save(torchvision.models.resnet50().state_dict(), tmp_path / "r50.pth")
    with pytest.raises(FastadvError, match=r"first mismatch layer1\.0\.conv1\.weight"):
        build_model(ModelConfig(arch="resnet18", pretrained=False, weights=str(tmp_path / "r50.pth")))


class RunsCode:
    def __reduce__(self):
        return (print, ("this pickle ran code",))


def test_a_pickle_that_runs_code_is_refused(tmp_path, capsys):
    state = torchvision.models.resnet18().state_dict()
    state["evil"] = RunsCode()
    torch.save({"model": state}, tmp_path / "evil.pt")
    with pytest.raises(FastadvError, match="would run code.*builtins.print") as exc:
        build_model(ModelConfig(arch="resnet18", pretrained=False, weights=str(tmp_path / "evil.pt")))
    assert "weights_only=False" not in str(exc.value) and "weights_only" not in str(exc.value)
    assert "ran code" not in capsys.readouterr().out


def test_weights_names_offline_give_clear_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(FastadvError, match="not available offline"):
        build_model(ModelConfig(arch="resnet50", pretrained=False, weights="ResNet50_Weights.IMAGENET1K_V2"))
    with pytest.raises(FastadvError, match="not a torchvision weights name"):
        build_model(ModelConfig(arch="resnet50", pretrained=False, weights="ResNet50_Weights.NOPE"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(FastadvError, match="timm could not fetch pretrained weights"):
        build_model(ModelConfig(arch="timm:convnext_atto", pretrained=False, weights="timm"))
    with pytest.raises(FastadvError, match="needs a timm architecture"):
        build_model(ModelConfig(arch="resnet18", pretrained=False, weights="timm"))


# --------------------------------------------------------------------------- optimizer, EMA, schedule
def test_sgd_is_unchanged_and_adamw_skips_decay_on_norms_and_biases():
    model = build_model(ModelConfig(arch="timm:convnext_atto", kwargs=TINY_CONVNEXT, num_classes=4, pretrained=False))
    sgd = build_optimizer(model, load_config("demo-adv-plus").optim)
    assert type(sgd) is torch.optim.SGD and sgd.defaults["momentum"] == 0.9 and sgd.defaults["weight_decay"] == 5e-4
    cfg = load_config("demo-adv-plus-convnext").optim
    adamw = build_optimizer(model, cfg)
    decayed, plain = adamw.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert decayed["weight_decay"] == 0.05 and plain["weight_decay"] == 0.0 and adamw.defaults["betas"] == (0.9, 0.95)
    assert all(p.ndim > 1 for p in decayed["params"])
    assert {names[id(p)] for p in plain["params"]} >= {"net.stem.1.weight", "net.stem.1.bias", "net.head.fc.bias"}
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))


def test_lr_at_is_cosine_lr_and_counts_warmup_epochs():
    sgd = load_config("demo-adv-plus").optim
    for step in (0, 1, 37, 99, 100):
        assert lr_at(step, 100, 0.05, sgd) == cosine_lr(step, 100, 0.05, sgd.min_lr_ratio, sgd.warmup_steps)
    adamw = load_config("demo-adv-plus-convnext").optim  # warmup_epochs = 1
    assert lr_at(0, 60, 1.0, adamw, steps_per_epoch=20) == pytest.approx(1 / 20)
    assert lr_at(19, 60, 1.0, adamw, steps_per_epoch=20) == pytest.approx(1.0)


def test_weight_ema_equals_the_fawa_averaging_rule():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="resnet18", num_classes=4, pretrained=False))
    ema, reference = WeightEma(0.8), None
    for _ in range(3):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model.train()(torch.rand(2, 3, 16, 16))  # moves BatchNorm statistics and its integer counter
        ema.update(model)
        reference = fawa_update(reference, model.state_dict(), 0.8)
    for k, v in reference.items():
        assert torch.allclose(ema.weights()[k], v, atol=1e-6), k


def test_gradient_clipping_bounds_the_global_norm():
    model = nn.Linear(8, 4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    (model(torch.randn(16, 8)) * 100).sum().backward()
    clip_gradients(opt, torch.amp.GradScaler("cpu", enabled=False), 0.5)
    total = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters()))
    assert total == pytest.approx(0.5, rel=1e-4)


def test_new_recipes_load_with_their_published_settings():
    c = load_config("imagenet-adv-plus-convnext-t")
    assert (c.model.arch, c.optim.name, c.optim.lr, c.optim.weight_decay, c.optim.betas) == (
        "timm:convnext_tiny", "adamw", 1e-3, 0.05, (0.9, 0.95))
    assert (c.optim.epochs, c.optim.warmup_epochs, c.optim.ema_decay, c.attack.steps) == (300, 20.0, 0.9999, 2)
    assert c.attack.eps == pytest.approx(4 / 255)
    v = load_config("imagenet-adv-plus-vit-s")
    assert v.model.arch == "timm:deit_small_patch16_224" and v.optim.name == "adamw"
    with pytest.raises(FastadvError, match="optim.name"):
        load_config("demo-adv-plus", ["optim.name=lamb"])


# --------------------------------------------------------------------------- fastadv eval --weights
@pytest.mark.slow
def test_eval_weights_on_the_demo_writes_the_usual_report(tmp_path):
    from fastadv.cli import main

    _robustbench_file(tmp_path / "rb.pt")
    out = tmp_path / "card"
    args = ["eval", "--weights", str(tmp_path / "rb.pt"), "--arch", "resnet18", "--data", "demo", "--out", str(out),
            "--no-progress", "--set", "eval.steps=1", "--set", "data.limit_val=40"]
    assert main(args) == 0
    assert (out / "report" / "report.html").is_file() and (out / "eval" / "predictions" / "clean.csv").is_file()
    assert json.loads((out / "eval" / "eval.json").read_text())["method"] is None  # not trained here: no report role
    ckpt = load_checkpoint(out)
    assert ckpt["config"]["model"]["weights"] == str(tmp_path / "rb.pt") and ckpt["config"]["model"]["mean"] == list(MEAN) \
        or tuple(ckpt["config"]["model"]["mean"]) == pytest.approx(MEAN)
    assert main(args) == 2  # never over an existing run


def test_eval_weights_flags_are_checked(tmp_path, capsys):
    from fastadv.cli import main

    assert main(["eval", "--weights", str(tmp_path / "none.pt")]) == 2
    assert "go together" in capsys.readouterr().err
    assert main(["eval", "--weights", str(tmp_path / "none.pt"), "--arch", "resnet18", "--out", str(tmp_path / "o")]) == 2
    assert "does not exist" in capsys.readouterr().err
