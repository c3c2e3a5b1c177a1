"""Seeds and fixed subsets as pure functions of integers: mix, sample_seed, limit_indices.

Bottom of fastadv.data (imports no backend): every backend, the sampler and the dispatcher
use these, so an epoch is a function of (seed, epoch) only, whatever reads the files.
"""

from __future__ import annotations

import torch

_MASK64 = (1 << 64) - 1


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def mix(*values: int) -> int:
    """Hash integers into one well-spread 63-bit seed (valid for torch.manual_seed)."""
    h = 0
    for v in values:
        h = _splitmix64(h ^ (v & _MASK64))
    return h >> 1


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """The augmentation seed of one sample: a function of (seed, epoch, index) only."""
    return mix(seed, epoch, index, 0x5EED)


def limit_indices(n: int, limit: int) -> list[int]:
    """The first `limit` indices of a fixed (seed 0) permutation of range(n), sorted; all if limit <= 0."""
    if limit <= 0 or limit >= n:
        return list(range(n))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    return sorted(perm[:limit].tolist())
