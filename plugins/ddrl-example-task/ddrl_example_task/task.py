"""`reverse_word`: write a short word backwards (``reverse abc:`` -> ``cba``).

Small enough for ddrl's built-in character-level `tiny` model; both splits are generated from the
seed, so the task needs no data files.
"""

from __future__ import annotations

import random
import string
from typing import ClassVar

from pydantic import ConfigDict, Field

from ddrl.tasks.base import Example, Task, TaskConfig


class ReverseWordConfig(TaskConfig):
    """Recipe options of `reverse_word` (plus TaskConfig's reward_funcs, seed, num_train, ...)."""

    model_config = ConfigDict(extra="forbid")

    name: str = "reverse_word"
    max_letters: int = Field(5, ge=2, description="words have 2..max_letters letters (< completion length)")


class ReverseWordTask(Task):
    Config = ReverseWordConfig
    default_rewards = ("reverse_word_match",)  # names in the ddrl.rewards group
    split_sizes: ClassVar[dict[str, int]] = {"train": 1000, "test": 32}  # TaskConfig's num_train / num_test cap them
    config: ReverseWordConfig

    def load(self, split: str) -> list[Example]:
        cfg = self.config
        rng = random.Random(f"{cfg.seed}-{split}")  # splits differ, and each is fixed by the seed
        examples = []
        for i in range(self.split_sizes[split]):
            length = rng.randint(2, cfg.max_letters)
            word = "".join(rng.choice(string.ascii_lowercase) for _ in range(length))
            examples.append(Example(id=f"{split}-{i}", question=word, answer=word[::-1]))
        return examples

    def format_prompt(self, example: Example) -> str:
        return f"reverse {example.question}:"

    def score(self, example: Example, completion: str) -> dict[str, float]:
        return {"accuracy": float(completion.strip() == example.answer)}
