"""The command line's one grammar: `KEY=VALUE` overrides anywhere on the line, positional or via --set,
on every command that takes overrides; an unknown flag is reported with its subcommand's usage and the
closest valid flag (or config field: `--epochs 3` -> optim.epochs=VALUE)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

OVERRIDE = re.compile(r"^[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*=")


def parse_args(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """One grammar: KEY=VALUE overrides anywhere on the line (positional or --set) on every command that
    takes them; an unknown flag is reported with the subcommand's usage and the closest valid flag."""
    from fastadv.runtime.hints import did_you_mean

    args, extra = parser.parse_known_args(argv)
    subs = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    sub = subs.get(getattr(args, "command", None), parser)
    if isinstance(getattr(args, "runs", None), list):  # `eval RUN eval.eps=4/255`: an override, not a run
        moved = [r for r in args.runs if OVERRIDE.match(r) and not Path(r).exists()]
        args.runs = [r for r in args.runs if r not in moved]
        extra = moved + extra
    overrides = [a for a in extra if OVERRIDE.match(a)]
    unknown = [a for a in extra if not OVERRIDE.match(a)]
    if overrides and isinstance(getattr(args, "overrides", None), list):
        args.overrides = list(args.overrides) + overrides
    else:
        unknown = overrides + unknown
    if unknown:
        flags = [o for a in sub._actions for o in a.option_strings if o.startswith("--")]
        first = next((u.split("=")[0] for u in unknown if u.startswith("-")), "")
        hint = did_you_mean(first, flags) if first else ""
        if first and not hint and isinstance(getattr(args, "overrides", None), list):
            hint = _field_hint(first)
        sub.error(f"unrecognized arguments: {' '.join(unknown)}{hint}")
    args.argv = list(argv)
    return args


def _field_hint(flag: str) -> str:
    """`--epochs 3` -> ' (did you mean optim.epochs=VALUE?)': config fields are set as KEY=VALUE."""
    import dataclasses
    import difflib

    from fastadv.config.schema import SECTIONS, _section_classes

    keys = {f"{s}.{f.name}": f.name for s, cls in _section_classes().items() for f in dataclasses.fields(cls)}
    wanted = flag.lstrip("-").replace("-", "_")
    close = difflib.get_close_matches(wanted, list(keys) + list(keys.values()), n=1, cutoff=0.75)
    key = next((k for k, f in keys.items() if close and close[0] in (k, f)), None)
    return f" (did you mean the override {key}=VALUE?)" if key and SECTIONS else ""
