"""`python -m bench.gpu_check` on a CPU: GPU parts reported skipped, results written where asked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import gpu_check, targets

ROOT = Path(__file__).resolve().parents[1]


def _result(out: Path) -> dict:
    (path,) = out.glob("gpu-check-*.json")
    (md,) = out.glob("gpu-check-*.md")
    assert md.read_text().startswith("# gpu-check")
    result = json.loads(path.read_text())
    result["_md"] = md.read_text()
    return result


def _assert_no_target_met_on_cpu(result: dict) -> None:
    """Every issue-13 GPU target is listed, in the JSON and the Markdown, and none is met on a CPU."""
    assert len(result["targets"]) >= 7
    assert {t["status"] for t in result["targets"]} == {targets.NOT_ON_GPU}
    assert all(t["met"] is None for t in result["targets"])
    table = result["_md"].split("## Targets (issue 13)", 1)[1]
    assert all(f"| {t['target']} |" in table for t in result["targets"])
    assert table.count(f"| {targets.NOT_ON_GPU} |") == len(result["targets"])


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the CPU-only report")
def test_without_cuda_gpu_parts_are_skipped_not_passed(tmp_path):
    assert gpu_check.main(["--parts", "step", "speed", "profile", "--out", str(tmp_path)]) == 0
    result = _result(tmp_path)
    assert result["gpu"] == gpu_check.SKIPPED_NO_CUDA
    assert {p["status"] for p in result["parts"].values()} == {gpu_check.SKIPPED_NO_CUDA}
    _assert_no_target_met_on_cpu(result)
    # a second run never overwrites the first
    gpu_check.main(["--parts", "step", "--out", str(tmp_path)])
    assert len(list(tmp_path.glob("gpu-check-*.json"))) == 2


@pytest.mark.slow
@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the CPU-only report")
def test_smoke_runs_every_part_on_cpu_without_optional_packages(tmp_path):
    # As on the GPU machine: no DALI, FFCV or timm may be imported; run from the source tree.
    code = (
        "import sys\n"
        "for name in ('timm', 'nvidia', 'nvidia.dali', 'ffcv'): sys.modules[name] = None\n"
        "from bench import gpu_check\n"
        f"sys.exit(gpu_check.main(['--smoke', '--out', {str(tmp_path)!r}]))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env, timeout=900)
    result = _result(tmp_path)
    assert result["parts"]["kernels"]["status"] == "passed"
    assert len(result["parts"]["kernels"]["checks"]) >= 10
    for name in ("step", "precision", "speed", "profile"):
        part = result["parts"][name]
        assert part["gpu"] == gpu_check.SKIPPED_NO_CUDA and part["status"].startswith("CPU smoke"), (name, part["status"])
    (leg,) = result["parts"]["precision"]["checks"]  # the GPU's policy against fp32, run at smoke size
    assert leg["policy"] == "bf16" and leg["status"] == "passed" and len(leg["runs"]["fp32"]["losses"]) == 3
    _assert_no_target_met_on_cpu(result)  # measured at smoke sizes, still not a GPU result
    speed = result["parts"]["speed"]["result"]
    assert {k["kernel"] for k in speed["kernels"]} == {"pgd_update", "label_augmented_ce (fwd+bwd)"}
    assert all(k["percent_of_copy_bandwidth"] > 0 for k in speed["kernels"])
    assert {(c["kind"], c["size"], c["batch"]) for c in result["parts"]["step"]["checks"]} == {("train_step", 16, 2),
                                                                                               ("pgd_eval", 16, 2)}
    assert result["parts"]["profile"]["result"]["size"] == 16
