"""What the CPU can do natively: does it have bf16 units (AVX512-BF16 or AMX-BF16)?

Imports nothing heavy (no torch at import): `detect_cpu()` reads /proc/cpuinfo on Linux and,
when torch is already importable, asks `torch.backends.cpu.get_cpu_capability()` for the ISA
level torch's kernels dispatch to. bf16 autocast pays on a CPU only where these units exist
(elsewhere bf16 is emulated in fp32 and is slower); the bench uses this to pick the CPU fast
path and reports what it found.
"""

from __future__ import annotations

import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path

__all__ = ["CpuInfo", "BF16_FLAGS", "detect_cpu", "parse_cpuinfo_flags"]

# /proc/cpuinfo flags of native bf16 arithmetic: AVX512-BF16 (dot products, conversions;
# Cooper Lake, Sapphire Rapids, AMD Zen 4+) and AMX-BF16 (tile matmul; Sapphire Rapids+).
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
_REPORTED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_fp16")


@dataclass(frozen=True)
class CpuInfo:
    """isa: torch's dispatch level ("AVX512", "AVX2", ...; "unknown" when torch is absent);
    has_native_bf16: one of BF16_FLAGS present; flags: the vector/matrix flags found."""

    isa: str
    has_native_bf16: bool
    flags: tuple[str, ...] = field(default_factory=tuple)
    model: str = ""
    machine: str = ""

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        bf16 = "native bf16" if self.has_native_bf16 else "no native bf16"
        return f"{self.model or self.machine or 'CPU'}: torch ISA {self.isa}, {bf16} (flags: {' '.join(self.flags) or 'none'})"


def parse_cpuinfo_flags(text: str) -> tuple[set[str], str]:
    """(all flags, model name) from /proc/cpuinfo text (x86 "flags", ARM "Features")."""
    flags: set[str] = set()
    model = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("flags", "features"):
            flags.update(value.split())
        elif key == "model name" and not model:
            model = value.strip()
    return flags, model


def _torch_isa() -> str:
    try:
        import torch

        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # torch missing, or too old for get_cpu_capability
        return "unknown"


def detect_cpu(cpuinfo_path: str | Path = "/proc/cpuinfo") -> CpuInfo:
    """Detect the CPU's native bf16 support (Linux /proc/cpuinfo; elsewhere: not detected)."""
    try:
        flags, model = parse_cpuinfo_flags(Path(cpuinfo_path).read_text(errors="replace"))
    except OSError:  # not Linux, or no procfs
        flags, model = set(), ""
    isa = _torch_isa()
    # torch reports "AVX512_BF16"-like levels on some builds; count those too.
    has_bf16 = any(f in flags for f in BF16_FLAGS) or "BF16" in isa.upper() or "AMX" in isa.upper()
    found = tuple(f for f in _REPORTED_FLAGS if f in flags)
    return CpuInfo(isa=isa, has_native_bf16=has_bf16, flags=found, model=model, machine=platform.machine())
