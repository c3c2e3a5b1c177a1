"""Issue 13's speed targets, in one place, judged from measured rows (torch-free).

The inputs are the dicts bench.run and bench.gpu_check already write: speed rows (workload,
variant, batch, images_per_sec, peak_memory_mib, x_research, x_eager-amp-cl), kernel rows
(kernel, path, percent_of_copy_bandwidth), gpu_check's step checks (check, status, kind, size,
batch, sync_debug) and its profile result (graph_breaks, compiled, size, batch). Each target
comes back as {"target", "value", "met", "status"}: met is True or False only when the target
was measured where it applies; a missing or failed measurement, or one not made on CUDA at
224 px and batch 256, gives met None ("not measured ..."), never met.
"""

from __future__ import annotations

# Issue 13 ("Speed that holds on the first GPU it meets"): every target number lives here.
FAST_VARIANT = "fastadv"  # the fast path; "research" and "eager-amp-cl" are the baselines
CPU_MIN_X_RESEARCH = 1.0  # CPU: the fast path >= 1.0x the research loop, every workload
CPU_MIN_X_EAGER = 1.0  # CPU (issue 29): >= 1.0x eager-amp-cl (same precision and layout, no fastadv), every workload
CPU_BF16_MIN_X_RESEARCH = 2.0  # CPU with native bf16: these workloads >= 2x the fp32 research loop
CPU_BF16_WORKLOADS = ("pgd10_attack", "adv_plus_train_step")
GPU_IMAGE_SIZE = 224  # GPU targets: ResNet-50 at 224 px, bf16, batch 256, on an H100/H200
GPU_BATCH = 256
GPU_ADV_PLUS_MIN_IPS = 900.0  # PGD-10 Adv+ training, images/s
GPU_ADV_PLUS_MIN_X_EAGER = 1.3  # ... and x the eager AMP channels_last loop ("eager-amp-cl")
GPU_PGD40_MIN_IPS = 300.0  # PGD-40 evaluation (last iterate), images/s
GPU_MAX_MEMORY_X_STD = 1.15  # peak memory of a PGD-10 training step / a standard training step
GPU_KERNEL_MIN_PERCENT_OF_COPY = 80.0  # each fused kernel, % of the measured copy bandwidth
GPU_MAX_GRAPH_BREAKS = 0  # compiled Adv+ training step
GPU_MAX_HOST_SYNCS = 0  # compiled Adv+ training step and PGD-40 evaluation, sync-debug "error"

MET, NOT_MET, NOT_MEASURED = "met", "NOT met", "not measured"
NOT_ON_GPU = "not measured on a GPU"
NOT_AT_SIZE = f"not measured at {GPU_IMAGE_SIZE} px, batch {GPU_BATCH}"
SYNC_ERROR = "synchronizing cuda operation"  # torch's sync-debug 'error' message, lower case


def entry(target: str, value: float | None, met: bool | None, why: str = NOT_MEASURED, spread=None) -> dict:
    """One target: met True / False, or None with `why` it was not judged; `spread`: [min, max] of
    the value over the interleaved repeats, where measured."""
    status = why if met is None else (MET if met else NOT_MET)
    out = {"target": target, "value": value, "met": met, "status": status}
    if spread:
        out["min_max"] = list(spread)
    return out


