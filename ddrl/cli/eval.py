"""``ddrl eval``: policies x tasks x generation lengths x seeds, one append-only record each."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

import ddrl
from ddrl.cli.common import pick_device
from ddrl.config import ConfigError, EvalConfig, apply_overrides, build_config, parse_override
from ddrl.evaluation.evaluate import check_lengths_fit, evaluate, is_measured, is_protocol_sampler, protocol_sampler_config
from ddrl.evaluation.policies import PolicySpec, resolve_policy
from ddrl.evaluation.results import RecordKey, ResultStore, sampler_id, task_id
from ddrl.registry import Registry, RegistryError


def eval_command(
    policies: list[str] = typer.Argument(..., help="Run dirs, checkpoint dirs, model dirs, builtin:NAME or a model name."),
    task: Optional[list[str]] = typer.Option(None, "--task", "-t", help="Task (repeatable; default: the run's task)."),
    length: Optional[list[int]] = typer.Option(None, "--length", "-L", help="Generation lengths (repeatable; default: the run's eval.lengths)."),
    seed: Optional[list[int]] = typer.Option(None, "--seed", help="Seeds (repeatable; default: the run's eval.seeds)."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model type of model directories (default tiny)."),
    sampler: Optional[str] = typer.Option(
        None, "--sampler", help="Registered sampler that decodes (default: the run's own when it takes the protocol's "
        "length, block length and steps, as block and fast do; otherwise block)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="A recipe for eval/task/sampler options."),
    overrides: Optional[list[str]] = typer.Option(None, "--set", help="eval.field=value, task.field=value or sampler.field=value."),
    results: Optional[Path] = typer.Option(None, "--results", help="Results file (default: eval.results_file)."),
    redo: bool = typer.Option(False, "--redo", help="Evaluate again even where a record exists."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, ... (default: cuda if available)."),
) -> None:
    """Evaluate policies under the protocol (greedy unless eval.temperature says otherwise) with each
    run's own eval settings; one record per evaluation goes to a JSONL file."""
    console = Console()
    registry = Registry()
    overrides = list(overrides or [])
    try:
        recipe = _load(config)
        base = build_config(recipe, overrides)
        store = ResultStore(results or base.eval.results_file)
        done = set() if redo else store.keys()
        jobs = _plan(policies, task, length, seed, model, sampler, recipe, overrides, registry, console)
    except (ConfigError, RegistryError, FileNotFoundError, ValueError) as err:
        console.print(f"[red]{escape(str(err))}[/red]")
        raise typer.Exit(2) from None
    revision = _git_revision()
    hashes: dict[str, str] = {}
    built: dict[str, Any] = {}
    for job in jobs:
        try:
            if job.spec.location not in hashes:
                hashes[job.spec.location] = job.spec.weights_id()
            weights = hashes[job.spec.location]
            task_obj = registry.build("tasks", job.task)
            tid = task_id(job.task.name, job.task.model_dump(mode="json"))
            todo = [(L, s) for L in job.lengths for s in job.seeds
                    if _key(job, task_obj, tid, L, s, weights, registry) not in done]
            if todo and job.spec.location not in built:
                built.clear()  # one policy in memory at a time
                model_cfg = build_config({"model": job.spec.model}, registry=registry, sections=["model"]).model
                built[job.spec.location] = registry.build("models", model_cfg).to(pick_device(device)).eval()
            policy = built.get(job.spec.location)
            if todo:  # every length of the job checked before any of them runs
                check_lengths_fit(policy, task_obj, sorted({L for L, _ in todo}), job.eval, what=job.name)
        except (ConfigError, RegistryError, FileNotFoundError) as err:
            console.print(f"[red]{escape(str(err))}[/red]")
            raise typer.Exit(2) from None
        for L in job.lengths:
            for s in job.seeds:
                _run_one(console, store, done, job, policy, weights, task_obj, tid, L, s, revision, registry)
    console.print(f"records in {store.path}; `ddrl leaderboard --results {store.path}` prints the table")


@dataclass
class Job:
    """One policy on one task: its eval settings, lengths, seeds and sampler section."""

    name: str  # what the command line named
    spec: PolicySpec
    task: Any  # the typed task Config
    eval: EvalConfig
    lengths: list[int]
    seeds: list[int]
    sampler: dict[str, Any]  # the sampler section, protocol fields left out


def _sampler_of(job: Job, task_obj: Any, length: int, registry: Registry) -> tuple[Any, str, int]:
    """(sampler Config or None, sampler_id, steps) of one length; a measured task draws with its own
    sampler: none of ours, steps = length."""
    if is_measured(type(task_obj)):
        return None, "block", length
    sampler_cfg = protocol_sampler_config(length, job.eval, job.sampler, registry)
    return sampler_cfg, sampler_id(sampler_cfg), getattr(sampler_cfg, "steps", None) or length


