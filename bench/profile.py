"""Op-level profiles of the bench workloads: a Chrome/Perfetto trace and the top ops by self time.

`python -m bench.run --profile` (`make bench PROFILE=1`) profiles one call of every workload for
every variant after the timed runs and writes `<result>.profiles/<workload>.<variant>.trace.json`
next to the results JSON; the JSON's `profiles` holds each variant's top ops, so a regression
shows which op grew. Open a trace in https://ui.perfetto.dev (drag the file in) or in Chrome at
chrome://tracing (Load). torch.profiler records CPU ops everywhere and CUDA kernels on a GPU.

    python -m bench.profile --workloads clean_eval --size 64 --batch 8   # side by side, no timing run
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile

TOP_OPS = 15


def _activities(device: torch.device) -> list[ProfilerActivity]:
    return [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])


def profile_call(fn: Callable[[], object], device: torch.device, trace: Path | None, top: int = TOP_OPS) -> dict:
    """Run `fn` once under torch.profiler; write the Chrome trace to `trace` (atomically) when given.

    Returns {"ops": top ops by self time (name, calls, self_ms, share of the total self time),
    "op_calls": operator calls in all, "self_ms": total self time}: on a GPU self time is the
    device's (kernels), on the CPU the host's.
    """
    with profile(activities=_activities(device)) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    if trace is not None:
        trace.parent.mkdir(parents=True, exist_ok=True)
        tmp = trace.with_name(trace.name + ".tmp")
        prof.export_chrome_trace(str(tmp))
        os.replace(tmp, trace)
    return top_ops(prof.key_averages(), device, top)


def top_ops(averages, device: torch.device, top: int = TOP_OPS) -> dict:
    """The `top` operators by self time of a profiler's key_averages()."""
    gpu = device.type == "cuda"

    def self_us(e) -> float:
        return float(getattr(e, "self_device_time_total", 0.0) if gpu else e.self_cpu_time_total)

    events = [e for e in averages if self_us(e) > 0]
    total = sum(self_us(e) for e in events) or 1.0
    events.sort(key=self_us, reverse=True)
    ops = [{"name": e.key, "calls": int(e.count), "self_ms": self_us(e) / 1e3, "share": self_us(e) / total}
           for e in events[:top]]
    return {"ops": ops, "op_calls": int(sum(e.count for e in averages if e.key.startswith("aten::"))),
            "self_ms": total / 1e3, "clock": "device" if gpu else "host"}


def format_side_by_side(profiles: dict[str, dict], top: int = 10) -> str:
    """Each variant's top ops, one block per variant: name, calls, self ms, share."""
    lines = []
    for variant, p in profiles.items():
        lines.append(f"  {variant}: {p['self_ms']:.1f} ms self ({p['clock']}), {p['op_calls']} aten calls")
        for op in p["ops"][:top]:
            lines.append(f"    {op['name'][:44]:44s} {op['calls']:6d} {op['self_ms']:9.2f} ms {100 * op['share']:5.1f}%")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Profile workloads side by side (one call each after one warm-up), print the top ops."""
    from bench.workloads import WORKLOADS, kernel_path, make_setup, variants, workload
    from fastadv.runtime.hardware import detect_cpu

    p = argparse.ArgumentParser(prog="python -m bench.profile", description=main.__doc__)
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    p.add_argument("--variants", nargs="+", default=["eager-amp-cl", "fastadv"])
    p.add_argument("--trace-dir", default="", help="also write a trace per workload and variant here")
    args = p.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    chosen = [v for v in variants(device, cpu_bf16=detect_cpu().has_native_bf16) if v.name in args.variants]
    setups = {}
    for v in chosen:
        with kernel_path(v.fused_kernels):
            setups[v.name] = make_setup(v, args.arch, 1000, 1, args.batch, args.size, device)
    for name in args.workloads:
        print(f"{name}:", flush=True)
        profiles = {}
        for v in chosen:
            with kernel_path(v.fused_kernels):
                fn = workload(name, v, setups[v.name], 1000, device)
                fn()  # warm-up
                trace = Path(args.trace_dir) / f"{name}.{v.name}.trace.json" if args.trace_dir else None
                profiles[v.name] = profile_call(fn, device, trace)
        print(format_side_by_side(profiles), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
