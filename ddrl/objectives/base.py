"""The `Objective` interface: a rollout batch in, a scalar loss and metrics out.

The trainer calls an objective in phases per rollout batch (``num_iterations`` = mu)::

    for each chunk:  state_c = prepare(chunk, ctx)             # no grad, row-local (masks, old/ref log-probs)
    state, metrics = weigh(rollout, State.cat(state_c), ctx)    # no grad, group-level (weights, advantages)
    for it in range(mu):
        state = begin_iteration(rollout, state, ctx, it)        # no grad, optional
        for each chunk:  loss(chunk, state.index(chunk rows), ctx, it).backward()

Each objective declares its *state*: a small dataclass deriving from ``ddrl.rows.RowState``
whose fields are row-aligned (``[B, ...]`` tensors, ``MaskedViews``, lists of them), so that the
trainer joins and slices it exactly like the batch. Metrics travel beside it (``Weighed``).

A *chunk* is a micro-batch of ``per_device_train_batch_size`` rows with its own random generator
(``ctx.generator``), seeded from (seed, step, global chunk index): the same rows get the same
randomness whatever the number of processes, which is what makes a 2-process run reproduce a
1-process one. Group statistics go through ``ctx.groups`` (``ddrl.objectives.groups``) so a
prompt's group is normalised as a whole even when its completions live on several processes.

Objectives never import tasks, samplers or the trainer; they reach models only through the
estimator and ``score_views``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Generic, TypeVar

import torch
from torch import Tensor

from ddrl.batch import SequenceBatch
from ddrl.config import ComponentConfig
from ddrl.estimators.base import LikelihoodEstimator
from ddrl.models.base import MaskedDiffusionPolicy
from ddrl.objectives.groups import Groups
from ddrl.rows import RowState
from ddrl.samplers.base import SampleOutput

S = TypeVar("S", bound=RowState)


@dataclass
class RolloutBatch(RowState):
    """The completions of one rollout batch (or chunk) on this process.

    Attributes:
        batch: prompts + completions, ``B`` rows.
        rewards: ``[B]`` total reward per completion.
        group_ids: ``[B]`` long; rows with the same id are completions of the same prompt. Ids are
            global: equal across processes for the same prompt.
        sample: what the sampler recorded (unmasking order, per-token log-probs), if anything.
        reward_components: ``{name: [B]}`` each reward function's raw values.
        from_reference: ``[B]`` bool, rows drawn from the reference policy (a defensive share,
            ``Objective.reference_share``), or None when every row came from the current policy.

    ``index(rows)`` and ``RolloutBatch.cat(chunks)`` (``ddrl.rows.RowState``) cut and join every
    field, the sampler's record included.
    """

    batch: SequenceBatch
    rewards: Tensor
    group_ids: Tensor
    sample: SampleOutput | None = None
    reward_components: dict[str, Tensor] = field(default_factory=dict)
    from_reference: Tensor | None = None

    def __len__(self) -> int:
        return self.batch.batch_size

    @property
    def order(self) -> Tensor | None:
        """``[B, L]`` the order in which the sampler revealed the completion positions, if recorded."""
        return None if self.sample is None else self.sample.order


def _identity(t: Tensor) -> Tensor:
    return t


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
        loss_micro_batch_size: masked views per forward in the loss (``train.loss_micro_batch_size``);
            with it and ``backward``, a loss that is a sum over views runs the backward pass after
            each micro-batch, so one micro-batch's activations exist at a time.
        backward: runs the backward pass of a partial loss as the trainer would (None in ``prepare``,
            ``weigh`` and outside the trainer).
        sampler_records: what the run's sampler records (``Sampler.records``), for objectives that
            use a record when there is one (DMPO's ``log_ratio: auto``).
    """

    policy: MaskedDiffusionPolicy
    estimator: LikelihoodEstimator
    ref_policy: MaskedDiffusionPolicy | None = None
    gather: Callable[[Tensor], Tensor] = _identity
    process_index: int = 0
    generator: torch.Generator | None = None
    num_iterations: int = 1
    loss_micro_batch_size: int | None = None
    backward: Callable[[Tensor], None] | None = None
    sampler_records: frozenset[str] = frozenset()

    def counted(self, batch: SequenceBatch, up_to_eos: bool) -> SequenceBatch:
        """``batch`` with the completion positions that count: all of them, or (``up_to_eos``)
        those up to and including the first EOS of the policy's tokenizer."""
        return batch.up_to_eos(self.policy.eos_token_id) if up_to_eos else batch

    def groups(self, rollout: RolloutBatch, *values: Tensor) -> tuple[Groups, list[Tensor]]:
        """The rollout's group ids, rewards and completions gathered from every process (``Groups``),
        and each further ``[B, ...]`` tensor in ``values`` gathered the same way (rank-major)."""
        own = (rollout.group_ids, rollout.rewards, rollout.batch.completion_ids)
        gathered = [self.gather(t.contiguous()) for t in (*own, *values)]
        b = len(rollout)
        local = slice(self.process_index * b, (self.process_index + 1) * b)
        return Groups(gathered[0], gathered[1], gathered[2], local), gathered[3:]


