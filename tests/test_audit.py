"""Self-audit of eval folders (issue 24): each invariant corrupted in turn is one clear line naming the
file, the image and the rule; `fastadv metrics` exits 2 and writes nothing over; the report's AutoAttack
rows add up (clean errors + robust + broken = evaluated images) and agree with the CSVs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fastadv.analysis.audit import audit_eval_dir
from fastadv.analysis.predictions import write_predictions
from fastadv.errors import FastadvError

NAMES = [f"img{i}.png" for i in range(8)]
TRUE = [0, 0, 1, 1, 2, 2, 0, 1]
CLEAN = [0, 0, 1, 1, 2, 1, 2, 1]  # img5, img6 clean errors
ADV = [0, 1, 1, 0, 2, 1, 2, 1]  # img1, img3 broken by the attack


def _folder(tmp_path: Path, adv=ADV, robust=None, broken=None, names=NAMES, pgd=ADV) -> Path:
    d = tmp_path / "eval"
    pred = d / "predictions"
    write_predictions(pred / "clean.csv", NAMES, CLEAN, [0.9] * 8, TRUE)
    write_predictions(pred / "pgd40.csv", NAMES, pgd, [0.9] * 8, TRUE)
    if robust is None:
        robust = [int(p == t) for p, t in zip(adv, TRUE)]
    if broken is None:
        broken = ["clean-error" if c != t else "" if r else "apgd-ce" for c, t, r in zip(CLEAN, TRUE, robust)]
    n = len(names)
    write_predictions(pred / "autoattack.csv", names, adv[:n], [0.9] * n, TRUE[:n],
                      extra={"robust": robust[:n], "broken_by": broken[:n]})
    info = {"model": "m", "num_classes": 3, "num_aux": 0, "class_names": ["a", "b", "c"],
            "settings": {"clean": {"suite": "clean", "images": 8}, "pgd40": {"suite": "pgd", "images": 8},
                         "autoattack": {"suite": "autoattack", "images": n}}}
    (d / "eval.json").write_text(json.dumps(info))
    return d


def _error(d: Path) -> str:
    with pytest.raises(FastadvError) as e:
        audit_eval_dir(d)
    return str(e.value)


def test_a_consistent_folder_passes(tmp_path):
    audit_eval_dir(_folder(tmp_path))


def test_robust_but_clean_wrong_is_refused(tmp_path):
    msg = _error(_folder(tmp_path, pgd=[0, 1, 1, 0, 2, 2, 2, 1]))  # img5: correct under PGD, wrong clean
    assert "pgd40.csv" in msg and "img5.png" in msg and "robust implies clean-correct" in msg


def test_robust_above_clean_per_class_is_refused(tmp_path, monkeypatch):
    from fastadv.analysis import audit

    monkeypatch.setattr(audit, "_robust_needs_clean", lambda *a: None)  # only the per-class rule left to catch it
    msg = _error(_folder(tmp_path, pgd=[0, 1, 1, 0, 2, 2, 2, 1]))
    assert "pgd40.csv" in msg and "class 2" in msg and "robust accuracy <= clean accuracy per class" in msg


def test_autoattack_rows_must_cover_the_evaluated_images(tmp_path):
    msg = _error(_folder(tmp_path, names=NAMES[:7]))
    assert "autoattack.csv" in msg and "img7.png" in msg and "cover exactly the evaluated images" in msg


def test_an_image_both_robust_and_broken_is_refused(tmp_path):
    broken = ["", "apgd-ce", "", "apgd-ce", "square", "clean-error", "clean-error", ""]  # img4 robust, broken_by square
    msg = _error(_folder(tmp_path, broken=broken))
    assert "autoattack.csv" in msg and "img4.png" in msg and "both robust and broken" in msg


def test_a_robust_flag_against_its_prediction_is_refused(tmp_path):
    msg = _error(_folder(tmp_path, robust=[1, 1, 1, 0, 1, 0, 0, 1], broken=[""] * 3 + ["apgd-ce", ""] + ["clean-error"] * 2 + [""]))
    assert "img1.png" in msg and "both robust and broken" in msg


def test_metrics_exits_2_on_a_violation_and_writes_nothing_over(tmp_path, capsys):
    from fastadv.cli import main

    d = _folder(tmp_path, pgd=[0, 1, 1, 0, 2, 2, 2, 1])
    out = tmp_path / "report"
    out.mkdir()
    (out / "metrics.json").write_text("old")
    assert main(["metrics", "--predictions", str(d), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "robust implies clean-correct" in err[0] and "img5.png" in err[0]
    assert (out / "metrics.json").read_text() == "old" and sorted(p.name for p in out.iterdir()) == ["metrics.json"]


def test_report_autoattack_rows_add_up_and_agree_with_the_csvs(tmp_path):
    from fastadv.analysis.report_robustness import autoattack_counts
    from fastadv.analysis.scoring import model_metrics

    d = _folder(tmp_path)
    m = model_metrics(d)
    s = m["settings"]["autoattack"]
    counts = autoattack_counts(s)
    assert counts == {"images": 8, "clean errors": 2, "robust": 4, "broken": 2}
    assert counts["clean errors"] + counts["robust"] + counts["broken"] == counts["images"]
    assert counts["robust"] == round((1 - s["error"]) * counts["images"])


def test_the_torch_free_clean_miss_name_is_the_attacks_one():
    from fastadv.analysis import report_robustness
    from fastadv.attacks import auto_attack

    assert report_robustness.CLEAN_MISS == auto_attack.CLEAN_MISS