def _key(job: Job, task_obj: Any, tid: str, length: int, seed: int, weights: str, registry: Registry) -> tuple:
    _, sid, steps = _sampler_of(job, task_obj, length, registry)
    return RecordKey(job.spec.location, tid, length, steps, seed, weights, sid).as_tuple()


def _run_one(console, store, done, job, policy, weights, task_obj, tid, length, seed, revision, registry) -> None:  # noqa: ANN001
    sampler_cfg, sid, steps = _sampler_of(job, task_obj, length, registry)
    measured = sampler_cfg is None
    key = RecordKey(job.spec.location, tid, length, steps, seed, weights, sid).as_tuple()
    spec = job.spec
    run = f" ({spec.run})" if spec.run else ""
    shown = "" if sid == "block" else f" [{sid}]"
    name = f"{spec.label} / {spec.objective or 'base'}{run} on {task_obj.config.name} L={length} seed={seed}{shown}"
    if key in done:
        console.print(f"[dim]skip (recorded): {escape(name)}, weights {weights}[/dim]")
        return
    n = len(task_obj.split(job.eval.split)[: job.eval.num_examples])
    with Progress(TextColumn(escape(name)), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console) as bar:
        progress = bar.add_task("eval", total=n)
        if measured:
            result = evaluate(policy, task_obj, length, job.eval, seed, on_batch=lambda k: bar.advance(progress, k))
        else:
            result = evaluate(policy, task_obj, length, job.eval, seed, on_batch=lambda k: bar.advance(progress, k),
                              sampler=registry.build("samplers", sampler_cfg))
    store.append(_record(spec, task_obj, tid, job.eval, result, revision, weights, sampler_cfg, sid))
    done.add(key)
    if result.metric == "accuracy":
        console.print(f"  accuracy {result.accuracy:.3f} | NFE {result.nfe} | {result.tokens_per_second:.0f} tok/s")
    else:
        rest = ", ".join(f"{k} {v:.4g}" for k, v in result.metrics.items() if k not in (result.metric, "nfe"))
        console.print(f"  {result.metric} {result.value:.4f} | NFE {result.nfe} | {rest}")


def _record(spec: PolicySpec, task_obj: Any, tid: str, eval_cfg: EvalConfig, result: Any, revision: str | None,
            weights: str, sampler_cfg: Any, sid: str) -> dict:
    task_cfg = task_obj.config.model_dump(mode="json")
    sampler_dump = None if sampler_cfg is None else sampler_cfg.model_dump(mode="json")
    return {
        "policy": spec.location, "weights": weights, "run": spec.run, "label": spec.label,
        "model": spec.model.get("name"), "objective": spec.objective,
        "task": task_obj.config.name, "task_variant": task_cfg.get("variant"), "task_id": tid,
        "split": eval_cfg.split, "length": result.length, "block_length": result.block_length,
        "steps": result.steps, "seed": result.seed, "num_examples": result.num_examples,
        "sampler_id": sid if sampler_cfg is not None else None, "sampler": sampler_dump,
        "accuracy": result.accuracy, "metric": result.metric, "value": result.value,
        "metrics": result.metrics, "nfe": result.nfe,
        "tokens_per_second": result.tokens_per_second, "wall_seconds": result.seconds,
        "config": {"model": spec.model, "task": task_cfg, "eval": eval_cfg.model_dump(mode="json"), "sampler": sampler_dump},
        "git_revision": revision, "ddrl_version": ddrl.__version__,
    }


