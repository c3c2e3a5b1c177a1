"""Per-image prediction CSVs: the ImageNet-X format plus our label column.

Columns: ``file_name,predicted_class,predicted_probability,true_class``. The first three
are exactly what the `imagenet-x` package reads; ``true_class`` is optional when reading
so plain ImageNet-X files load too. A setting may add per-image columns after these (AutoAttack:
``robust`` 0/1 and ``broken_by``, the attack that broke the image); they are kept as text in
`Predictions.extra`.
"""

from __future__ import annotations

import csv
import os
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO

import numpy as np

from fastadv.errors import FastadvError
from fastadv.runtime.fileio import atomic_write

COLUMNS = ("file_name", "predicted_class", "predicted_probability", "true_class")
REQUIRED = COLUMNS[:3]
_EXAMPLES = 3  # how many offending values an error message quotes


@dataclass
class Predictions:
    file_names: list[str]
    predicted: np.ndarray  # int64 [N]
    probability: np.ndarray  # float64 [N]
    true: np.ndarray | None  # int64 [N], None when the CSV has no true_class column
    path: str
    extra: dict[str, list[str]] | None = None  # further columns, by name, as text

    def __len__(self) -> int:
        return len(self.file_names)


def write_predictions(
    path: str | os.PathLike,
    file_names: Sequence[str],
    predicted_class: Sequence[int] | np.ndarray,
    predicted_probability: Sequence[float] | np.ndarray,
    true_class: Sequence[int] | np.ndarray | None = None,
    extra: dict[str, Sequence] | None = None,
) -> None:
    """Write one prediction CSV atomically (parent folders are created); `extra` columns go last."""
    pred = np.asarray(predicted_class, dtype=np.int64).reshape(-1)
    prob = np.asarray(predicted_probability, dtype=np.float64).reshape(-1)
    columns = [list(file_names), pred, prob]
    if true_class is not None:
        columns.append(np.asarray(true_class, dtype=np.int64).reshape(-1))
    extra = dict(extra or {})
    if extra and true_class is None:
        raise ValueError("write_predictions: extra columns need the true_class column before them")
    lengths = {len(c) for c in columns} | {len(v) for v in extra.values()}
    if len(lengths) != 1:
        raise ValueError(f"write_predictions: columns differ in length: {[len(c) for c in columns]}")

    def write(f: IO) -> None:
        out = csv.writer(f, lineterminator="\n")
        out.writerow([*COLUMNS[: len(columns)], *extra])
        for i, name in enumerate(columns[0]):
            row = [name, int(pred[i]), repr(float(prob[i]))]  # repr: round-trips exactly
            if true_class is not None:
                row.append(int(columns[3][i]))
            out.writerow(row + [v[i] for v in extra.values()])

    atomic_write(path, write)


def _examples(items: list[str]) -> str:
    more = f", ... ({len(items) - _EXAMPLES} more)" if len(items) > _EXAMPLES else ""
    return ", ".join(items[:_EXAMPLES]) + more


def _parse_ids(path: str, column: str, values: list[str | None], high: int | None) -> np.ndarray:
    """Parse class ids of one column; reject non-integers and ids outside [0, high)."""
    ids = np.empty(len(values), dtype=np.int64)
    bad: list[str] = []
    for i, v in enumerate(values):
        try:
            ids[i] = int(v.strip())  # type: ignore[union-attr]
        except (AttributeError, ValueError):
            bad.append(f"line {i + 2}: {v!r}")
    valid = f"0..{high - 1}" if high is not None else "0 or more"
    if bad:
        raise FastadvError(
            f"{path}: column {column} has {len(bad)} non-integer value(s) ({_examples(bad)}). "
            f"Class ids must be integers in {valid}; regenerate the file with the evaluator."
        )
    out = (ids < 0) | (ids >= high) if high is not None else ids < 0
    if out.any():
        rows = [f"line {i + 2}: {ids[i]}" for i in np.flatnonzero(out)]
        raise FastadvError(
            f"{path}: column {column} has {len(rows)} class id(s) outside the valid range {valid} "
            f"({_examples(rows)}). Check that the file belongs to a model with that many classes."
        )
    return ids


def read_predictions(
    path: str | os.PathLike, num_classes: int | None = None, *, num_outputs: int | None = None
) -> Predictions:
    """Read and validate one prediction CSV.

    ``true_class`` must lie in [0, num_classes); ``predicted_class`` in [0, num_outputs),
    where num_outputs defaults to num_classes (a label-augmented model may predict one of
    its M extra classes, K + M outputs in all). ``None`` skips the upper bound.
    """
    path = str(path)
    if num_outputs is None:
        num_outputs = num_classes
    if not os.path.isfile(path):
        raise FastadvError(
            f"Predictions file not found: {path}. Run the evaluation that writes it, or fix the path."
        )
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames
            rows = list(reader)
    except UnicodeDecodeError as e:
        raise FastadvError(f"Predictions file {path} is not UTF-8 text (byte {e.start}); save it as UTF-8 CSV "
                           "or re-run the evaluation that writes it.") from None
    if not header or not rows:
        raise FastadvError(
            f"Predictions file {path} is empty (no {'rows' if header else 'header'}). "
            "Re-run the evaluation that writes it."
        )
    missing = [c for c in REQUIRED if c not in header]
    if missing:
        raise FastadvError(
            f"{path}: missing column(s) {', '.join(missing)}; found {', '.join(header)}. "
            f"Expected the header {','.join(COLUMNS)} (true_class optional)."
        )

    names = [(r["file_name"] or "").strip() for r in rows]
    if not all(names):
        blank = [f"line {i + 2}" for i, n in enumerate(names) if not n]
        raise FastadvError(f"{path}: {len(blank)} row(s) have an empty file_name ({_examples(blank)}).")
    dupes = [n for n, c in Counter(names).items() if c > 1]
    if dupes:
        raise FastadvError(
            f"{path}: {len(dupes)} duplicate file name(s) ({_examples(dupes)}). Each image must "
            "appear once; the file was probably appended to twice, so regenerate it."
        )

    predicted = _parse_ids(path, "predicted_class", [r["predicted_class"] for r in rows], num_outputs)
    true = None
    if "true_class" in header:
        true = _parse_ids(path, "true_class", [r["true_class"] for r in rows], num_classes)
    try:
        probability = np.array([float(r["predicted_probability"]) for r in rows], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise FastadvError(f"{path}: column predicted_probability holds a non-number ({e}).") from e
    extra = {c: [r[c] or "" for r in rows] for c in header if c not in COLUMNS}
    return Predictions(names, predicted, probability, true, path, extra or None)
