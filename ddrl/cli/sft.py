"""``ddrl sft``: the supervised stage before RL (LLaDA's masked-diffusion SFT recipe, docs/objectives.md).

It is ``ddrl train`` with objective `sft`, which trains on the task's reference completions: a
task whose generator knows its solutions (Countdown, Sudoku) or a file of prompt/response or chat
records (task `records`, ``--data``). The run's ``final/`` directory is a model directory: pass it to ``ddrl train
--model-path`` and it is both the starting policy and the reference (DMPO's SFT variant).

    ddrl sft                                             # tiny Countdown base -> clean solutions
    ddrl sft --model tiny --task countdown --set train.max_steps=2
    ddrl sft -c recipes/llada/sft_s1k.yaml --model-path /models/LLaDA-8B-Instruct --data s1k.jsonl
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

from ddrl.cli.common import PLUGINS_HINT, assemble_config
from ddrl.config import ConfigError
from ddrl.registry import Registry, RegistryError
from ddrl.run import builtin_recipe
from ddrl.training.distributed import LaunchError
from ddrl.training.run_dir import read_run_config
from ddrl.training.trainer import CONFIG_FILE, OutOfMemory, Trainer

DEFAULT_RECIPE = "tiny/sft_countdown.yaml"


def sft(
    config: Optional[Path] = typer.Option(
        None, "--config", "-c", help=f"A YAML recipe (default: the built-in {DEFAULT_RECIPE})."
    ),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=f"Model name ({PLUGINS_HINT})."),
    model_path: Optional[str] = typer.Option(None, "--model-path", help="Start from this model directory."),
    task: Optional[str] = typer.Option(
        None, "--task", "-t", help=f"A task whose examples carry reference solutions ({PLUGINS_HINT})."
    ),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="A local file/directory of records (task `records`)."),
    data_format: Optional[str] = typer.Option(None, "--data-format", help="records layout: auto, messages, prompt_response, s1k."),
    overrides: Optional[list[str]] = typer.Option(None, "--set", help="section.field=value (repeatable)."),
    output_dir: Optional[str] = typer.Option(
        None, "--output-dir",
        help="Run directory (train.output_dir; default: runs/MODEL-TASK-OBJECTIVE unless the recipe chose another).",
    ),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the run in this directory."),
) -> None:
    """Supervised fine-tuning (masked-diffusion SFT); its output starts `ddrl train`."""
    console = Console()
    registry = Registry()
    try:
        if data is not None and task not in (None, "records"):
            raise ConfigError(f"--data trains on a file of records (task `records`); drop --task {task}")
        if resume is not None:
            base: Path | dict = read_run_config(resume, CONFIG_FILE)
            extra: dict = {"train.output_dir": str(resume)}
        else:
            base = config if config is not None else builtin_recipe(DEFAULT_RECIPE)
            extra = {"train.output_dir": output_dir, "model.path": model_path}
        if data is not None:
            task = "records"
            extra.update({"task.data_path": data, "task.format": data_format})
        elif data_format is not None:
            extra["task.format"] = data_format
        names = {"objective": "sft", "model": model, "task": task}
        cfg = assemble_config(registry, base, names, overrides or [], sections=None, extra=extra)
        result = Trainer(cfg, registry, resume=resume is not None, console=console).train()
    except (ConfigError, RegistryError, LaunchError, OutOfMemory, FileNotFoundError, ValueError) as err:
        console.print(f"[red]{escape(str(err))}[/red]")
        raise typer.Exit(2) from None
    if not result.is_main_process:
        return
    console.print(
        f"done: {result.steps} steps in {result.seconds / 60:.1f} min | outputs in {result.run_dir} | "
        f"start RL from it: ddrl train --model {cfg.model.name} --model-path {result.final_dir}"
    )
    if result.heldout_before is not None and result.heldout_after is not None:
        console.print(
            f"held-out accuracy: before {result.heldout_before:.3f} -> after {result.heldout_after:.3f} "
            f"({100 * (result.heldout_after - result.heldout_before):+.1f} points)"
        )
        typer.echo(
            f"result: accuracy_before={result.heldout_before:.3f} accuracy_after={result.heldout_after:.3f} "
            f"minutes={result.seconds / 60:.1f}"
        )
