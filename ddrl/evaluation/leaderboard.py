"""The paper-style table from evaluation records (docs/tasks.md, evaluation protocol).

Rows are model x objective, columns are task x generation length, cells are mean ± std of the
accuracy over seeds (in %), the best cell of each column is marked. The step convention is part of
the column: d1's steps = length/2 and DMPO's steps = length never share a column unmarked. A
measured task's column names its metric (``ising L=16 s=L ess``) and shows the raw value. A sampler
other than the protocol's `block` is part of the column too (``countdown L=8 s=L fast``).

A row is one policy: the seeds of one run (or model directory) with the same weights. Records of
``ddrl eval`` name the run (``tiny[final] / dmpo (run-a)``), and two rows that would still read
alike, e.g. two runs of one name or a base model at two places, get the short hash of their
weights (``@1a2b3c4d``), so that different weights never merge into one row as if they were seeds.
"""

from __future__ import annotations

import csv
import io
import statistics
from dataclasses import dataclass
from typing import Any, Iterable


@dataclass
class Cell:
    mean: float
    std: float
    n: int
    percent: bool = True  # accuracy in %; a measured metric (ESS) as it is

    def text(self) -> str:
        if not self.percent:
            return f"{self.mean:.3f}" + (f" ± {self.std:.3f}" if self.n > 1 else "")
        return f"{100 * self.mean:.1f}" + (f" ± {100 * self.std:.1f}" if self.n > 1 else "")


@dataclass
class Leaderboard:
    rows: list[str]
    columns: list[str]
    cells: dict[tuple[str, str], Cell]
    best: dict[str, str]  # column -> best row

    def markdown(self) -> str:
        head = "| model | " + " | ".join(self.columns) + " |"
        rule = "|---|" + "---|" * len(self.columns)
        lines = [head, rule]
        for row in self.rows:
            cells = []
            for col in self.columns:
                cell = self.cells.get((row, col))
                text = cell.text() if cell else "–"
                cells.append(f"**{text}**" if cell and self.best.get(col) == row and len(self.rows) > 1 else text)
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["model", "column", "accuracy_mean", "accuracy_std", "seeds", "best"])
        for row in self.rows:
            for col in self.columns:
                cell = self.cells.get((row, col))
                if cell:
                    writer.writerow([row, col, f"{cell.mean:.6f}", f"{cell.std:.6f}", cell.n, int(self.best.get(col) == row)])
        return buf.getvalue()


def row_label(record: dict[str, Any]) -> str:
    """``model[start] / objective``, plus ``(run)`` when the record names its run."""
    text = f"{record.get('label') or record['model']} / {record.get('objective') or 'base'}"
    return f"{text} ({record['run']})" if record.get("run") else text


def row_key(record: dict[str, Any]) -> tuple[str, str]:
    """What makes records one row: its label and the weights evaluated (records without a hash, as
    written before it existed or by hand, by their location when they have one)."""
    return (row_label(record), record.get("weights") or record.get("policy") or "")


def _row_names(keys: Iterable[tuple[str, str]]) -> dict[tuple[str, str], str]:
    """The label of each row key, with a short weights hash where two keys share a label."""
    keys = sorted(set(keys))
    by_label: dict[str, list[tuple[str, str]]] = {}
    for k in keys:
        by_label.setdefault(k[0], []).append(k)
    names = {}
    for label, same in by_label.items():
        for k in same:
            names[k] = label if len(same) == 1 else f"{label} @{_short(k[1])}"
    if len(set(names.values())) < len(names):  # hashes too short to tell apart: number them
        for label, same in by_label.items():
            if len(same) > 1:
                for i, k in enumerate(same, 1):
                    names[k] = f"{label} #{i} @{_short(k[1])}"
    return names


def _short(ident: str) -> str:
    """8 hex digits of a weights hash; the last part of a location (records without a hash)."""
    if ident.startswith("sha256:"):
        return ident.split(":", 1)[1][:8]
    return ident.rstrip("/").rsplit("/", 1)[-1] or "?"


def column_label(record: dict[str, Any]) -> str:
    steps = record["steps"]
    convention = "s=L" if steps == record["length"] else ("s=L/2" if 2 * steps == record["length"] else f"s={steps}")
    variant = record.get("task_variant")
    task = record["task"] + (f"[{variant}]" if variant else "")
    metric = record.get("metric", "accuracy")
    sampler = record.get("sampler_id") or "block"
    return (f"{task} L={record['length']} {convention}" + ("" if sampler == "block" else f" {sampler}")
            + ("" if metric == "accuracy" else f" {metric}"))


def record_value(record: dict[str, Any]) -> float:
    """The record's headline: accuracy, or its measured metric (``metric``/``value``)."""
    return float(record["accuracy"] if record.get("metric", "accuracy") == "accuracy" else record["value"])


def build_leaderboard(records: Iterable[dict[str, Any]]) -> Leaderboard:
    """Aggregate records (one per seed) into the table."""
    by_key: dict[tuple[tuple[str, str], str], list[float]] = {}
    measured: set[str] = set()
    for r in records:
        by_key.setdefault((row_key(r), column_label(r)), []).append(record_value(r))
        if r.get("metric", "accuracy") != "accuracy":
            measured.add(column_label(r))
    names = _row_names(k[0] for k in by_key)
    groups = {(names[row], col): values for (row, col), values in by_key.items()}
    rows = sorted({k[0] for k in groups})
    columns = sorted({k[1] for k in groups}, key=_column_order)
    cells = {
        k: Cell(statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v), k[1] not in measured)
        for k, v in groups.items()
    }
    best = {}
    for col in columns:
        present = [(cells[(r, col)].mean, r) for r in rows if (r, col) in cells]
        if present:
            best[col] = max(present)[1]
    return Leaderboard(rows, columns, cells, best)


def _column_order(label: str) -> tuple:
    words = label.split(" ")
    at = next(i for i, w in enumerate(words) if w.startswith("L="))
    return (" ".join(words[:at]), int(words[at].split("=")[1]), " ".join(words[at + 1 :]))
