"""Held-out evaluation under the field's protocol (docs/tasks.md): greedy block decoding, fixed block
length, steps = length x steps_per_length, accuracy from the task's own scorer.

A task whose target is a distribution (``Task.measure_policy``: Ising/Potts) is measured instead:
its own exact sampler draws ``eval_samples`` configurations and the result's ``metric`` is the
task's ``heldout_metric`` (ESS), with accuracy NaN."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from ddrl.config import EvalConfig
from ddrl.generation import generate
from ddrl.models.base import MaskedDiffusionPolicy
from ddrl.samplers.block import BlockSampler, BlockSamplerConfig
from ddrl.tasks.base import Task
from ddrl.training.seeding import derive_seed


@dataclass
class EvalResult:
    """Scores of one (policy, task, length, seed) evaluation."""

    accuracy: float  # NaN for a measured task
    metrics: dict[str, float]  # every metric of Task.score, averaged (or of Task.measure_policy)
    num_examples: int
    length: int
    block_length: int
    steps: int
    seed: int
    nfe: int  # forward passes for the whole split
    tokens_per_second: float
    seconds: float
    completions: list[str] = field(default_factory=list, repr=False)
    metric: str = "accuracy"  # the headline: accuracy, or a measured task's heldout_metric

    @property
    def value(self) -> float:
        """The headline number (``metrics[metric]``)."""
        return self.accuracy if self.metric == "accuracy" else self.metrics[self.metric]


def protocol_sampler(length: int, cfg: EvalConfig) -> BlockSampler:
    """The evaluation sampler: block length min(eval.block_length, L), steps = L x steps_per_length
    (rounded up to a multiple of the number of blocks), temperature eval.temperature (0: greedy)."""
    block = math.gcd(length, cfg.block_length) if length % cfg.block_length else cfg.block_length
    block = min(block, length)
    num_blocks = length // block
    steps = max(num_blocks, math.ceil(length * cfg.steps_per_length / num_blocks) * num_blocks)
    return BlockSampler(
        BlockSamplerConfig(max_completion_length=length, block_length=block, steps=steps, temperature=cfg.temperature)
    )


def evaluate(
    policy: MaskedDiffusionPolicy,
    task: Task,
    length: int,
    cfg: EvalConfig,
    seed: int = 0,
    on_batch: Callable[[int], None] | None = None,
) -> EvalResult:
    """Generate one completion per example of ``cfg.split`` and score it with ``task.score``
    (a measured task: ``measure_policy`` at its own length, see the module docstring)."""
    start = time.perf_counter()
    measured = _measure(policy, task, length, seed)
    if measured is not None:
        if on_batch is not None:
            on_batch(1)
        n = int(measured.get("num_samples", 0))
        seconds = time.perf_counter() - start
        return EvalResult(
            accuracy=math.nan, metrics=measured, num_examples=n, length=length, block_length=length,
            steps=length, seed=seed, nfe=int(measured.get("nfe", 0)), tokens_per_second=n * length / max(seconds, 1e-9),
            seconds=seconds, metric=task.heldout_metric,
        )
    examples = task.split(cfg.split)
    if cfg.num_examples is not None:
        examples = examples[: cfg.num_examples]
    if not examples:
        raise ValueError(f"task {task.config.name!r} split {cfg.split!r} is empty")
    sampler = protocol_sampler(length, cfg)
    prompts = [task.encode(ex, policy) for ex in examples]
    generator = torch.Generator(device=policy.device).manual_seed(derive_seed(seed, "eval"))
    out = generate(policy, sampler, prompts, batch_size=cfg.batch_size, generator=generator, on_batch=on_batch)
    completions = [task.decode(ids, policy) for ids in out.completion_ids]
    scores = [task.score(ex, c) for ex, c in zip(examples, completions)]
    keys = sorted({k for s in scores for k in s})
    means = {k: sum(s.get(k, 0.0) for s in scores) / len(scores) for k in keys}
    return EvalResult(
        accuracy=means["accuracy"],
        metrics=means,
        num_examples=len(examples),
        length=length,
        block_length=sampler.config.block_length,
        steps=sampler.config.steps,
        seed=seed,
        nfe=out.nfe,
        tokens_per_second=out.tokens_per_second,
        seconds=time.perf_counter() - start,
        completions=completions,
    )


def _measure(policy: MaskedDiffusionPolicy, task: Task, length: int, seed: int) -> dict[str, float] | None:
    """``task.measure_policy`` with the task's own sampler, after checking ``length`` (None for
    a task scored answer by answer)."""
    if not is_measured(type(task)):
        return None
    lengths = type(task).eval_lengths(task.config)
    if lengths and length not in lengths:
        raise ValueError(
            f"task {task.config.name!r} is measured at length {', '.join(map(str, lengths))} (its own "
            f"sampler draws whole configurations); got --length {length}"
        )
    return task.measure_policy(policy, None, derive_seed(seed, "eval"))


def is_measured(task_cls: type[Task]) -> bool:
    """Whether a task class measures the policy's distribution (overrides ``measure_policy``)."""
    return getattr(task_cls, "measure_policy", Task.measure_policy) is not Task.measure_policy
