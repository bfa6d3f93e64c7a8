"""Held-out evaluation under the field's protocol (docs/tasks.md): greedy block decoding, fixed block
length, steps = length x steps_per_length, accuracy from the task's own scorer.

The sampler is `block` unless another is given: any registered sampler, built through the registry
from its section with the protocol's fields (``max_completion_length``, ``block_length``, ``steps``,
``temperature``) set from the length and ``eval`` wherever its Config has them
(``protocol_sampler``). A length that cannot fit the model (longest prompt + length > the model's
maximum sequence length) is refused before anything is generated (``check_lengths_fit``).

A task whose target is a distribution (``Task.measure_policy``: Ising/Potts) is measured instead:
its own exact sampler draws ``eval_samples`` configurations and the result's ``metric`` is the
task's ``heldout_metric`` (ESS), with accuracy NaN."""

from __future__ import annotations

import functools

import math
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from pydantic import ValidationError

from ddrl.config import ComponentConfig, ConfigError, EvalConfig, format_validation_error
from ddrl.generation import generate
from ddrl.models.base import MaskedDiffusionPolicy, max_sequence_length
from ddrl.samplers.base import Sampler
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


PROTOCOL_FIELDS = ("max_completion_length", "block_length", "steps", "temperature")
"""The sampler fields the protocol sets from the length and ``eval`` (never from a sampler section)."""


def protocol_settings(length: int, cfg: EvalConfig) -> dict[str, Any]:
    """Block length min(eval.block_length, L) (the gcd when it does not divide L), steps =
    L x steps_per_length rounded up to a multiple of the number of blocks, temperature
    eval.temperature (0: greedy)."""
    block = math.gcd(length, cfg.block_length) if length % cfg.block_length else cfg.block_length
    block = min(block, length)
    num_blocks = length // block
    steps = max(num_blocks, math.ceil(length * cfg.steps_per_length / num_blocks) * num_blocks)
    return {"max_completion_length": length, "block_length": block, "steps": steps, "temperature": cfg.temperature}


def is_protocol_sampler(config_cls: type) -> bool:
    """Whether a sampler's Config takes the protocol's length, block length and steps (``block``,
    ``fast`` and plugins built like them): a run's own sampler of this kind is what ``ddrl eval`` uses."""
    fields = getattr(config_cls, "model_fields", {})
    return all(f in fields for f in ("max_completion_length", "block_length", "steps"))


def protocol_sampler_config(length: int, cfg: EvalConfig, section: Any = None, registry: Any = None) -> ComponentConfig:
    """The typed sampler Config for ``length``: ``section`` (a sampler section: a Config, a
    ``ComponentConfig`` or a dict with ``name``; None: `block`) with the protocol's fields set where the
    sampler's Config has them. Invalid options raise ``ConfigError`` naming the field."""
    if section is None:
        return BlockSamplerConfig(**protocol_settings(length, cfg))
    options = dict(section) if isinstance(section, dict) else section.model_dump()
    name = options.get("name", "block")
    if registry is None:
        from ddrl.registry import Registry

        registry = Registry()
    config_cls = getattr(registry.get("samplers", name), "Config", None)
    if config_cls is None:
        raise ConfigError(f"sampler {name!r} ({registry.origin('samplers', name)}) has no Config class")
    protocol = protocol_settings(length, cfg)
    options.update({k: v for k, v in protocol.items() if k in config_cls.model_fields})
    try:
        return config_cls.model_validate(options)
    except ValidationError as err:
        raise ConfigError(
            f"sampler {name!r} at length {length}: " + format_validation_error(err, config_cls, prefix="sampler", component=name)
        ) from None


def protocol_sampler(length: int, cfg: EvalConfig, section: Any = None, registry: Any = None) -> Sampler:
    """The evaluation sampler (``protocol_sampler_config``): `block` by default, otherwise the
    sampler ``section`` names, built through the registry."""
    if section is None:
        return BlockSampler(protocol_sampler_config(length, cfg))
    if registry is None:
        from ddrl.registry import Registry

        registry = Registry()
    return registry.build("samplers", protocol_sampler_config(length, cfg, section, registry))


def check_lengths_fit(
    policy: MaskedDiffusionPolicy, task: Task, lengths: list[int], cfg: EvalConfig, what: str = "",
    prompts: list[list[int]] | None = None,
) -> None:
    """Refuse (``ConfigError``) every length for which the longest prompt of the evaluated examples
    plus the length exceeds the model's maximum sequence length; the message names the lengths, the
    limit and the longest length that fits. Nothing to check for a measured task or a model that
    states no limit."""
    found = max_sequence_length(policy)
    limit = None if found is None else found[0]
    if limit is None or is_measured(type(task)) or not lengths:
        return
    if prompts is None:
        prompts = [task.encode(ex, policy) for ex in _examples(task, cfg)]
    longest = max((len(p) for p in prompts), default=0)
    too_long = [L for L in lengths if longest + L > limit]
    if not too_long:
        return
    fits = limit - longest
    listing = ", ".join(f"{L} ({longest} + {L} = {longest + L})" for L in too_long)
    raise ConfigError(
        f"{what + ': ' if what else ''}generation length {listing} does not fit the model's maximum sequence "
        f"length {limit} (longest prompt of {task.config.name!r} {cfg.split}: {longest} tokens); "
        + (f"the longest length that fits is {fits}: give --length or --set eval.lengths=[...]" if fits > 0
           else "no length fits")
    )


def _examples(task: Task, cfg: EvalConfig) -> list:
    examples = task.split(cfg.split)
    return examples[: cfg.num_examples] if cfg.num_examples is not None else examples


def evaluate(
    policy: MaskedDiffusionPolicy,
    task: Task,
    length: int,
    cfg: EvalConfig,
    seed: int = 0,
    on_batch: Callable[[int], None] | None = None,
    sampler: Sampler | None = None,
) -> EvalResult:
    """Generate one completion per example of ``cfg.split`` and score it with ``task.score``
    (a measured task: ``measure_policy`` at its own length, see the module docstring).

    ``sampler`` decodes (its completion length must be ``length``; ``protocol_sampler`` builds one
    for any registered sampler); None: the protocol's greedy `block` sampler."""
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
    examples = _examples(task, cfg)
    if not examples:
        raise ValueError(f"task {task.config.name!r} split {cfg.split!r} is empty")
    if sampler is None:
        sampler = protocol_sampler(length, cfg)
    elif sampler.completion_length != length:
        raise ValueError(f"the sampler generates {sampler.completion_length} tokens, not the length {length} evaluated")
    prompts = [task.encode(ex, policy) for ex in examples]
    check_lengths_fit(policy, task, [length], cfg, prompts=prompts)
    generator = torch.Generator(device=policy.device).manual_seed(derive_seed(seed, "eval"))
    out = generate(policy, sampler, prompts, batch_size=cfg.batch_size, generator=generator, on_batch=on_batch,
                   decode=functools.partial(task.decode, policy=policy))  # token-level tasks: no tokenizer needed
    completions = out.completions
    scores = [task.score(ex, c) for ex, c in zip(examples, completions)]
    keys = sorted({k for s in scores for k in s})
    means = {k: sum(s.get(k, 0.0) for s in scores) / len(scores) for k in keys}
    return EvalResult(
        accuracy=means["accuracy"],
        metrics=means,
        num_examples=len(examples),
        length=length,
        block_length=getattr(sampler.config, "block_length", None) or length,
        steps=getattr(sampler.config, "steps", None) or length,
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
