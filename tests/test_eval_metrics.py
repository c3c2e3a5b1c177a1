"""mCE, ReaL and predictions from other tools, against hand-computed cases (no model needed)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from fastadv.errors import FastadvError
from fastadv.analysis.imagenet_meta import SuiteSkipped, imagenet_class_map, imagenet_wnids, val_index
from fastadv.analysis.metrics import (
    ALEXNET_ERRORS,
    CORRUPTIONS,
    corruption_errors,
    real_correct,
    real_metrics,
    summarize_classwise,
)
from fastadv.analysis.predictions import write_predictions
from fastadv.analysis.real import load_real_labels, real_suite
from fastadv.analysis.scoring import Sources, model_metrics

# docs/reference/metrics.md, copied by hand (so a slip in the code's table cannot hide).
ALEXNET_BY_HAND = {
    "gaussian_noise": .886428, "shot_noise": .894468, "impulse_noise": .922640, "defocus_blur": .819880,
    "glass_blur": .826268, "motion_blur": .785948, "zoom_blur": .798360, "snow": .866816, "frost": .826572,
    "fog": .819324, "brightness": .564592, "contrast": .853204, "elastic_transform": .646056,
    "pixelate": .717840, "jpeg_compression": .606500,
}


# ---------------------------------------------------------------- mCE


def test_mce_every_error_half() -> None:
    errors = {c: {s: 0.5 for s in range(1, 6)} for c in CORRUPTIONS}
    out = corruption_errors(errors)
    assert out["complete"] and out["mce"] == pytest.approx(0.5)
    # sum over the 15 of 0.5 / AlexNet_c, / 15, worked out by hand = 0.646726
    assert out["mce_alexnet"] == pytest.approx(0.6467257, abs=1e-6)
    assert out["mce_alexnet"] == pytest.approx(np.mean([0.5 / a for a in ALEXNET_BY_HAND.values()]))
    assert ALEXNET_ERRORS == ALEXNET_BY_HAND
    assert out["corruptions"]["brightness"]["ce_alexnet"] == pytest.approx(0.5 / 0.564592)


def test_mce_keyed_by_name_not_position() -> None:
    errors = {c: {s: 0.2 + 0.01 * i for s in range(1, 6)} for i, c in enumerate(CORRUPTIONS)}
    forward = corruption_errors(errors)
    backward = corruption_errors(dict(reversed(list(errors.items()))))
    assert forward["mce_alexnet"] == pytest.approx(backward["mce_alexnet"])
    assert forward["mce"] == pytest.approx(np.mean([0.2 + 0.01 * i for i in range(15)]))
    assert backward["corruptions"]["fog"]["ce_alexnet"] == pytest.approx((0.2 + 0.01 * 9) / 0.819324)


def test_ce_is_the_mean_over_severities_and_partial_sets_are_marked() -> None:
    out = corruption_errors({"snow": {1: 0.1, 2: 0.2, 3: 0.3, 4: 0.4, 5: 0.5},
                             "fog": {1: 0.6, 2: 0.6, 3: 0.6, 4: 0.6, 5: 0.6},
                             "saturate": {1: 0.9, 2: 0.9, 3: 0.9, 4: 0.9, 5: 0.9}})  # extra: not in mCE
    assert out["corruptions"]["snow"]["ce"] == pytest.approx(0.3)
    assert not out["complete"] and out["mce_corruptions"] == ["snow", "fog"]
    assert out["mce"] == pytest.approx(0.45)
    assert out["mce_alexnet"] == pytest.approx((0.3 / 0.866816 + 0.6 / 0.819324) / 2)
    assert out["corruptions"]["saturate"]["ce_alexnet"] is None and not out["corruptions"]["saturate"]["in_mce"]
    missing_severity = {c: {s: 0.5 for s in range(1, 6)} for c in CORRUPTIONS}
    del missing_severity["fog"][5]
    assert not corruption_errors(missing_severity)["complete"]


# ---------------------------------------------------------------- worst 10%


def test_worst10_mean_by_hand() -> None:
    e = np.array([0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.4, 0.6, 0.5, 0.0, 1.0, np.nan])  # 11 classes + 1 empty
    s = summarize_classwise(e)
    assert s["n_classes"] == 11 and s["n_empty"] == 1
    assert s["worst10_mean"] == pytest.approx((1.0 + 0.9) / 2)  # ceil(1.1) = 2 classes
    assert s["worst"] == 1.0 and s["worst_class"] == 10


# ---------------------------------------------------------------- ReaL


def test_real_with_empty_lists_by_hand() -> None:
    true = np.array([0, 0, 1, 1, 2])
    pred = np.array([0, 1, 1, 0, 2])
    lists = [[0], [0, 1], [], [3], []]
    included, correct = real_correct(pred, lists)
    assert included.tolist() == [True, True, False, True, False]
    assert correct.tolist() == [True, True, False, False, False]
    out = real_metrics(pred, true, lists, 3)
    assert out["images"] == 3 and out["excluded_empty"] == 2
    assert out["error"] == pytest.approx(1 / 3)  # image 3 predicts 0, its list is [3]
    assert out["per_class_error"][:2] == [0.0, 1.0] and out["per_class_error"][2] is None
    assert out["classwise"]["mean"] == pytest.approx(0.5) and out["classwise"]["sd"] == pytest.approx(0.5)


def test_real_suite_on_the_shipped_labels() -> None:
    wnids = list(imagenet_wnids())
    names = [f"ILSVRC2012_val_{i:08d}.JPEG" for i in (1, 2, 3, 4)]
    true = np.array([65, 970, 230, 809])  # ImageNet's labels of these four images
    pred = np.array([65, 795, 229, 809])  # ReaL lists: [], [970, 795], [230, 231], [809]
    out = real_suite(names, pred, true, wnids, 1000)
    assert out["images"] == 3 and out["excluded_empty"] == 1
    assert out["error"] == pytest.approx(1 / 3)
    # a model on 3 ImageNet classes, its own indices 0..2: mapped by wnid
    sub = [wnids[230], wnids[809], wnids[970]]
    out = real_suite(names[1:], np.array([2, 0, 1]), np.array([2, 0, 1]), sub, 3)
    assert out["error"] == 0.0 and out["images"] == 3
    with pytest.raises(SuiteSkipped, match="disagree with the ImageNet validation labels"):
        real_suite(names[1:], np.array([2, 0, 1]), np.array([0, 0, 1]), sub, 3)
    with pytest.raises(SuiteSkipped, match="are ImageNet validation names"):
        real_suite(["digits_0001.png"], np.array([0]), np.array([0]), [str(i) for i in range(10)], 10)


def test_real_labels_file_is_validated(tmp_path: Path) -> None:
    with pytest.raises(FastadvError, match="not found"):
        real_suite(["ILSVRC2012_val_00000002.JPEG"], np.array([970]), np.array([970]), list(imagenet_wnids()),
                   1000, path=str(tmp_path / "nope.json"))
    short = tmp_path / "short.json"
    short.write_text(json.dumps([[1], []]))
    with pytest.raises(FastadvError, match="50000 label lists, got 2 entries"):
        load_real_labels(str(short))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([[1]] * 49_998 + [[1000], "x"]))
    with pytest.raises(FastadvError, match="2 entr"):
        load_real_labels(str(bad))
    broken = tmp_path / "broken.json"
    broken.write_text("[[1], [")
    with pytest.raises(FastadvError, match="not a readable JSON"):
        load_real_labels(str(broken))


def test_class_map_and_val_index() -> None:
    wnids = imagenet_wnids()
    assert len(wnids) == 1000 and list(wnids) == sorted(wnids) and wnids[0] == "n01440764"
    assert imagenet_class_map([wnids[5], wnids[2]], 2).tolist() == [5, 2]
    assert imagenet_class_map([str(i) for i in range(1000)], 1000).tolist() == list(range(1000))
    with pytest.raises(SuiteSkipped, match="not ImageNet-1k classes"):
        imagenet_class_map(["0", "1"], 2)
    assert val_index("ILSVRC2012_val_00000001.JPEG") == 0 and val_index("x/ILSVRC2012_val_00050000.JPEG") == 49_999
    assert val_index("ILSVRC2012_val_00050001.JPEG") is None and val_index("img.png") is None


# ---------------------------------------------------------------- CSVs from other tools


def _val(i: int) -> str:
    return f"ILSVRC2012_val_{i:08d}.JPEG"


def test_foreign_csv_with_labels_file(tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("file_name,true_class\n" + "".join(f"{_val(i)},{c}\n" for i, c in ((2, 970), (3, 230), (4, 809))))
    csv_path = tmp_path / "other-tool.csv"
    write_predictions(csv_path, [_val(2), _val(3), _val(4)], [970, 231, 1], [0.9, 0.5, 0.2])  # no true_class
    m = model_metrics(csv_path, Sources(labels_csv=str(labels)))
    assert m["model"] == "other-tool" and m["num_classes"] == 1000
    assert m["settings"]["clean"]["error"] == pytest.approx(2 / 3)
    assert m["settings"]["real"]["error"] == pytest.approx(1 / 3)  # 231 is in [230, 231]
    assert m["suites"]["imagenet_c"]["status"] == "skipped" and "another tool" in m["suites"]["pgd"]["reason"]

    write_predictions(csv_path, [_val(2), _val(3), _val(9)], [970, 231, 1], [0.9, 0.5, 0.2])
    with pytest.raises(FastadvError, match=r"1 of 3 file name\(s\) unknown .*ILSVRC2012_val_00000009"):
        model_metrics(csv_path, Sources(labels_csv=str(labels)))
    write_predictions(csv_path, [_val(2), _val(3)], [970, 231], [0.9, 0.5])
    with pytest.raises(FastadvError, match=r"1 missing row\(s\).*ILSVRC2012_val_00000004"):
        model_metrics(csv_path, Sources(labels_csv=str(labels)))


def test_foreign_csv_default_labels_and_bad_rows(tmp_path: Path) -> None:
    csv_path = tmp_path / "m.csv"
    write_predictions(csv_path, [_val(2), _val(3)], [970, 231], [0.9, 0.5])
    with pytest.raises(FastadvError, match=r"49998 missing row\(s\)"):  # full val expected without --labels
        model_metrics(csv_path)
    csv_path.write_text("file_name,predicted_class,predicted_probability\n"
                        f"{_val(2)},970,0.9\n{_val(3)},1000,0.5\n{_val(4)},-1,0.5\n")
    with pytest.raises(FastadvError, match=r"2 class id\(s\) outside the valid range 0..999"):
        model_metrics(csv_path)
    csv_path.write_text("file_name,predicted_class,predicted_probability\n"
                        f"{_val(2)},970,0.9\n{_val(2)},970,0.9\n")
    with pytest.raises(FastadvError, match=r"1 duplicate file name\(s\) \(ILSVRC2012_val_00000002"):
        model_metrics(csv_path)


def test_foreign_csv_with_true_class_needs_no_labels(tmp_path: Path) -> None:
    csv_path = tmp_path / "with-true.csv"
    write_predictions(csv_path, [_val(2), _val(3)], [970, 1], [0.9, 0.5], [970, 230])
    m = model_metrics(csv_path)
    assert m["settings"]["clean"]["error"] == pytest.approx(0.5)
    assert math.isclose(m["settings"]["real"]["error"], 0.5)
