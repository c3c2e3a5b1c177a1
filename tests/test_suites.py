"""Architecture: evaluation keys live in fastadv/eval/suites.py only; a new setting is one registration;
fastadv/analysis/ reads saved predictions only."""

from __future__ import annotations

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fastadv.eval import suites
from fastadv.config import load_config

PACKAGE = Path(__file__).resolve().parents[1] / "fastadv"
SUITES_MODULE = PACKAGE / "eval" / "suites.py"
SUITES_MODULES = (SUITES_MODULE, PACKAGE / "eval" / "suites_robustness.py")  # the registry and its robustness entries

# ---------------------------------------------------------------- suites: no key literal outside suites.py

_KEY_PARTS = ("kplusm", "imagenet-c/", "tpgd")
_KEY_LIKE = re.compile(r"t?pgd\d+.*")  # "pgd40", "pgd40-kplusm", "tpgd40-T0.5"
_DISPLAY_PREFIXES = ("PGD-", "Temperature-PGD-")  # setting titles: "PGD-40 (K-class head, adaptive)"
_NAME_ARGUMENTS = {"find_spec", "import_module", "getLogger", "version"}  # package / logger names, not keys


def _suites_key_names() -> set[str]:
    """Suite names, setting suites and setting-kind names: strings that are keys when quoted elsewhere."""
    names = {s.name for s in suites.suite_specs()} | {s.name for s in suites.setting_specs()}
    return names | {s.suite for s in suites.setting_specs()} | {"kplusm"}


def _suites_key_literals(source: str, filename: str, names: set[str]) -> list[str]:
    """String constants (f-string parts included) that spell an evaluation key, suite name or setting title.

    Not flagged: docstrings and other bare string statements; a dict key that echoes a config field
    (`{"imagenet_c": e.imagenet_c}`); package and logger names (`find_spec("imagenet_x")`); path
    components (`cache / "imagenet-c"`).
    """
    tree = ast.parse(source, filename=filename)
    parent = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    exempt: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            exempt.add(id(node.value))
        elif isinstance(node, ast.Dict):
            exempt |= {id(k) for k, v in zip(node.keys, node.values) if isinstance(k, ast.Constant)
                       and isinstance(v, ast.Attribute) and v.attr == k.value}
        elif isinstance(node, ast.Call):
            func = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if func in _NAME_ARGUMENTS:
                exempt |= {id(a) for a in node.args}
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            exempt |= {id(node.left), id(node.right)}
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)) or id(node) in exempt:
            continue
        v = node.value
        if (v in names or any(p in v for p in _KEY_PARTS) or _KEY_LIKE.fullmatch(v)
                or v.startswith(_DISPLAY_PREFIXES)):
            where = parent.get(node)
            shown = ast.unparse(parent[where] if isinstance(where, ast.JoinedStr) and where in parent else where or node)
            found.append(f"{filename}:{node.lineno}: {v!r} in {shown[:100]}")
    return found


def test_suites_key_scanner_flags_keys_and_spares_config_fields():
    names = _suites_key_names()
    bad = '''
def f(settings, e, steps, c, s):
    a = settings["pgd40"]
    b = f"pgd{steps}-kplusm"
    d = {"imagenet_c": run(), "suite": "imagenet-c"}
    t = f"t{b}-T{steps}" if settings.get("suite") == "tpgd" else f"PGD-{steps}"
    return f"imagenet-c/{c}/{s}", model["suites"]["clean"]
'''
    hits = _suites_key_literals(bad, "bad.py", names)
    for literal in ("'pgd40'", "'pgd'", "'-kplusm'", "'imagenet_c'", "'imagenet-c'", "'tpgd'", "'PGD-'",
                    "'imagenet-c/'", "'clean'"):
        assert any(f": {literal} in" in h for h in hits), (literal, hits)
    fine = '''
"""Docstring naming "pgd40" and "imagenet-c/<corruption>/<severity>"."""
import importlib.util, logging
log = logging.getLogger("fastadv.imagenet_c")
def f(e, base):
    """Also "tpgd"."""
    found = importlib.util.find_spec("imagenet_x")
    return {"imagenet_c": e.imagenet_c, "real_labels": e.real_labels}, base / "fastadv" / "imagenet-c", e.clean_fraction
'''
    assert _suites_key_literals(fine, "fine.py", names) == []


def test_suites_keys_appear_only_in_the_suites_module():
    names = _suites_key_names()
    offenders = [hit for path in sorted(PACKAGE.rglob("*.py")) if path not in SUITES_MODULES
                 for hit in _suites_key_literals(path.read_text(), str(path.relative_to(PACKAGE)), names)]
    assert not offenders, "evaluation keys, suite names and titles belong to fastadv/eval/suites.py:\n" + "\n".join(offenders)


# ---------------------------------------------------------------- suites: the registry


