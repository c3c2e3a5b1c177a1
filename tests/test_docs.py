"""The documentation tells the truth about the code: every `fastadv ...` command shown parses with the
CLI's own parser, every `section.field` named exists, the generated reference pages are current, and
nothing the repository ships cites a file the repository does not hold. Fast: no mkdocs, no torch run
(`make docs` builds the site with --strict; .ci/run calls it)."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import importlib.util
import re
import shlex
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _doc_files() -> list[Path]:
    return [ROOT / "README.md", ROOT / "ARCHITECTURE.md", *sorted((ROOT / "docs").rglob("*.md"))]


def _code_texts(text: str) -> list[tuple[str, bool]]:
    """(text, is_block) of every fenced code block and inline code span of a Markdown page."""
    out: list[tuple[str, bool]] = []
    fence = re.compile(r"^( *)(```|~~~)[^\n]*\n(.*?)^\1\2 *$", re.M | re.S)
    for m in fence.finditer(text):
        out.append((m.group(3), True))
    rest = fence.sub("", text)
    # indented code blocks (4 spaces after a blank line) count as blocks too
    for m in re.finditer(r"(?:^|\n\n)((?:    [^\n]*\n?)+)", rest):
        out.append(("\n".join(line[4:] for line in m.group(1).splitlines()), True))
    out += [(m.group(1), False) for m in re.finditer(r"`([^`\n]+)`", rest)]
    return out


_PREFIX = re.compile(r"(?:^|\s|\$ )(?:\S*/)?(?:fastadv|python3? -m fastadv|-m fastadv)(?=\s|$)(.*)$")


def commands_in(text: str, blocks: bool | None = None) -> list[str]:
    """Argument strings of the `fastadv ...` commands in a page's code (blocks and spans; or only one kind)."""
    found = []
    for code, is_block in _code_texts(text):
        if blocks is not None and is_block != blocks:
            continue
        joined = re.sub(r"\s*\\\n\s*", " ", code)
        for line in joined.splitlines() if is_block else [joined]:
            line = line.split(" # ")[0].split("  #")[0].strip()
            if line.startswith("#") or "fastadv" not in line:
                continue
            m = _PREFIX.search(line)
            if m and not re.match(r"\s*[:.]", m.group(1)):
                found.append(m.group(1).strip())
    return found


def _parser():
    from fastadv.cli import build_parser

    return build_parser()


def test_command_extraction_sees_every_prefix():
    page = ("```bash\nfastadv train --recipe demo-std  # c\n.venv/bin/fastadv eval runs/a\n"
            "torchrun --standalone -m fastadv eval runs/b \\\n    --no-progress\n"
            "PYTHONPATH=. python -m fastadv recipes\nmake test\n```\nsee `fastadv report runs/a`, "
            "`fastadv.cli`, `fastadv: error: x`\n")
    assert commands_in(page) == ["train --recipe demo-std", "eval runs/a", "eval runs/b --no-progress",
                                 "recipes", "report runs/a"]


def mention_errors(parser, command: str) -> list[str]:
    """An inline `fastadv SUB --flag` mention: the subcommands exist and so does each --flag (arguments may be left out)."""
    tokens = shlex.split(command)
    while tokens:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not subs or tokens[0].startswith("-"):
            break
        if tokens[0] not in subs[0].choices:
            return [f"no command {tokens[0]!r} (choose from {', '.join(subs[0].choices)})"]
        parser, tokens = subs[0].choices[tokens[0]], tokens[1:]
    return [f"{parser.prog}: no option {t.split('=')[0]}" for t in tokens
            if t.startswith("--") and t.split("=")[0] not in parser._option_string_actions]


def test_every_fastadv_command_in_the_docs_parses(capsys):
    """Code blocks hold whole commands (parsed); inline spans may name a command or a flag (checked to exist)."""
    bad = []
    for path in _doc_files():
        for command in commands_in(path.read_text(), blocks=False):
            bad += [f"{path.relative_to(ROOT)}: `fastadv {command}`  ->  {e}" for e in mention_errors(_parser(), command)]
        for command in commands_in(path.read_text(), blocks=True):
            try:
                _parser().parse_args(shlex.split(command))
            except SystemExit as exc:
                if exc.code:  # --help / --version exit 0
                    err = capsys.readouterr().err.strip().splitlines()[-1:]
                    bad.append(f"{path.relative_to(ROOT)}: fastadv {command}  ->  {' '.join(err)}")
            except ValueError as exc:  # shlex: unbalanced quotes
                bad.append(f"{path.relative_to(ROOT)}: fastadv {command}  ->  {exc}")
    assert not bad, "commands in the docs that fastadv's parser refuses:\n" + "\n".join(bad)


def test_a_wrong_command_is_caught():
    assert commands_in("`fastadv train --recipes x`") == ["train --recipes x"]
    with pytest.raises(SystemExit):
        _parser().parse_args(shlex.split("train --recipes x"))
    assert mention_errors(_parser(), "data write-ffcv --jpeg-quality") == []
    assert mention_errors(_parser(), "train --recipes") == ["fastadv train: no option --recipes"]
    assert len(mention_errors(_parser(), "train/eval")) == 1


