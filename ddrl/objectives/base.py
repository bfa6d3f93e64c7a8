"""The `Objective` interface: a rollout batch in, a scalar loss and metrics out.

The trainer calls an objective in phases per rollout batch (``num_iterations`` = mu)::

    for each chunk:  prepared_c = prepare(chunk, ctx)          # no grad, row-local (masks, old/ref log-probs)
    prepared = weigh(rollout, cat(prepared_c), ctx)             # no grad, group-level (weights, advantages)
    for it in range(mu):
        prepared = begin_iteration(rollout, prepared, ctx, it)  # no grad, optional
        for each chunk:  loss(chunk, prepared[chunk], ctx, it).backward()

A *chunk* is a micro-batch of ``per_device_train_batch_size`` rows with its own random generator
(``ctx.generator``), seeded from (seed, step, global chunk index): the same rows get the same
randomness whatever the number of processes, which is what makes a 2-process run reproduce a
1-process one. Group statistics go through ``ctx.gather`` so a prompt's group is normalised as a
whole even when its completions live on several processes.

Objectives never import tasks, samplers or the trainer; they reach models only through the
estimator and ``score_views``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor

from ddrl.batch import SequenceBatch
from ddrl.config import ComponentConfig
from ddrl.estimators.base import LikelihoodEstimator
from ddrl.models.base import MaskedDiffusionPolicy
from ddrl.samplers.base import SampleOutput


@dataclass
class RolloutBatch:
    """The completions of one rollout batch on this process.

    Attributes:
        batch: prompts + completions, ``B`` rows.
        rewards: ``[B]`` total reward per completion.
        group_ids: ``[B]`` long; rows with the same id are completions of the same prompt. Ids are
            global: equal across processes for the same prompt.
        sample: what the sampler recorded (unmasking order, per-token log-probs), if anything.
        reward_components: ``{name: [B]}`` each reward function's raw values.
    """

    batch: SequenceBatch
    rewards: Tensor
    group_ids: Tensor
    sample: SampleOutput | None = None
    reward_components: dict[str, Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.batch.batch_size

    def index(self, rows: Tensor | slice) -> RolloutBatch:
        """The sub-batch of the given rows (micro-batching); recorded trajectories follow."""
        sample = None
        if self.sample is not None:
            s = self.sample
            sample = SampleOutput(
                self.batch.index(rows),
                None if s.unmask_step is None else s.unmask_step[rows],
                None if s.token_logprobs is None else s.token_logprobs[rows],
                [lp[rows] for lp in s.scorer_logprobs],
                nfe=s.nfe,
                num_steps=s.num_steps,
            )
        return RolloutBatch(
            self.batch.index(rows),
            self.rewards[rows],
            self.group_ids[rows],
            sample,
            {k: v[rows] for k, v in self.reward_components.items()},
        )


def _identity(t: Tensor) -> Tensor:
    return t


def index_prepared(prepared: dict[str, Any], rows: slice) -> dict[str, Any]:
    """The rows of every entry of a prepared dict (tensors, row-indexable objects, lists of them);
    ``"metrics"`` and other entries without rows are passed through."""

    def take(value: Any) -> Any:
        if isinstance(value, Tensor):
            return value[rows] if value.dim() > 0 else value
        if isinstance(value, list):
            return [take(v) for v in value]
        if hasattr(value, "index") and not isinstance(value, (str, tuple, dict)):
            return value.index(rows)
        return value

    return {k: (v if k == "metrics" else take(v)) for k, v in prepared.items()}


def cat_prepared(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Concatenate the prepared dicts of consecutive chunks along their rows."""

    def join(values: list[Any]) -> Any:
        first = values[0]
        if isinstance(first, Tensor):
            return torch.cat(values) if first.dim() > 0 else first
        if isinstance(first, list):
            return [join([v[i] for v in values]) for i in range(len(first))]
        if hasattr(type(first), "cat"):
            return type(first).cat(values)
        return first

    return {k: join([p[k] for p in parts]) for k in parts[0]}


