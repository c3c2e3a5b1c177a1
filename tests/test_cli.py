"""The command line end to end: train -> eval -> report, and user errors exit 2 without a traceback."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fastadv.cli import main
from fastadv.eval.suites_robustness import OPTIONAL_SUITES

TINY = ["data.image_size=16", "data.limit_train=64", "data.limit_val=30", "data.batch_size=32",
        "attack.steps=2", "eval.steps=3", "optim.epochs=1", "train.progress=false"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fastadv", *args], capture_output=True, text=True, timeout=600)


def make_folder_dataset(root: Path, classes: int = 3, per_class: int = 6, broken: bool = False) -> Path:
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in range(classes):
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True)
            for i in range(per_class):
                pixels = (rng.random((20 + i, 24, 3)) * 255).astype(np.uint8)
                Image.fromarray(pixels).save(d / f"{split}_{c}_{i}.JPEG", quality=90)
    if broken:
        good = (root / "train" / "n00000000" / "train_0_0.JPEG").read_bytes()
        (root / "train" / "n00000000" / "truncated.JPEG").write_bytes(good[: len(good) // 3])
        (root / "train" / "n00000001" / "empty.JPEG").write_bytes(b"")
    return root


@pytest.mark.parametrize("command", [[], ["train"], ["eval"], ["metrics"], ["report"], ["recipes"]])
def test_help_on_every_command(command):
    done = run_cli(*command, "--help")
    assert done.returncode == 0 and "usage: fastadv" in done.stdout


@pytest.mark.parametrize(
    "args, expected",
    [
        (["train", "--recipe", "imagenet-adv-plus", "--data", "/no/such/imagenet"], "/no/such/imagenet"),
        (["train", "--recipe", "demo-adv-plus", "attack.eps=8"], "8/255"),
        (["train", "--recipe", "demo-adv", "attack.steps=0"], "attack.steps=0"),
        (["train", "--recipe", "demo-adv-plus", "method.delta=1.5"], "method.delta"),
        (["train", "--recipe", "nope"], "unknown recipe"),
        (["eval", "/no/such/run"], "no checkpoint at"),
        (["report", "/no/such/eval"], "/no/such/eval"),
        (["metrics", "--predictions", "/no/such/dir"], "/no/such/dir"),
    ],
)
def test_user_errors_exit_2_without_traceback(args, expected):
    done = run_cli(*args)
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert expected in done.stderr


def test_not_class_folders_and_empty_class_folder(tmp_path):
    (tmp_path / "flat" / "train").mkdir(parents=True)
    (tmp_path / "flat" / "train" / "image.JPEG").write_bytes(b"")
    (tmp_path / "flat" / "val").mkdir()
    done = run_cli("train", "--recipe", "demo-adv", "--data", str(tmp_path / "flat"), "data.backend=folder")
    assert done.returncode == 2 and "Traceback" not in done.stderr and str(tmp_path / "flat") in done.stderr
    root = make_folder_dataset(tmp_path / "ds")
    (root / "train" / "n99999999").mkdir()
    done = run_cli("train", "--recipe", "demo-adv", "--data", str(root), "data.backend=folder")
    assert done.returncode == 2 and "n99999999" in done.stderr and "Traceback" not in done.stderr


def test_folder_training_skips_and_counts_broken_images(tmp_path):
    root = make_folder_dataset(tmp_path / "ds", broken=True)
    out = tmp_path / "run"
    code = main(["train", "--recipe", "demo-adv-plus", "--data", str(root), "--out", str(out),
                 "data.backend=folder", "model.num_classes=3", "data.image_size=16", "data.batch_size=4",
                 "data.workers=0", "attack.steps=1", "optim.epochs=2", "train.progress=false", "train.log_every=1"])
    assert code == 0
    log = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert log[-1]["event"] == "done"
    assert log[-1]["skipped_images"] == 4  # 2 broken files x 2 epochs, counted
    assert sum(r.get("skipped_images", 0) for r in log if r["event"] == "train") == 4


def test_train_eval_report_end_to_end(tmp_path):
    runs = []
    for recipe in ("demo-std", "demo-adv", "demo-adv-plus"):
        out = tmp_path / recipe
        assert main(["train", "--recipe", recipe, "--out", str(out), *TINY]) == 0
        assert (out / "checkpoint.pt").is_file() and (out / "train.jsonl").is_file() and (out / "config.toml").is_file()
        assert main(["eval", str(out), "--no-progress"]) == 0
        runs.append(str(out))
    ap = tmp_path / "demo-adv-plus" / "eval"
    settings = json.loads((ap / "eval.json").read_text())["settings"]
    assert list(settings) == ["clean", "pgd3", "pgd3-kplusm"]
    with open(ap / "predictions" / "clean.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 30
    assert {"file_name", "predicted_class", "predicted_probability"} <= set(rows[0])
    assert main(["eval", *runs, "--skip-existing", "--no-progress"]) == 0  # nothing to redo
    report = tmp_path / "report"
    assert main(["report", *runs, "--out", str(report)]) == 0
    text = (report / "report.md").read_text()
    for expected in ("Table 1", "Table 2", "demo-std", "demo-adv", "demo-adv-plus", "skipped", "ddof = 0",
                     # the ImageNet-only suites are skipped on the demo, each with its reason
                     "ReaL: skipped for every model: none of the file names are ImageNet validation names",
                     "mCE: skipped for every model: no ImageNet-C data configured",
                     "ImageNet-X: skipped for every model: none of the file names"):
        assert expected in text, expected
    assert (report / "classwise_error.png").stat().st_size > 1000
    assert "data:image/png;base64," in (report / "report.html").read_text()
    metrics = json.loads((report / "metrics.json").read_text())
    assert [m["model"] for m in metrics["models"]] == ["demo-std", "demo-adv", "demo-adv-plus"]
    assert metrics["headline"]["demo-std"]["skipped"].keys() == {"real", "imagenet_c", "imagenet_x", *OPTIONAL_SUITES}
    assert metrics["headline"]["demo-adv-plus"]["pgd_kplusm_error"] is not None


def test_recipes_lists_each_name_with_its_description_aligned(capsys):
    from fastadv.config import recipe_descriptions, recipe_names

    assert main(["recipes"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == recipe_names()
    starts = {len(line) - len(line[len(name):].lstrip()) for line, name in zip(lines, recipe_names())}
    assert len(starts) == 1  # every description starts in the same column
    assert all(line.endswith(recipe_descriptions()[name]) for line, name in zip(lines, recipe_names()))