_FILE_SUFFIXES = {"py", "json", "jsonl", "toml", "csv", "md", "html", "png", "beton", "pt", "pth", "lock", "txt"}


def fields_named(text: str, sections: set[str]) -> set[str]:
    """`section.field` names in a page's code, skipping module paths (fastadv.data.x) and file names (train.jsonl)."""
    names = set()
    pattern = re.compile(r"(?<![\w./-])(" + "|".join(sorted(sections)) + r")\.([A-Za-z_]\w*)(?![\w(/-]|\.\w)")
    for code, _ in _code_texts(text):
        for m in pattern.finditer(code):
            if m.group(2) not in _FILE_SUFFIXES:
                names.add(f"{m.group(1)}.{m.group(2)}")
    return names


def _config_fields() -> tuple[set[str], set[str]]:
    import typing

    from fastadv.config import Config

    hints = typing.get_type_hints(Config)
    sections = {f.name for f in dataclasses.fields(Config) if f.name != "name"}
    return sections, {f"{s}.{f.name}" for s in sections for f in dataclasses.fields(hints[s])}


def test_every_config_field_named_in_the_docs_exists():
    """Renamed fields (config.schema.RENAMED, still read from old configs) may be named as such."""
    from fastadv.config.schema import RENAMED

    sections, known = _config_fields()
    known = known | {f"{section}.{old}" for section, old in RENAMED}
    bad = sorted(f"{path.relative_to(ROOT)}: {name}" for path in _doc_files()
                 for name in fields_named(path.read_text(), sections) - known)
    assert not bad, "config fields named in the docs that the dataclasses do not have:\n" + "\n".join(bad)


def test_a_wrong_field_is_caught():
    sections, known = _config_fields()
    named = fields_named("set `optim.epoch=2`, see `fastadv.data.loader`, `train.jsonl`, `eval.eps`", sections)
    assert named == {"optim.epoch", "eval.eps"} and named - known == {"optim.epoch"}


def _generator():
    spec = importlib.util.spec_from_file_location("gen_reference", ROOT / "docs" / "gen_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_reference_is_current():
    stale = [str(p.relative_to(ROOT)) for p, text in _generator().pages().items()
             if not p.exists() or p.read_text() != text]
    assert not stale, f"regenerate with `python docs/gen_reference.py`: {', '.join(stale)} differ from the code"


def test_config_help_comes_from_the_field_comments():
    gen = _generator()

    @dataclasses.dataclass
    class Toy:
        # above, line one
        # above, line two
        a: int = 1  # trailing
        b: str = ""
        c: float = 0.5  # only trailing

    assert gen.field_comments(Toy) == {"a": "above, line one above, line two trailing", "b": "", "c": "only trailing"}


# ----------------------------------------------------------------------------- citations
_ROOT_DIRS = ("fastadv", "tests", "bench", "kernels", "docs", ".ci")
_MD_NAME = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[A-Z][A-Z0-9_-]*\.md)\b")
_PATH = re.compile(r"(?<![\w/.<-])((?:" + "|".join(re.escape(d) for d in _ROOT_DIRS)
                   + r")/(?:[\w.-]+/)*[\w-]+\.(?:py|md|toml|txt|json|yml|yaml))\b")
_OUTSIDE = re.compile(r"(?:\.\./shared/|/work/shared/)")


def _tracked() -> list[str]:
    try:
        out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                             capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):  # not a git checkout (an unpacked archive): every file but caches
        skip = {".git", ".venv", "site", "runs", "__pycache__", ".pytest_cache"}
        return [str(p.relative_to(ROOT)) for p in ROOT.rglob("*") if p.is_file() and not skip & set(p.relative_to(ROOT).parts)]
    return [p for p in out.splitlines() if (ROOT / p).exists()]


def dangling_citations(text: str, files: list[str]) -> list[str]:
    """Cited files (SOMETHING.md, or a path under one of the repository's folders) the repository lacks."""
    bad = []
    for m in _MD_NAME.finditer(text):
        cited = m.group(1)
        if not any(f == cited or f.endswith("/" + cited) for f in files):
            bad.append(cited)
    for m in _PATH.finditer(text):
        cited = m.group(1)
        if cited not in files and not (ROOT / cited).is_dir():
            bad.append(cited)
    bad += [m.group(0) for m in _OUTSIDE.finditer(text)]
    return bad


def test_nothing_cites_a_file_the_repository_does_not_hold():
    files = _tracked()
    shipped = [f for f in files if (f.endswith((".py", ".md", ".toml", ".yml")) or Path(f).name == "Makefile")
               and f != "tests/test_docs.py"]  # this file's own examples
    bad = [f"{f}: {c}" for f in shipped for c in dangling_citations((ROOT / f).read_text(errors="replace"), files)]
    assert not bad, "citations of files that are not in the repository:\n" + "\n".join(bad)


