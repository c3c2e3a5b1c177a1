"""Metrics, prediction CSVs and the report, on hand-computed tiny cases (no model needed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

from fastadv.errors import FastadvError
from fastadv.analysis.metrics import (
    classwise_error,
    relative_change,
    setting_metrics,
    summarize_classwise,
    top1_error,
)
from fastadv.analysis.predictions import read_predictions, write_predictions
from fastadv.analysis.report import build_report
from fastadv.analysis.scoring import model_metrics

NAMES = ["plane", "car", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


# ---------------------------------------------------------------- metrics


def test_top1_and_classwise_error_with_empty_class() -> None:
    true = np.array([0, 0, 0, 0, 1, 1, 3, 3])
    pred = np.array([0, 1, 1, 1, 1, 1, 0, 3])
    assert top1_error(pred, true) == pytest.approx(4 / 8)
    e = classwise_error(pred, true, 4)
    assert e[0] == pytest.approx(0.75) and e[1] == 0.0 and e[3] == pytest.approx(0.5)
    assert math.isnan(e[2])  # class 2 has no samples
    s = summarize_classwise(e)
    assert s["mean"] == pytest.approx((0.75 + 0 + 0.5) / 3)
    assert s["sd"] == pytest.approx(np.std([0.75, 0.0, 0.5]))  # population SD, ddof=0
    assert s["sd"] != pytest.approx(np.std([0.75, 0.0, 0.5], ddof=1))
    assert (s["worst"], s["worst_class"], s["worst_ties"], s["n_classes"], s["n_empty"]) == (0.75, 0, 1, 3, 1)
    assert s["worst10_mean"] == pytest.approx(0.75)  # ceil(0.3) = 1 class


def test_worst10_mean_10_and_25_classes() -> None:
    e10 = np.arange(10) / 10  # worst ceil(1.0) = 1 class: 0.9
    assert summarize_classwise(e10)["worst10_mean"] == pytest.approx(0.9)
    e25 = np.arange(25) / 100  # worst ceil(2.5) = 3 classes: 0.24, 0.23, 0.22
    s = summarize_classwise(e25)
    assert s["worst10_mean"] == pytest.approx(0.23)
    assert s["worst_class"] == 24 and s["n_classes"] == 25


def test_relative_change_paper_numbers() -> None:
    assert 100 * relative_change(94.06, 32.70) == pytest.approx(65.23, abs=0.005)
    assert 100 * relative_change(70.32, 32.70) == pytest.approx(53.50, abs=0.005)
    # 5.7368: the paper's "5.73%" truncates (or used unrounded SDs), hence the wider tolerance
    assert 100 * relative_change(17.78, 16.76) == pytest.approx(5.73, abs=0.01)
    assert math.isnan(relative_change(0.0, 0.1))


# ---------------------------------------------------------------- prediction CSVs


def test_predictions_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "clean.csv"
    prob = np.array([0.9, 1 / 3, 0.123456789012345])
    write_predictions(path, ["a.png", "b.png", "c.png"], [1, 2, 0], prob, [1, 0, 0])
    p = read_predictions(path, 3)
    assert p.file_names == ["a.png", "b.png", "c.png"]
    assert p.predicted.dtype == np.int64 and p.predicted.tolist() == [1, 2, 0]
    assert p.probability.dtype == np.float64 and np.array_equal(p.probability, prob)
    assert p.true is not None and p.true.tolist() == [1, 0, 0]
    assert [f.name for f in path.parent.iterdir()] == ["clean.csv"]  # no temp file left
    sm = setting_metrics(p, 3)
    assert sm["images"] == 3 and sm["error"] == pytest.approx(1 / 3)

    write_predictions(tmp_path / "x.csv", ["a"], [4], [0.5])  # ImageNet-X: no true_class
    q = read_predictions(tmp_path / "x.csv")
    assert q.true is None
    with pytest.raises(FastadvError, match="true_class"):
        setting_metrics(q, 5)


HEADER = "file_name,predicted_class,predicted_probability,true_class\n"


@pytest.mark.parametrize(
    "text, needles",
    [
        ("", ["empty"]),
        (HEADER, ["empty", "no rows"]),
        ("file_name,predicted_probability\na,0.5\n", ["missing column", "predicted_class"]),
        (HEADER + "a,1,0.5,1\nb,1,0.5,1\na,2,0.5,1\nb,1,0.5,1\n", ["2 duplicate", "a, b"]),
        (HEADER + "a,1,0.5,1\nb,x,0.5,1\nc,1.5,0.5,1\n", ["predicted_class", "2 non-integer", "'x'", "0..9"]),
        (HEADER + "a,1,0.5,10\nb,1,0.5,-1\n", ["true_class", "2 class id", "0..9"]),
        (HEADER + "a,1,high,1\n", ["predicted_probability"]),
    ],
)
def test_bad_csv_raises(tmp_path: Path, text: str, needles: list[str]) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(FastadvError) as info:
        read_predictions(path, 10)
    for needle in needles:
        assert needle in str(info.value)
    assert str(path) in str(info.value)


def test_missing_csv_raises(tmp_path: Path) -> None:
    with pytest.raises(FastadvError, match="not found"):
        read_predictions(tmp_path / "nope.csv")


# ---------------------------------------------------------------- eval dirs and report

TITLES = {"clean": "clean", "pgd40": "PGD-40 (K-class head, adaptive)",
          "pgd40-kplusm": "PGD-40 (K+M logits, paper)", "fgsm": "FGSM"}


def make_eval_dir(root: Path, model: str, wrong: dict[str, list[int]], per_class: int = 5,
                  method: str | None = None) -> Path:
    """An eval dir where class k has wrong[setting][k] of its per_class images misclassified;
    method: the training method eval.json records (None: not recorded, an older eval.json)."""
    d = root / model
    k = len(NAMES)
    la = "pgd40-kplusm" in wrong
    settings = {}
    for key, counts in wrong.items():
        names, pred, true = [], [], []
        for c in range(k):
            for i in range(per_class):
                names.append(f"img_{c}_{i}.png")
                true.append(c)
                pred.append((c + 1) % k if i < counts[c] else c)
        write_predictions(d / "predictions" / f"{key}.csv", names, pred, [0.5] * len(pred), true)
        settings[key] = {"title": TITLES[key], "images": len(pred), "seconds": 1.0}
        if key.startswith("pgd"):
            settings[key].update(eps=0.03, steps=40, alpha=0.001875, head="kplusm" if "kplusm" in key else "k")
    info = {"model": model, "arch": "resnet18", "num_classes": k, "num_aux": int(la),
            "label_augmented": la, "class_names": NAMES, "settings": settings}
    if method is not None:
        info["method"] = method
    (d / "eval.json").write_text(json.dumps(info))
    return d


def three_models(root: Path) -> list[Path]:
    z = [0] * 10
    return [
        make_eval_dir(root, "demo-std", {"clean": [5, 0, 1, 0, 0, 0, 0, 0, 0, 0],  # worst: plane
                                         "pgd40": [5] * 10}, method="std"),
        make_eval_dir(root, "demo-adv", {"clean": [0, 0, 0, 4, 1, 0, 0, 0, 0, 0],  # worst: cat
                                         "pgd40": [3, 3, 3, 5, 3, 3, 3, 3, 3, 3],
                                         "fgsm": [2, 0, 0, 4, 1, *z[5:]]}, method="adv"),  # robust only where clean-correct
        make_eval_dir(root, "demo-adv-plus", {"clean": [0, 0, 0, 0, 0, 0, 0, 1, 1, 0],  # worst: horse (first of a tie)
                                              "pgd40": [2, 2, 2, 2, 2, 2, 2, 2, 2, 4],  # worst: truck
                                              "pgd40-kplusm": [1] * 10}, method="adv-plus"),
    ]


def test_model_metrics(tmp_path: Path) -> None:
    d = three_models(tmp_path)[2]
    m = model_metrics(d)
    assert m["model"] == "demo-adv-plus" and m["label_augmented"] and m["num_classes"] == 10
    assert list(m["settings"]) == ["clean", "pgd40", "pgd40-kplusm"]
    pgd = m["settings"]["pgd40"]
    assert pgd["error"] == pytest.approx(22 / 50) and pgd["title"].startswith("PGD-40")
    assert pgd["classwise"]["worst_class"] == 9 and pgd["eps"] == 0.03


def test_model_metrics_errors(tmp_path: Path) -> None:
    with pytest.raises(FastadvError, match="eval.json"):
        model_metrics(tmp_path)
    d = three_models(tmp_path)[0]
    (d / "predictions" / "pgd40.csv").unlink()
    with pytest.raises(FastadvError, match="pgd40.csv not found"):
        model_metrics(d)
    write_predictions(d / "predictions" / "pgd40.csv", ["other.png"], [0], [0.5], [0])
    with pytest.raises(FastadvError, match="different images"):
        model_metrics(d)


def test_build_report(tmp_path: Path) -> None:
    out = tmp_path / "report"
    metrics = build_report(three_models(tmp_path), out)
    assert [m["model"] for m in metrics["models"]] == ["demo-std", "demo-adv", "demo-adv-plus"]
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["models"][1]["settings"]["clean"]["error"] == pytest.approx(5 / 50)

    md = (out / "report.md").read_text()
    for needle in ["Table 1", "Table 2", "skipped", "no ImageNet-C data configured",
                   "are ImageNet validation names", "ddof = 0",
                   "plane (+9 tied)", "| cat |", "horse", "truck",  # worst classes by name
                   "Adv+ vs Adv", "Adv vs Std", "Adv+ vs Std", "| fgsm | FGSM |",
                   "](classwise_error.png)", "ImageNet-X: skipped for every model", "mCE: skipped for every model",
                   "PGD-40 SD (K-head) n/a (before is 0)"]:
        assert needle in md, needle
    table1 = md.split("## Table 1")[1].split("## Table 2")[0]
    row = next(line for line in table1.splitlines() if line.startswith("| demo-adv-plus |"))
    assert [c.strip() for c in row.split("|")[2:7]] == ["4.00", "skipped", "skipped", "44.00", "20.00"]
    assert next(line for line in table1.splitlines() if line.startswith("| demo-std |")).endswith("| — |")
    table2 = md.split("## Table 2")[1].split("## Class-wise detail")[0]
    row = next(line for line in table2.splitlines() if line.startswith("| demo-adv |"))
    assert [c.strip() for c in row.split("|")[2:8]] == ["10.00", "24.08", "skipped", "skipped", "64.00", "12.00"]
    # PGD-40 K-head, Adv+ vs Adv: mean class error 64% -> 44%, i.e. -31.25% relative
    assert "Adv+ vs Adv (demo-adv → demo-adv-plus): PGD-40 error (K-head) -31.25% relative" in md

    img = imread(out / "classwise_error.png")
    assert img.ndim == 3 and img.shape[:2] == (960, 1800)  # 4 panels: 2 rows x 3 columns at dpi 120


def test_build_report_generic_pairs_and_duplicates(tmp_path: Path) -> None:
    a = make_eval_dir(tmp_path, "alpha", {"clean": [1] * 10})
    b = make_eval_dir(tmp_path, "beta", {"clean": [2] * 10})
    md_metrics = build_report([a, b], tmp_path / "r")
    assert len(md_metrics["models"]) == 2
    assert "beta vs alpha: clean error +100.00% relative" in (tmp_path / "r" / "report.md").read_text()
    with pytest.raises(FastadvError, match="given twice"):
        build_report([a, b, a], tmp_path / "r2")


def test_report_roles_come_from_the_method_not_the_folder_name(tmp_path: Path) -> None:
    """Std / Adv / Adv+ pairs follow the method each run trained with (eval.json, else the run's
    config.toml), never the name: `my-baseline` trained with adv-plus is the Adv+ model."""
    plain = make_eval_dir(tmp_path, "demo-adv-plus", {"clean": [2] * 10}, method="std")  # the name says Adv+
    plus = make_eval_dir(tmp_path, "my-baseline", {"clean": [1] * 10}, method="adv-plus")
    build_report([plain, plus], tmp_path / "r")
    md = (tmp_path / "r" / "report.md").read_text()
    assert "Adv+ vs Std (demo-adv-plus → my-baseline): clean error -50.00% relative" in md, md

    # an eval.json from before "method" was recorded: the training run's config.toml beside the checkpoint
    run = tmp_path / "runs" / "my-baseline"
    old = make_eval_dir(run, "eval", {"clean": [1] * 10})
    info = json.loads((old / "eval.json").read_text())
    (old / "eval.json").write_text(json.dumps({**info, "model": "my-baseline", "checkpoint": str(run / "checkpoint.pt")}))
    (run / "config.toml").write_text('name = "my-baseline"\n[method]\nname = "adv-plus"\n')
    (run / "train.jsonl").write_text("")
    assert model_metrics(old)["method"] == "adv-plus"
    (run / "train.jsonl").unlink()  # no training log: an evaluation-only (--weights) folder, no method
    assert model_metrics(old)["method"] is None


def test_runs_sharing_a_recipe_name_are_named_by_folder(tmp_path: Path, capsys) -> None:
    """Issue 26 item 7: a timm and a mobilenet run of one recipe share its name; the report names them by folder."""
    timm_run = make_eval_dir(tmp_path / "timm-run", "demo-adv-plus", {"clean": [1] * 10})
    mobile = make_eval_dir(tmp_path / "mobilenet-run", "demo-adv-plus", {"clean": [2] * 10})
    metrics = build_report([timm_run, mobile], tmp_path / "r")
    names = [m["model"] for m in metrics["models"]]
    assert names == ["demo-adv-plus (timm-run/demo-adv-plus)", "demo-adv-plus (mobilenet-run/demo-adv-plus)"]
    assert "named with its folder" in capsys.readouterr().out