def _number(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _find(rows: list[dict], workload: str, batch: int | None = None, prefer: int | None = GPU_BATCH) -> dict | None:
    """The fast path's measured row of `workload`: batch `batch` if given, else batch `prefer`
    if measured, else the largest batch measured."""
    cands = [r for r in rows if r.get("workload") == workload and r.get("variant") == FAST_VARIANT
             and _number(r.get("images_per_sec")) is not None and (batch is None or r.get("batch") == batch)]
    at = [r for r in cands if r.get("batch") == prefer]
    return max(at or cands, key=lambda r: r.get("batch") or 0) if cands else None


def cpu_targets(rows: list[dict], native_bf16: bool) -> list[dict]:
    """CPU, side by side in one run: fast path >= 1.0x research and >= 1.0x eager-amp-cl on every
    workload, judged on the median of interleaved repeats; with native bf16 also PGD-10 attack and
    Adv+ training step >= 2x the fp32 research loop."""
    out = []
    for base, label, floor in (("research", "research loop", CPU_MIN_X_RESEARCH),
                               ("eager-amp-cl", "eager-amp-cl", CPU_MIN_X_EAGER)):
        for r in rows:
            if r.get("variant") == FAST_VARIANT:
                v, spread = _number(r.get(f"x_{base}")), r.get(f"x_{base}_min_max")
                t = entry(f"CPU: {r['workload']} (batch {r['batch']}) >= {floor:.1f}x {label} (median)", v,
                          None if v is None else v >= floor, spread=spread)
                if t["met"] is False and spread and spread[1] >= floor:  # still NOT met, but say it is within noise
                    t["status"] = f"{NOT_MET} (1.0 inside the repeats' spread)"
                out.append(t)
    if native_bf16:
        for name in CPU_BF16_WORKLOADS:
            r = _find(rows, name, prefer=None)
            v = _number(r.get("x_research")) if r else None
            out.append(entry(f"CPU with native bf16: {name} >= {CPU_BF16_MIN_X_RESEARCH:g}x the fp32 research loop", v,
                             None if v is None else v >= CPU_BF16_MIN_X_RESEARCH))
    return out


def _judge(target: str, value: float | None, ok: bool, where: str | None) -> dict:
    """`where`: why this measurement cannot count (not on a GPU, other size), None if it can."""
    if value is None:
        return entry(target, None, None)
    return entry(target, value, None, where) if where else entry(target, value, ok)


def gpu_targets(rows: list[dict], kernels: list[dict], *, cuda: bool, size: int, steps: list[dict] | None = None,
                profile: dict | None = None) -> list[dict]:
    """Issue 13's GPU targets from speed rows (fast path), kernel rows, step checks, profile."""
    def where(batch, at_size=size) -> str | None:
        if not cuda:
            return NOT_ON_GPU
        return None if at_size == GPU_IMAGE_SIZE and batch == GPU_BATCH else NOT_AT_SIZE

    out = []
    adv = _find(rows, "adv_plus_train_step")
    ips = _number(adv.get("images_per_sec")) if adv else None
    w = where(adv.get("batch")) if adv else None
    out.append(_judge(f"GPU: PGD-10 Adv+ training >= {GPU_ADV_PLUS_MIN_IPS:g} img/s ({GPU_IMAGE_SIZE} px, batch {GPU_BATCH})",
                      ips, ips is not None and ips >= GPU_ADV_PLUS_MIN_IPS, w))
    x = _number(adv.get("x_eager-amp-cl")) if adv else None
    out.append(_judge(f"GPU: PGD-10 Adv+ training >= {GPU_ADV_PLUS_MIN_X_EAGER:g}x eager-amp-cl", x,
                      x is not None and x >= GPU_ADV_PLUS_MIN_X_EAGER, w))
    ev = _find(rows, "pgd40_eval")
    ips = _number(ev.get("images_per_sec")) if ev else None
    out.append(_judge(f"GPU: PGD-40 evaluation (last iterate) >= {GPU_PGD40_MIN_IPS:g} img/s", ips,
                      ips is not None and ips >= GPU_PGD40_MIN_IPS, where(ev.get("batch")) if ev else None))
    std = _find(rows, "std_train_step", batch=adv.get("batch")) if adv else None
    a, s = (_number(adv.get("peak_memory_mib")), _number(std.get("peak_memory_mib"))) if std else (None, None)
    ratio = a / s if a is not None and s else None
    out.append(_judge(f"GPU: PGD-10 training step peak memory <= {GPU_MAX_MEMORY_X_STD:g}x a standard step", ratio,
                      ratio is not None and ratio <= GPU_MAX_MEMORY_X_STD, w))
    out += kernel_targets(kernels, cuda)
    out.append(graph_break_target(profile, where))
    out.append(host_sync_target(steps, where))
    if not cuda:  # a CPU (or CPU smoke) run never speaks for a GPU target, measured or not
        for t in out:
            t.update(met=None, status=NOT_ON_GPU)
    return out


def _elements(shape) -> int:
    n = 1
    for d in shape or ():
        n *= int(d)
    return n


def kernel_targets(kernels: list[dict], cuda: bool) -> list[dict]:
    """Each fused (Triton) kernel >= 80% of the measured copy bandwidth; one entry per kernel, judged
    on its largest measured shape (a small one is launch-bound, not bandwidth-bound)."""
    names = list(dict.fromkeys(k.get("kernel") for k in kernels)) or ["each fused kernel"]
    out = []
    for name in names:
        target = f"GPU: {name} >= {GPU_KERNEL_MIN_PERCENT_OF_COPY:g}% of copy bandwidth"
        fused = [k for k in kernels if k.get("kernel") == name and k.get("path") == "triton"]
        largest = max(fused, key=lambda k: _elements(k.get("shape")), default=None)
        v = _number(largest.get("percent_of_copy_bandwidth")) if largest else None
        out.append(_judge(target, v, v is not None and v >= GPU_KERNEL_MIN_PERCENT_OF_COPY, None if cuda else NOT_ON_GPU))
    return out


def graph_break_target(profile: dict | None, where) -> dict:
    target = "GPU: zero graph breaks in the compiled Adv+ training step"
    v = _number(profile.get("graph_breaks")) if profile else None
    if v is None:
        return entry(target, None, None)
    if not profile.get("compiled"):  # dynamo's counters say nothing about an eager step
        return entry(target, None, None, "not measured: the step was not compiled")
    return _judge(target, v, v <= GPU_MAX_GRAPH_BREAKS, where(profile.get("batch"), profile.get("size")))


def host_sync_target(steps: list[dict] | None, where) -> dict:
    """Zero host syncs: every step check at 224 px, batch 256 passed under sync-debug 'error'.
    Value: how many checks raised on a device-to-host sync."""
    target = "GPU: zero host syncs in the Adv+ training step and PGD-40 evaluation (sync-debug error)"
    steps = steps or []
    chosen = [c for c in steps if c.get("size") == GPU_IMAGE_SIZE and c.get("batch") == GPU_BATCH] or steps
    if not chosen:
        return entry(target, None, None)
    w = where(chosen[0].get("batch"), chosen[0].get("size"))
    synced = sum(SYNC_ERROR in str(c.get("status", "")).lower() for c in chosen)
    if not synced and any(c.get("status") != "passed" for c in chosen):
        return entry(target, None, None, w or "not measured: a step check failed")
    if not synced and any(c.get("sync_debug") != "error" for c in chosen):
        return entry(target, None, None, w or "not measured: sync-debug mode was off")
    return _judge(target, float(synced), synced <= GPU_MAX_HOST_SYNCS, w)


def verdict(t: dict) -> str:
    """'met' / 'NOT met' / why it was not measured, for tables."""
    return t.get("status") or (NOT_MEASURED if t.get("met") is None else MET if t["met"] else NOT_MET)


def line(t: dict) -> str:
    """One printed line: 'target MET     <target>: <value>', 'target NOT MET ...' or
    'target (not measured ...) ...'."""
    label = {True: "MET    ", False: "NOT MET"}.get(t.get("met"), f"({verdict(t)})")
    v = t.get("value")
    spread = f" (repeats {t['min_max'][0]:.2f}-{t['min_max'][1]:.2f})" if t.get("min_max") else ""
    return f"target {label} {t['target']}: {'—' if v is None else f'{v:.2f}'}{spread}"
