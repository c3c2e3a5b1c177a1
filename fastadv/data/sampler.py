"""EpochSampler: the order, DDP shard and resume point of one epoch, shared by every backend.

Every sample is drawn as `(index, sample_seed)`; its augmentation depends on that seed only,
so an epoch is a pure function of (seed, epoch), independent of workers and resume point.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch.utils.data import Sampler

from fastadv.data.seeding import mix, sample_seed
from fastadv.errors import FastadvError


class EpochSampler(Sampler[tuple[int, int]]):
    """Yields `(index, sample_seed)` for one epoch of one rank, from item `skip` on.

    Order: randperm seeded by mix(seed, epoch) if shuffle, else range(n). With world_size > 1
    the order is padded by wrap-around to a multiple of world_size (or truncated if drop_last),
    like DistributedSampler; rank takes positions rank::world_size.
    """

    def __init__(
        self,
        n: int,
        *,
        shuffle: bool,
        seed: int = 0,
        epoch: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
        skip: int = 0,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise FastadvError(f"rank={rank} must be in [0, world_size={world_size})")
        self.n, self.shuffle, self.seed, self.epoch = n, shuffle, seed, epoch
        self.rank, self.world_size, self.drop_last, self.skip = rank, world_size, drop_last, max(0, skip)
        if world_size == 1:
            self.per_rank = n
        elif drop_last:
            self.per_rank = n // world_size
        else:
            self.per_rank = math.ceil(n / world_size)

    def order(self) -> list[int]:
        """The full (padded or truncated) order over all ranks."""
        if self.shuffle:
            g = torch.Generator().manual_seed(mix(self.seed, self.epoch))
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        total = self.per_rank * self.world_size
        if total > len(order) and order:
            reps = math.ceil(total / len(order))
            order = (order * reps)[:total]
        return order[:total]

    def __iter__(self) -> Iterator[tuple[int, int]]:
        mine = self.order()[self.rank :: self.world_size][self.skip :]
        for index in mine:
            yield index, sample_seed(self.seed, self.epoch, index)

    def __len__(self) -> int:
        return max(0, self.per_rank - self.skip)
