"""`gsm8k`: grade-school math word problems, zero-shot under the d1 protocol (docs/tasks.md).

Data come from ``data_path`` (JSONL/parquet file or directory with ``train``/``test`` files in
GSM8K's shape, ``{"question": .., "answer": "..#### 72"}``) or from the Hugging Face cache
(``openai/gsm8k``, config ``main``); nothing is downloaded. The gold answer is the text after
``####`` with thousands commas removed.

Training rewards are d1's (``gsm8k_correctness`` compares strings exactly, as d1 does);
``score`` compares numbers after normalisation (``$1,000.00`` equals ``1000``), using the
answer tags or, like d1's evaluation, the last ``\\boxed{…}`` when there are none.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field

from ddrl.tasks.base import Example, Task, TaskConfig
from ddrl.tasks.data import field, load_hf_cached, read_split
from ddrl.tasks.protocol import d1_prompt, extract_answer, last_boxed, same_number


class GSM8KConfig(TaskConfig):
    """Options of the `gsm8k` task."""

    model_config = ConfigDict(extra="forbid")

    name: str = "gsm8k"
    data_path: str | None = Field(None, description="JSONL/parquet file or directory; null = HF cache")
    hf_dataset: str = Field("openai/gsm8k", description="dataset name in the HF cache")
    hf_config: str | None = Field("main", description="its configuration")
    cache_dir: str | None = Field(None, description="HF datasets cache; null = the default one")


def gold_answer(solution: str) -> str:
    """The final answer of a GSM8K solution: after ``####``, commas removed, stripped."""
    return str(solution).split("####")[-1].replace(",", "").strip()


class GSM8KTask(Task):
    """GSM8K train (7,473) and test (1,319) problems."""

    Config = GSM8KConfig
    config: GSM8KConfig
    # d1's order of reward functions for GSM8K
    default_rewards = (
        "d1_tag_count", "d1_soft_format", "d1_strict_format", "gsm8k_integer", "gsm8k_correctness",
    )

    def load(self, split: str) -> list[Example]:
        cfg = self.config
        if cfg.data_path is not None:
            records = read_split(cfg.data_path, split, what="gsm8k")
        else:
            records = load_hf_cached(cfg.hf_dataset, cfg.hf_config, split, "gsm8k", cfg.cache_dir)
        return [self._example(split, i, r) for i, r in enumerate(records)]

    @staticmethod
    def _example(split: str, i: int, record: dict[str, Any]) -> Example:
        question = str(field(record, "question", what="gsm8k")).strip()
        solution = str(field(record, "answer", what="gsm8k"))
        return Example(id=f"gsm8k-{split}-{i}", question=question, answer=gold_answer(solution))

    def format_prompt(self, example: Example) -> str:
        return d1_prompt(example.question)

    def score(self, example: Example, completion: str) -> dict[str, float]:
        """``accuracy``: the stated number equals the gold one; ``answered``: tags present."""
        answer = extract_answer(completion)
        stated = answer if answer is not None else last_boxed(completion)
        return {
            "accuracy": float(same_number(stated, example.answer)),
            "answered": float(answer is not None),
        }
