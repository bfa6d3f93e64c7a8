"""``ddrl sample``: generate completions from a policy for given prompts or a task's prompts."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Optional

import torch
import typer
from rich.console import Console
from rich.markup import escape

from ddrl.cli.common import assemble_config, pick_device
from ddrl.config import ConfigError
from ddrl.generation import generate
from ddrl.registry import Registry, RegistryError


def sample(
    prompt: Optional[list[str]] = typer.Option(None, "--prompt", "-p", help="Prompt text (repeatable)."),
    task: Optional[str] = typer.Option(None, "--task", "-t", help="Take prompts from this task."),
    split: str = typer.Option("test", help="Task split to take prompts from."),
    num_prompts: int = typer.Option(4, "--num-prompts", "-n", min=1, help="Prompts taken from the task."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name (default: tiny)."),
    model_path: Optional[str] = typer.Option(None, "--model-path", help="A model directory to load."),
    sampler: Optional[str] = typer.Option(None, "--sampler", "-s", help="Sampler name (default: block)."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="A YAML recipe."),
    overrides: Optional[list[str]] = typer.Option(None, "--set", help="section.field=value (repeatable)."),
    seed: int = typer.Option(0, help="Seed of the sampler's random draws."),
    batch_size: int = typer.Option(16, min=1, help="Prompts per sampler call."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: cuda if available)."),
) -> None:
    """Generate completions and print them with NFE and tokens/s."""
    console = Console()
    registry = Registry()
    if not prompt and task is None:
        console.print("[red]give --prompt TEXT (repeatable) or --task NAME[/red]")
        raise typer.Exit(2)
    sections = ["model", "sampler"] + (["task"] if task else [])
    try:
        cfg = assemble_config(
            registry, config, {"model": model, "sampler": sampler, "task": task}, overrides or [], sections,
            extra={"model.path": model_path},
        )
        policy = registry.build("models", cfg.model).to(pick_device(device))
        smp = registry.build("samplers", cfg.sampler)
        texts: list = list(prompt or [])
        decode = None
        if task is not None:  # the task encodes its prompts (token-level tasks have no text) and decodes
            task_obj = registry.build("tasks", cfg.task)
            examples = task_obj.split(split)[:num_prompts]
            texts += [task_obj.format_prompt(ex) if policy.tokenizer is not None else task_obj.encode(ex, policy)
                      for ex in examples]
            decode = functools.partial(_decode, task_obj, policy)
    except (ConfigError, RegistryError, FileNotFoundError, ValueError) as err:
        console.print(f"[red]{escape(str(err))}[/red]")
        raise typer.Exit(2) from None
    out = generate(policy, smp, texts, batch_size=batch_size, generator=torch.Generator().manual_seed(seed), decode=decode)
    for text, completion in zip(out.prompts, out.completions):
        console.print(f"[dim]{escape(text)}[/dim]", highlight=False)
        console.print(f"[bold]{escape(completion)}[/bold]", highlight=False)
        console.print()
    console.print(
        f"{len(texts)} completions x {smp.completion_length} tokens | NFE {out.nfe} | "
        f"{out.tokens_per_second:.0f} tokens/s | {out.seconds:.2f} s"
    )


def _decode(task: Any, policy: Any, ids: list[int]) -> str:
    return str(task.decode(ids, policy))
