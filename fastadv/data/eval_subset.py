"""Which validation images an evaluation scores (eval.subset), checked before any attack runs.

"" = all; "robustbench-5k" = RobustBench's 5,000 ImageNet ids (vendored, resources/README.md);
"per-class:N" = N images of every class, drawn with eval.seed (the same images every time);
any other value = a text file of ids, one a line (`<wnid>/<file>` or a file name as in the
predictions CSVs). A list naming images the dataset lacks is an error, not a smaller subset.
"""

from __future__ import annotations

import os
from importlib import resources

import torch

from fastadv.data.subset import IndexSubset
from fastadv.errors import FastadvError

ROBUSTBENCH_5K = "robustbench-5k"
PER_CLASS = "per-class:"
FEW_IMAGES = 5  # the report warns when a class has fewer images than this


def robustbench_ids() -> list[str]:
    text = resources.files("fastadv.data").joinpath("resources/robustbench_imagenet_5k_ids.txt").read_text()
    return [line.strip() for line in text.splitlines() if line.strip()]


def _ids_of_file(path: str) -> list[str]:
    if not os.path.isfile(path):
        raise FastadvError(f"eval.subset={path!r}: no such file; give robustbench-5k, per-class:N or a file of image ids")
    with open(path, encoding="utf-8") as f:
        return [line.strip() for line in f if line.strip() and not line.startswith("#")]


def per_class_indices(labels: list[int], n: int, seed: int) -> list[int]:
    """n indices of every class (all of a class with fewer), seeded, sorted."""
    by_class: dict[int, list[int]] = {}
    for i, label in enumerate(labels):
        by_class.setdefault(label, []).append(i)
    g = torch.Generator().manual_seed(seed)
    chosen: list[int] = []
    for label in sorted(by_class):
        members = by_class[label]
        chosen += [members[i] for i in torch.randperm(len(members), generator=g)[:n].tolist()]
    return sorted(chosen)


def _indices_of_ids(dataset, ids: list[str], what: str) -> list[int]:
    where: dict[str, int] = {}
    for i, name in enumerate(dataset.file_names):
        where[name] = i
        where[f"{dataset.classes[dataset.labels[i]]}/{os.path.basename(name)}"] = i
    missing = [x for x in ids if x not in where]
    if missing:
        more = f", ... ({len(missing) - 3} more)" if len(missing) > 3 else ""
        raise FastadvError(f"eval.subset={what}: {len(missing)} of its {len(ids)} images are not in the validation data "
                           f"({', '.join(missing[:3])}{more}); check data.path or the subset list")
    return sorted({where[x] for x in ids})


def select_subset(dataset, spec: str, seed: int):
    """(dataset restricted to eval.subset, its description for eval.json); the dataset itself for ""."""
    spec = spec.strip()
    if not spec:
        return dataset, None
    if spec == ROBUSTBENCH_5K:
        indices = _indices_of_ids(dataset, robustbench_ids(), spec)
    elif spec.startswith(PER_CLASS):
        try:
            n = int(spec[len(PER_CLASS):])
        except ValueError:
            n = 0
        if n < 1:
            raise FastadvError(f"eval.subset={spec!r}: write per-class:N with N >= 1, e.g. per-class:50")
        indices = per_class_indices(list(dataset.labels), n, seed)
    else:
        indices = _indices_of_ids(dataset, _ids_of_file(spec), spec)
    sub = IndexSubset(dataset, indices)
    counts = [0] * dataset.num_classes
    for label in sub.labels:
        counts[label] += 1
    few = [dataset.classes[c] for c, k in enumerate(counts) if k < FEW_IMAGES]
    return sub, {"subset": spec, "images": len(indices), "seed": seed, "min_per_class": min(counts),
                 "max_per_class": max(counts), "classes_under_5": few}
