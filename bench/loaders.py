"""Loader images/sec per data backend on a folder of real JPEGs (train: random-resized crop + flip).

Each backend runs in its own process (FFCV changes process-wide threading state), with the
same batch size and number of workers. FFCV first writes a .beton of the folder (not timed).

    python -m bench.loaders --path /data/imagenet-samples --workers 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-samples"
BACKENDS = ("folder", "dali", "ffcv")


def measure_one(backend: str, path: str, workers: int, batch_size: int, batches: int, size: int) -> dict:
    """Runs inside the child process."""
    from fastadv.config import DataConfig
    from fastadv.data.throughput import loader_throughput

    # A loader benchmark on one flat folder of photos: no accuracy is measured, so one split serves both.
    cfg = DataConfig(path=path, backend=backend, workers=workers, batch_size=batch_size, image_size=size,
                     same_split=True)
    if backend == "ffcv":
        from fastadv.data.ffcv_write import write_ffcv

        beton = Path(tempfile.mkdtemp(prefix="fastadv-bench-")) / "train.beton"
        write_ffcv(path, str(beton))
        cfg.ffcv_train = str(beton)
    return loader_throughput(cfg, "train", batches=batches)


def measure_all(path: Path, workers: int = 2, batch_size: int = 64, batches: int = 30, size: int = 224,
                timeout: int = 600) -> list[dict]:
    rows = []
    for backend in BACKENDS:
        cmd = [sys.executable, "-m", "bench.loaders", "--child", backend, "--path", str(path), "--workers", str(workers),
               "--batch-size", str(batch_size), "--batches", str(batches), "--size", str(size)]
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  cwd=Path(__file__).resolve().parents[1])
        except subprocess.TimeoutExpired:
            rows.append({"backend": backend, "error": f"timed out after {timeout} s"})
            continue
        if done.returncode != 0:
            rows.append({"backend": backend, "error": done.stderr.strip().splitlines()[-1:] or ["failed"]})
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    folder = next((r for r in rows if r.get("backend") == "folder" and "images_per_sec" in r), None)
    for r in rows:
        if folder and "images_per_sec" in r:
            r["x_folder"] = r["images_per_sec"] / folder["images_per_sec"]
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.loaders", description=__doc__.splitlines()[0])
    p.add_argument("--path", default=str(SAMPLES))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--batches", type=int, default=30)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--child", choices=BACKENDS, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        result = measure_one(args.child, args.path, args.workers, args.batch_size, args.batches, args.size)
        result.pop("data", None)
        print(json.dumps(result))
        return 0
    for r in measure_all(Path(args.path), args.workers, args.batch_size, args.batches, args.size):
        print(json.dumps(r))
    return 0


if __name__ == "__main__":
    sys.exit(main())
