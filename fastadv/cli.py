"""`fastadv train | eval | metrics | report | recipes`: one entry point; user errors exit 2 without a traceback."""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

from fastadv import __version__
from fastadv.cli_grammar import parse_args
from fastadv.errors import FastadvError

OVERRIDE_HELP = ("config overrides as section.field=value, e.g. optim.epochs=2 attack.eps=4/255 data.batch_size=128; "
                 "name=NAME names the run in reports that compare runs side by side")
TRAIN_EPILOG = """\
run folder (--out): config.toml, checkpoint.pt, train.jsonl, dataset.json; one process at a time
  (a lock); a folder that holds a run is refused: continue it with --resume or start over with
  --overwrite (the old run is moved aside, never deleted).
--resume: uses the configuration saved in the run folder; the only overrides accepted are
  optim.epochs, train.max_steps, data.path (a moved dataset), how it runs (train.device,
  train.compile, data.workers, train.progress, train.log_every, ...) and eval.*; the changes are
  printed. Other training data (class list, image count) is refused unless --allow-new-dataset.
train.max_steps=N: stops after N optimizer steps in total and compresses the whole cosine
  learning-rate schedule into those N steps (it reaches optim.min_lr_ratio at step N).
"""


def _overrides(args: argparse.Namespace, **flags: str) -> list[str]:
    """The positional / --set overrides plus each given flag as its config field, quoted once."""
    items = list(args.overrides)
    items += [f"{field}={getattr(args, flag)}" for flag, field in flags.items() if getattr(args, flag)]
    return [_quote(item) for item in items]


def _train(args: argparse.Namespace) -> None:
    """Validate everything (config, run folder, lock) before torch is imported, then train and summarize."""
    from fastadv.runtime import runfolder
    from fastadv.config import load_config
    from fastadv.config.recipe_files import check_data_is_read

    runfolder.check_out_path(args.out)
    resume = args.resume_from or (args.resume and (args.out or (args.recipe and load_config(args.recipe).train.out_dir)))
    if (args.resume or args.resume_from) and not resume:
        raise FastadvError("--resume needs the run folder: pass --out RUN_FOLDER (or --resume-from PATH)")
    if resume:
        source = Path(resume) if Path(resume).is_dir() else Path(resume).parent
        cfg, changes = runfolder.resume_config(source, _overrides(args, data="data.path", init="model.init"))
        if args.out:
            cfg.train.out_dir = args.out
        if args.recipe:
            print(f"--resume: the configuration saved in {source} is used; --recipe {args.recipe} is ignored")
        print(runfolder.describe_changes(changes))
    else:
        if not args.recipe:
            raise FastadvError("fastadv train needs --recipe NAME (see `fastadv recipes`), or --resume --out RUN")
        cfg = load_config(args.recipe, _overrides(args, data="data.path", out="train.out_dir", init="model.init"))
        runfolder.absolute_paths(cfg)
    check_data_is_read(args.data, cfg)
    out = Path(cfg.train.out_dir)
    if args.continue_run and not resume and (out / "checkpoint.pt").is_file():
        cfg, resume, source = _continue(out, cfg), str(out), out
    restarting = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0"
    same_folder = bool(resume) and out.absolute() == source.absolute()
    continuing = same_folder or ((cfg.train.auto_resume or restarting) and (out / "checkpoint.pt").is_file())
    from fastadv.train.sinks import check_loggers

    check_loggers(cfg.train.loggers)  # an unknown logger or a missing package: refused before the folder is touched
    args.interrupt_hint = lambda: _resume_hint(out, args.argv)
    with runfolder.lock(out, "train"):
        if not continuing and runfolder.is_main_process():
            aside = runfolder.prepare_fresh(out, args.overwrite)
            if aside:
                print(f"--overwrite: the previous run in {out} was moved to {aside}")
        log = out / "train.jsonl"
        start_line = len(log.read_text(encoding="utf-8").splitlines()) if log.is_file() else 0
        start = time.perf_counter()
        from fastadv.train import train

        train(cfg, resume=resume or None, allow_new_dataset=args.allow_new_dataset)
    if runfolder.is_main_process():
        from fastadv.eval.summary import train_summary

        print(train_summary(out, start_line, time.perf_counter() - start))


