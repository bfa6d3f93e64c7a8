"""End-to-end checks through ddrl's own CLI: listing, a short training run, shipped recipes."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import yaml

from ddrl.config import RunConfig, build_config, dump_yaml, load_recipe
from ddrl.registry import Registry
from ddrl.testing.conformance import ConformanceError


def _invoke(*args: str) -> str:
    from typer.testing import CliRunner

    from ddrl.cli.app import app

    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "250", "NO_COLOR": "1"})
    if result.exit_code != 0:
        raise ConformanceError(f"`ddrl {' '.join(args)}` exited with {result.exit_code}:\n{result.output}")
    return result.output


def check_listed(group: str, name: str, distribution: str, target: str | None = None) -> None:
    """``ddrl plugins`` lists the component with its distribution (and ``module:attr`` target), ok."""
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in _invoke("plugins", "--group", group).splitlines()]
    row = next((r for r in rows if len(r) == 5 and r[:2] == [group, name]), None)
    if row is None:
        raise ConformanceError(f"`ddrl plugins` does not list {group} {name!r}")
    if not row[2].startswith(distribution) or (target is not None and row[3] != target) or row[4] != "ok":
        raise ConformanceError(f"`ddrl plugins` lists {group} {name!r} as {row[2:]}, expected {distribution}, {target}, ok")


def train_briefly(workdir: Path, *flags: str, steps: int = 2) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """``ddrl train FLAGS --set train.max_steps=STEPS`` into ``workdir/run``: it must finish, log
    every step with a finite loss and write ``final/``. Returns the step metrics and config.yaml."""
    out = Path(workdir) / "run"
    _invoke("train", *flags, "--set", f"train.max_steps={steps}", "--output-dir", str(out))
    lines = (out / "metrics.jsonl").read_text().splitlines()
    metrics = [m for m in (json.loads(line) for line in lines) if "loss" in m]
    if [m["step"] for m in metrics] != list(range(1, steps + 1)):
        raise ConformanceError(f"logged steps {[m['step'] for m in metrics]}, expected 1..{steps}")
    bad = [m["step"] for m in metrics if not math.isfinite(m["loss"])]
    if bad:
        raise ConformanceError(f"non-finite loss at steps {bad}")
    if not (out / "final" / "model.safetensors").is_file():
        raise ConformanceError(f"no final policy in {out / 'final'}")
    return metrics, yaml.safe_load((out / "config.yaml").read_text())


PUBLISHED_TASKS = ("gsm8k", "math500", "countdown", "sudoku")


def recipes_by_task(directory: str | Path, prefix: str = "llada", tasks: tuple[str, ...] = PUBLISHED_TASKS) -> dict[str, Path]:
    """``{task: path}`` of a package's recipes ``<prefix>_<task>.yaml``: exactly one per task, no other."""
    found = {p.stem: p for p in sorted(Path(directory).glob("*.yaml"))}
    expected = {f"{prefix}_{t}" for t in tasks}
    if set(found) != expected:
        raise ConformanceError(f"{directory}: recipes {sorted(found)}, expected one per task: {sorted(expected)}")
    return {t: found[f"{prefix}_{t}"] for t in tasks}


COMMAND = re.compile(r"^#\s+ddrl (train|pretrain|sft)\b")


def check_recipe(path: str | Path, registry: Registry | None = None) -> RunConfig:
    """A shipped recipe: its header gives the command that runs it and an override example (two
    ``# ddrl train ...`` lines at least), it validates against the registered components, and it
    round-trips through YAML. Returns the validated config."""
    path = Path(path)
    header = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    if len([line for line in header if COMMAND.match(line)]) < 2:
        raise ConformanceError(f"{path}: the header must give the command that runs it and an override example")
    registry = registry or Registry()
    config = build_config(load_recipe(path), registry=registry)
    if build_config(yaml.safe_load(dump_yaml(config)), registry=registry) != config:
        raise ConformanceError(f"{path}: the recipe does not round-trip through YAML")
    return config