@dataclass
class ObjectiveContext:
    """What an objective may use besides the batch.

    Attributes:
        policy: the policy being trained (gradients flow through it in ``loss``; in ``prepare``
            it still holds the weights that generated the rollouts, i.e. it is the old policy).
        estimator: the configured likelihood estimator.
        ref_policy: the frozen reference (``None`` when the objective does not need one).
        gather: all-gather along dim 0 over processes, rank-major (identity on one process).
        process_index: this process's rank; its rows are ``[rank*B, (rank+1)*B)`` of a gather.
        generator: random source for masks drawn inside the objective (per chunk).
        num_iterations: mu, optimizer steps per rollout batch.
    """

    policy: MaskedDiffusionPolicy
    estimator: LikelihoodEstimator
    ref_policy: MaskedDiffusionPolicy | None = None
    gather: Callable[[Tensor], Tensor] = _identity
    process_index: int = 0
    generator: torch.Generator | None = None
    num_iterations: int = 1

    def gather_groups(self, *tensors: Tensor) -> tuple[list[Tensor], slice]:
        """All-gather ``[B]`` tensors; return them and the slice of this process's rows."""
        gathered = [self.gather(t.contiguous()) for t in tensors]
        b = tensors[0].shape[0]
        return gathered, slice(self.process_index * b, (self.process_index + 1) * b)


@dataclass
class ObjectiveOutput:
    """``loss`` is a scalar tensor with gradient; ``metrics`` are plain floats for logging."""

    loss: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


class ObjectiveConfig(ComponentConfig):
    """Options every objective shares."""


class Objective(ABC):
    """Turns a rollout batch into a loss.

    Class attributes declare what the objective needs, so a run with an estimator or a sampler
    that cannot provide it fails at start-up with a clear message:

    * ``needs_estimator``: capabilities the estimator must provide (``LikelihoodEstimator.provides``).
    * ``needs_sampler``: what the sampler must record (``Sampler.records``).
    * ``needs_reference`` (property): whether a frozen reference policy is required.
    """

    Config: ClassVar[type[ObjectiveConfig]]
    needs_estimator: ClassVar[frozenset[str]] = frozenset()
    preferred_estimator: ClassVar[str | None] = None  # used when a run names no estimator
    supervised: ClassVar[bool] = False  # trains on the task's reference completions, not samples

    def __init__(self, config: ObjectiveConfig) -> None:
        self.config = config

    @classmethod
    def from_config(cls, config: ObjectiveConfig) -> Objective:
        return cls(config)

    @property
    def needs_reference(self) -> bool:
        return False

    @property
    def needs_sampler(self) -> frozenset[str]:
        return frozenset()

    def rollout_scorers(self, ctx: ObjectiveContext) -> list[MaskedDiffusionPolicy]:
        """Policies the sampler should score along its path (e.g. the reference)."""
        return []

    @abstractmethod
    def prepare(self, rollout: RolloutBatch, ctx: ObjectiveContext) -> dict[str, Any]:
        """Row-local frozen quantities of one chunk (called under ``torch.no_grad()``).

        Every value must have the chunk's rows on its first dimension (tensors, or objects with
        ``index``/``cat``) so that the trainer can concatenate chunks and slice them again.
        """

    def weigh(self, rollout: RolloutBatch, prepared: dict[str, Any], ctx: ObjectiveContext) -> dict[str, Any]:
        """Group-level quantities over the whole local batch (under ``torch.no_grad()``).

        Return ``prepared`` updated; a ``"metrics"`` entry (``dict[str, float]``) is logged.
        """
        return prepared

    def begin_iteration(
        self, rollout: RolloutBatch, prepared: dict[str, Any], ctx: ObjectiveContext, iteration: int
    ) -> dict[str, Any]:
        """Hook before each inner iteration (under ``torch.no_grad()``); return ``prepared``."""
        return prepared

    @abstractmethod
    def loss(
        self, rollout: RolloutBatch, prepared: dict[str, Any], ctx: ObjectiveContext, iteration: int
    ) -> ObjectiveOutput:
        """The differentiable loss of one chunk at inner iteration ``iteration`` (0 .. mu-1)."""
