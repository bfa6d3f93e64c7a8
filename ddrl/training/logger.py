"""Metrics out of a run: one JSON line per optimizer step, TensorBoard events when installed."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, Iterable

from ddrl.training.run_dir import write_text_atomic

METRICS_FILE = "metrics.jsonl"


class MetricsLogger:
    """Append-only JSONL metrics (``RUN_DIR/metrics.jsonl``) plus optional TensorBoard."""

    def __init__(self, run_dir: Path, report_to: Iterable[str], enabled: bool = True) -> None:
        self.path = Path(run_dir) / METRICS_FILE
        self.enabled = enabled
        self.report_to = set(report_to)
        self._tb = None
        if enabled and "tensorboard" in self.report_to:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"))
            except ImportError:
                pass  # tensorboard is optional: JSONL is always written
        if enabled and "wandb" in self.report_to:
            warnings.warn("report_to wandb is not wired in this version; metrics go to metrics.jsonl", stacklevel=2)

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:  # always written: resume and curves read it
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "step":
                    self._tb.add_scalar(key, value, step)

    def truncate_after(self, step: int) -> None:
        """Drop records of steps after ``step`` (a resumed run recomputes them); a torn last line
        (a process killed while writing it) goes too, with a warning naming the file."""
        if not self.enabled or not self.path.exists():
            return
        kept = [json.dumps(r) for r in _records(self.path) if r["step"] <= step]
        write_text_atomic(self.path, "".join(line + "\n" for line in kept))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return _records(path)


class TornMetrics(ValueError):
    """A line of metrics.jsonl other than the last is not a JSON object."""


def _records(path: Path) -> list[dict[str, Any]]:
    """The records of a metrics file. A torn *last* line (a kill mid-write) is skipped with a
    warning; a bad line anywhere else is an error naming the file and line."""
    lines = [(i, line) for i, line in enumerate(path.read_text().splitlines(), 1) if line.strip()]
    records = []
    for n, (i, line) in enumerate(lines):
        try:
            record = json.loads(line)
            if not isinstance(record, dict) or "step" not in record:
                raise ValueError("not a record with a step")
        except ValueError as err:
            if n == len(lines) - 1:
                warnings.warn(f"{path}:{i}: torn last line skipped (a run killed while writing it; "
                              "`ddrl train --resume` rewrites it from the checkpoint)", stacklevel=3)
                break
            raise TornMetrics(f"{path}:{i} is not a metrics record ({err}); the file is damaged") from None
        records.append(record)
    return records


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    return value
