"""``ddrl train``: RL fine-tuning from a recipe, component flags and ``--set`` overrides."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from ddrl.cli.common import PLUGINS_HINT, assemble_config
from ddrl.config import ConfigError, resolve_config
from ddrl.registry import Registry, RegistryError
from ddrl.run import DEFAULT_RECIPE, builtin_recipe
from ddrl.training.distributed import LaunchError
from ddrl.training.run_dir import read_run_config
from ddrl.training.memory_plan import plan_run, render
from ddrl.training.trainer import CONFIG_FILE, OutOfMemory, Trainer

__all__ = ["DEFAULT_RECIPE", "builtin_recipe", "train"]  # the first two live in ddrl.run; kept here for callers


def train(
    config: Optional[Path] = typer.Option(
        None, "--config", "-c", help=f"A YAML recipe (default: the built-in {DEFAULT_RECIPE})."
    ),
    objective: Optional[str] = typer.Option(
        None, "--objective", "-o", help=f"Objective name ({PLUGINS_HINT}); brings its preferred estimator."
    ),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=f"Model name ({PLUGINS_HINT})."),
    model_path: Optional[str] = typer.Option(None, "--model-path", help="Start from this model directory."),
    task: Optional[str] = typer.Option(None, "--task", "-t", help=f"Task name ({PLUGINS_HINT})."),
    sampler: Optional[str] = typer.Option(None, "--sampler", "-s", help=f"Rollout sampler name ({PLUGINS_HINT})."),
    estimator: Optional[str] = typer.Option(
        None, "--estimator", "-e", help=f"Likelihood estimator name ({PLUGINS_HINT})."
    ),
    overrides: Optional[list[str]] = typer.Option(None, "--set", help="section.field=value (repeatable)."),
    output_dir: Optional[str] = typer.Option(
        None, "--output-dir",
        help="Run directory (train.output_dir; default: runs/MODEL-TASK-OBJECTIVE unless the recipe chose another).",
    ),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this directory."),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the resolved recipe's memory plan per process and exit (no weights loaded)."
    ),
) -> None:
    """Train a policy; with no options, DMPO on the built-in tiny Countdown model."""
    console = Console()
    registry = Registry()
    try:
        if resume is not None:
            base: Path | dict = read_run_config(resume, CONFIG_FILE)
            extra = {"train.output_dir": str(resume)}
        else:
            base = config if config is not None else builtin_recipe(DEFAULT_RECIPE)
            extra = {"train.output_dir": output_dir, "model.path": model_path}
        names = {"objective": objective, "model": model, "task": task, "sampler": sampler, "estimator": estimator}
        cfg = assemble_config(registry, base, names, overrides or [], sections=None, extra=extra)
        if dry_run:
            lines, heading = plan_run(resolve_config(cfg, registry), registry, os.environ)
            console.print(heading)
            typer.echo(render(lines))
            return
        result = Trainer(cfg, registry, resume=resume is not None, console=console).train()
    except (ConfigError, RegistryError, LaunchError, OutOfMemory, FileNotFoundError, ValueError) as err:
        console.print(f"[red]{escape(str(err))}[/red]")
        raise typer.Exit(2) from None
    if not result.is_main_process:
        return
    steps = [m for m in result.metrics if "reward" in m]
    last = steps[-1] if steps else {}
    console.print(
        f"done: {result.steps} steps in {result.seconds / 60:.1f} min | training reward "
        f"{last.get('reward', float('nan')):.3f} | outputs in {result.run_dir} "
        f"(final policy {result.final_dir}, metrics.jsonl, curves.png)"
    )
    if result.heldout_before is not None and result.heldout_after is not None:
        name = result.heldout_metric  # accuracy, or the task's own measure (ess for ising/potts)
        change = result.heldout_after - result.heldout_before
        console.print(
            f"held-out {name}: before {result.heldout_before:.3f} -> after {result.heldout_after:.3f} "
            + (f"({100 * change:+.1f} points)" if name == "accuracy" else f"({change:+.3f})")
        )
        typer.echo(
            f"result: {name}_before={result.heldout_before:.3f} {name}_after={result.heldout_after:.3f} "
            f"minutes={result.seconds / 60:.1f}"
        )
