"""The report refuses models evaluated differently (eps, steps, precision, subset, seed): one line naming
the field and both values, exit 2, nothing written; --allow-mixed reports them under a loud warning at the
top. An eval.json from before eval.amp has its precision unknown, and the report says so (issue 24)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fastadv.analysis.predictions import write_predictions
from fastadv.analysis.report import build_report
from fastadv.cli import main
from fastadv.errors import FastadvError

SAME = {"eps": 0.03, "steps": 40, "amp": "fp32", "subset": "", "seed": 0}


def eval_dir(root: Path, model: str, old: bool = False, **changed) -> Path:
    """A 2-class eval dir (clean + PGD) as `fastadv eval` writes it; old: eval.json from before eval.amp."""
    e = {**SAME, **changed}
    d = root / model
    names, true = [f"img_{i}.png" for i in range(6)], [0, 0, 0, 1, 1, 1]
    for key, pred in (("clean", true), (f"pgd{e['steps']}", [0, 1, 0, 1, 0, 1])):
        write_predictions(d / "predictions" / f"{key}.csv", names, pred, [0.9] * 6, true)
    info = {"model": model, "arch": "resnet18", "num_classes": 2, "num_aux": 0, "class_names": ["a", "b"],
            "request": {"eps": e["eps"], "steps": e["steps"], "subset": e["subset"], "amp": e["amp"]},
            "precision": e["amp"], "eval_seed": e["seed"],
            "settings": {"clean": {"title": "clean", "images": 6},
                         f"pgd{e['steps']}": {"title": "PGD", "images": 6, "eps": e["eps"], "steps": e["steps"],
                                                    "alpha": 2.5 * e["eps"] / e["steps"]}}}
    if old:
        del info["precision"], info["eval_seed"], info["request"]["amp"]
    d.mkdir(parents=True, exist_ok=True)
    (d / "eval.json").write_text(json.dumps(info))
    return d


def test_models_evaluated_alike_are_reported_without_warning(tmp_path):
    metrics = build_report([eval_dir(tmp_path, "a-bf16"), eval_dir(tmp_path, "b-fp32")], tmp_path / "report")
    assert metrics["evaluation_warnings"] == []
    md = (tmp_path / "report" / "report.md").read_text()
    assert "WARNING" not in md and "eval.amp=fp32" in md  # each model's line says how it was evaluated


MIXED = [("eps", {"eps": 8 / 255}, "eval.eps=0.03", "eval.eps=0.0313725"),
         ("steps", {"steps": 10}, "eval.steps=40", "eval.steps=10"),
         ("precision", {"amp": "bf16"}, "eval.amp=fp32", "eval.amp=bf16"),
         ("subset", {"subset": "per-class:2"}, 'eval.subset="" (all images)', "eval.subset=per-class:2"),
         ("seed", {"seed": 1}, "eval.seed=0", "eval.seed=1")]


@pytest.mark.parametrize("field, changed, first, second", MIXED, ids=[m[0] for m in MIXED])
def test_models_evaluated_differently_are_refused_naming_the_field_and_both_values(tmp_path, capsys, field, changed,
                                                                                   first, second):
    a, b = eval_dir(tmp_path, "a"), eval_dir(tmp_path, "b", **changed)
    with pytest.raises(FastadvError) as err:
        build_report([a, b], tmp_path / "report")
    message = str(err.value)
    assert "\n" not in message and f"{a} was evaluated with {first} but {b} with {second}" in message
    assert "--allow-mixed" in message
    assert not (tmp_path / "report").exists()  # nothing written
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "cli")]) == 2
    assert main(["metrics", "--predictions", str(a), str(b), "--out", str(tmp_path / "cli")]) == 2
    lines = capsys.readouterr().err.splitlines()  # one line each
    assert len(lines) == 2 and all(f"{first} but" in x and second in x for x in lines)
    assert not (tmp_path / "cli").exists()


def test_allow_mixed_reports_under_a_loud_warning_at_the_top(tmp_path, capsys):
    a, b = eval_dir(tmp_path, "a"), eval_dir(tmp_path, "b", amp="bf16")
    assert main(["report", str(a), str(b), "--out", str(tmp_path / "report"), "--allow-mixed"]) == 0
    md = (tmp_path / "report" / "report.md").read_text().splitlines()
    assert md[2].startswith("**WARNING: NOT COMPARABLE SIDE BY SIDE**") and "eval.amp: fp32 for a; bf16 for b" in md[2]
    html = (tmp_path / "report" / "report.html").read_text()
    assert "NOT COMPARABLE SIDE BY SIDE" in html.split("Made by")[0]  # above everything else
    assert "eval.amp: fp32 for a; bf16 for b" in json.loads((tmp_path / "report" / "metrics.json").read_text())[
        "evaluation_warnings"][0]
    assert "warning: WARNING: NOT COMPARABLE" in capsys.readouterr().err


def test_old_eval_json_without_precision_is_unknown_and_said_so(tmp_path):
    old, new = eval_dir(tmp_path, "old", old=True), eval_dir(tmp_path, "new")
    metrics = build_report([old, new], tmp_path / "report")  # unknown is not a different value: not refused
    md = (tmp_path / "report" / "report.md").read_text()
    top = md.split("Made by")[0]
    assert "eval.amp unknown for old: their eval.json predates eval.amp" in top and "train.amp" in top
    assert "eval.amp=unknown" in md and metrics["models"][0]["evaluation"]["precision"] is None
