"""Append-only evaluation records: one JSON line per (weights, task, length, steps, seed, sampler).

A record names the weights it evaluated by a content hash (``weights``, ``weights_id``), so that
an evaluation is skipped only when these very weights were evaluated so (a run evaluated again
after more training is evaluated again). Records written before the hash existed still load; they
never match a new evaluation.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

CHUNK = 1 << 20
REQUIRED_FIELDS = ("length", "steps", "seed")  # plus task_id (or, in old records, task)


@dataclass(frozen=True)
class RecordKey:
    policy: str  # resolved location of the weights (or the model spec of a fresh model)
    task: str  # task name + hash of its resolved config
    length: int
    steps: int
    seed: int
    weights: str | None = None  # content hash of the evaluated weights; None in records written before it
    sampler: str = "block"  # sampler name (+ hash of its non-protocol settings, ``sampler_id``)

    def as_tuple(self) -> tuple:
        """What makes two evaluations the same: the weights' hash (a record without one is keyed by
        its location and so never matches a hashed one), task, length, steps, seed and sampler."""
        ident = ("weights", self.weights) if self.weights else ("location", self.policy)
        return (*ident, self.task, self.length, self.steps, self.seed, self.sampler)

    def slot(self) -> tuple:
        """Where the record sits in the table: location instead of weights, so that the latest
        evaluation of a run supersedes one of its earlier weights."""
        return (self.policy, self.task, self.length, self.steps, self.seed, self.sampler)


def weights_id(path: str | Path | None, spec: dict[str, Any] | None = None) -> str:
    """``sha256:<16 hex>`` over the files of a model directory (relative names and bytes, sorted; a
    single file is hashed alone), or, for a model built from its options alone (``path`` None, a
    fresh model), over the options ``spec``. Deterministic, and as cheap as reading the weights once."""
    digest = hashlib.sha256()
    if path is None:
        digest.update(b"spec:" + json.dumps(spec or {}, sort_keys=True).encode())
        return f"sha256:{digest.hexdigest()[:16]}"
    path = Path(path)
    files = [path] if path.is_file() else sorted(
        (f for f in path.rglob("*") if f.is_file() and not any(part.startswith(".") for part in f.relative_to(path).parts)),
        key=lambda f: f.relative_to(path).as_posix(),
    )
    if not files:
        raise FileNotFoundError(f"{path} holds no files to evaluate")
    for f in files:
        name = f.name if f == path else f.relative_to(path).as_posix()
        digest.update(f"file:{name}:{f.stat().st_size}\n".encode())
        with f.open("rb") as fh:
            while chunk := fh.read(CHUNK):
                digest.update(chunk)
    return f"sha256:{digest.hexdigest()[:16]}"


def task_id(name: str, config: dict[str, Any]) -> str:
    """``name@hash``: two configs of one task (e.g. d1 and toy variants) never share a column key."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]
    return f"{name}@{digest}"


def sampler_id(config: Any, defaults: Any = None) -> str:
    """The sampler's name, plus ``@hash`` of its settings other than the protocol's fields when they
    differ from its Config's defaults (``fast`` at its default threshold is ``fast``)."""
    from ddrl.evaluation.evaluate import PROTOCOL_FIELDS

    data = config if isinstance(config, dict) else config.model_dump(mode="json")
    own = {k: v for k, v in data.items() if k not in PROTOCOL_FIELDS and k != "name"}
    if defaults is None:
        try:
            defaults = type(config)().model_dump(mode="json")
        except Exception:  # noqa: BLE001 - a Config with required fields has no defaults to compare with
            defaults = {}
    base = {k: v for k, v in (defaults or {}).items() if k not in PROTOCOL_FIELDS and k != "name"}
    name = data.get("name", "block")
    if own == base:
        return name
    return f"{name}@{hashlib.sha256(json.dumps(own, sort_keys=True).encode()).hexdigest()[:8]}"


def record_key(record: dict[str, Any]) -> RecordKey:
    return RecordKey(
        record.get("policy") or record.get("label") or "", record.get("task_id") or record.get("task", ""),
        record["length"], record["steps"], record["seed"], record.get("weights"), record.get("sampler_id") or "block",
    )


class ResultStore:
    """The records of one results file; new records are appended, existing ones never rewritten."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        text = self.path.read_text()
        lines = text.splitlines()
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                if n == len(lines) and not text.endswith("\n"):  # a process killed while appending it
                    warnings.warn(f"{self.path}:{n}: torn last record skipped (the next `ddrl eval` redoes it)",
                                  stacklevel=2)
                    break
                raise ValueError(f"{self.path}:{n} is not a JSON record ({err})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{self.path}:{n} is a JSON {type(record).__name__}, not a record (an object)")
            lacking = [k for k in REQUIRED_FIELDS if k not in record]
            if "task_id" not in record and "task" not in record:
                lacking.insert(0, "task_id")
            if lacking:
                raise ValueError(
                    f"{self.path}:{n} lacks {', '.join(map(repr, lacking))}: every record of `ddrl eval` has them; "
                    "fix or delete that line (records are never rewritten)"
                )
            out.append(record)
        return out

    def keys(self) -> set[tuple]:
        """The evaluations already recorded (``RecordKey.as_tuple``)."""
        return {record_key(r).as_tuple() for r in self.load()}

    def append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **record}
        if self.path.exists():
            _drop_torn_tail(self.path)
        with self.path.open("a") as f:
            f.write(json.dumps(record, sort_keys=False) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def latest(self) -> list[dict[str, Any]]:
        """One record per (location, task, length, steps, seed, sampler): the last one written (a
        redo, or an evaluation of a run's newer weights, supersedes earlier ones)."""
        by_key: dict[tuple, dict[str, Any]] = {}
        for r in self.load():
            by_key[record_key(r).slot()] = r
        return list(by_key.values())


def filter_records(records: Iterable[dict[str, Any]], **equal: Any) -> list[dict[str, Any]]:
    return [r for r in records if all(r.get(k) == v for k, v in equal.items())]


def _drop_torn_tail(path: Path) -> None:
    """Cut a last line that has no newline (a killed append) so the next record starts a line."""
    with path.open("rb+") as f:
        data = f.read()
        if not data or data.endswith(b"\n"):
            return
        f.truncate(data.rfind(b"\n") + 1)
