"""torch's intra-op thread count around the small CPU ops of loaders that bring their own threads."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def single_threaded_torch() -> Iterator[None]:
    """torch intra-op threads = 1 inside, restored after: for the small CPU ops of the dali / ffcv loaders,
    whose OpenMP threads would otherwise wait for the cores DALI's / FFCV's own threads keep busy."""
    n = torch.get_num_threads()
    if n > 1:
        torch.set_num_threads(1)
    try:
        yield
    finally:
        if n > 1:
            torch.set_num_threads(n)