def _continue(out: Path, cfg):
    """--continue: the unfinished run in `out` continues when it was started with this configuration
    (only RESUMABLE fields, e.g. optim.epochs, may differ); another configuration is refused."""
    from fastadv.runtime import runfolder

    saved = runfolder.saved_config(out)
    cfg.train.out_dir = saved.train.out_dir  # compared apart: the folder may have moved
    changes = runfolder.config_changes(saved, cfg)
    cfg.train.out_dir = str(out)
    other = {k: v for k, v in changes.items() if not runfolder.resumable(k)}
    if other:
        listed = ", ".join(f"{k} ({a!r} -> {b!r})" for k, (a, b) in list(other.items())[:4])
        raise FastadvError(f"{out} holds a run of another configuration ({listed}); start over with --overwrite "
                           f"(make: FORCE=1; the old run is moved aside), or choose another --out")
    print(f"{out}: continuing its unfinished run from the last checkpoint (same configuration)")
    if changes:
        print(runfolder.describe_changes(changes))
    return cfg


def _resume_hint(out: Path, argv: list[str]) -> str:
    """What Ctrl-C prints: the checkpoint's state and the exact command that continues the run."""
    from fastadv.runtime.hints import command

    if not (out / "checkpoint.pt").is_file():
        return f"no checkpoint was written yet; the same command starts the run again:\n  {command(*argv)}"
    return f"the last checkpoint {out / 'checkpoint.pt'} is intact; continue with:\n  {command('train', '--resume', '--out', out)}"


def _eval(args: argparse.Namespace) -> None:
    from fastadv.eval.evaluate import describe_checkpoint, evaluate

    from fastadv.eval.suites_robustness import OPTIONAL_SUITES

    if args.weights or args.arch:  # issue 15: a published model's weights, no training run
        return _eval_weights(args)
    if not args.runs:
        raise FastadvError("fastadv eval needs run folders / checkpoints, or --weights FILE --arch NAME")
    overrides = _overrides(args, data="data.path", imagenet_c="eval.imagenet_c", real="eval.real_labels")
    overrides += [OPTIONAL_SUITES[name] for name in args.suite or []]
    if args.out and len(args.runs) > 1:
        raise FastadvError("--out names one folder; with several runs leave it out (each run writes <run>/eval)")
    from fastadv.runtime import runfolder
    from fastadv.models.checkpoint import resolve_checkpoint
    from fastadv.eval.summary import eval_summary

    runfolder.check_out_path(args.out)
    from fastadv.runtime.hints import command

    args.interrupt_hint = lambda: ("finished settings are kept (eval/partial/); the same command continues "
                                   f"where it stopped:\n  {command('eval', *args.argv[1:])}")
    for run in args.runs:
        if args.skip_existing and _evaluated(run, args.out, overrides, args.checkpoint):
            print(f"{run}: already evaluated (eval.json newer than the checkpoint, same request), skipped")
            continue
        start = time.perf_counter()
        ckpt = resolve_checkpoint(run, args.checkpoint)
        if runfolder.is_main_process():
            print(describe_checkpoint(ckpt))
        with runfolder.lock(ckpt.parent, "eval"):
            out = evaluate(run, args.out, overrides, progress=not args.no_progress, checkpoint=args.checkpoint)
        if runfolder.is_main_process():
            print(eval_summary(out, time.perf_counter() - start))


def _eval_weights(args: argparse.Namespace) -> None:
    from fastadv.eval.evaluate_weights import evaluate_weights

    if not (args.weights and args.arch) or args.runs:
        raise FastadvError("--weights FILE and --arch NAME go together, without run folders "
                           "(e.g. fastadv eval --weights robust_r50.pt --arch resnet50 --data /data/imagenet)")
    overrides = _overrides(args, imagenet_c="eval.imagenet_c", real="eval.real_labels")
    out = evaluate_weights(args.weights, args.arch, args.data, args.out, args.recipe, overrides,
                           progress=not args.no_progress)
    print(f"run folder: {out}\npredictions and eval.json: {out / 'eval'}\nreport: {out / 'report' / 'report.html'}")


