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


@dataclass
class Timing:
    median_s: float
    runs_s: list[float]
    peak_mib: float


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
