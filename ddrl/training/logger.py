"""Metrics out of a run: one JSON line per optimizer step, TensorBoard events when installed."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any, Iterable

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
        """Drop records of steps after ``step`` (a resumed run recomputes them)."""
        if not self.enabled or not self.path.exists():
            return
        kept = [line for line in self.path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        self.path.write_text("".join(line + "\n" for line in kept))

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # JSON has no NaN/inf
    return value
