"""Reading recipe files: a shipped name or a .toml path, `base =` inheritance, `description =`.

A recipe may start with `base = "imagenet-adv"` (a shipped recipe name, or a .toml path; a
relative path is taken relative to the inheriting file) and then set only what differs:
the base is merged in first, table by table and field by field (chains allowed). `base` and
`description = "one line"` are read here and are not Config fields; `name` is never
inherited, so each inheriting recipe names itself.
"""

from __future__ import annotations

import sys
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path
from typing import Any

from fastadv.errors import FastadvError
from fastadv.runtime.hints import did_you_mean

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_SHIPPED = "fastadv.config.recipes"
_LOADER_KEYS = ("base", "description")  # top-level keys consumed here, not Config fields


def recipe_names() -> list[str]:
    """Names of the recipes shipped inside the package."""
    folder = resources.files(_SHIPPED)
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".toml"))


def _shipped_list() -> str:
    return f"the shipped recipes are: {', '.join(recipe_names())}"


def _locate(recipe: str, folder: Traversable | Path | None) -> Traversable | Path | None:
    """The file of `recipe`: a .toml path (relative to `folder` when given) or a shipped name; None if neither."""
    if Path(recipe).suffix == ".toml":
        path = Path(recipe)
        located = folder / recipe if folder is not None and not path.is_absolute() else path
        if located.is_file():
            return located
    shipped = resources.files(_SHIPPED) / f"{recipe}.toml"
    return shipped if shipped.is_file() else None


def _parse(file: Traversable | Path, label: str) -> dict[str, Any]:
    try:
        return tomllib.loads(file.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise FastadvError(f"recipe {label!r} is not valid TOML: {exc}") from exc


def _key(file: Traversable | Path) -> str:
    """One identity per file, however it was named (for cycle detection)."""
    return str(file.resolve()) if isinstance(file, Path) else str(file)


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`base` with `over` on top: tables merge key by key, anything else (numbers, strings, arrays) is replaced."""
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _check_loader_keys(raw: dict[str, Any], label: str) -> None:
    for key in _LOADER_KEYS:
        if key in raw and not isinstance(raw[key], str):
            raise FastadvError(f"recipe {label!r}: `{key} = ...` must be a string, got {raw[key]!r}")


def read_recipe(recipe: str) -> dict[str, Any]:
    """The recipe's tables with every `base` merged in, without the loader keys (base, description)."""
    file = _locate(recipe, None)
    if file is None:
        raise FastadvError(
            f"unknown recipe {recipe!r}{did_you_mean(recipe, recipe_names())}: not a .toml file and not one of "
            f"the shipped recipes ({', '.join(recipe_names())})"
        )
    chain: list[tuple[str, str]] = []  # (label, file identity), the inheriting recipe first
    layers: list[dict[str, Any]] = []
    label = recipe
    while True:
        chain.append((label, _key(file)))
        raw = _parse(file, label)
        _check_loader_keys(raw, label)
        layers.append(raw)
        base = raw.get("base")
        if base is None:
            break
        if "name" not in layers[0]:
            raise FastadvError(f"recipe {recipe!r} inherits {base!r} (base = ...) but sets no `name`: "
                               f"add name = \"...\" so its runs are not named after the base")
        parent = file.parent if isinstance(file, Path) else resources.files(_SHIPPED)
        found = _locate(base, parent)
        if found is None:
            names = " -> ".join(lbl for lbl, _ in chain)
            raise FastadvError(f"recipe {label!r} (chain: {names}): base = {base!r} is not a .toml file and not "
                               f"a shipped recipe; {_shipped_list()}")
        if any(_key(found) == key for _, key in chain):
            names = " -> ".join([lbl for lbl, _ in chain] + [base])
            raise FastadvError(f"recipe inheritance cycle: {names}; remove one `base =` ({_shipped_list()})")
        file, label = found, base
    merged: dict[str, Any] = {}
    for layer in reversed(layers):  # the farthest base first
        merged = deep_merge(merged, {k: v for k, v in layer.items() if k not in _LOADER_KEYS and k != "name"})
    if "name" in layers[0]:  # never inherited
        merged["name"] = layers[0]["name"]
    return merged


def recipe_descriptions() -> dict[str, str]:
    """Every shipped recipe's own one-line `description` ("" when it has none), by name."""
    folder = resources.files(_SHIPPED)
    out: dict[str, str] = {}
    for name in recipe_names():
        raw = _parse(folder / f"{name}.toml", name)
        _check_loader_keys(raw, name)
        out[name] = raw.get("description", "")
    return out


def check_data_is_read(data: str | None, cfg) -> None:
    """--data with data.backend=demo would be ignored (the embedded digits) yet recorded: refuse it."""
    if not data or cfg.data.backend != "demo":
        return
    readers = [n for n in recipe_names() if read_recipe(n).get("data", {}).get("backend", "folder") != "demo"]
    raise FastadvError(f"--data {data}: {cfg.name} uses the embedded demo digits (data.backend=demo) "
                       f"and reads no data; the recipes that read --data are {', '.join(readers)} (or add "
                       f"data.backend=folder model.num_classes=K to use your folders with this recipe)")
