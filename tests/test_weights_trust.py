"""Issue 24 (checkpoint loading): files built the producers' own way load with the producer's logits
(timm CheckpointSaver with args and EMA, MadryLab robustness train.py, fastadv); code-running pickles,
unreadable files and classifiers that do not fit are refused in one line naming why; a head is
replaced only on request, announced; --data with a demo recipe is refused."""

from __future__ import annotations

import argparse
import os
import pickle
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from fastadv.models.checkpoint import load_checkpoint, save_checkpoint
from fastadv.cli import main
from fastadv.config import ModelConfig
from fastadv.errors import FastadvError
from fastadv.models import build_model
from tests.test_models_zoo import MEAN, STD, TINY_CONVNEXT, ImageNormalizer, InputNormalize
from tests.test_runfolders import one_line_error

timm = pytest.importorskip("timm")
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _logits_equal(model, source, x=None):
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)) if x is None else x
    with torch.no_grad():
        want, got = source(x), model.eval()(x)
    k = want.shape[1]
    assert (got[:, :k] - want).abs().max() <= 1e-5, (got[:, :k] - want).abs().max()


# --------------------------------------------------------------------------- producers' own files
def _timm_saver_file(folder: Path):
    """timm.utils.CheckpointSaver output (args Namespace, optimizer, AMP scaler, state_dict, state_dict_ema)."""
    import timm.optim
    from timm.utils import CheckpointSaver, ModelEmaV3, NativeScaler

    torch.manual_seed(0)
    net = timm.create_model("convnext_atto", num_classes=10, depths=[1, 1, 1, 1], dims=[8, 16, 32, 64])
    opt = timm.optim.create_optimizer_v2(net, "adamw", lr=1e-2)
    ema = ModelEmaV3(net, decay=0.5)
    for _ in range(2):  # the EMA weights now differ from the model's
        opt.zero_grad()
        net(torch.rand(4, 3, 32, 32)).sum().backward()
        opt.step()
        ema.update(net)
    args = argparse.Namespace(model="convnext_atto", lr=1e-2, epochs=3, input_size=(3, 32, 32), mean=None)
    folder.mkdir()
    saver = CheckpointSaver(net, opt, args=args, model_ema=ema, amp_scaler=NativeScaler(device="cpu"),
                            checkpoint_dir=str(folder), recovery_dir=str(folder))
    saver.save_checkpoint(0, metric=0.5)
    norm = ImageNormalizer(*IMAGENET)
    return folder / "model_best.pth.tar", (lambda x: net.eval()(norm(x))), (lambda x: ema.module.eval()(norm(x)))


def test_timm_checkpoint_saver_output_loads_state_dict_by_default_and_ema_on_request(tmp_path):
    path, model_logits, ema_logits = _timm_saver_file(tmp_path / "timm")
    assert "argparse.Namespace" in torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    cfg = dict(arch="timm:convnext_atto", kwargs=TINY_CONVNEXT, num_classes=10, num_aux=1, pretrained=False)
    _logits_equal(build_model(ModelConfig(**cfg, weights=str(path))), model_logits)
    _logits_equal(build_model(ModelConfig(**cfg, weights=str(path), weights_ema=True)), ema_logits)
    plain = tmp_path / "plain.pth"
    torch.save(torchvision.models.resnet18(num_classes=10).state_dict(), plain)
    with pytest.raises(FastadvError, match="model.weights_ema=true.*no state_dict_ema"):
        build_model(ModelConfig(arch="resnet18", num_classes=10, pretrained=False, weights=str(plain), weights_ema=True))


def test_robustness_file_as_its_train_py_saves_it(tmp_path):
    """robustness/train.py: sd_info = {model: AttackerModel under DataParallel, optimizer, schedule, epoch, amp}."""
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()

    class Attacker(nn.Module):  # robustness.attacker.Attacker: normalize + model
        def __init__(self):
            super().__init__()
            self.normalize, self.model = InputNormalize(MEAN, STD), net

    class AttackerModel(nn.Module):  # robustness.attacker.AttackerModel
        def __init__(self):
            super().__init__()
            self.normalizer, self.model, self.attacker = InputNormalize(MEAN, STD), net, Attacker()

    model = nn.DataParallel(AttackerModel())
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.StepLR(opt, step_size=50)
    sd_info = {"model": model.state_dict(), "optimizer": opt.state_dict(), "schedule": schedule.state_dict(),
               "epoch": 1, "amp": None, "adv_prec1": 12.5}
    torch.save(sd_info, tmp_path / "checkpoint.pt.best")
    cfg = ModelConfig(arch="resnet18", num_classes=10, num_aux=1, pretrained=False, weights=str(tmp_path / "checkpoint.pt.best"))
    norm = InputNormalize(MEAN, STD)
    _logits_equal(build_model(cfg), lambda x: net(norm(x)))
    assert cfg.mean == pytest.approx(MEAN) and cfg.std == pytest.approx(STD)