def test_a_dangling_citation_is_caught():
    files = ["README.md", "docs/reference/methods.md", "fastadv/data/resources/README.md"]
    text = ("see REFERENCE.md §8, docs/reference/methods.md, resources/README.md, docs/reference/nope.md, "
            "../shared/data, runs/report/report.md")
    assert dangling_citations(text, files) == ["REFERENCE.md", "docs/reference/nope.md", "../shared/"]


# ----------------------------------------------------------------------------- measured claims say where
DEVICE = re.compile(r"AMD EPYC|Intel|H100|H200|GPU:|2-core")


def unplaced_measurements(text: str) -> list[str]:
    """Headings of sections that hold a table of measured numbers (Markdown table with digits) but name no machine."""
    bad = []
    for section in re.split(r"\n(?=## )", text):
        heading = section.splitlines()[0] if section.strip() else ""
        table_rows = [line for line in section.splitlines() if line.startswith("|") and re.search(r"\d", line)]
        if table_rows and not DEVICE.search(section):
            bad.append(heading)
    return bad


def test_every_measured_table_names_its_machine():
    pages = {"README.md": (ROOT / "README.md").read_text(), "docs/results.md": (ROOT / "docs" / "results.md").read_text()}
    readme = pages["README.md"]
    measured = {"README.md": "\n".join(s for s in re.split(r"\n(?=## )", readme) if "measured" in s.lower()[:200]),
                "docs/results.md": pages["docs/results.md"]}
    bad = [f"{page}: {h}" for page, text in measured.items() for h in unplaced_measurements(text)]
    assert not bad, "measured tables without the machine they were measured on:\n" + "\n".join(bad)
    assert "a few minutes" not in readme + (ROOT / "docs" / "getting-started.md").read_text()
    assert unplaced_measurements("## Speed\n\n| a | 1.0 |\n") == ["## Speed"]


def make_targets_in(text: str) -> set[str]:
    """Targets of the `make ...` commands in a page's code (variables like DATA=... are not targets)."""
    targets = set()
    for code, _ in _code_texts(text):
        for m in re.finditer(r"(?:^|[\s;(])make((?: +[A-Za-z][\w-]*(?=\s|$))+)", re.sub(r"\s*\\\n\s*", " ", code), re.M):
            targets |= set(m.group(1).split())
    return targets


def test_every_make_target_in_the_docs_exists():
    makefile = (ROOT / "Makefile").read_text()
    phony = set(re.search(r"^\.PHONY:(.*)$", makefile, re.M).group(1).split())
    bad = sorted(f"{p.relative_to(ROOT)}: make {t}" for p in _doc_files() for t in make_targets_in(p.read_text()) - phony)
    assert not bad, "make targets in the docs that the Makefile lacks:\n" + "\n".join(bad)
    assert make_targets_in("```\nmake train-adv DATA=/x ARGS=\"a\"\nmake eval\n```\n`make tests`") == {"train-adv", "eval", "tests"}


def _defined_names(file: Path) -> set[str]:
    """Names a module defines, assigns or imports at its top level; everything when it has a lazy __getattr__."""
    tree = ast.parse(file.read_text())
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
    return _Everything() if "__getattr__" in names else names


class _Everything(set):
    def __contains__(self, item) -> bool:
        return True


def module_reference_errors(dotted: str) -> list[str]:
    """`fastadv.a.b.name` in the docs: a module file that exists and defines (or imports) `name` (read, not imported)."""
    parts = dotted.split(".")
    for cut in range(len(parts), 1, -1):
        base = ROOT / ("kernels" if parts[1:2] == ["kernels"] else "fastadv")
        rel = parts[2:cut] if parts[1:2] == ["kernels"] else parts[1:cut]
        for file in (base.joinpath(*rel).with_suffix(".py"), base.joinpath(*rel, "__init__.py")):
            if file.is_file():
                rest = parts[cut:]
                if rest and rest[0] not in _defined_names(file):
                    return [f"{dotted}: {file.relative_to(ROOT)} has no {rest[0]}"]
                return []
    return [f"{dotted}: no such module"]


def test_every_module_named_in_the_docs_exists():
    bad = []
    for path in _doc_files():
        if path.name == "changelog.md":  # names the old module paths on purpose (old -> new)
            continue
        for code, _ in _code_texts(path.read_text()):
            for m in re.finditer(r"(?<![\w./-])fastadv(?:\.\w+)+", code):
                if ".my_" in m.group(0):  # the how-to examples name a module you would write
                    continue
                bad += [f"{path.relative_to(ROOT)}: {e}" for e in module_reference_errors(m.group(0).rstrip("."))]
    assert not bad, "modules or names in the docs that the code lacks:\n" + "\n".join(bad)
    assert module_reference_errors("fastadv.cli.build_parser") == []
    assert module_reference_errors("fastadv.cli.no_such_thing") and module_reference_errors("fastadv.nope.x")
