"""The precision table (issue 27): robust metrics and speed of each train.precision policy over seeds.

    python -m bench.precision_table runs/precision --out bench/results/precision-<machine>.json

Reads every run folder under the given paths (as `make precision-table` writes them: one training of
demo-adv-plus per policy and seed, `<run>/eval` = fastadv eval (fp32, PGD-40 on the whole validation
set), `<run>/eval-aa` = pyautoattack on a per-class subset) and prints one row per policy: PGD-40 error
(K head), worst-class PGD-40 accuracy, class SD of PGD-40 accuracy, AutoAttack error (K head) and
the bench speed of the policy (`--bench`: a `python -m bench.run --policies ...` result, the Adv+
training step's images/sec of variant fastadv:<policy>), each as the mean over seeds with the seeds'
min-max (the speed: the bench's median with its repeats' min-max).

"Beyond seed noise" is judged per metric as: the policy's seed range and fp32's seed range do not
overlap (with 3 seeds each, a difference inside the spread of either is not called a difference);
with fewer than 2 seeds on either side it is not judged.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tomllib
from pathlib import Path
from typing import Any

from fastadv.analysis.scoring import model_metrics
from fastadv.runtime.hardware import detect_cpu

METRICS = (  # key, column title, lower is better
    ("pgd40_error", "PGD-40 err %", True),
    ("worst_class_pgd40_acc", "worst-class PGD-40 acc %", False),
    ("pgd40_class_sd", "class SD of PGD-40 acc %", True),
    ("autoattack_error", "AutoAttack err %", True),
    ("bench_img_s", "Adv+ step img/s (bench)", False),
)
REFERENCE = "fp32"


def run_policy(run: Path) -> str | None:
    """The policy a run trained in: train.jsonl's precision record (resolved), else config.toml's setting."""
    log = run / "train.jsonl"
    if log.is_file():
        for line in log.read_text().splitlines():
            record = json.loads(line)
            if record.get("event") == "precision":
                return record["policy"]
    return None


def bench_speeds(path: str | None, workload: str = "adv_plus_train_step") -> dict[str, dict[str, Any]]:
    """{policy: {"mean": median img/s, "min", "max"}} of `workload` from a bench.run result with --policies."""
    if not path:
        return {}
    rows = json.loads(Path(path).read_text())["results"]
    return {r["variant"].split(":", 1)[1]: {"mean": r["images_per_sec"], "min": r["images_per_sec_min_max"][0],
                                            "max": r["images_per_sec_min_max"][1], "values": []}
            for r in rows if r["workload"] == workload and r["variant"].startswith("fastadv:")}


def run_row(run: Path) -> dict[str, Any] | None:
    policy = run_policy(run)
    if policy is None or not (run / "eval" / "eval.json").is_file():
        return None
    settings = model_metrics(run / "eval")["settings"]
    pgd = settings["pgd40"]
    row = {"run": str(run), "policy": policy, "seed": _seed(run),
           "pgd40_error": 100 * pgd["error"], "worst_class_pgd40_acc": 100 * (1 - pgd["classwise"]["worst"]),
           "pgd40_class_sd": 100 * pgd["classwise"]["sd"], "autoattack_error": None,
           "autoattack_images": None}
    aa_dir = run / "eval-aa"
    if (aa_dir / "eval.json").is_file():
        # the K-head AutoAttack at PGD-40's eps (the table compares the two at one eps)
        aa = {k: v for k, v in model_metrics(aa_dir)["settings"].items()
              if k.startswith("autoattack") and v.get("head") == "k" and abs(v.get("eps", -1) - pgd["eps"]) < 1e-9}
        if aa:
            key = sorted(aa)[0]
            row["autoattack_error"], row["autoattack_images"] = 100 * aa[key]["error"], aa[key]["images"]
            row["autoattack_setting"] = aa[key].get("title", key)
    return row


def _seed(run: Path) -> int | None:
    """train.seed from the run's config.toml."""
    path = run / "config.toml"
    return tomllib.loads(path.read_text()).get("train", {}).get("seed") if path.is_file() else None


def summarize(rows: list[dict[str, Any]], speeds: dict[str, dict[str, Any]] | None = None) -> dict[str, dict[str, Any]]:
    by_policy: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        by_policy.setdefault(row["policy"], []).append(row)
    out: dict[str, dict[str, Any]] = {}
    for policy, runs in by_policy.items():
        entry: dict[str, Any] = {"seeds": sorted(r["seed"] for r in runs), "runs": len(runs)}
        for key, _, _ in METRICS[:-1]:
            values = [r[key] for r in runs if r[key] is not None]
            entry[key] = {"mean": statistics.fmean(values), "min": min(values), "max": max(values),
                          "values": values} if values else None
        entry["bench_img_s"] = (speeds or {}).get(policy)
        out[policy] = entry
    ref = out.get(REFERENCE)
    for policy, entry in out.items():
        entry["beyond_seed_noise"] = {}
        if ref is None or policy == REFERENCE or min(entry["runs"], ref["runs"]) < 2:
            continue  # one seed has no spread to judge against
        for key, _, _ in METRICS[:-1]:
            a, b = entry[key], ref[key]
            if a and b:
                entry["beyond_seed_noise"][key] = a["min"] > b["max"] or a["max"] < b["min"]
    return out


def markdown(summary: dict[str, dict[str, Any]], order: list[str]) -> str:
    head = "| policy | seeds | " + " | ".join(t for _, t, _ in METRICS) + " |"
    lines = [head, "|" + "---|" * (len(METRICS) + 2)]
    ref = summary.get(REFERENCE)
    for policy in order:
        e = summary[policy]
        cells = []
        for key, _, lower_is_better in METRICS:
            m = e[key]
            if m is None:
                cells.append("-")
                continue
            digits = 1 if key == "bench_img_s" else 2
            mark = ""
            if e["beyond_seed_noise"].get(key):  # outside fp32's seed range: say which way
                better = (m["mean"] < ref[key]["mean"]) == lower_is_better
                mark = " * better" if better else " * worse"
            cells.append(f"{m['mean']:.{digits}f} ({m['min']:.{digits}f}-{m['max']:.{digits}f}){mark}")
        lines.append(f"| {policy} | {','.join(map(str, e['seeds']))} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("paths", nargs="+", help="run folders, or folders holding them")
    p.add_argument("--bench", help="a bench.run result with --policies: the speed column")
    p.add_argument("--out", help="write the rows and the summary as JSON here")
    args = p.parse_args(argv)
    runs = sorted({r.parent for path in map(Path, args.paths)
                   for r in ([path / "train.jsonl"] if (path / "train.jsonl").is_file() else path.glob("*/train.jsonl"))})
    rows = [r for r in map(run_row, runs) if r is not None]
    if not rows:
        print(f"no evaluated runs under {' '.join(args.paths)}: run `make precision-table` first", file=sys.stderr)
        return 2
    summary = summarize(rows, bench_speeds(args.bench))
    order = sorted(summary, key=lambda name: (name != REFERENCE, name))
    table = markdown(summary, order)
    print(table)
    print("\nmean over seeds (min-max); * = outside fp32's seed range (beyond seed noise), better or worse than fp32; "
          "speed: the bench's "
          "median (min-max over its repeats)")
    if args.out:
        doc = {"machine": detect_cpu().to_dict(), "bench": args.bench, "rows": rows, "summary": summary,
               "markdown": table}
        Path(args.out).write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
