"""``ddrl pretrain``: masked-diffusion supervised training of a base model on a task's solutions.

It is ``ddrl train`` with the built-in recipe ``recipes/tiny/pretrain_<task>.yaml`` (objective
`sft`, which trains on the task's solutions): the same trainer, checkpoints, resume and metrics. The
shipped base checkpoints (``builtin:countdown``, ``builtin:sudoku``) were made this way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from ddrl.cli.common import assemble_config
from ddrl.config import ConfigError
from ddrl.registry import Registry, RegistryError
from ddrl.run import builtin_recipe, builtin_recipes
from ddrl.training.trainer import Trainer

_PRETRAIN_TASKS = [  # the shipped tiny/pretrain_<task>.yaml recipes (a directory listing: cheap)
    name[len("tiny/pretrain_"):-len(".yaml")] for name in builtin_recipes() if name.startswith("tiny/pretrain_")
]


def pretrain(
    task: str = typer.Option(
        "countdown", "--task", "-t", help=f"Task whose solutions to learn: picks the built-in recipe "
        f"tiny/pretrain_TASK.yaml (shipped for: {', '.join(_PRETRAIN_TASKS) or 'none'}).",
    ),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="A recipe (default: tiny/pretrain_<task>.yaml)."),
    overrides: Optional[list[str]] = typer.Option(None, "--set", help="section.field=value (repeatable)."),
    output_dir: Optional[str] = typer.Option(None, "--output-dir", help="Run directory (train.output_dir)."),
    export: Optional[Path] = typer.Option(None, "--export", help="Also copy the final model here (e.g. ddrl/assets/tiny/countdown)."),
) -> None:
    """Pretrain the tiny model on generated solutions (with noise, so the base stays imperfect)."""
    console = Console()
    registry = Registry()
    try:
        base = config if config is not None else builtin_recipe(f"tiny/pretrain_{task}.yaml")
        cfg = assemble_config(registry, base, {}, overrides or [], sections=None, extra={"train.output_dir": output_dir})
        result = Trainer(cfg, registry, console=console).train()
    except (ConfigError, RegistryError, FileNotFoundError, ValueError) as err:
        console.print(f"[red]{escape(str(err))}[/red]")
        raise typer.Exit(2) from None
    if export is not None:
        policy = registry.build("models", cfg.model.model_copy(update={"path": str(result.final_dir)}))
        policy.save_pretrained(export)
        console.print(f"exported the final model to {export}")
    if result.heldout_after is not None:
        console.print(f"held-out greedy accuracy of the pretrained model: {result.heldout_after:.3f}")
    console.print(f"done in {result.seconds / 60:.1f} min; final model in {result.final_dir}")
