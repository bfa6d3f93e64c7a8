"""Tasks over raw token ids: prompts and completions are ids, not text (`pattern`, `synthetic`).

With a token-only `tiny` policy (``charset: null``, ``vocab_size = num_tokens + 1``) every completion
of such a task can be listed, so p_theta, the tilted target and KL(p* || p_theta) are exact
(``ddrl.enumeration``). Examples carry their prompt ids in ``columns["prompt_ids"]``; a completion is
shown as its ids separated by spaces. The same prompts serve as train and test split: the target is a
distribution, not a skill.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from ddrl.config import ConfigError
from ddrl.tasks.base import Example, Task, TaskConfig

if TYPE_CHECKING:
    from ddrl.models.base import MaskedDiffusionPolicy


class TokenTaskConfig(TaskConfig):
    """Options every token-level task shares."""

    num_tokens: int = Field(4, ge=2, description="token ids 0..num_tokens-1 (the policy adds the mask)")
    length: int = Field(4, ge=1, le=8, description="completion length L (num_tokens^L completions)")
    num_prompts: int = Field(2, ge=1)
    prompt_length: int = Field(2, ge=0)


class TokenTask(Task):
    """Prompt ids in, completion ids out; subclasses make the examples (``load``) and judge them."""

    config: TokenTaskConfig

    @classmethod
    def eval_lengths(cls, config: TokenTaskConfig) -> list[int] | None:  # type: ignore[override]
        return [config.length]

    def format_prompt(self, example: Example) -> str:
        return example.question

    def encode(self, example: Example, policy: MaskedDiffusionPolicy) -> list[int]:
        if policy.vocab_size < self.config.num_tokens + 1:
            raise ConfigError(
                f"{self.config.name} needs a policy over {self.config.num_tokens} tokens plus the mask; "
                f"this one has vocab_size {policy.vocab_size} (use model tiny with charset: null)"
            )
        return list(example.columns["prompt_ids"])

    def decode(self, completion_ids: list[int], policy: MaskedDiffusionPolicy) -> str:
        return " ".join(map(str, completion_ids))
