"""The `Task` interface: prompts, splits, template, answer parser, rewards and accuracy.

A task never sees tensors or policies beyond ``encode``: it turns examples into prompt text,
scores completion text, and names the reward functions (registered in ``ddrl.rewards``) that
training combines, TRL-style, with ``reward_weights``.
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import Field, model_validator

from ddrl.config import ComponentConfig, ComponentLookup, ConfigError

if TYPE_CHECKING:
    from ddrl.models.base import MaskedDiffusionPolicy
    from ddrl.rewards.base import RewardFn
    from ddrl.samplers.base import Sampler


@dataclass(frozen=True)
class Example:
    """One problem.

    Attributes:
        id: stable identifier within its split.
        question: the problem text, before any template.
        answer: the gold answer (as the task's scorer expects it).
        columns: extra fields handed to reward functions by name (e.g. ``numbers``, ``target``).
    """

    id: str
    question: str
    answer: Any
    columns: dict[str, Any] = field(default_factory=dict)


class TaskConfig(ComponentConfig):
    """Options every task shares (TRL's names for the reward fields)."""

    reward_funcs: list[str] | None = Field(None, description="registered reward names; null = the task's defaults")
    reward_weights: list[float] | None = Field(None, description="one weight per reward; null = all 1")
    seed: int = Field(0, description="seed of generated splits and of subsampling")
    num_train: int | None = Field(None, ge=1, description="cap on train examples; null = all")
    num_test: int | None = Field(None, ge=1, description="cap on test examples; null = all")

    @model_validator(mode="after")
    def _check_weights(self) -> TaskConfig:
        if self.reward_weights is not None and self.reward_funcs is not None:
            if len(self.reward_weights) != len(self.reward_funcs):
                raise ValueError(
                    f"reward_weights has {len(self.reward_weights)} entries for "
                    f"{len(self.reward_funcs)} reward_funcs"
                )
        return self


class Task(ABC):
    """A source of prompts and the judge of completions."""

    Config: ClassVar[type[TaskConfig]]
    default_rewards: ClassVar[tuple[str, ...]] = ()
    splits: ClassVar[tuple[str, ...]] = ("train", "test")
    heldout_metric: ClassVar[str] = "accuracy"  # the held-out number a run reports before/after

    def __init__(self, config: TaskConfig) -> None:
        self.config = config

    @classmethod
    def from_config(cls, config: TaskConfig) -> Task:
        return cls(config)

    @abstractmethod
    def load(self, split: str) -> list[Example]:
        """The examples of a split (deterministic given the config)."""

    @abstractmethod
    def format_prompt(self, example: Example) -> str:
        """The prompt text (system prompt and template applied; the policy adds its chat format)."""

    @abstractmethod
    def score(self, example: Example, completion: str) -> dict[str, float]:
        """Evaluation metrics of one completion; must include ``accuracy`` in [0, 1] (NaN for a
        task without right answers, e.g. sampling a Boltzmann distribution)."""

    def encode(self, example: Example, policy: MaskedDiffusionPolicy) -> list[int]:
        """Prompt token ids for ``policy`` (override for tasks without text prompts)."""
        return policy.encode_prompt(self.format_prompt(example))

    @classmethod
    def suggested_sections(cls, config: TaskConfig) -> dict[str, dict[str, Any]]:
        """Component sections the task needs to run, e.g. a token-only model over its values and
        a sampler of its length (``{section: {name: ..., options}}``; {} = none). ``ddrl train
        --task NAME`` applies them in place of the recipe's, except where a flag names another
        component; a recipe written for the task states them itself."""
        return {}

    def measure_policy(
        self, policy: MaskedDiffusionPolicy, sampler: Sampler | None, seed: int
    ) -> dict[str, float] | None:
        """Held-out metrics of the policy's whole distribution, for tasks whose target is a
        distribution rather than answers (energy models: ESS, log Z error, KL); the result holds
        ``heldout_metric``. ``sampler`` is the run's (training-time evaluation) or None (``ddrl
        eval``: the task's own). None (the default): evaluation decodes the test split and
        averages ``score``'s accuracy."""
        return None

    @classmethod
    def eval_lengths(cls, config: TaskConfig) -> list[int] | None:
        """Task-appropriate generation lengths for evaluation (None: eval.lengths, 128/256/512)."""
        return None

    def reference_completion(self, example: Example) -> str | None:
        """A correct completion for supervised training, when the task knows one (else None)."""
        return None

    def corrupt_completion(self, example: Example, rng: random.Random) -> str | None:
        """A well-formed but wrong completion (pretraining noise), when the task can make one."""
        return None

    def decode(self, completion_ids: list[int], policy: MaskedDiffusionPolicy) -> str:
        """Completion text for rewards and scoring (override for tasks without text)."""
        return policy.decode_completion(completion_ids)

    def reward_columns(self, example: Example) -> dict[str, Any]:
        """Fields passed to reward functions for this example."""
        return {"answer": example.answer, **example.columns}

    def reward_functions(self, registry: ComponentLookup, required: bool = True) -> list[tuple[str, RewardFn, float]]:
        """``(name, fn, weight)`` for each configured reward, resolved through the registry.

        ``required=False`` (supervised training) accepts a task without rewards.
        """
        names = self.config.reward_funcs or list(self.default_rewards)
        if not names and not required:
            return []
        if not names:
            raise ConfigError(f"task {self.config.name!r} has no reward functions; set task.reward_funcs")
        weights = self.config.reward_weights or [1.0] * len(names)
        if len(weights) != len(names):
            raise ConfigError(f"task.reward_weights has {len(weights)} entries for {len(names)} rewards")
        return [(n, registry.get("rewards", n), float(w)) for n, w in zip(names, weights)]

    def split(self, split: str) -> list[Example]:
        """``load`` with the split name checked and the configured cap applied."""
        if split not in self.splits:
            raise ConfigError(f"task {self.config.name!r} has no split {split!r}; splits: {', '.join(self.splits)}")
        examples = self.load(split)
        cap = self.config.num_train if split == "train" else self.config.num_test
        return examples[:cap] if cap is not None else examples
