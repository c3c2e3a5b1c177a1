"""`make bench`: images/sec, peak memory and TFLOP/s of fastadv's fast path vs two baselines.

    python -m bench.run                  # CPU: ResNet-50 at 64 px, batch 8; GPU: 224 px, batch 64/128/256
    python -m bench.run --size 224 --batch 256 --workloads adv_plus_train_step

Prints a table and writes JSON to bench/results/<device>-<date>.json (-2, -3, ... when that
exists: a result is never replaced). Warm-up calls are excluded; each number is the median of
interleaved repeats (every repeat runs every variant once, the order rotated), with the min-max
beside it. --profile (make bench PROFILE=1) adds a Chrome/Perfetto trace per workload and variant
and the top ops by self time (bench.profile). The cost model is docs/reference/methods.md, costs: one forward's FLOPs are counted by
torch.utils.flop_counter at the benchmarked size.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import os
import re
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from bench import kernels_bench, loaders
from bench import targets as bench_targets
from bench.measure import copy_bandwidth_gbs, device_facts, matmul_peak_tflops, time_interleaved, unused_stem
from bench.profile import format_side_by_side, profile_call
from bench.workloads import (FORWARDS_PER_IMAGE, WORKLOADS, describe_path, in_kernel_path, kernel_path, make_setup,
                             policy_variants, setup_mib, variants, workload)
from fastadv.runtime.precision_policies import POLICIES
from fastadv.runtime.hardware import detect_cpu
from fastadv.config import ModelConfig
from fastadv.runtime.fileio import atomic_write_text
from fastadv.models import build_model

RESULTS = Path(__file__).resolve().parent / "results"
ISA_ENV = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS")


def forward_gflops(arch: str, num_classes: int, num_aux: int, size: int) -> float:
    """FLOPs of one forward pass of one image (2 x multiply-adds), counted, not assumed."""
    model = build_model(ModelConfig(arch=arch, num_classes=num_classes, num_aux=num_aux, pretrained=False)).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.rand(1, 3, size, size))
    return counter.get_total_flops() / 1e9


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--arch", default="resnet50")
    p.add_argument("--size", type=int, default=0, help="image size (default: 224 on a GPU, 64 on the CPU)")
    p.add_argument("--batch", type=int, nargs="+", default=None, help="batch sizes (default: 64 128 256 on a GPU, 8 on the CPU)")
    p.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    p.add_argument("--variants", nargs="+", default=["research", "eager-amp-cl", "fastadv"])
    p.add_argument("--repeats", type=int, default=0, help="interleaved timed repeats per workload (default 10 GPU, 5 CPU)")
    p.add_argument("--warmup", type=int, default=0, help="untimed runs first (default 3 GPU, 1 CPU; compiles happen here)")
    p.add_argument("--no-compile-on-cpu", action="store_true",
                   help="fastadv variant eager on the CPU (the default now: the shipped CPU path does not compile)")
    p.add_argument("--compile-on-cpu", action="store_true",
                   help="compile the fastadv variant on the CPU too (whole step; measured slower there, takes minutes)")
    p.add_argument("--cpu-amp", choices=["auto", "bf16", "off"], default="auto",
                   help="CPU AMP of the eager-amp-cl and fastadv variants: auto = bf16 where the CPU has native bf16")
    p.add_argument("--policies", nargs="+", default=[], choices=list(POLICIES),
                   help="also time the fast path in each of these train.precision policies (variants fastadv:<policy>)")
    p.add_argument("--skip-kernels", action="store_true")
    p.add_argument("--skip-loaders", action="store_true", help="no loader throughput (needs a folder of sample photos, see bench.loaders)")
    p.add_argument("--loader-path", default=str(loaders.SAMPLES), help="JPEG class folders for the loader benchmark")
    p.add_argument("--out", default=str(RESULTS), help="folder for the JSON result")
    p.add_argument("--profile", action="store_true",
                   help="also profile one call per workload and variant: a Chrome/Perfetto trace each in "
                        "<result>.profiles/, top ops by self time in the JSON (make bench PROFILE=1)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    gpu = device.type == "cuda"
    size = args.size or (224 if gpu else 64)
    batches = args.batch or ([64, 128, 256] if gpu else [8])
    repeats = args.repeats or (10 if gpu else 5)
    warmup = args.warmup or (3 if gpu else 1)
    num_classes, num_aux = 1000, 1
    facts = device_facts(device)
    print(f"device: {facts['name']} ({device}), torch {facts['torch']}, {args.arch} at {size} px", flush=True)
    cpu = detect_cpu()
    print(f"cpu: {cpu.describe()}", flush=True)

    peak_dtype = torch.bfloat16 if gpu else torch.float32
    peak = matmul_peak_tflops(device, peak_dtype, 8192 if gpu else 2048)
    copy_bw = copy_bandwidth_gbs(device, 1024 if gpu else 256)
    fwd_gflops = forward_gflops(args.arch, num_classes, num_aux, size)
    print(f"measured: matmul {peak:.2f} TFLOP/s ({peak_dtype}), copy {copy_bw:.1f} GB/s, "
          f"forward {fwd_gflops:.3f} GFLOP/image", flush=True)

    rows = []
    chosen = [v for v in variants(device, compile_on_cpu=args.compile_on_cpu and not args.no_compile_on_cpu, cpu_bf16=cpu_bf16(args, cpu))
              if v.name in args.variants]
    fast = next((v for v in variants(device, compile_on_cpu=args.compile_on_cpu and not args.no_compile_on_cpu,
                                     cpu_bf16=cpu_bf16(args, cpu)) if v.name == "fastadv"))
    chosen += policy_variants(fast, args.policies)
    paths = {v.name: describe_path(v, device) for v in chosen}
    for name, path in paths.items():
        print(f"path {name:13s}: {path['dtype']}, channels_last={path['channels_last']}, "
              f"compiled={path['compile_mode']}, kernels={path['kernels']}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", str(facts["name"]).lower()).strip("-")
    stem = unused_stem(out, f"{slug}-{dt.date.today().isoformat()}", (".json", ".profiles"))  # never replaces a result
    profiles: list[dict] = []
    print(f"timing: {warmup} warm-up + {repeats} interleaved repeats per workload (variants alternate, "
          "order rotated per repeat); median and min-max", flush=True)
    for batch in batches:
        setups = {}
        try:
            for variant in chosen:
                with kernel_path(variant.fused_kernels):
                    setups[variant.name] = make_setup(variant, args.arch, num_classes, num_aux, batch, size, device)
            for name in args.workloads:
                rows += measure_workload(name, chosen, setups, batch, device, warmup, repeats, fwd_gflops, peak)
                if args.profile:
                    profiles += profile_workload(name, chosen, setups, batch, device, out / f"{stem}.profiles")
        except torch.OutOfMemoryError:
            print(f"  batch {batch}: out of memory, skipped", flush=True)
        finally:
            setups.clear()
            gc.collect()
            if gpu:
                torch.cuda.empty_cache()
    add_ratios(rows)

    kernels = []
    if not args.skip_kernels:
        kb = max(batches)
        kernels += kernels_bench.pgd_update_rows(device, kb, 224 if gpu else 112, warmup, repeats)
        kernels += kernels_bench.la_xent_rows(device, 256 if gpu else 64, num_classes + num_aux, num_classes, warmup, repeats)
        kernels_bench.add_copy_share(kernels, copy_bw)

    loader_rows: list[dict] = []
    if not args.skip_loaders:
        if Path(args.loader_path).is_dir():
            print(f"loaders on {args.loader_path} (train: random-resized crop 224 + flip, batch 64, 2 workers)", flush=True)
            loader_rows = loaders.measure_all(Path(args.loader_path))
        else:
            print(f"loaders: skipped, {args.loader_path} not found", flush=True)

    result = {
        "device": facts, "date": dt.date.today().isoformat(), "command": "python -m bench.run " + " ".join(sys.argv[1:]),
        "arch": args.arch, "image_size": size, "batches": batches, "repeats": repeats, "warmup": warmup,
        "measured_matmul_peak_tflops": peak, "peak_dtype": str(peak_dtype), "copy_bandwidth_gbs": copy_bw,
        "forward_gflops_per_image": fwd_gflops, "forwards_per_image": FORWARDS_PER_IMAGE,
        "cpu": cpu.to_dict(),
        # ISA caps that change which CPU kernels run (ONEDNN_MAX_CPU_ISA=AVX2 ...: a CPU without AVX-512 / AMX)
        "environment": {k: os.environ[k] for k in ISA_ENV if k in os.environ},
        "variants": {v.name: {"channels_last": v.channels_last, "amp": str(v.amp), "compile": v.compile,
                              "fused_kernels": v.fused_kernels, "policy": v.policy or None, "path": paths[v.name]}
                     for v in chosen},
        "timing": "interleaved: each repeat runs every variant once, order rotated; median with min-max",
        "results": rows, "kernels": kernels, "loaders": loader_rows, "profiles": profiles,
        # the ">= 2x with native bf16" targets only where the fast path ran bf16 (--cpu-amp off times fp32)
        "targets": targets(rows, kernels, gpu, size, cpu.has_native_bf16 and cpu_bf16(args, cpu))
                   + loader_targets(loader_rows, gpu),
    }
    print_table(result)
    path = out / f"{stem}.json"
    atomic_write_text(path, json.dumps(result, indent=2))
    print(f"\nwritten: {path}" + (f" (traces: {out / (stem + '.profiles')}; open in ui.perfetto.dev)" if profiles else ""))
    return 0


def measure_workload(name: str, chosen: list, setups: dict, batch: int, device: torch.device, warmup: int,
                     repeats: int, fwd_gflops: float, peak: float) -> list[dict]:
    """One workload, every variant, interleaved (bench.measure.time_interleaved): one row per variant."""
    calls = {v.name: in_kernel_path(v, workload(name, v, setups[v.name], 1000, device)) for v in chosen}
    timings = time_interleaved(calls, device, warmup, repeats, lambda n: setup_mib(setups[n]))
    rows = []
    for v in chosen:
        t = timings[v.name]
        ips = batch / t.median_s
        tflops = ips * FORWARDS_PER_IMAGE[name] * fwd_gflops / 1e3
        rows.append({"workload": name, "variant": v.name, "batch": batch, "images_per_sec": ips,
                     "images_per_sec_min_max": [batch / t.max_s, batch / t.min_s], "ms_per_batch": 1e3 * t.median_s,
                     "ms_per_batch_min_max": [1e3 * t.min_s, 1e3 * t.max_s], "runs_s": t.runs_s,
                     "peak_memory_mib": t.peak_mib, "tflops": tflops, "percent_of_peak": 100 * tflops / peak})
        print(f"  {name:20s} {v.name:24s} batch {batch:4d}: {ips:9.1f} img/s  ({batch / t.max_s:.1f}-{batch / t.min_s:.1f})  "
              f"{t.peak_mib:9.0f} MiB  {tflops:7.3f} TFLOP/s", flush=True)
    return rows


def profile_workload(name: str, chosen: list, setups: dict, batch: int, device: torch.device, folder: Path) -> list[dict]:
    """One profiled call per variant (after the timed ones): a trace file each and the top ops by self time."""
    out = []
    for v in chosen:
        trace = folder / f"{name}.{v.name}.b{batch}.trace.json"
        top = profile_call(in_kernel_path(v, workload(name, v, setups[v.name], 1000, device)), device, trace)
        out.append({"workload": name, "variant": v.name, "batch": batch, "trace": f"{folder.name}/{trace.name}", **top})
    print(format_side_by_side({p["variant"]: p for p in out}, top=5), flush=True)
    return out


def cpu_bf16(args: argparse.Namespace, cpu) -> bool:
    """--cpu-amp: bf16 autocast on the CPU variants? auto follows the detected hardware."""
    return cpu.has_native_bf16 if args.cpu_amp == "auto" else args.cpu_amp == "bf16"


def add_ratios(rows: list[dict]) -> None:
    """Speed of each row relative to the research loop and the eager AMP + channels_last loop."""
    index = {(r["workload"], r["batch"], r["variant"]): r for r in rows}
    for r in rows:
        for base in ("research", "eager-amp-cl"):
            ref = index.get((r["workload"], r["batch"], base))
            r[f"x_{base}"] = r["images_per_sec"] / ref["images_per_sec"] if ref else None
            # The spread: the ratio within each interleaved repeat (same repeat = same machine spell).
            paired = [b / a for a, b in zip(r.get("runs_s", []), ref.get("runs_s", [])) if a > 0] if ref else []
            r[f"x_{base}_min_max"] = [min(paired), max(paired)] if paired else None


def targets(rows: list[dict], kernels: list[dict], gpu: bool, size: int, native_bf16: bool) -> list[dict]:
    """Issue 13's targets (bench/targets.py), each with the measured value and met / not met."""
    if not gpu:
        return bench_targets.cpu_targets(rows, native_bf16)
    return bench_targets.gpu_targets(rows, kernels, cuda=True, size=size)


