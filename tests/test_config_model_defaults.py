"""Input size, mean/std and interpolation follow the model's own config unless the recipe or --set
gives them (issue 15): data.interpolation=auto resolves per architecture, explicit values win,
and the run's saved config records what was resolved (a resumed run does not re-resolve)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from fastadv.runtime import runfolder
from fastadv.cli import main
from fastadv.config import from_dict, load_config, to_toml
from fastadv.errors import FastadvError
from fastadv.models.zoo import model_defaults, supported_interpolation

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

VIT, CONVNEXT = "timm:vit_tiny_patch16_224", "timm:convnext_atto"  # tiny configs; nothing is downloaded


def test_auto_interpolation_is_the_models_own():
    assert model_defaults(VIT).interpolation == model_defaults(CONVNEXT).interpolation == "bicubic"
    assert model_defaults("resnet18").interpolation == "bilinear"
    for arch, expected in ((VIT, "bicubic"), (CONVNEXT, "bicubic"), ("resnet18", "bilinear")):
        cfg = load_config("demo-std", [f"model.arch={arch}", "model.pretrained=false"])
        assert cfg.data.interpolation == expected, arch
    assert load_config("demo-adv-plus-vit").data.interpolation == "bicubic"  # a shipped recipe, no key given
    assert load_config("demo-adv-plus").data.interpolation == "bilinear"  # resnet18


def test_filters_the_backends_lack_map_to_the_nearest_supported():
    assert [supported_interpolation(n) for n in ("bilinear", "bicubic", "nearest", "box", "hamming", "lanczos", "")] \
        == ["bilinear", "bicubic", "bilinear", "bilinear", "bilinear", "bicubic", "bilinear"]


def test_explicit_interpolation_wins(tmp_path):
    assert load_config("demo-adv-plus-vit", ["data.interpolation=bilinear"]).data.interpolation == "bilinear"
    assert load_config("demo-adv-plus", ["data.interpolation=bicubic"]).data.interpolation == "bicubic"
    recipe = tmp_path / "mine.toml"
    recipe.write_text('base = "demo-adv-plus-vit"\nname = "mine"\n[data]\ninterpolation = "bilinear"\n')
    assert load_config(str(recipe)).data.interpolation == "bilinear"


def test_explicit_mean_std_are_kept_and_recorded_fixed(tmp_path):
    auto = load_config("demo-adv-plus-vit")
    assert (auto.model.normalize, auto.model.mean, auto.model.std) == ("auto", (0.5,) * 3, (0.5,) * 3)
    given = load_config("demo-adv-plus-vit", ["model.mean=[0.1, 0.2, 0.3]", "model.std=[0.4, 0.5, 0.6]"])
    assert (given.model.normalize, given.model.mean, given.model.std) == ("fixed", (0.1, 0.2, 0.3), (0.4, 0.5, 0.6))
    only_mean = load_config("demo-adv-plus-vit", ["model.mean=[0.1, 0.2, 0.3]"])  # std: the model's own
    assert (only_mean.model.normalize, only_mean.model.std) == ("fixed", (0.5,) * 3)
    recipe = tmp_path / "mine.toml"  # a recipe's own table counts as given, also next to normalize = "auto"
    recipe.write_text('base = "demo-adv-plus-vit"\nname = "mine"\n[model]\nnormalize = "auto"\nstd = [0.3, 0.3, 0.3]\n')
    cfg = load_config(str(recipe))
    assert (cfg.model.normalize, cfg.model.mean, cfg.model.std) == ("fixed", (0.5,) * 3, (0.3,) * 3)
    assert "model.std" in cfg.given_keys and "model.mean" not in cfg.given_keys


def test_bad_interpolation_is_a_one_line_error(capsys):
    with pytest.raises(FastadvError, match=r"data.interpolation='lanczos' is not one of: auto, bilinear, bicubic") as err:
        load_config("demo-std", ["data.interpolation=lanczos"])
    assert "\n" not in str(err.value)
    assert main(["train", "--recipe", "demo-std", "data.interpolation=area"]) == 2
    stderr = capsys.readouterr().err
    assert "data.interpolation='area'" in stderr and "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1


def test_saved_config_records_the_resolved_values_and_resume_keeps_them(tmp_path):
    cfg = load_config("demo-adv-plus-vit", [f"train.out_dir={tmp_path}", "model.mean=[0.2, 0.2, 0.2]"])
    text = to_toml(cfg)
    saved = tomllib.loads(text)
    assert saved["data"]["interpolation"] == "bicubic"
    assert saved["model"]["normalize"] == "fixed" and saved["model"]["mean"] == [0.2, 0.2, 0.2]
    runfolder.save_config(Path(tmp_path), text)
    resumed, changes = runfolder.resume_config(Path(tmp_path), [])
    assert changes == {} and resumed.data.interpolation == "bicubic" and resumed.model.mean == (0.2, 0.2, 0.2)
    # A run saved with an explicit bilinear for a bicubic model resumes bilinear (nothing is re-resolved).
    explicit = load_config("demo-adv-plus-vit", [f"train.out_dir={tmp_path / 'b'}", "data.interpolation=bilinear"])
    runfolder.save_config(tmp_path / "b", to_toml(explicit))
    assert runfolder.resume_config(tmp_path / "b", [])[0].data.interpolation == "bilinear"
    with pytest.raises(FastadvError, match="data.interpolation"):  # changes what the checkpoint was trained on
        runfolder.resume_config(tmp_path / "b", ["data.interpolation=bicubic"])


def test_config_saved_before_the_option_reads_as_auto():
    """An older config.toml has no data.interpolation: it loads as "auto", which the data backends
    read as bilinear (what those runs used); see tests/test_data_backends.py."""
    cfg = from_dict({"data": {"backend": "demo"}, "model": {"arch": VIT}})
    assert cfg.data.interpolation == "auto"