def _evaluated(run: str, out: str | None, overrides: list[str], which: str = "last") -> bool:
    """eval.json exists, is newer than the checkpoint, and was asked the same (data, suites, attack)."""
    import json

    from fastadv.models.checkpoint import load_checkpoint, resolve_checkpoint
    from fastadv.config import apply_override, from_dict
    from fastadv.eval.evaluate import eval_folder_name, request_of

    ckpt = resolve_checkpoint(run, which)
    done = Path(out) if out else ckpt.parent / eval_folder_name(ckpt)
    path = done / "eval.json"
    if not path.is_file() or path.stat().st_mtime < ckpt.stat().st_mtime:
        return False
    cfg = from_dict(load_checkpoint(ckpt)["config"])
    for item in overrides:
        apply_override(cfg, item)
    try:
        recorded = json.loads(path.read_text()).get("request")
    except json.JSONDecodeError:
        return False
    return recorded == request_of(cfg)


def _sources(args: argparse.Namespace):
    from fastadv.analysis.scoring import Sources

    return Sources(real_labels=args.real, labels_csv=getattr(args, "labels", None))


def _report(args: argparse.Namespace) -> None:
    from fastadv.analysis.report import build_report
    from fastadv.runtime.runfolder import check_out_path

    check_out_path(args.out)

    metrics = build_report(args.evals, Path(args.out), _sources(args), allow_mixed=args.allow_mixed)
    _warn(metrics)
    print(f"report: {Path(args.out) / 'report.md'} and {Path(args.out) / 'report.html'}")


def _warn(metrics) -> None:
    """Models evaluated differently (--allow-mixed) or with unknown settings: said on stderr too."""
    for line in metrics["evaluation_warnings"]:
        print("warning: " + line.replace("**", ""), file=sys.stderr)


def _metrics(args: argparse.Namespace) -> None:
    import json

    from fastadv.analysis.report import build_report
    from fastadv.runtime.runfolder import check_out_path
    from fastadv.eval.summary import metrics_table

    check_out_path(args.out)
    metrics = build_report(args.predictions, Path(args.out), _sources(args), allow_mixed=args.allow_mixed)
    _warn(metrics)
    if args.json:
        print(json.dumps({"report": str(Path(args.out) / "report.html"), "units": "error fractions in [0, 1]",
                          "models": metrics["headline"]}, indent=2))
    else:
        print(metrics_table(metrics["headline"], Path(args.out)))


