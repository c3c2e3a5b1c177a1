"""What fastadv tells a user to type next: a command that runs in the user's shell, and "did you mean".

Every printed hint (Ctrl-C, SIGTERM, refusals) builds its command with `fastadv_command()`: a
fresh shell after `make install` has no activated venv, so a bare `fastadv` would be
"command not found" there; the path of this installation's script (or `python -m fastadv`) runs.
"""

from __future__ import annotations

import difflib
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Iterable


def _same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def fastadv_command() -> str:
    """`fastadv` when that name on PATH is this installation's script, else a path or `python -m fastadv` that is."""
    script = Path(sys.executable).parent / "fastadv"
    on_path = shutil.which("fastadv")
    if script.is_file() and on_path and _same_file(on_path, script):
        return "fastadv"
    if script.is_file() and os.access(script, os.X_OK):
        return shlex.quote(_short(script))
    return f"{shlex.quote(_short(Path(sys.executable)))} -m fastadv"  # no console script: the same interpreter


def _short(path: Path) -> str:
    """`path` relative to the working directory when it lies below it (.venv/bin/fastadv), else absolute."""
    absolute = Path(os.path.abspath(path))  # not resolve(): a venv's python is a symlink to the base interpreter
    try:
        return str(absolute.relative_to(Path.cwd()))
    except ValueError:
        return str(absolute)


def command(*args: str | os.PathLike) -> str:
    """A whole fastadv command line, each argument shell-quoted."""
    return " ".join([fastadv_command(), *(shlex.quote(str(a)) for a in args)])


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' (did you mean X?)' for the closest valid name, '' when none is close."""
    close = difflib.get_close_matches(str(name), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""