def loader_targets(rows: list[dict], gpu: bool) -> list[dict]:
    """The data issue's CPU targets: DALI-CPU and FFCV each >= 1.8x the torchvision folder loader."""
    if gpu:
        return []
    return [bench_targets.entry(f"CPU: {r['backend']} loader >= 1.8x folder (same workers)", r["x_folder"],
                                r["x_folder"] >= 1.8) for r in rows if r.get("backend") in ("dali", "ffcv") and "x_folder" in r]


def print_table(result: dict) -> None:
    print(f"\n{'workload':20s} {'variant':24s} {'batch':>5s} {'img/s':>9s} {'ms/batch':>9s} {'peak MiB':>9s} "
          f"{'TFLOP/s':>8s} {'%peak':>6s} {'x research':>10s} {'x eager':>8s}")
    for r in result["results"]:
        xr = f"{r['x_research']:.2f}" if r["x_research"] else "-"
        xe = f"{r['x_eager-amp-cl']:.2f}" if r["x_eager-amp-cl"] else "-"
        print(f"{r['workload']:20s} {r['variant']:24s} {r['batch']:5d} {r['images_per_sec']:9.1f} {r['ms_per_batch']:9.1f} "
              f"{r['peak_memory_mib']:9.0f} {r['tflops']:8.3f} {r['percent_of_peak']:6.1f} {xr:>10s} {xe:>8s}")
    if result["kernels"]:
        print(f"\n{'kernel':30s} {'path':10s} {'GB/s':>8s} {'% of copy':>9s}   (copy {result['copy_bandwidth_gbs']:.1f} GB/s)")
        for k in result["kernels"]:
            print(f"{k['kernel']:30s} {k['path']:10s} {k['gb_per_s']:8.1f} {k['percent_of_copy_bandwidth']:9.1f}")
        if result["device"]["kind"] != "gpu":
            print("(Triton kernels are timed on a GPU only: on the CPU they run in the interpreter, a correctness tool)")
    if result["loaders"]:
        print(f"\n{'loader':8s} {'img/s':>8s} {'x folder':>9s}")
        for r in result["loaders"]:
            if "images_per_sec" in r:
                print(f"{r['backend']:8s} {r['images_per_sec']:8.1f} {r.get('x_folder', 0):9.2f}")
            else:
                print(f"{r['backend']:8s} failed: {r.get('error')}")
    for t in result["targets"]:
        print(bench_targets.line(t))


if __name__ == "__main__":
    sys.exit(main())
