"""Progress: a tqdm bar on a terminal, one plain line every N steps in a log file or CI.

tqdm redraws with carriage returns, which a log file keeps as one huge line per refresh;
when stderr is not a terminal `progress_bar` returns a LineProgress with the same
update / set_postfix / close interface, printing `desc: 40/200 steps (20%) loss=... ` lines.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any, TextIO


class LineProgress:
    """tqdm's interface for logs: one line per `every` updates and at the end, never a carriage return."""

    def __init__(self, iterable: Iterable | None = None, total: int | None = None, initial: int = 0, desc: str = "",
                 unit: str = "it", every: int = 20, disable: bool = False, stream: TextIO | None = None) -> None:
        self.iterable, self.total, self.n, self.desc, self.unit = iterable, total, initial, desc, unit
        self.every, self.disable, self.stream = max(1, every), disable, stream
        self.postfix: dict[str, Any] = {}
        self.start, self.last_printed = time.perf_counter(), initial
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            self.total = len(iterable)  # type: ignore[arg-type]

    def __iter__(self) -> Iterator:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n
        if self.n - self.last_printed >= self.every:
            self._print()

    def set_postfix(self, **values: Any) -> None:
        self.postfix = values

    def close(self) -> None:
        if self.n != self.last_printed:
            self._print()

    def _print(self) -> None:
        self.last_printed = self.n
        if self.disable:
            return
        total = f"/{self.total}" if self.total else ""
        share = f" ({100 * self.n / self.total:.0f}%)" if self.total else ""
        extra = "".join(f" {k}={v}" for k, v in self.postfix.items())
        elapsed = time.perf_counter() - self.start
        print(f"{self.desc}: {self.n}{total} {self.unit}s{share}{extra} [{elapsed:.0f}s]",
              file=self.stream or sys.stderr, flush=True)


def is_terminal(stream: TextIO | None = None) -> bool:
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def progress_bar(iterable: Iterable | None = None, *, total: int | None = None, initial: int = 0, desc: str = "",
                 unit: str = "it", disable: bool = False, every: int = 20):
    """tqdm on a terminal, else LineProgress printing one line per `every` units."""
    if is_terminal():
        from tqdm import tqdm

        return tqdm(iterable, total=total, initial=initial, desc=desc, unit=unit, disable=disable, dynamic_ncols=True)
    return LineProgress(iterable, total=total, initial=initial, desc=desc, unit=unit, every=every, disable=disable)
