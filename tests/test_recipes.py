"""Recipe files: `base =` inheritance, `description =`, and the shipped recipes pinned to a golden dump."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from fastadv.config import load_config, recipe_descriptions, recipe_names
from fastadv.errors import FastadvError

GOLDEN = Path(__file__).parent / "data" / "recipes_golden.json"


def test_shipped_recipes_load_to_the_golden_configs():
    """Dumped before the recipes were rewritten with `base =`: every field of every recipe is unchanged."""
    golden = json.loads(GOLDEN.read_text())
    assert sorted(golden) == recipe_names()
    for name in recipe_names():
        loaded = json.loads(json.dumps(dataclasses.asdict(load_config(name))))
        assert loaded == golden[name], name


def test_shipped_recipes_inherit_instead_of_repeating():
    text = {name: (Path(__file__).parent.parent / "fastadv" / "config" / "recipes" / f"{name}.toml").read_text()
            for name in recipe_names()}
    roots = [name for name, t in text.items() if "\nbase = " not in t and not t.startswith("base = ")]
    assert roots == ["imagenet-std"]


def test_every_shipped_recipe_has_a_one_line_description():
    descriptions = recipe_descriptions()
    assert sorted(descriptions) == recipe_names()
    for name, line in descriptions.items():
        assert line.strip() and "\n" not in line and len(line) <= 110, (name, line)
    assert len(set(descriptions.values())) == len(descriptions)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_is_deep_merged_field_by_field(tmp_path):
    mine = write(tmp_path / "mine.toml", 'base = "imagenet-adv"\nname = "mine"\ndescription = "x"\n'
                                         '[attack]\neps = 0.0156\n[optim]\nepochs = 3\n')
    cfg, base = load_config(str(mine)), load_config("imagenet-adv")
    assert (cfg.name, cfg.attack.eps, cfg.optim.epochs) == ("mine", 0.0156, 3)
    assert cfg.attack.steps == base.attack.steps and cfg.optim.lr == base.optim.lr  # the rest of the tables
    assert cfg.method.name == "adv" and cfg.train.out_dir == "runs/imagenet-adv"
    assert dataclasses.replace(cfg, name=base.name, attack=base.attack, optim=base.optim) == base


def test_relative_base_path_is_taken_from_the_inheriting_file(tmp_path):
    write(tmp_path / "common" / "root.toml", 'name = "root"\n[method]\nname = "std"\n[model]\nnum_classes = 7\n[optim]\nlr = 0.2\n')
    write(tmp_path / "common" / "middle.toml", 'base = "root.toml"\nname = "middle"\n[optim]\nlr = 0.3\nepochs = 2\n')
    leaf = write(tmp_path / "runs" / "leaf.toml", 'base = "../common/middle.toml"\nname = "leaf"\n[optim]\nepochs = 5\n')
    cfg = load_config(str(leaf))
    assert (cfg.name, cfg.model.num_classes, cfg.optim.lr, cfg.optim.epochs) == ("leaf", 7, 0.3, 5)


def test_arrays_are_replaced_not_merged(tmp_path):
    root = write(tmp_path / "root.toml", 'name = "r"\n[method]\nname = "std"\n[model]\nnormalize = "fixed"\nmean = [0.1, 0.2, 0.3]\n')
    leaf = write(tmp_path / "leaf.toml", f'base = "{root}"\nname = "l"\n[model]\nmean = [0.5, 0.5, 0.5]\n')
    assert load_config(str(leaf)).model.mean == (0.5, 0.5, 0.5)


def test_inheritance_cycle_names_the_chain(tmp_path):
    write(tmp_path / "a.toml", 'base = "b.toml"\nname = "a"\n')
    write(tmp_path / "b.toml", 'base = "a.toml"\nname = "b"\n')
    with pytest.raises(FastadvError, match=r"cycle: .*a\.toml -> b\.toml -> a\.toml.*imagenet-std") as err:
        load_config(str(tmp_path / "a.toml"))
    assert "\n" not in str(err.value)
    me = write(tmp_path / "me.toml", 'base = "me.toml"\nname = "me"\n')
    with pytest.raises(FastadvError, match="cycle"):
        load_config(str(me))


def test_unknown_base_names_it_and_lists_the_shipped_recipes(tmp_path):
    mine = write(tmp_path / "mine.toml", 'base = "imagenet-adv-pluss"\nname = "mine"\n')
    with pytest.raises(FastadvError, match=r"'imagenet-adv-pluss'.*shipped recipes are: .*imagenet-adv-plus,"):
        load_config(str(mine))
    missing = write(tmp_path / "m2.toml", 'base = "nowhere/base.toml"\nname = "m2"\n')
    with pytest.raises(FastadvError, match="nowhere/base.toml"):
        load_config(str(missing))


def test_inheriting_recipe_must_name_itself_and_loader_keys_are_strings(tmp_path):
    nameless = write(tmp_path / "n.toml", 'base = "demo-adv"\n[optim]\nepochs = 1\n')
    with pytest.raises(FastadvError, match="sets no `name`"):
        load_config(str(nameless))
    bad = write(tmp_path / "b.toml", 'base = 3\nname = "b"\n')
    with pytest.raises(FastadvError, match="must be a string"):
        load_config(str(bad))
    plain = write(tmp_path / "p.toml", 'description = "no base, no name"\n[method]\nname = "std"\n[optim]\nepochs = 1\n')
    assert load_config(str(plain)).name == "run"  # as before: a recipe without a base need not name itself


def test_base_of_a_broken_file_is_a_user_error(tmp_path):
    write(tmp_path / "broken.toml", "[optim\n")
    mine = write(tmp_path / "mine.toml", 'base = "broken.toml"\nname = "mine"\n')
    with pytest.raises(FastadvError, match="broken.toml.*not valid TOML"):
        load_config(str(mine))
