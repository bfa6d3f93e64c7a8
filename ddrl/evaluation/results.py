"""Append-only evaluation records: one JSON line per (policy, task, length, steps, seed)."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable


@dataclass(frozen=True)
class RecordKey:
    policy: str  # resolved location of the weights (or the model spec of a fresh model)
    task: str  # task name + hash of its resolved config
    length: int
    steps: int
    seed: int

    def as_tuple(self) -> tuple:
        return (self.policy, self.task, self.length, self.steps, self.seed)


def task_id(name: str, config: dict[str, Any]) -> str:
    """``name@hash``: two configs of one task (e.g. d1 and toy variants) never share a column key."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:8]
    return f"{name}@{digest}"


def record_key(record: dict[str, Any]) -> RecordKey:
    return RecordKey(record["policy"], record["task_id"], record["length"], record["steps"], record["seed"])


class ResultStore:
    """The records of one results file; new records are appended, existing ones never rewritten."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def load(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        out = []
        for n, line in enumerate(self.path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{self.path}:{n} is not a JSON record ({err})") from None
        return out

    def keys(self) -> set[tuple]:
        return {record_key(r).as_tuple() for r in self.load()}

    def append(self, record: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **record}
        with self.path.open("a") as f:
            f.write(json.dumps(record, sort_keys=False) + "\n")

    def latest(self) -> list[dict[str, Any]]:
        """One record per key: the last one written (a redo supersedes earlier runs)."""
        by_key: dict[tuple, dict[str, Any]] = {}
        for r in self.load():
            by_key[record_key(r).as_tuple()] = r
        return list(by_key.values())


def filter_records(records: Iterable[dict[str, Any]], **equal: Any) -> list[dict[str, Any]]:
    return [r for r in records if all(r.get(k) == v for k, v in equal.items())]