def test_fastadv_checkpoint_loads_with_its_logits(tmp_path):
    torch.manual_seed(0)
    source = build_model(ModelConfig(arch="resnet18", num_classes=10, num_aux=1, pretrained=False, normalize="fixed",
                                     mean=MEAN, std=STD)).eval()
    save_checkpoint(tmp_path / "checkpoint.pt", {"model": source.state_dict(), "eval_model": None,
                                                  "config": {"model": {"num_classes": 10, "num_aux": 1}}})
    cfg = ModelConfig(arch="resnet18", num_classes=10, num_aux=0, pretrained=False, weights=str(tmp_path / "checkpoint.pt"))
    _logits_equal(build_model(cfg), lambda x: source(x)[:, :10])
    assert cfg.mean == pytest.approx(MEAN)


# --------------------------------------------------------------------------- refusals
class RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _code_running_files(tmp_path: Path, marker: Path) -> dict[str, Path]:
    state = torchvision.models.resnet18(num_classes=10).state_dict()
    files = {"zip": tmp_path / "evil.pt", "legacy": tmp_path / "evil_legacy.pt", "pickle": tmp_path / "evil.pkl"}
    torch.save({"state_dict": state, "x": RunsCode(marker)}, files["zip"])
    torch.save({"state_dict": state, "x": RunsCode(marker)}, files["legacy"], _use_new_zipfile_serialization=False)
    files["pickle"].write_bytes(pickle.dumps({"x": RunsCode(marker)}))
    return files


@pytest.mark.parametrize("kind", ["zip", "legacy", "pickle"])
def test_a_code_running_pickle_is_refused_naming_the_global_and_never_runs(tmp_path, capsys, kind):
    marker = tmp_path / "MARKER"
    path = _code_running_files(tmp_path, marker)[kind]
    code = main(["eval", "--weights", str(path), "--arch", "resnet18", "--out", str(tmp_path / "card")])
    err = capsys.readouterr().err
    assert code == 2 and one_line_error(err), err
    assert "would run code" in err and "system" in err and "weights_only" not in err, err
    assert not marker.exists() and not (tmp_path / "card" / "config.toml").exists()
    with pytest.raises(FastadvError, match="would run code"):  # run-folder checkpoints too
        load_checkpoint(path)
    assert not marker.exists()


