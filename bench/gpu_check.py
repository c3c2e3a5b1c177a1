"""`make gpu-check`: one command that tells everything the first GPU run needs to tell.

    PYTHONPATH=. python -m bench.gpu_check             # on the GPU machine, from a plain checkout
    PYTHONPATH=. python -m bench.gpu_check --smoke     # CPU: tiny sizes, seconds (CI runs this)

Parts (each timed out and caught on its own; a failure is printed and recorded, the rest run):
  a  kernels   every fused kernel, eager and compiled, against its reference: random and
               edge inputs (eps 0, sign 0, NaN, +-3e4 logits), fp32/bf16/fp16, channels_last
  b  step      the compiled Adv+ training step and PGD-40 evaluation, ResNet-50 at 224,
               batch 128 and 256, under torch.cuda.set_sync_debug_mode("error")
  c  speed     images/s, peak memory, achieved TFLOP/s: fast path vs research loop vs
               eager AMP channels_last, side by side (bench.workloads / bench.measure);
               each fused kernel's GB/s as a share of the measured copy bandwidth
  e  precision a few Adv+ steps in train.precision=auto's policy vs fp32 from one initial state:
               losses and PGD's prediction-flip rate within stated tolerances (issue 27)
  d  profile   top kernels by GPU time of one compiled training step; graph breaks and
               recompiles from torch._dynamo.utils.counters
From (b)-(d) every issue-13 target (bench/targets.py) is listed as met / NOT met / not measured.
Without CUDA, (a) runs on the CPU (reference implementation), (b)-(d) run a tiny smoke when
--smoke is given, and every GPU measurement is reported "skipped: no CUDA device" — never as
passed. Writes gpu-check-<device>-<date>.json and .md into --out (default bench/results/),
never overwriting an earlier result. Imports only torch, torchvision, triton, numpy and the
project: no package index, DALI, FFCV or timm is needed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import signal
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import torch

from bench import gpu_check_parts as parts
from bench.gpu_check_parts import PartTimeout
from bench import kernels_bench
from bench import targets as bench_targets
from bench.measure import copy_bandwidth_gbs, device_facts, matmul_peak_tflops, unused_stem
from fastadv.runtime.fileio import atomic_write_text
from fastadv.runtime.hardware import detect_cpu

RESULTS = Path(__file__).resolve().parent / "results"
SKIPPED_NO_CUDA = "skipped: no CUDA device"
# Seconds each part may take on one H100/H200 (the whole run stays inside --budget-s).
PART_TIMEOUTS = {"kernels": 90, "step": 140, "precision": 60, "speed": 160, "profile": 90}


@contextmanager
def time_limit(seconds: float):
    """Raise PartTimeout in the main thread after `seconds` (SIGALRM; a no-op where absent)."""
    if not hasattr(signal, "SIGALRM") or seconds <= 0:
        yield
        return

    def fire(signum, frame):
        raise PartTimeout(f"part ran past its {seconds:.0f} s limit")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto | cuda | cpu")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (resnet18, 16 px, batch 2): seconds on a CPU")
    p.add_argument("--parts", nargs="+", default=list(PART_TIMEOUTS), choices=list(PART_TIMEOUTS))
    p.add_argument("--budget-s", type=float, default=480.0, help="global time budget (default 8 minutes)")
    p.add_argument("--out", default=str(RESULTS), help="folder for the JSON and Markdown result")
    return p.parse_args(argv)


def sizes(gpu: bool, smoke: bool) -> dict:
    if smoke:
        return {"arch": "resnet18", "size": 16, "batches": [2], "steps": 2, "workloads": ["std_train_step", "pgd10_attack"],
                "precision_leg": (64, 16)}  # (size, batch): BatchNorm over 2 tiny images is too noisy to compare
    return {"arch": "resnet50", "size": 224, "batches": [128, 256], "steps": 10, "precision_leg": (224, 128),
            "workloads": ["adv_plus_train_step", "pgd10_attack", "pgd40_eval", "std_train_step"]}


def speed(device: torch.device, s: dict, out: dict) -> dict:
    """(c): the three bench variants side by side on the Adv+ step, PGD-10 and PGD-40 eval.

    Rows are added to `out` as they are measured, so a part that runs out of time keeps them."""
    from bench.measure import time_it
    from bench.run import forward_gflops
    from bench.workloads import FORWARDS_PER_IMAGE, describe_path, kernel_path, make_setup, variants, workload

    gpu = device.type == "cuda"
    peak = matmul_peak_tflops(device, torch.bfloat16 if gpu else torch.float32, 8192 if gpu else 256, repeats=3)
    copy = copy_bandwidth_gbs(device, 1024 if gpu else 16, repeats=3)
    fwd = forward_gflops(s["arch"], 1000, 1, s["size"])
    batch = max(s["batches"])
    out.update(matmul_peak_tflops=peak, copy_bandwidth_gbs=copy, forward_gflops_per_image=fwd, rows=[],
               note="" if gpu else "CPU smoke at tiny size: shows the code runs, not GPU speed")
    rows = out["rows"]
    # The fused kernels alone. The LA cross-entropy of one batch (256 x 1001 logits, 1 MB) is launch-bound
    # on a GPU, so its bandwidth is also timed on 32 batches' worth of rows (both rows are kept).
    ce_rows = [batch] + ([32 * batch] if gpu else [])
    out["kernels"] = kernels_bench.add_copy_share(
        kernels_bench.pgd_update_rows(device, batch, s["size"], 1, 3)
        + [r for n in ce_rows for r in kernels_bench.la_xent_rows(device, n, 1001, 1000, 1, 3)], copy)
    for variant in variants(device, compile_on_cpu=False):
        with kernel_path(variant.fused_kernels):
            setup = make_setup(variant, s["arch"], 1000, 1, batch, s["size"], device)
            for name in s["workloads"]:
                row = {"workload": name, "variant": variant.name, "batch": batch, "path": describe_path(variant, device)}
                try:
                    t = time_it(workload(name, variant, setup, 1000, device), device, warmup=1 if gpu else 0,
                                repeats=3 if gpu else 1)
                    ips = batch / t.median_s
                    tflops = ips * FORWARDS_PER_IMAGE[name] * fwd / 1e3
                    row.update(images_per_sec=ips, peak_memory_mib=t.peak_mib, tflops=tflops,
                               percent_of_peak=100 * tflops / peak, status="measured")
                except PartTimeout:
                    raise
                except Exception as exc:  # noqa: BLE001
                    row.update(status=f"failed: {type(exc).__name__}: {str(exc)[:300]}")
                print(f"    {name:20s} {variant.name:13s} {row.get('images_per_sec', 0):9.1f} img/s "
                      f"{row.get('peak_memory_mib', 0):9.0f} MiB  {row['status'][:60]}", flush=True)
                rows.append(row)
            del setup
    add_ratios(rows)
    return out


def add_ratios(rows: list[dict]) -> None:
    base = {(r["workload"], r["variant"]): r.get("images_per_sec") for r in rows}
    for r in rows:
        for ref in ("research", "eager-amp-cl"):
            b = base.get((r["workload"], ref))
            r[f"x_{ref}"] = r["images_per_sec"] / b if b and r.get("images_per_sec") else None


def run_part(name: str, fn: Callable[[], object], budget_end: float, result: dict, partial: dict | None = None) -> None:
    left = budget_end - time.monotonic()
    if left <= 5:
        result["parts"][name] = {"status": "skipped: global time budget spent"}
        return
    limit = min(PART_TIMEOUTS[name], left)
    print(f"[{name}] (limit {limit:.0f} s)", flush=True)
    start = time.monotonic()
    try:
        with time_limit(limit):
            out = fn()
        checks = out if isinstance(out, list) else None
        rows = checks if checks is not None else (out or {}).get("rows", [])
        failed = [c for c in rows if c["status"] not in ("passed", "measured")]
        status = f"failed: {len(failed)} of {len(rows)} checks" if failed else "passed"
        result["parts"][name] = {"status": status, "checks" if checks is not None else "result": out}
    except Exception as exc:  # noqa: BLE001 - record and go on to the next part
        result["parts"][name] = {"status": f"failed: {type(exc).__name__}: {str(exc)[:500]}",
                                 "traceback": traceback.format_exc(limit=8)[-4000:]}
        if partial:  # what was measured before the failure or the time limit
            add_ratios(partial.get("rows", []))
            result["parts"][name]["result"] = partial
        print(f"  FAILED {name}: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
    result["parts"][name]["seconds"] = round(time.monotonic() - start, 1)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    budget_end = started + args.budget_s
    cuda = torch.cuda.is_available() and args.device != "cpu"
    device = torch.device("cuda" if cuda else "cpu")
    s = sizes(cuda, args.smoke)
    facts = device_facts(device)
    cpu = detect_cpu()
    print(f"gpu-check on {facts['name']} ({device}), torch {torch.__version__}; cpu: {cpu.describe()}", flush=True)
    result = {"device": facts, "cpu": cpu.to_dict(), "date": dt.date.today().isoformat(), "smoke": args.smoke,
              "command": "python -m bench.gpu_check " + " ".join(sys.argv[1:] if argv is None else argv),
              "sizes": s, "triton_mode": __import__("fastadv.kernels", fromlist=["x"]).triton_mode(), "parts": {}}
    gpu_run = cuda or args.smoke  # without CUDA, (b)-(d) only as a tiny smoke
    for name in args.parts:
        if name == "kernels":
            run_part(name, lambda: parts.kernel_checks(device, args.smoke), budget_end, result)
        elif not gpu_run:
            result["parts"][name] = {"status": SKIPPED_NO_CUDA}
        elif name == "step":
            run_part(name, lambda: parts.train_and_eval_checks(device, s["arch"], s["size"], s["batches"], s["steps"]),
                     budget_end, result)
        elif name == "precision":
            run_part(name, lambda: parts.precision_check(device, s["arch"], *s["precision_leg"], s["steps"]),
                     budget_end, result)
        elif name == "speed":
            measured: dict = {}
            run_part(name, lambda: speed(device, s, measured), budget_end, result, partial=measured)
        elif name == "profile":
            run_part(name, lambda: parts.profile_step(device, s["arch"], s["size"], max(s["batches"]), s["steps"]),
                     budget_end, result)
    if not cuda:
        for name in ("step", "precision", "speed", "profile"):
            part = result["parts"].get(name)
            if part is not None and part["status"] != SKIPPED_NO_CUDA:
                part["status"] = f"CPU smoke {part['status']}"  # never read as a GPU pass
                part["gpu"] = SKIPPED_NO_CUDA
        result["gpu"] = SKIPPED_NO_CUDA
    result["targets"] = targets(result, cuda)
    result["seconds"] = round(time.monotonic() - started, 1)
    json_path, md_path = write_results(result, Path(args.out))
    print(f"\nwritten: {json_path}\n         {md_path}", flush=True)
    for name, part in result["parts"].items():
        print(f"  {name:8s} {part['status']}" + (f" ({part['gpu']} for the GPU measurement)" if "gpu" in part else ""))
    print("targets (issue 13):")
    for t in result["targets"]:
        print("  " + bench_targets.line(t))
    return 0


def targets(result: dict, cuda: bool) -> list[dict]:
    """Issue 13's GPU targets from the speed, step and profile parts (missing part: not measured)."""
    p = result["parts"]
    speed_part = p.get("speed", {}).get("result") or {}
    return bench_targets.gpu_targets(speed_part.get("rows", []), speed_part.get("kernels", []), cuda=cuda,
                                     size=result["sizes"]["size"], steps=p.get("step", {}).get("checks"),
                                     profile=p.get("profile", {}).get("result"))


