"""CPU feature detection (fastadv.runtime.hardware): flags parsed from /proc/cpuinfo text."""

from __future__ import annotations

import subprocess
import sys

from fastadv.runtime.hardware import detect_cpu, parse_cpuinfo_flags

EPYC = """processor	: 0
model name	: AMD EPYC 9004
flags		: fpu sse2 avx2 avx512f avx512_vnni avx512_bf16 avx_vnni
"""
OLD_XEON = """processor	: 0
model name	: Intel Xeon E5
flags		: fpu sse2 avx avx2 fma
"""
SPR = "model name : Intel Xeon Platinum 8480\nflags : avx2 avx512f avx512_bf16 amx_tile amx_bf16 amx_int8\n"


def test_parse_flags_and_model():
    flags, model = parse_cpuinfo_flags(EPYC)
    assert "avx512_bf16" in flags and "avx2" in flags and model == "AMD EPYC 9004"


def test_native_bf16_detected_from_avx512_bf16_or_amx(tmp_path, monkeypatch):
    import fastadv.runtime.hardware as hardware

    monkeypatch.setattr(hardware, "_torch_isa", lambda: "AVX2")  # the flags alone decide
    for text, expected, flags in ((EPYC, True, ("avx2", "avx512f", "avx512_vnni", "avx512_bf16")),
                                  (SPR, True, ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")),
                                  (OLD_XEON, False, ("avx2",))):
        path = tmp_path / "cpuinfo"
        path.write_text(text)
        info = detect_cpu(path)
        assert info.has_native_bf16 is expected and info.flags == flags and info.isa == "AVX2", text
    assert "no native bf16" in info.describe() and "Intel Xeon E5" in info.describe()


def test_missing_cpuinfo_is_not_an_error(tmp_path):
    info = detect_cpu(tmp_path / "absent")
    assert info.flags == () and info.to_dict()["flags"] == ()


def test_imports_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import fastadv.runtime.hardware as h\n"
        "info = h.detect_cpu()\n"
        "assert info.isa == 'unknown', info\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
