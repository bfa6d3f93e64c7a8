"""The `Objective` interface: a rollout batch in, a scalar loss and metrics out.

The trainer calls an objective in two phases per rollout batch:

1. ``prepare(rollout, ctx)`` once, without gradient: everything that must stay frozen while the
   batch is reused for ``num_iterations`` optimizer steps (importance weights, advantages, old and
   reference log-probs on pre-drawn views).
2. ``loss(rollout, prepared, ctx, iteration)`` at every optimizer step (and micro-batch): the
   differentiable loss under the current policy.

Objectives never import tasks, samplers or the trainer; they talk to models only through the
estimator and ``score_views``. Cross-process group statistics go through ``ctx.gather``.
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


@dataclass
class ObjectiveContext:
    """What an objective may use besides the batch.

    Attributes:
        policy: the policy being trained (gradients flow through it in ``loss``).
        old_policy: the policy that generated the rollouts (``None``: the current policy's
            parameters at ``prepare`` time are the old policy).
        ref_policy: the frozen reference (``None`` when the objective does not need one).
        estimator: the configured likelihood estimator.
        gather: all-gather along dim 0 over processes (identity on one process).
        generator: random source for masks drawn inside the objective.
    """

    policy: MaskedDiffusionPolicy
    estimator: LikelihoodEstimator
    old_policy: MaskedDiffusionPolicy | None = None
    ref_policy: MaskedDiffusionPolicy | None = None
    gather: Callable[[Tensor], Tensor] = _identity
    generator: torch.Generator | None = None


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
    * ``needs_reference``: whether a frozen reference policy is required.
    """

    Config: ClassVar[type[ObjectiveConfig]]
    needs_estimator: ClassVar[frozenset[str]] = frozenset()
    needs_sampler: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, config: ObjectiveConfig) -> None:
        self.config = config

    @classmethod
    def from_config(cls, config: ObjectiveConfig) -> Objective:
        return cls(config)

    @property
    def needs_reference(self) -> bool:
        return False

    @abstractmethod
    def prepare(self, rollout: RolloutBatch, ctx: ObjectiveContext) -> dict[str, Any]:
        """Frozen per-rollout-batch quantities (called under ``torch.no_grad()``)."""

    @abstractmethod
    def loss(
        self, rollout: RolloutBatch, prepared: dict[str, Any], ctx: ObjectiveContext, iteration: int
    ) -> ObjectiveOutput:
        """The differentiable loss at inner iteration ``iteration`` (0 .. num_iterations-1).

        ``rollout`` and ``prepared`` may be a micro-batch of the rows passed to ``prepare``
        (the trainer slices every tensor in ``prepared`` whose first dimension is B).
        """
