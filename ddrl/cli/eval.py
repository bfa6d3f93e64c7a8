"""``ddrl eval``: policies x tasks x generation lengths x seeds, one append-only record each."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import ddrl
from ddrl.cli.common import pick_device
from ddrl.config import ConfigError, EvalConfig, build_config
from ddrl.evaluation.evaluate import evaluate, is_measured
from ddrl.evaluation.policies import PolicySpec, resolve_policy
from ddrl.evaluation.results import RecordKey, ResultStore, task_id
from ddrl.registry import Registry, RegistryError


def eval_command(
    policies: list[str] = typer.Argument(..., help="Run dirs, checkpoint dirs, model dirs, builtin:NAME or a model name."),
    task: Optional[list[str]] = typer.Option(None, "--task", "-t", help="Task (repeatable; default: the run's task)."),
    length: Optional[list[int]] = typer.Option(None, "--length", "-L", help="Generation lengths (repeatable)."),
    seed: Optional[list[int]] = typer.Option(None, "--seed", help="Seeds (repeatable; default: eval.seeds)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model type of model directories (default tiny)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="A recipe for eval/task options."),
    overrides: Optional[list[str]] = typer.Option(None, "--set", help="eval.field=value or task.field=value."),
    results: Optional[Path] = typer.Option(None, "--results", help="Results file (default: eval.results_file)."),
    redo: bool = typer.Option(False, "--redo", help="Evaluate again even where a record exists."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, ... (default: cuda if available)."),
) -> None:
    """Evaluate policies with greedy decoding under the protocol; records go to a JSONL file."""
    console = Console()
    registry = Registry()
    try:
        base = build_config(_load(config), overrides or [])
        store = ResultStore(results or base.eval.results_file)
        done = set() if redo else store.keys()
        jobs = _plan(policies, task, length, seed, model, base, overrides or [], registry)
    except (ConfigError, RegistryError, FileNotFoundError, ValueError) as err:
        console.print(f"[red]{escape(str(err))}[/red]")
        raise typer.Exit(2) from None
    revision = _git_revision()
    for spec, task_cfg, eval_cfg, lengths, seeds in jobs:
        policy = registry.build("models", build_config({"model": spec.model}, registry=registry, sections=["model"]).model)
        policy = policy.to(pick_device(device)).eval()
        task_obj = registry.build("tasks", task_cfg)
        tid = task_id(task_cfg.name, task_cfg.model_dump(mode="json"))
        for L in lengths:
            for s in seeds:
                _run_one(console, store, done, spec, policy, task_obj, tid, eval_cfg, L, s, revision)
    console.print(f"records in {store.path}; `ddrl leaderboard --results {store.path}` prints the table")


def _run_one(console, store, done, spec, policy, task_obj, tid, eval_cfg, length, seed, revision) -> None:  # noqa: ANN001
    from ddrl.evaluation.evaluate import protocol_sampler

    steps = protocol_sampler(length, eval_cfg).config.steps
    key = RecordKey(spec.location, tid, length, steps, seed)
    name = f"{spec.label} / {spec.objective or 'base'} on {task_obj.config.name} L={length} seed={seed}"
    if key.as_tuple() in done:
        console.print(f"[dim]skip (recorded): {escape(name)}[/dim]")
        return
    n = len(task_obj.split(eval_cfg.split)[: eval_cfg.num_examples])
    with Progress(TextColumn(escape(name)), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console) as bar:
        job = bar.add_task("eval", total=n)
        result = evaluate(policy, task_obj, length, eval_cfg, seed, on_batch=lambda k: bar.advance(job, k))
    store.append(_record(spec, task_obj, tid, eval_cfg, result, revision))
    if result.metric == "accuracy":
        console.print(f"  accuracy {result.accuracy:.3f} | NFE {result.nfe} | {result.tokens_per_second:.0f} tok/s")
    else:
        rest = ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items() if k not in (result.metric, "nfe"))
        console.print(f"  {result.metric} {result.value:.4f} | NFE {result.nfe} | {rest}")


def _record(spec: PolicySpec, task_obj: Any, tid: str, eval_cfg: EvalConfig, result: Any, revision: str | None) -> dict:
    task_cfg = task_obj.config.model_dump(mode="json")
    return {
        "policy": spec.location, "label": spec.label, "model": spec.model.get("name"), "objective": spec.objective,
        "task": task_obj.config.name, "task_variant": task_cfg.get("variant"), "task_id": tid,
        "split": eval_cfg.split, "length": result.length, "block_length": result.block_length,
        "steps": result.steps, "seed": result.seed, "num_examples": result.num_examples,
        "accuracy": result.accuracy, "metric": result.metric, "value": result.value,
        "metrics": result.metrics, "nfe": result.nfe,
        "tokens_per_second": result.tokens_per_second, "wall_seconds": result.seconds,
        "config": {"model": spec.model, "task": task_cfg, "eval": eval_cfg.model_dump(mode="json")},
        "git_revision": revision, "ddrl_version": ddrl.__version__,
    }


def _plan(policies, tasks, lengths, seeds, model_name, base, overrides, registry):  # noqa: ANN001, ANN202
    jobs = []
    for spec_text in policies:
        spec = resolve_policy(spec_text, model_name)
        names = tasks or ([spec.run_config["task"]["name"]] if spec.run_config else [])
        if not names:
            raise ConfigError(f"{spec_text}: give --task (a base model has no task of its own)")
        for name in names:
            raw: dict[str, Any] = {"task": {"name": name}}
            if spec.run_config and spec.run_config.get("task", {}).get("name") == name:
                raw["task"] = dict(spec.run_config["task"])  # the run's own task options
            task_overrides = [o for o in overrides if o.startswith("task.")]
            cfg = build_config(raw, task_overrides, registry, sections=["task"])
            task_cls = registry.get("tasks", name)
            own_lengths = getattr(task_cls, "eval_lengths", lambda c: None)(cfg.task)
            default_lengths = own_lengths or base.eval.lengths
            if lengths and own_lengths and is_measured(task_cls) and set(lengths) - set(own_lengths):
                raise ConfigError(
                    f"task {name!r} is measured at length {', '.join(map(str, own_lengths))} (its own sampler "
                    f"draws whole configurations); drop --length or give that one"
                )
            jobs.append((spec, cfg.task, base.eval, list(lengths or default_lengths), list(seeds or base.eval.seeds)))
    return jobs


def _load(config: Path | None) -> dict:
    from ddrl.config import load_recipe

    return load_recipe(config) if config is not None else {}


def _git_revision() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(ddrl.__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None