def write_results(result: dict, out: Path) -> tuple[Path, Path]:
    """gpu-check-<device>-<date>[-n].json and .md, never replacing an earlier pair."""
    out.mkdir(parents=True, exist_ok=True)
    slug = re.sub(r"[^a-z0-9]+", "-", str(result["device"]["name"]).lower()).strip("-")
    stem = unused_stem(out, f"gpu-check-{slug}-{result['date']}", (".json", ".md"))
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    atomic_write_text(json_path, json.dumps(result, indent=2, default=str))
    atomic_write_text(md_path, markdown(result))
    return json_path, md_path


def markdown(result: dict) -> str:
    lines = [f"# gpu-check: {result['device']['name']}, {result['date']}", "",
             f"`{result['command']}` — torch {result['device']['torch']}, {result['seconds']} s"
             + (" (smoke sizes)" if result["smoke"] else ""), "", "| part | status | seconds |", "|---|---|---|"]
    for name, part in result["parts"].items():
        status = part["status"] + (f"; GPU: {part['gpu']}" if "gpu" in part else "")
        lines.append(f"| {name} | {status} | {part.get('seconds', '—')} |")
    speed_part = result["parts"].get("speed", {}).get("result")
    if speed_part:
        lines += ["", "| workload | variant | img/s | peak MiB | TFLOP/s | x research | x eager-amp-cl |", "|---|---|---|---|---|---|---|"]
        for r in speed_part["rows"]:
            def f(v, p=1):
                return f"{v:.{p}f}" if isinstance(v, float) else "—"
            lines.append(f"| {r['workload']} | {r['variant']} | {f(r.get('images_per_sec'))} | {f(r.get('peak_memory_mib'), 0)} "
                         f"| {f(r.get('tflops'), 2)} | {f(r.get('x_research'), 2)} | {f(r.get('x_eager-amp-cl'), 2)} |")
    if result.get("targets"):
        lines += ["", "## Targets (issue 13)", "", "| target | value | met |", "|---|---|---|"]
        for t in result["targets"]:
            v = t["value"]
            lines.append(f"| {t['target']} | {'—' if v is None else f'{v:.2f}'} | {bench_targets.verdict(t)} |")
    failures = [(n, c) for n, p in result["parts"].items() for c in p.get("checks", []) if c["status"] != "passed"]
    if failures:
        lines += ["", "## Failed checks", ""] + [f"- {n}: {c['check']}: {c['status']}" for n, c in failures]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
