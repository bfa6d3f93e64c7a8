"""``ddrl lm-eval``: evaluate a ddrl policy with EleutherAI's lm-evaluation-harness (docs/lm-eval.md).

The harness is optional (``pip install 'ddrl[lm-eval]'``); it is imported only when the command runs.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

from ddrl.config import ConfigError
from ddrl.registry import RegistryError


def lm_eval_command(
    tasks: str = typer.Option(..., "--tasks", "-t", help="Comma-separated lm-eval task (or group) names."),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Model name (default: tiny)."),
    model_path: Optional[str] = typer.Option(None, "--model-path", help="A model directory or builtin:NAME."),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="A YAML recipe (model/sampler/estimator)."),
    sampler: Optional[str] = typer.Option(None, "--sampler", "-s", help="Sampler of generate_until tasks (default: block)."),
    estimator: Optional[str] = typer.Option(
        None, "--estimator", help="Likelihood estimator of loglikelihood tasks (default: elbo)."
    ),
    mc_num: Optional[int] = typer.Option(
        None, "--mc-num", min=1, help="Monte Carlo masks per loglikelihood request (default: 128)."
    ),
    greedy_check: str = typer.Option(
        "iterative", "--greedy-check", help="is_greedy of loglikelihood: iterative (LLaDA's), one_step or off."
    ),
    max_completion_length: Optional[int] = typer.Option(
        None, "--max-completion-length", min=1, help="Tokens generated per request (default: the task's max_gen_toks)."
    ),
    max_length: Optional[int] = typer.Option(None, "--max-length", min=2, help="Longest context + continuation."),
    include_path: Optional[list[Path]] = typer.Option(
        None, "--include-path", help="A directory of task YAMLs (repeatable)."
    ),
    num_fewshot: Optional[int] = typer.Option(None, "--num-fewshot", min=0, help="Few-shot examples."),
    limit: Optional[float] = typer.Option(None, "--limit", help="Documents per task (a fraction if < 1)."),
    batch_size: int = typer.Option(16, "--batch-size", min=1, help="Requests per forward pass / sampler call."),
    seed: int = typer.Option(0, help="Seed of the sampler's and the estimator's draws (and the harness's)."),
    device: Optional[str] = typer.Option(None, help="cpu, cuda, cuda:1 ... (default: cuda if available)."),
    apply_chat_template: bool = typer.Option(
        False, "--apply-chat-template", help="Let the harness render prompts with the tokenizer's chat template."
    ),
    gen_kwargs: Optional[str] = typer.Option(None, "--gen-kwargs", help="Harness generation args, k=v,k=v."),
    overrides: Optional[list[str]] = typer.Option(
        None, "--set", help="model./sampler./estimator.field=value (repeatable)."
    ),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write the results as JSON here."),
    log_samples: bool = typer.Option(False, "--log-samples", help="Keep per-document samples in --output."),
) -> None:
    """Run lm-evaluation-harness tasks on a ddrl policy (generate_until through a ddrl sampler,
    loglikelihood through the ELBO estimator)."""
    console = Console()
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
        from lm_eval.utils import make_table

        from ddrl.evaluation.lm_eval_adapter import DDRLLM
    except ImportError as err:
        console.print(f"[red]ddrl lm-eval needs lm-evaluation-harness: pip install 'ddrl[lm-eval]' ({escape(str(err))})[/red]")
        raise typer.Exit(2) from None
    names = [t.strip() for t in tasks.split(",") if t.strip()]
    try:
        lm = DDRLLM(
            model=model, model_path=model_path, config=str(config) if config else None, sampler=sampler,
            estimator=estimator, mc_num=mc_num, greedy_check=greedy_check,  # type: ignore[arg-type]
            max_completion_length=max_completion_length, max_length=max_length, batch_size=batch_size, seed=seed,
            device=device, overrides=overrides or [],
        )
        manager = TaskManager(include_path=[str(p) for p in include_path] if include_path else None)
        unknown = [n for n in names if n not in manager.all_tasks]
        if unknown:
            raise ValueError(f"unknown lm-eval task(s) {unknown}; give --include-path DIR for local task YAMLs")
    except (ConfigError, RegistryError, FileNotFoundError, ValueError) as err:
        console.print(f"[red]{escape(str(err))}[/red]")
        raise typer.Exit(2) from None
    try:
        results = lm_eval.simple_evaluate(
            model=lm, tasks=names, num_fewshot=num_fewshot, limit=_limit(limit), task_manager=manager,
            apply_chat_template=apply_chat_template, gen_kwargs=gen_kwargs, log_samples=log_samples,
            random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed, fewshot_random_seed=seed,
        )
    except NotImplementedError as err:  # loglikelihood_rolling tasks; a chat template the tokenizer lacks
        console.print(f"[red]{escape(str(err))}[/red]")
        raise typer.Exit(2) from None
    if results is None:  # a non-zero rank of a distributed run
        return
    console.print(make_table(results), markup=False, highlight=False, soft_wrap=True)
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        payload: dict[str, Any] = {k: results[k] for k in ("results", "versions", "n-shot", "configs") if k in results}
        if log_samples and "samples" in results:
            payload["samples"] = results["samples"]
        output.write_text(json.dumps(payload, indent=1, default=str) + "\n")
        console.print(f"results written to {output}", markup=False, highlight=False, soft_wrap=True)


def _limit(limit: float | None) -> int | float | None:
    if limit is None:
        return None
    return int(limit) if limit >= 1 else limit