@dataclass
class NoState(RowState):
    """The state of an objective that freezes nothing per rollout batch."""


@dataclass
class Weighed(Generic[S]):
    """What ``weigh`` returns: the state with its group-level entries, and metrics to log."""

    state: S
    metrics: dict[str, float] = field(default_factory=dict)


@dataclass
class ObjectiveOutput:
    """``loss`` is a scalar tensor with gradient; ``metrics`` are plain floats for logging.
    ``backward_done``: the objective already ran the backward pass of ``loss`` by parts through
    ``ctx.backward`` (``loss`` is then its detached value)."""

    loss: Tensor
    metrics: dict[str, float] = field(default_factory=dict)
    backward_done: bool = False


class ObjectiveConfig(ComponentConfig):
    """Options every objective shares."""


class Objective(ABC, Generic[S]):
    """Turns a rollout batch into a loss; ``S`` is the objective's state (a ``RowState``).

    Class attributes declare what the objective needs, so a run with an estimator or a sampler
    that cannot provide it fails at start-up with a clear message:

    * ``needs_estimator``: capabilities the estimator must provide (``LikelihoodEstimator.provides``).
    * ``needs_sampler``: what the sampler must record (``Sampler.records``).
    * ``needs_reference`` (property): whether a frozen reference policy is required.
    * ``supervised``: trains on the task's reference completions (SFT) instead of samples; the
      trainer takes its data from the task accordingly.
    """

    Config: ClassVar[type[ObjectiveConfig]]
    needs_estimator: ClassVar[frozenset[str]] = frozenset()
    preferred_estimator: ClassVar[str | None] = None  # used when a run names no estimator
    supervised: ClassVar[bool] = False

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

    @property
    def reference_share(self) -> float:
        """Share of each prompt's completions drawn from the reference policy instead of the current
        one (a defensive mixture proposal; ``ddrl.samplers.mixture``). 0: all from the current."""
        return 0.0

    def state_dict(self) -> dict[str, Tensor]:
        """What the objective carries from one rollout batch to the next (e.g. DMPO's replay pool),
        as flat CPU tensors: saved with every checkpoint, per process. None by default."""
        return {}

    def load_state_dict(self, tensors: dict[str, Tensor]) -> None:
        """Restore ``state_dict()`` on resume."""

    @abstractmethod
    def prepare(self, rollout: RolloutBatch, ctx: ObjectiveContext) -> S:
        """Row-local frozen quantities of one chunk (called under ``torch.no_grad()``)."""

    def weigh(self, rollout: RolloutBatch, state: S, ctx: ObjectiveContext) -> Weighed[S]:
        """Group-level quantities over the whole local batch (under ``torch.no_grad()``): the state
        completed (advantages, weights) and the metrics to log for this rollout batch."""
        return Weighed(state)

    def begin_iteration(self, rollout: RolloutBatch, state: S, ctx: ObjectiveContext, iteration: int) -> S:
        """Hook before each inner iteration (under ``torch.no_grad()``); return the state to use."""
        return state

    @abstractmethod
    def loss(self, rollout: RolloutBatch, state: S, ctx: ObjectiveContext, iteration: int) -> ObjectiveOutput:
        """The differentiable loss of one chunk at inner iteration ``iteration`` (0 .. mu-1)."""
