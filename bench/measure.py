"""Timing, memory and device facts for the benchmarks (measurements only, no workloads)."""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    """GPU: reset the allocator's peak. CPU: reset the process's peak RSS (Linux clear_refs)."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back, so RSS is what is in use
    except (OSError, AttributeError):
        pass
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass  # peak RSS then covers the whole process so far; reported as such


def peak_memory_mib(device: torch.device) -> float:
    """GPU: torch.cuda.max_memory_allocated. CPU: peak resident set size (VmHWM)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def in_use_mib(device: torch.device) -> float:
    """GPU: memory allocated now. CPU: the process's resident set size now (VmRSS)."""
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@dataclass
class Timing:
    median_s: float
    runs_s: list[float]
    peak_mib: float

    @property
    def min_s(self) -> float:
        return min(self.runs_s)

    @property
    def max_s(self) -> float:
        return max(self.runs_s)


def time_interleaved(calls: dict[str, Callable[[], object]], device: torch.device, warmup: int, repeats: int,
                     resident_mib: Callable[[str], float] | None = None) -> dict[str, Timing]:
    """Median wall time of each of `calls` (the variants of one workload), interleaved.

    Why: on a shared or throttling machine a slow spell hits whichever variant runs then; one after
    another, the last variant ran slower than it is (issue 29). Here each repeat calls every variant
    once, the order rotated per repeat, so every variant sees the same spells and the median and
    the min-max compare like with like. Peak memory of a variant: `resident_mib(name)` (model,
    optimizer state, batch) plus the most any of its calls added above what was in use before it,
    so the other variants' models, alive at the same time, are not counted.
    """
    names = list(calls)
    for name in names:
        for _ in range(warmup):
            calls[name]()
    sync(device)
    runs: dict[str, list[float]] = {n: [] for n in names}
    added = dict.fromkeys(names, 0.0)
    for r in range(repeats):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            reset_peak_memory(device)
            before = in_use_mib(device)
            start = time.perf_counter()
            calls[name]()
            sync(device)
            runs[name].append(time.perf_counter() - start)
            added[name] = max(added[name], peak_memory_mib(device) - before)
    resident = {n: resident_mib(n) if resident_mib else 0.0 for n in names}  # after warm-up: optimizer state exists
    return {n: Timing(statistics.median(runs[n]), runs[n], resident[n] + added[n]) for n in names}


def time_it(fn: Callable[[], object], device: torch.device, warmup: int, repeats: int) -> Timing:
    """Median wall time of `fn` after `warmup` untimed calls; peak memory over the timed calls."""
    for _ in range(warmup):
        fn()
    sync(device)
    reset_peak_memory(device)
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        runs.append(time.perf_counter() - start)
    return Timing(statistics.median(runs), runs, peak_memory_mib(device))


def copy_bandwidth_gbs(device: torch.device, mib: int, repeats: int = 5) -> float:
    """Measured device copy bandwidth, counting bytes read plus bytes written."""
    n = mib * 2**20 // 4
    src = torch.rand(n, device=device)
    dst = torch.empty_like(src)
    t = time_it(lambda: dst.copy_(src), device, warmup=2, repeats=repeats)
    return 2 * src.nbytes / t.median_s / 1e9


def matmul_peak_tflops(device: torch.device, dtype: torch.dtype, size: int, repeats: int = 5) -> float:
    """Measured dense matmul throughput: the 'device peak' that achieved TFLOP/s is compared to."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    t = time_it(lambda: a @ b, device, warmup=2, repeats=repeats)
    return 2 * size**3 / t.median_s / 1e12


def device_facts(device: torch.device) -> dict[str, object]:
    facts: dict[str, object] = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        facts.update(name=torch.cuda.get_device_name(device), kind="gpu", memory_gib=round(props.total_memory / 2**30, 1),
                     multiprocessors=props.multi_processor_count)
        try:
            import triton

            facts["triton"] = triton.__version__
        except ImportError:
            pass
    else:
        name = platform.processor() or "cpu"
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    name = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        facts.update(name=name, kind="cpu", cores=os.cpu_count())
    return facts


def unused_stem(folder: Path, stem: str, suffixes: tuple[str, ...]) -> str:
    """`stem`, or `stem-2`, `stem-3`, ... : the first for which no `folder/stem+suffix` exists, so a
    result written on the same day never replaces an earlier one."""
    candidate, n = stem, 1
    while any((folder / f"{candidate}{s}").exists() for s in suffixes):
        n += 1
        candidate = f"{stem}-{n}"
    return candidate
