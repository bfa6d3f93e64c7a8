"""``ddrl sample``: generate completions from a policy for given prompts or a task's prompts."""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Any, Optional

import torch
import typer
from rich.console import Console
from rich.markup import escape

from ddrl.cli.common import PLUGINS_HINT, assemble_config, pick_device
from ddrl.config import ConfigError
from ddrl.generation import generate
from ddrl.registry import Registry, RegistryError


def sample(
    prompt: Optional[list[str]] = typer.Option(None, "--prompt", "-p", help="Prompt text (repeatable)."),
    task: Optional[str] = typer.Option(None, "--task", "-t", help=f"Take prompts from this task ({PLUGINS_HINT})."),
    split: str = typer.Option("test", help="Task split to take prompts from."),
    num_prompts: int = typer.Option(4, "--num-prompts", "-n", min=1, help="Prompts taken from the task."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help=f"Model name (default: tiny; {PLUGINS_HINT})."),
    model_path: Optional[str] = typer.Option(None, "--model-path", help="A model directory to load."),
    sampler: Optional[str] = typer.Option(None, "--sampler", "-s", help=f"Sampler name (default: block; {PLUGINS_HINT})."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="A YAML recipe."),
    overrides: Optional[list[str]] = typer.Option(None, "--set", help="section.field=value (repeatable)."),
    seed: int = typer.Option(0, help="Seed of the sampler's random draws."),
    batch_size: int = typer.Option(16, min=1, help="Prompts per sampler call."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: cuda if available)."),
    trace: bool = typer.Option(
        False, "--trace", help="Show each sampler step (revealed positions, confidence): live on a terminal, "
        "else a per-step log; and write an HTML page (--trace-html).",
    ),
    trace_html: Optional[Path] = typer.Option(
        None, "--trace-html", help="Where --trace writes its HTML page (default: trace.html here; implies --trace).",
    ),
    trace_prompts: int = typer.Option(4, "--trace-prompts", min=1, help="How many prompts --trace follows (the first ones)."),
    trace_delay: float = typer.Option(0.0, "--trace-delay", min=0.0, help="Seconds to pause on each canvas of the live view."),
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
    tracing = trace or trace_html is not None
    run_sampler: Any = smp
    live = None
    if tracing:
        run_sampler, live = _tracer(console, policy, smp, texts, trace_prompts, trace_delay)
    try:
        out = generate(policy, run_sampler, texts, batch_size=batch_size, generator=torch.Generator().manual_seed(seed),
                       decode=decode)
    except (ConfigError, ValueError) as err:  # e.g. a text prompt for a token-only model
        console.print(f"[red]{escape(str(err))}[/red]")
        raise typer.Exit(2) from None
    finally:
        if live is not None:
            live.stop()
    if tracing:
        _report_trace(console, policy, run_sampler, live is not None, trace_html or Path("trace.html"))
    for text, completion in zip(out.prompts, out.completions):
        console.print(f"[dim]{escape(text)}[/dim]", highlight=False)
        console.print(f"[bold]{escape(completion)}[/bold]", highlight=False)
        console.print()
    console.print(
        f"{len(texts)} completions x {smp.completion_length} tokens | NFE {out.nfe} | "
        f"{out.tokens_per_second:.0f} tokens/s | {out.seconds:.2f} s"
    )


def _tracer(console: Console, policy: Any, smp: Any, texts: list, limit: int, delay: float) -> tuple[Any, Any]:
    """The traced sampler and, on a terminal, the rich ``Live`` view its canvases update."""
    from rich.console import Group
    from rich.live import Live

    from ddrl.samplers.trace import TracingSampler, _joiner, live_text, token_labels

    if not console.is_terminal:
        return TracingSampler(smp, limit=limit), None
    label, sep, mask_id = token_labels(policy), _joiner(policy), policy.mask_token_id
    shown = [t if isinstance(t, str) else " ".join(map(str, t)) for t in texts]
    views: dict[int, Any] = {}
    last: dict[int, list[int]] = {}
    live = Live(console=console, refresh_per_second=12, transient=False)
    live.start()

    def on_canvas(offset: int, canvases: torch.Tensor, step: int) -> None:
        for r, row in enumerate(canvases.tolist()):
            views[offset + r] = live_text(shown[offset + r], row, last.get(offset + r), mask_id, label, step + 1, sep)
            last[offset + r] = row
        live.update(Group(*(views[k] for k in sorted(views))), refresh=True)
        if delay > 0:
            time.sleep(delay)

    return TracingSampler(smp, limit=limit, on_canvas=on_canvas), live


def _report_trace(console: Console, policy: Any, traced: Any, was_live: bool, html_path: Path) -> None:
    """The per-step log (when no live view showed the steps) and the HTML page."""
    from ddrl.samplers.trace import _joiner, step_lines, token_labels, trace_html

    label, sep = token_labels(policy), _joiner(policy)
    if not was_live:
        for k, tr in enumerate(traced.traces):
            console.print(f"trace {k} | {tr.prompt} | {len(tr.completion_ids)} positions, {tr.num_steps} steps "
                          f"(from the sampler's {tr.source})", markup=False, highlight=False, soft_wrap=True)
            for line in step_lines(tr, label, sep):
                console.print("  " + line, markup=False, highlight=False, soft_wrap=True)
        console.print()
    html_path.parent.mkdir(parents=True, exist_ok=True)
    html_path.write_text(trace_html(traced.traces, label), encoding="utf-8")
    console.print(f"trace of {len(traced.traces)} prompt(s) written to {html_path}", markup=False, highlight=False,
                  soft_wrap=True)
    console.print()


def _decode(task: Any, policy: Any, ids: list[int]) -> str:
    return str(task.decode(ids, policy))