def _plan(policies, tasks, lengths, seeds, model_name, sampler_name, recipe, overrides, registry, console) -> list[Job]:  # noqa: ANN001
    """Resolve every (policy, task) pair into a Job, checking every option before anything runs."""
    jobs = []
    for spec_text in policies:
        spec = resolve_policy(spec_text, model_name)
        run = spec.run_config or {}
        names = tasks or ([run["task"]["name"]] if run.get("task") else [])
        if not names:
            raise ConfigError(f"{spec_text}: give --task (a base model has no task of its own)")
        eval_cfg, lengths_given = _eval_config(run, recipe, overrides)
        section = _sampler_section(sampler_name, run, recipe, overrides, registry, console)
        for name in names:
            raw: dict[str, Any] = {"task": {"name": name}}
            if (run.get("task") or {}).get("name") == name:
                raw["task"] = dict(run["task"])  # the run's own task options
            recipe_task = recipe.get("task")
            if isinstance(recipe_task, dict) and recipe_task.get("name", name) == name:
                raw["task"] = {**raw["task"], **recipe_task}
            task_overrides = [o for o in overrides if o.startswith("task.")]
            cfg = build_config(raw, task_overrides, registry, sections=["task"])
            task_cls = registry.get("tasks", name)
            own_lengths = getattr(task_cls, "eval_lengths", lambda c: None)(cfg.task)
            chosen = list(lengths or [])
            if is_measured(task_cls) and own_lengths:
                asked = chosen or (eval_cfg.lengths if lengths_given == "flag" else [])
                if set(asked) - set(own_lengths):
                    raise ConfigError(
                        f"task {name!r} is measured at length {', '.join(map(str, own_lengths))} (its own sampler "
                        f"draws whole configurations); drop --length or give that one"
                    )
                chosen = chosen or list(own_lengths)
            elif not chosen:
                chosen = list(eval_cfg.lengths if lengths_given or not own_lengths else own_lengths)
            job = Job(spec_text, spec, cfg.task, eval_cfg, chosen, list(seeds or eval_cfg.seeds), section)
            if not is_measured(task_cls):
                for L in job.lengths:  # every sampler option checked at every length now
                    protocol_sampler_config(L, eval_cfg, section, registry)
            jobs.append(job)
    return jobs


def _eval_config(run: dict[str, Any], recipe: dict[str, Any], overrides: list[str]) -> tuple[EvalConfig, str | None]:
    """The run's eval section <- the recipe's <- ``--set eval.*``; and where eval.lengths came from:
    "flag" (--set or the recipe), "run" (the run set lengths other than the default) or None."""
    run_eval = dict(run.get("eval") or {})
    recipe_eval = dict(recipe.get("eval") or {}) if isinstance(recipe.get("eval"), dict) else {}
    eval_overrides = [o for o in overrides if o.startswith("eval.")]
    cfg = build_config({"eval": {**run_eval, **recipe_eval}}, eval_overrides).eval
    if "lengths" in recipe_eval or any(parse_override(o)[0] == ["eval", "lengths"] for o in eval_overrides):
        return cfg, "flag"
    if "lengths" in run_eval and list(run_eval["lengths"]) != EvalConfig().lengths:
        return cfg, "run"
    return cfg, None


PROTOCOL_HINTS = {
    "max_completion_length": "--length or eval.lengths",
    "block_length": "eval.block_length",
    "steps": "eval.steps_per_length",
    "temperature": "eval.temperature",
}


def _sampler_section(name, run, recipe, overrides, registry, console) -> dict[str, Any]:  # noqa: ANN001
    """The sampler that decodes: ``--sampler`` (with the recipe's or run's options for that sampler),
    else the recipe's sampler section, else the run's when it takes the protocol's fields, else
    `block`; then ``--set sampler.*``. The protocol's own fields are dropped (they come from eval)."""
    sampler_overrides = [o for o in overrides if o.startswith("sampler.")]
    for o in sampler_overrides:
        path, _ = parse_override(o)
        if path[1] in PROTOCOL_HINTS:
            raise ConfigError(
                f"--set {o}: evaluation sets sampler.{path[1]} from the protocol; use {PROTOCOL_HINTS[path[1]]}"
            )
    sections = [_as_section(recipe.get("sampler")), _as_section(run.get("sampler"))]
    if name is None:
        name = next((o.split("=", 1)[1].strip() for o in sampler_overrides if o.split("=", 1)[0].strip() == "sampler.name"), None)
    if name is not None:
        registry.get("samplers", name)  # an unknown name is an error now, with suggestions
        chosen = next((dict(s) for s in sections if s and s.get("name") == name), {"name": name})
    elif sections[0]:
        chosen = dict(sections[0])
    elif sections[1] and _suits(sections[1]["name"], registry):
        chosen = dict(sections[1])
    else:
        if sections[1] and sections[1].get("name") != "block":
            console.print(f"[dim]the run's sampler {escape(repr(sections[1].get('name')))} does not take the "
                          "protocol's length, block length and steps: evaluating with block[/dim]")
        chosen = {"name": "block"}
    chosen = apply_overrides({"sampler": chosen}, sampler_overrides)["sampler"]
    return {k: v for k, v in chosen.items() if k not in PROTOCOL_HINTS}


def _as_section(value: Any) -> dict[str, Any] | None:
    if isinstance(value, str):
        return {"name": value}
    return dict(value) if isinstance(value, dict) and value.get("name") else None


def _suits(name: str, registry: Registry) -> bool:
    try:
        return is_protocol_sampler(getattr(registry.get("samplers", name), "Config", None))
    except RegistryError:
        return False


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