def test_suites_settings_keys_titles_and_parsing():
    cfg = load_config("demo-adv-plus", ["eval.steps=7", "eval.temperatures=0.5,2"])
    settings = suites.settings_for(cfg)
    assert [s.key for s in settings] == ["clean", "pgd7", "pgd7-kplusm", "tpgd7-T0.5", "tpgd7-T2"]
    assert [s.title for s in settings[:3]] == ["clean", "PGD-7 (K-class head, adaptive)",
                                               "PGD-7 (all K+M logits, as in the paper)"]
    info = settings[1].info()
    assert list(info) == ["title", "suite", "eps", "eps_255", "steps", "alpha", "random_start", "head", "early_stop",
                          "early_stop_compact"]
    assert info["alpha"] == pytest.approx(2.5 * cfg.eval.eps / 7) and info["head"] == "k"
    assert settings[2].attack.head == "all" and settings[3].info()["temperature"] == 0.5
    assert [suites.suite_of(s.key) for s in settings] == ["clean", "pgd", "pgd", "tpgd", "tpgd"]
    assert suites.suite_of("imagenet-c/fog/3") == "imagenet-c" and suites.suite_of("nope") == "other"
    assert suites.imagenet_c_setting("fog", 3).info() == {"title": "ImageNet-C fog severity 3", "suite": "imagenet-c",
                                                          "corruption": "fog", "severity": 3}
    pgd = suites.setting_spec(suites.PGD)
    assert suites.attack_keys({s.key: 0 for s in settings}, pgd) == ("pgd7", "pgd7-kplusm")
    assert pgd.display("pgd7-kplusm") == "PGD-7" and pgd.display(None) == "PGD-40"
    std = suites.settings_for(load_config("demo-std", []))
    assert [(s.key, s.title) for s in std] == [("clean", "clean"), ("pgd40", "PGD-40")]
    with pytest.raises(ValueError, match="registered already"):
        suites.register_setting(pgd)


class _MirrorAttack:
    """x_adv = the image mirrored left-right: an 'attack' the project does not ship."""

    def __call__(self, model, x, y):
        return torch.flip(x, dims=[3])


def _mirror_settings(cfg) -> list[suites.Setting]:
    return [suites.Setting("mirror-k", "Mirror (K-class head)", "mirror", _MirrorAttack(), {"flip": "left-right"})]


@pytest.fixture
def mirror_attack():
    suites.register_suite(suites.SuiteSpec("mirror", "Mirror", suites.ATTACK))
    spec = suites.register_setting(suites.SettingSpec(
        "mirror", suites.ATTACK, suite="mirror", keys=(r"mirror-k", r"mirror-kplusm"), build=_mirror_settings,
        label="Mirror", title=lambda key: "Mirror", params=lambda info: f"flip={info.get('flip')}"))
    yield spec
    suites.unregister_setting("mirror")
    suites.unregister_suite("mirror")


def test_suites_a_registered_setting_is_evaluated_scored_and_reported(tmp_path, mirror_attack):
    from fastadv.analysis.report import build_report
    from fastadv.eval.evaluate import evaluate
    from fastadv.train import train

    run = train(load_config("demo-std", ["data.image_size=16", "data.limit_train=32", "data.batch_size=16",
                                         "model.arch=resnet18", "train.max_steps=1", "train.progress=false",
                                         f"train.out_dir={tmp_path / 'run'}"]))
    out = evaluate(run, overrides=["data.limit_val=30", "eval.steps=1"], progress=False)
    info = json.loads((out / "eval.json").read_text())
    assert list(info["settings"]) == ["clean", "pgd1", "mirror-k"]
    assert info["settings"]["mirror-k"]["suite"] == "mirror" and info["settings"]["mirror-k"]["flip"] == "left-right"
    assert (out / "predictions" / "mirror-k.csv").is_file()
    metrics = build_report([out], tmp_path / "report")
    model = metrics["models"][0]
    assert model["suites"]["mirror"] == {"status": "done", "settings": ["mirror-k"]}
    headline = metrics["headline"][model["model"]]
    assert headline["mirror_setting"] == "mirror-k"
    assert headline["mirror_error"] == pytest.approx(model["settings"]["mirror-k"]["error"])
    md = (tmp_path / "report" / "report.md").read_text()
    table1 = md.split("## Table 1")[1].split("##")[0]
    assert "| Mirror (K-head) | Mirror (K+M, LA only) |" in table1 and "PGD-1 (K-head)" in table1
    assert "| Mirror | done | mirror-k |" in md
    assert "Attack parameters (from eval.json): flip=left-right for every Mirror setting." in md
    assert "| Mirror mean | Mirror SD |" in md.split("## Table 2")[1]


# ---------------------------------------------------------------- layout: analysis reads predictions only


def test_analysis_imports_no_model_side_module():
    # config and the method registry import no torch: the method ranking reads a run's saved config.toml
    # and its method's cost formula, never a model.
    allowed = ("fastadv.analysis", "fastadv.eval.suites", "fastadv.errors", "fastadv.runtime.fileio", "fastadv.config.",
               "fastadv.methods.registry.")
    found = []
    for path in sorted((PACKAGE / "analysis").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) else [])
            found += [f"{path.name}: {n}" for n in names
                      if (n == "torch" or n.startswith(("torch.", "fastadv")))
                      and not n.startswith(allowed)]
    assert not found, "fastadv/analysis/ reads saved predictions only:\n" + "\n".join(found)


def test_importing_the_registry_alone_registers_the_robustness_suites():
    """suites.py does not import suites_robustness.py (that was an import circle); fastadv/eval/__init__ does."""
    code = ("from fastadv.eval.suites import setting_spec, suite_of\n"
            "print(setting_spec('autoattack').kind, suite_of('mask-pgd100'), suite_of('paper-pgd40'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["attack", "masking", "paper_code"], out
