"""`fastadv train | eval | report | recipes`: one entry point; user errors exit 2 without a traceback."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from fastadv.errors import FastadvError

OVERRIDE_HELP = "config overrides as section.field=value, e.g. optim.epochs=2 attack.eps=4/255 data.batch_size=128"


def _train(args: argparse.Namespace) -> None:
    from fastadv.config import load_config
    from fastadv.train import train

    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.path={args.data}")
    if args.out:
        overrides.append(f"train.out_dir={args.out}")
    if args.init:
        overrides.append(f"model.init={args.init}")
    cfg = load_config(args.recipe, [_quote(o) for o in overrides])
    resume = args.resume_from or (cfg.train.out_dir if args.resume else None)
    path = train(cfg, resume=resume)
    print(f"checkpoint: {path}\nlog: {Path(cfg.train.out_dir) / 'train.jsonl'}")


def _eval(args: argparse.Namespace) -> None:
    from fastadv.evaluate import evaluate

    overrides = list(args.overrides)
    if args.data:
        overrides.append(f"data.path={args.data}")
    if args.out and len(args.runs) > 1:
        raise FastadvError("--out names one folder; with several runs leave it out (each run writes <run>/eval)")
    for run in args.runs:
        if args.skip_existing and _evaluated(run, args.out):
            print(f"{run}: already evaluated (eval.json newer than the checkpoint), skipped")
            continue
        out = evaluate(run, args.out, [_quote(o) for o in overrides], progress=not args.no_progress)
        print(f"predictions and eval.json: {out}")


def _evaluated(run: str, out: str | None) -> bool:
    from fastadv.checkpoint import resolve_checkpoint

    ckpt = resolve_checkpoint(run)
    done = Path(out) if out else ckpt.parent / "eval"
    return (done / "eval.json").is_file() and (done / "eval.json").stat().st_mtime >= ckpt.stat().st_mtime


def _report(args: argparse.Namespace) -> None:
    from fastadv.report import build_report

    dirs = []
    for item in args.evals:
        p = Path(item)
        dirs.append(p / "eval" if (p / "eval" / "eval.json").is_file() else p)
    build_report(dirs, Path(args.out))
    print(f"report: {Path(args.out) / 'report.md'}")


def _recipes(args: argparse.Namespace) -> None:
    from fastadv.config import recipe_names

    print("\n".join(recipe_names()))


def _quote(item: str) -> str:
    """Make `key=some/path` parse as a string even though it is not TOML-quoted."""
    key, _, value = item.partition("=")
    if value and not value.startswith(('"', "'")) and any(c in value for c in "/\\~ ") and not _is_fraction(value):
        value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{key}={value}"


def _is_fraction(text: str) -> bool:
    num, sep, den = text.partition("/")
    return bool(sep) and num.replace(".", "", 1).isdigit() and den.replace(".", "", 1).isdigit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastadv", description="Fast adversarial training and class-wise robustness evaluation.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from a recipe", description="Train Std / Adv / Adv+ from a recipe; any field can be overridden.")
    t.add_argument("--recipe", required=True, help="shipped recipe name (see `fastadv recipes`) or a .toml file")
    t.add_argument("--data", help="dataset root with train/ and val/ class folders (sets data.path)")
    t.add_argument("--out", help="run folder for checkpoint, log and config (sets train.out_dir)")
    t.add_argument("--init", help="start from these weights: a torchvision .pth or a fastadv checkpoint (sets model.init)")
    t.add_argument("--resume", action="store_true", help="resume from the run folder's checkpoint.pt")
    t.add_argument("--resume-from", metavar="PATH", help="resume from this checkpoint file or run folder")
    t.add_argument("overrides", nargs="*", help=OVERRIDE_HELP)
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="evaluate checkpoints: clean and PGD-40, class-wise predictions",
                       description="Write predictions CSVs and eval.json for each run (default: <run>/eval).")
    e.add_argument("runs", nargs="+", help="run folders or checkpoint files")
    e.add_argument("--data", help="dataset root (sets data.path); default: the one the run trained on")
    e.add_argument("--out", help="output folder (one run only)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.add_argument("--skip-existing", action="store_true", help="skip runs whose eval.json is newer than their checkpoint")
    e.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field for this evaluation, e.g. --set eval.eps=4/255")
    e.set_defaults(func=_eval)

    r = sub.add_parser("report", help="tables and figures from saved predictions (no model, no GPU)",
                       description="Build report.md, metrics.json and figures from evaluated runs.")
    r.add_argument("evals", nargs="+", help="run folders (using <run>/eval) or eval folders, in table order")
    r.add_argument("--out", default="runs/report", help="report folder (default runs/report)")
    r.set_defaults(func=_report)

    c = sub.add_parser("recipes", help="list the shipped recipes")
    c.set_defaults(func=_recipes)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="fastadv: %(levelname)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except FastadvError as exc:
        print(f"fastadv: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastadv: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
