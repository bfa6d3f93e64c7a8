"""Metrics out of a run: one JSON line per optimizer step, always, and the experiment trackers of
``logging.report_to`` (tensorboard, wandb, mlflow, trackio) through accelerate's tracker classes."""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from ddrl.errors import ConfigError
from ddrl.training.run_dir import write_text_atomic

METRICS_FILE = "metrics.jsonl"
COMPLETIONS_FILE = "completions.jsonl"
COMPLETION_COLUMNS = ["step", "prompt", "completion", "reward", "accuracy"]
TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")  # report_to names beside "jsonl"
# what to install for each (mlflow-skinny is enough for a file, sqlite or server store)
TRACKER_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow-skinny", "trackio": "trackio"}


class MetricsLogger:
    """Append-only JSONL metrics (``RUN_DIR/metrics.jsonl``, every step) plus the trackers of
    ``report_to``, each an ``accelerate.tracking`` tracker started at the first record.

    Args:
        run_dir: the run directory.
        report_to: ``jsonl`` (always written anyway) and any of ``TRACKERS``.
        enabled: False on the processes other than the main one: nothing is written.
        run_name: the run's name in the trackers (default: ``run_dir``'s name).
        project: wandb/trackio project, MLflow experiment (default: $WANDB_PROJECT /
            $MLFLOW_EXPERIMENT_NAME where set, else ``"ddrl"``).
        logging_steps: trackers get the metrics of steps that are multiples of this (held-out
            evaluation records, ``eval_*``, always).
        log_completions: ``log_completions`` writes tables of sample completions.
        config: the run configuration, stored with each tracker's run.
    """

    def __init__(
        self,
        run_dir: Path,
        report_to: Iterable[str],
        enabled: bool = True,
        *,
        run_name: str | None = None,
        project: str | None = None,
        logging_steps: int = 1,
        log_completions: bool = False,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / METRICS_FILE
        self.completions_path = self.run_dir / COMPLETIONS_FILE
        self.enabled = enabled
        self.report_to = set(report_to)
        self.run_name = run_name or self.run_dir.resolve().name
        self.project = project
        self.logging_steps = max(1, int(logging_steps))
        self.log_completions_enabled = log_completions
        self.config = dict(config or {})
        self.trackers: list[Any] = []  # accelerate GeneralTracker instances, started lazily
        self._names = _available_trackers(self.report_to) if enabled else []
        self._started = False
        self._tabled: set[Any] = set()  # rollout batches whose completions are logged

    # ---------------------------------------------------------------------------------------------
    def log(self, step: int, metrics: dict[str, Any]) -> None:
        if not self.enabled:
            return
        record = {"step": step, **{k: _clean(v) for k, v in metrics.items()}}
        with self.path.open("a") as f:  # always written: resume and curves read it
            f.write(json.dumps(record) + "\n")
        if self._names and self._logging_step(step, metrics):
            values = _numbers(metrics)
            for tracker in self._start():
                tracker.log(values, step=step)

    def log_completions(self, step: int, key: Any, stats: Sequence[Any], rewards: Any) -> None:
        """A table of a rollout batch's completions (this process's rows), once per batch (``key``)
        at the first logging step that uses it: RUN_DIR/completions.jsonl, wandb and trackio
        tables, an MLflow table artifact (``completions/step_NNNNNN.json``), TensorBoard text.
        ``stats`` are the batch's ``ChunkStats`` in row order, ``rewards`` its ``[B]`` rewards."""
        if not (self.enabled and self.log_completions_enabled) or step % self.logging_steps or key in self._tabled:
            return
        self._tabled.add(key)
        rewards = rewards.tolist() if hasattr(rewards, "tolist") else list(rewards)
        rows = []
        for prompt, completion, reward, accuracy in zip(
            (p for s in stats for p in s.prompts), (c for s in stats for c in s.completions),
            rewards, (a for s in stats for a in s.accuracy),
        ):
            rows.append([step, prompt, completion, _clean(float(reward)), _clean(float(accuracy))])
        with self.completions_path.open("a") as f:
            f.write("".join(json.dumps(dict(zip(COMPLETION_COLUMNS, row))) + "\n" for row in rows))
        for tracker in self._start():
            _log_table(tracker, step, rows)

    def truncate_after(self, step: int) -> None:
        """Drop records of steps after ``step`` (a resumed run recomputes them); a torn last line
        (a process killed while writing it) goes too, with a warning naming the file."""
        if not self.enabled or not self.path.exists():
            return
        kept = [json.dumps(r) for r in _records(self.path) if r["step"] <= step]
        write_text_atomic(self.path, "".join(line + "\n" for line in kept))
        self._truncate_completions(step)

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.finish()
        self.trackers = []
        self._names = []  # a closed logger starts no tracker again

    # ---------------------------------------------------------------------------------------------
    def _logging_step(self, step: int, metrics: Mapping[str, Any]) -> bool:
        return step % self.logging_steps == 0 or any(k.startswith("eval_") for k in metrics)

    def _start(self) -> list[Any]:
        """The trackers, started (with the run configuration) on first use."""
        if not self._started:
            self._started = True
            for name in self._names:
                tracker = _make_tracker(name, self.run_dir, self.run_name, self.project)
                tracker.start()
                tracker.store_init_configuration(self.config if name in ("wandb", "trackio") else _flat(self.config))
                self.trackers.append(tracker)
        return self.trackers

    def _truncate_completions(self, step: int) -> None:
        if not self.completions_path.exists():
            return
        kept = []
        for line in self.completions_path.read_text().splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    kept.append(line + "\n")
            except (ValueError, KeyError, TypeError):
                continue  # a torn line of a killed run: its step is recomputed
        write_text_atomic(self.completions_path, "".join(kept))


def _available_trackers(report_to: set[str]) -> list[str]:
    """The trackers asked for, in a fixed order; a missing package is an error naming it, except
    tensorboard, which the default ``report_to`` names and the core install lacks (skipped)."""
    import accelerate.utils

    names = []
    for name in TRACKERS:
        if name not in report_to:
            continue
        available = getattr(accelerate.utils, f"is_{name}_available", None)
        if available is None:  # accelerate added trackio in 1.8
            raise ConfigError(f"logging.report_to {name!r} needs a newer accelerate: pip install -U accelerate")
        if available():
            names.append(name)
        elif name != "tensorboard":
            raise ConfigError(
                f"logging.report_to names {name!r}, which is not installed: pip install {TRACKER_PACKAGES[name]} "
                "(or pip install 'ddrl[trackers]'), or remove it from logging.report_to"
            )
    return names


def _make_tracker(name: str, run_dir: Path, run_name: str, project: str | None) -> Any:
    from accelerate import tracking

    if name == "tensorboard":  # RUN_DIR/tensorboard
        return tracking.TensorBoardTracker("tensorboard", str(run_dir))
    if name == "wandb":
        kwargs: dict[str, Any] = {"name": run_name}
        if not os.environ.get("WANDB_DIR"):
            kwargs["dir"] = str(run_dir)  # RUN_DIR/wandb
        return tracking.WandBTracker(project or os.environ.get("WANDB_PROJECT") or "ddrl", **kwargs)
    if name == "mlflow":  # the store is $MLFLOW_TRACKING_URI's (mlflow's default otherwise)
        return tracking.MLflowTracker(experiment_name=project or "ddrl", run_name=run_name)
    if name == "trackio":  # local ($TRACKIO_DIR) unless a space_id is configured in trackio's settings
        return tracking.TrackioTracker(project or "ddrl", name=run_name)
    raise ValueError(f"unknown tracker {name!r}")


def _log_table(tracker: Any, step: int, rows: list[list[Any]]) -> None:
    if tracker.name == "wandb":
        tracker.log_table("completions", columns=COMPLETION_COLUMNS, data=rows, step=step)
    elif tracker.name == "trackio":
        import trackio

        tracker.log({"completions": trackio.Table(columns=COMPLETION_COLUMNS, data=rows)}, step=step)
    elif tracker.name == "mlflow":
        import mlflow

        mlflow.log_table({c: [row[i] for row in rows] for i, c in enumerate(COMPLETION_COLUMNS)},
                         artifact_file=f"completions/step_{step:06d}.json")
    elif tracker.name == "tensorboard":  # no tables: a markdown one as text
        cells = [[str(v).replace("|", "\\|").replace("\n", " ") for v in row] for row in rows]
        lines = ["| " + " | ".join(COMPLETION_COLUMNS) + " |", "|" + "---|" * len(COMPLETION_COLUMNS)]
        tracker.log({"completions": "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells])}, step=step)


def _numbers(metrics: Mapping[str, Any]) -> dict[str, float | int]:
    """What trackers chart: numbers (booleans as 0/1); strings and the rest stay in the JSONL."""
    out: dict[str, float | int] = {}
    for key, value in metrics.items():
        if isinstance(value, bool):
            out[key] = int(value)
        elif isinstance(value, (int, float)):
            out[key] = value
    return out


def _flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"train": {"seed": 0}}`` -> ``{"train.seed": 0}``; lists and None as text (MLflow params
    and TensorBoard hparams take scalars only)."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flat(value, name + "."))
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = json.dumps(value) if value is not None else "null"
    return out


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
