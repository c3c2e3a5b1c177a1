"""A stratified held-out split of a dataset (e.g. FAWA's 2%-per-class validation split)."""

from __future__ import annotations

import torch


def stratified_holdout(labels: list[int], fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """(train indices, held-out indices): round(fraction * n_k) images of every class k, at
    least one per class with two or more images; fixed by `seed`, disjoint, sorted."""
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        by_class.setdefault(label, []).append(index)
    g = torch.Generator().manual_seed(seed)
    held: list[int] = []
    for label in sorted(by_class):
        members = by_class[label]
        n = min(len(members) - 1, max(1, round(fraction * len(members)))) if fraction > 0 else 0
        order = torch.randperm(len(members), generator=g).tolist()
        held += [members[i] for i in order[:n]]
    held_set = set(held)
    return [i for i in range(len(labels)) if i not in held_set], sorted(held)


class IndexSubset(torch.utils.data.Dataset):
    """The dataset protocol (classes, file_names, labels, num_classes, (index, seed) items) over a subset."""

    def __init__(self, dataset, indices: list[int]) -> None:
        self.dataset = dataset
        self.indices = list(indices)
        self.classes = dataset.classes
        self.labels = [dataset.labels[i] for i in self.indices]
        self.file_names = [dataset.file_names[i] for i in self.indices]

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: tuple[int, int]):
        index, seed = item
        sample = self.dataset[(self.indices[index], seed)]
        return None if sample is None else (sample[0], sample[1], index)


def unwrap_subset(dataset) -> tuple[object, list[int] | None]:
    """(base dataset, base index of every item) through IndexSubset-style wrappers (.dataset + .indices)."""
    positions = None
    while hasattr(dataset, "dataset") and hasattr(dataset, "indices"):
        inner = list(dataset.indices)
        positions = inner if positions is None else [inner[i] for i in positions]
        dataset = dataset.dataset
    return dataset, positions