def _recipes(args: argparse.Namespace) -> None:
    from fastadv.config import recipe_descriptions

    descriptions = recipe_descriptions()
    width = max(map(len, descriptions), default=0)
    print("\n".join(f"{name:<{width}}  {text}".rstrip() for name, text in descriptions.items()))


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
    parser.add_argument("--version", action="version", version=f"fastadv {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from a recipe", epilog=TRAIN_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train Std / Adv / Adv+ from a recipe; any field can be overridden.")
    t.add_argument("--recipe", help="shipped recipe name (see `fastadv recipes`) or a .toml file (not needed with --resume)")
    t.add_argument("--data", help="dataset root with train/ and val/ class folders (sets data.path)")
    t.add_argument("--out", help="run folder for checkpoint, log and config (sets train.out_dir)")
    t.add_argument("--init", help="start from these weights: a torchvision .pth or a fastadv checkpoint (sets model.init)")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out with the configuration saved there (overrides: see below)")
    t.add_argument("--resume-from", metavar="PATH", help="resume from this checkpoint file or run folder")
    t.add_argument("--overwrite", action="store_true",
                   help="--out holds a run: move it aside to <out>.old-<time> (never deleted) and start fresh")
    t.add_argument("--continue", dest="continue_run", action="store_true",
                   help="--out holds an unfinished run of this same recipe and overrides: continue it (what make does); "
                        "a run of another configuration is refused")
    t.add_argument("--allow-new-dataset", action="store_true",
                   help="resume even though the training data (class list, image count) differs from the run's")
    t.add_argument("overrides", nargs="*", help=OVERRIDE_HELP)
    t.set_defaults(func=_train)

    e = sub.add_parser("eval", help="evaluate checkpoints: clean and PGD-40, class-wise predictions",
                       description="Write predictions CSVs and eval.json for each run (default: <run>/eval).")
    e.add_argument("runs", nargs="*", help="run folders or checkpoint files")
    e.add_argument("--data", help="dataset root (sets data.path); default: the one the run trained on")
    e.add_argument("--imagenet-c", metavar="PATH|generate",
                   help="ImageNet-C: a released folder <corruption>/<severity>/<wnid>/*.JPEG, or 'generate' to "
                        "corrupt the val images (cached; eval.imagenet_c_cache); sets eval.imagenet_c")
    e.add_argument("--real", metavar="PATH", help="ReaL labels (real.json); default: the copy inside imagenet-x")
    e.add_argument("--out", help="output folder (one run only)")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.add_argument("--checkpoint", choices=("last", "best"), default="last",
                   help="which checkpoint of a run folder: last (checkpoint.pt, default) or best (best.pt, the best "
                        "robust validation; written into <run>/eval-best)")
    e.add_argument("--weights", metavar="FILE|ENUM|timm", help="evaluate these weights without a training run: a "
                   "state dict / timm / torchvision / robustness / RobustBench file (.pth, .pt, .safetensors), a "
                   "torchvision weights name, or 'timm'; needs --arch (sets model.weights)")
    e.add_argument("--arch", help="architecture of --weights: a torchvision name (resnet50) or timm:NAME")
    e.add_argument("--recipe", help="recipe for --weights (default: demo-std for --data demo or none, else imagenet-std)")
    e.add_argument("--skip-existing", action="store_true",
                   help="skip runs whose eval.json is newer than their checkpoint and was asked the same")
    e.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field for this evaluation, e.g. --set eval.eps=4/255")
    from fastadv.eval.suites_robustness import OPTIONAL_SUITES

    e.add_argument("--suite", action="append", choices=sorted(OPTIONAL_SUITES),
                   help="also run an optional suite (repeatable): " + "; ".join(f"{n}: {o}" for n, o in OPTIONAL_SUITES.items()))
    e.set_defaults(func=_eval)

    ALLOW_MIXED = ("report models evaluated with different eval.eps / steps / amp / subset / seed, under a warning "
                   "at the top (default: refused)")
    inputs_help = ("eval dirs, run dirs (using <run>/eval), prediction CSVs (one per model, ImageNet-X format) "
                   "or folders of them, in table order")
    r = sub.add_parser("report", help="tables and figures from saved predictions (no model, no GPU)",
                       description="Build report.md, report.html, metrics.json and figures from evaluated runs.")
    r.add_argument("evals", nargs="+", help=inputs_help)
    r.add_argument("--out", default="runs/report", help="report folder (default runs/report)")
    r.add_argument("--real", metavar="PATH", help="ReaL labels (real.json); default: as evaluated, else imagenet-x's copy")
    r.add_argument("--labels", metavar="CSV", help="file_name,true_class for CSVs without true_class "
                   "(default: the ImageNet val labels shipped in imagenet-x)")
    r.add_argument("--allow-mixed", action="store_true", help=ALLOW_MIXED)
    r.set_defaults(func=_report)

    mt = sub.add_parser("metrics", help="every metric and the report from saved predictions; headline JSON on stdout",
                        description="Recompute every metric (clean, ReaL, mCE, ImageNet-X, PGD, class-wise) and "
                                    "the report from predictions alone, and print the headline metrics as JSON.")
    mt.add_argument("--predictions", nargs="+", required=True, metavar="DIR", help=inputs_help)
    mt.add_argument("--out", default="runs/report", help="report folder (default runs/report)")
    mt.add_argument("--real", metavar="PATH", help="ReaL labels (real.json); default: as evaluated, else imagenet-x's copy")
    mt.add_argument("--labels", metavar="CSV", help="file_name,true_class for CSVs without true_class "
                    "(default: the ImageNet val labels shipped in imagenet-x)")
    mt.add_argument("--json", action="store_true", help="print the headline metrics as JSON instead of a table")
    mt.add_argument("--allow-mixed", action="store_true", help=ALLOW_MIXED)
    mt.set_defaults(func=_metrics)

    c = sub.add_parser("recipes", help="list the shipped recipes, each with its one-line description")
    c.set_defaults(func=_recipes)

    _add_data_parser(sub)
    return parser


# ------------------------------------------------------------------------------ fastadv data
def _write_ffcv(args: argparse.Namespace) -> None:
    from fastadv.data.ffcv_write import metadata_path, write_ffcv

    meta = write_ffcv(args.src, args.out, max_resolution=args.max_resolution, jpeg_quality=args.jpeg_quality,
                      compress_probability=args.compress_probability, write_mode=args.write_mode, workers=args.workers)
    print(f"{args.out}: {meta['num_samples']} images, {len(meta['classes'])} classes, "
          f"{len(meta['skipped'])} undecodable (stored as placeholders, skipped when loading); "
          f"metadata: {metadata_path(args.out)}")


def _add_data_parser(sub) -> None:
    d = sub.add_parser("data", help="dataset tools: write-ffcv", description="Dataset tools.")
    dsub = d.add_subparsers(dest="data_command", required=True)
    w = dsub.add_parser(
        "write-ffcv", help="write a class-folder split to an FFCV .beton",
        description="Write SRC (one split: <wnid>/*.JPEG class folders, labels in sorted wnid order) to the .beton OUT "
                    "and OUT.json, as in the FFCV ImageNet example. Then train with data.backend=ffcv and "
                    "data.ffcv_train / data.ffcv_val (default: <data.path>/train.beton and val.beton).")
    w.add_argument("src", help="split folder of class folders, e.g. /data/imagenet/train")
    w.add_argument("out", help="output .beton, e.g. /data/imagenet/train.beton")
    w.add_argument("--max-resolution", type=int, default=500, help="longest side stored, larger images are shrunk (default 500)")
    w.add_argument("--jpeg-quality", type=int, default=90, help="JPEG quality of compressed images (default 90)")
    w.add_argument("--compress-probability", type=float, default=0.5,
                   help="share of images stored as JPEG, the rest raw (write-mode proportion; default 0.5)")
    w.add_argument("--write-mode", default="proportion", choices=("proportion", "jpg", "raw", "smart"),
                   help="FFCV's image write mode (default proportion)")
    w.add_argument("--workers", type=int, default=0, help="writer processes (default: all cores)")
    w.set_defaults(func=_write_ffcv)


def main(argv: list[str] | None = None) -> int:
    from fastadv.runtime.stop_signals import STOP, Stopped

    logging.basicConfig(level=logging.WARNING, format="fastadv: %(levelname)s: %(message)s")
    args = parse_args(build_parser(), list(sys.argv[1:] if argv is None else argv))
    replaced = STOP.install()  # SIGTERM / SIGUSR1 stop like Ctrl-C (train: after saving a checkpoint)
    try:
        args.func(args)
    except FastadvError as exc:
        print(f"fastadv: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        hint = getattr(args, "interrupt_hint", None)
        what = "interrupted"
        if isinstance(exc, Stopped):
            what = f"stopped by {exc.name}" + (f" (checkpoint saved at step {exc.saved_step})"
                                               if exc.saved_step is not None else "")
        print(f"fastadv: {what}" + (f"; {hint()}" if hint else ""), file=sys.stderr)
        return 128 + exc.signum if isinstance(exc, Stopped) else 130
    finally:
        STOP.restore(replaced)
    return 0


if __name__ == "__main__":
    sys.exit(main())
