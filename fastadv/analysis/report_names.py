"""The names models carry in a report: runs trained from one recipe share its name, so colliding
names get their folder added ("demo-adv-plus (timm-run)"), said in one printed line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastadv.errors import FastadvError


def folder_label(path: Path, parts: int = 1) -> str:
    """The last `parts` folders naming an input: its run folder for <run>/eval, the name of a CSV."""
    path = Path(path).absolute()
    path = path.with_suffix("") if path.suffix == ".csv" else path.parent if path.name == "eval" else path
    return "/".join(path.parts[-parts:])


def _labels(paths: list[Path]) -> list[str]:
    """The shortest folder labels that tell `paths` apart."""
    for parts in range(1, max(len(Path(p).absolute().parts) for p in paths) + 1):
        labels = [folder_label(p, parts) for p in paths]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]


def distinct_names(paths: list[Path], models: list[dict[str, Any]]) -> None:
    """Make every m["model"] unique (in place): a name shared by several inputs gets each one's folder."""
    seen: dict[Path, Path] = {}
    for p in paths:
        key = Path(p).resolve()
        if key in seen:
            raise FastadvError(f"{p} is given twice (as {seen[key]} too); pass each model once")
        seen[key] = p
    names = [m["model"] for m in models]
    renamed = []
    for name in sorted({n for n in names if names.count(n) > 1}):
        group = [i for i, n in enumerate(names) if n == name]
        for i, label in zip(group, _labels([paths[i] for i in group])):
            models[i]["model"] = f"{name} ({label})"
            renamed.append(f"{paths[i]} -> {models[i]['model']!r}")
    final = [m["model"] for m in models]
    clash = next((n for n in final if final.count(n) > 1), None)
    if clash:
        raise FastadvError(f"model name {clash!r} appears twice even with its folder added; name the runs apart: "
                           f"`fastadv train ... name=NAME` when training, or `fastadv eval RUN --set name=NAME`")
    if renamed:
        print("report: runs share a model name, so each is named with its folder: " + "; ".join(renamed))
