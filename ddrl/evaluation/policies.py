"""Which policy an evaluation means: a run directory, a checkpoint, a model directory or a name."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from ddrl.config import ConfigError
from ddrl.training.checkpoint import latest_checkpoint


@dataclass
class PolicySpec:
    """How to build a policy to evaluate, and how to label its row."""

    model: dict[str, Any]  # the model section: {"name": ..., "path": ..., ...}
    objective: str | None  # the objective that trained it; None for a base model
    label: str  # the model part of the row label (what it started from)
    location: str  # where the weights were found (the run, checkpoint or model directory)
    run_config: dict[str, Any] | None = None
    run: str | None = None  # the run's name (its directory; ``run/step-000100`` for a checkpoint)

    def weights_id(self) -> str:
        """Content hash of the weights evaluated (``ddrl.evaluation.results.weights_id``): the files
        of the model directory, the shipped directory of ``builtin:NAME``, or the options of a
        model built fresh from them."""
        from ddrl.evaluation.results import weights_id

        path = self.model.get("path")
        if path is None:
            return weights_id(None, self.model)
        if str(path).startswith("builtin:"):
            from ddrl.models.tiny import resolve_builtin

            path = resolve_builtin(path)
        return weights_id(path)


def resolve_policy(spec: str, model_name: str | None = None) -> PolicySpec:
    """Resolve ``spec``:

    * a run directory (``config.yaml``): its final policy (or latest checkpoint), labelled with
      the run's starting model and objective;
    * a checkpoint directory (``policy/`` inside): that checkpoint of its run;
    * a model directory (``config.json``): a base model of type ``model_name`` (default tiny);
    * ``builtin:NAME``: a checkpoint shipped with ddrl; any other string: a registered model name
      built from its defaults.
    """
    path = Path(spec)
    if path.is_dir() and (path / "config.yaml").is_file():
        run = yaml.safe_load((path / "config.yaml").read_text())
        weights = path / "final"
        if not (weights / "config.json").is_file():
            ckpt = latest_checkpoint(path)
            if ckpt is None:
                raise ConfigError(f"run {path} has neither a final policy nor a checkpoint yet")
            weights = ckpt / "policy"
        return _from_run(run, weights, f"{path}", _name(path))
    if path.is_dir() and (path / "policy").is_dir():
        run_file = path.parent.parent / "config.yaml"
        run = yaml.safe_load(run_file.read_text()) if run_file.is_file() else None
        if run is not None:
            return _from_run(run, path / "policy", f"{path}", f"{_name(path.parent.parent)}/{path.name}")
        model = {"name": model_name or "tiny", "path": str(path / "policy")}
        return PolicySpec(model, None, model["name"], str(path.resolve()))
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise ConfigError(f"{path} is not a run, a checkpoint or a model directory (no config.yaml, policy/ or config.json)")
        model = {"name": model_name or "tiny", "path": str(path)}
        return PolicySpec(model, None, f"{model['name']}[{path.name}]", str(path.resolve()))
    if spec.startswith("builtin:"):
        model = {"name": model_name or "tiny", "path": spec}
        return PolicySpec(model, None, f"{model['name']}[{spec[len('builtin:'):]}]", spec)
    if "/" in spec or spec.startswith("."):
        raise ConfigError(f"{spec} does not exist")
    return PolicySpec({"name": spec}, None, f"{spec}[fresh]", f"fresh:{spec}")


def _name(path: Path) -> str:
    return path.resolve().name


def _from_run(run: dict[str, Any], weights: Path, location: str, name: str) -> PolicySpec:
    model = dict(run.get("model") or {"name": "tiny"})
    start = model.get("path")
    base = Path(start).name if start and not str(start).startswith("builtin:") else (start or "fresh")
    label = f"{model.get('name', 'tiny')}[{str(base).replace('builtin:', '')}]"
    model["path"] = str(weights)
    objective = (run.get("objective") or {}).get("name")
    return PolicySpec(model, objective, label, str(Path(location).resolve()), run, name)