def _unreadable(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = tmp_path / "good.pt"
    torch.save({"a": torch.ones(4000)}, good)
    legacy = tmp_path / "good_legacy.pt"
    torch.save({"a": torch.ones(4000)}, legacy, _use_new_zipfile_serialization=False)
    files = {
        "empty": (b"", "empty file"),
        "random": (bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(3)).tolist()),
                   "not a torch file"),
        "text": (b"epoch,loss\n1,0.5\n2,0.4\n" * 10, "text file"),
        "truncated-zip": (good.read_bytes()[:8000], "truncated"),
        "truncated-zip-head": (good.read_bytes()[:30], "truncated"),
        "truncated-legacy": (legacy.read_bytes()[:len(legacy.read_bytes()) // 2], "truncated"),
    }
    out = {}
    for name, (data, words) in files.items():
        (tmp_path / f"{name}.pt").write_bytes(data)
        out[name] = (tmp_path / f"{name}.pt", words)
    return out


@pytest.mark.parametrize("name", ["empty", "random", "text", "truncated-zip", "truncated-zip-head", "truncated-legacy"])
def test_unreadable_files_are_named_in_words(tmp_path, capsys, name):
    path, words = _unreadable(tmp_path)[name]
    for load in (lambda: build_model(ModelConfig(arch="resnet18", num_classes=10, pretrained=False, weights=str(path))),
                 lambda: load_checkpoint(path)):
        with pytest.raises(FastadvError) as exc:
            load()
        text = str(exc.value)
        assert words in text and "\n" not in text, text
        assert not any(bad in text for bad in ("EOFError", "KeyError", "run code", "miniz")), text
    assert main(["eval", str(path), "--no-progress"]) == 2  # a run-folder checkpoint given to fastadv eval
    err = capsys.readouterr().err
    assert one_line_error(err) and words in err, err


# --------------------------------------------------------------------------- the classifier
def _resnet_file(path: Path, rows: int = 10, width: int = 512, head: bool = True) -> dict:
    torch.manual_seed(0)
    state = torchvision.models.resnet18(num_classes=rows).state_dict()
    if width != 512:
        state["fc.weight"] = torch.randn(rows, width)
    if not head:
        del state["fc.weight"], state["fc.bias"]
    torch.save(state, path)
    return state


@pytest.mark.parametrize("rows, width, head, shape", [
    (5, 512, True, "(5, 512)"), (10, 256, True, "(10, 256)"), (1000, 512, True, "(1000, 512)"),
    (10, 512, False, "none")])
def test_a_classifier_that_does_not_fit_is_refused_naming_both_shapes(tmp_path, rows, width, head, shape):
    _resnet_file(tmp_path / "w.pth", rows, width, head)
    with pytest.raises(FastadvError) as exc:
        build_model(ModelConfig(arch="resnet18", num_classes=10, num_aux=1, pretrained=False, weights=str(tmp_path / "w.pth")))
    text = str(exc.value)
    assert "fc.weight" in text and shape in text and "(10, 512)" in text and "model.replace_head=true" in text, text


def test_k_plus_m_rows_fit_and_the_first_k_are_loaded(tmp_path):
    state = _resnet_file(tmp_path / "w.pth", rows=11)
    model = build_model(ModelConfig(arch="resnet18", num_classes=10, num_aux=1, pretrained=False, weights=str(tmp_path / "w.pth")))
    assert torch.equal(model.net.fc.weight[:10], state["fc.weight"][:10])
    assert torch.count_nonzero(model.net.fc.weight[10:]) == 0


def test_replacing_the_head_is_explicit_announced_and_recorded(tmp_path, capsys):
    state = _resnet_file(tmp_path / "imagenet.pth", rows=1000)
    model = build_model(ModelConfig(arch="resnet18", num_classes=10, num_aux=1, pretrained=False,
                                    init=str(tmp_path / "imagenet.pth"), replace_head=True))
    out = capsys.readouterr().out
    assert len([line for line in out.splitlines() if "replace_head" in line]) == 1, out
    assert "(1000, 512)" in out and "(11, 512)" in out
    assert torch.equal(model.net.conv1.weight, state["conv1.weight"])
    assert torch.count_nonzero(model.net.fc.weight[10:]) == 0
    run = tmp_path / "run"  # training from ImageNet-shaped init weights: refused, then allowed on request
    args = ["train", "--recipe", "demo-std", "--init", str(tmp_path / "imagenet.pth"), "--out", str(run),
            "train.max_steps=1", "data.limit_train=16", "data.limit_val=8", "data.batch_size=8", "train.progress=false"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert one_line_error(err) and "fc.weight" in err and not (run / "checkpoint.pt").exists()
    assert main(args + ["model.replace_head=true"]) == 0
    assert "replace_head" in capsys.readouterr().out
    assert "replace_head = true" in (run / "config.toml").read_text()
    card = ["eval", "--weights", str(tmp_path / "imagenet.pth"), "--arch", "resnet18", "--out", str(tmp_path / "card")]
    assert main(card + ["--set", "model.replace_head=true"]) == 2  # evaluating a random head: never
    assert one_line_error(capsys.readouterr().err) and not (tmp_path / "card" / "config.toml").exists()


# --------------------------------------------------------------------------- --data with a demo recipe
def test_data_with_a_demo_recipe_is_refused_naming_the_recipes_that_read_data(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--recipe", "demo-adv", "--data", str(tmp_path / "no-such-data"), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert one_line_error(err) and "imagenet-" in err and "data.backend" in err, err
    assert not (out / "config.toml").exists()


def test_eval_data_on_a_demo_run_is_refused(tmp_path, capsys):
    """`fastadv eval RUN --data PATH` on a demo run would evaluate the digits and ignore PATH: refused, nothing written."""
    from fastadv.config import load_config
    from fastadv.train import train

    run = tmp_path / "run"
    train(load_config("demo-std", ["data.image_size=16", "data.limit_train=16", "data.batch_size=16",
                                   "model.arch=resnet18", "train.max_steps=1", "train.progress=false",
                                   f"train.out_dir={run}"]))
    capsys.readouterr()
    assert main(["eval", str(run), "--data", str(tmp_path / "imagenet")]) == 2
    err = capsys.readouterr().err
    assert one_line_error(err) and "data.backend=demo" in err and "imagenet-" in err, err
    assert not (run / "eval").exists()
