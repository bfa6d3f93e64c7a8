"""`math500`: the 500-problem MATH test subset, zero-shot under the d1 protocol (docs/tasks.md).

Data come from ``data_path`` (JSONL/parquet with ``problem`` and ``answer``, or ``solution``
whose last ``\\boxed{…}`` is the answer) or from the Hugging Face cache
(``HuggingFaceH4/MATH-500``); there is only a ``test`` split.

Answers are compared with math-verify (symbolic equivalence), where d1's code compared
normalised strings; see ``ddrl.tasks.protocol.math_equivalent`` for the time bound and for what
happens off the main thread.
"""

from __future__ import annotations

from typing import Any

from pydantic import ConfigDict, Field

from ddrl.config import ConfigError
from ddrl.tasks.base import Example, Task, TaskConfig
from ddrl.tasks.data import field, load_hf_cached, read_split
from ddrl.tasks.protocol import d1_prompt, extract_answer, last_boxed, math_equivalent

INSTRUCTIONS = "Solve the problem step by step and put the final answer in \\boxed{} inside the answer tags."


class Math500Config(TaskConfig):
    """Options of the `math500` task."""

    model_config = ConfigDict(extra="forbid")

    name: str = "math500"
    data_path: str | None = Field(None, description="JSONL/parquet file or directory; null = HF cache")
    hf_dataset: str = Field("HuggingFaceH4/MATH-500", description="dataset name in the HF cache")
    hf_config: str | None = Field(None, description="its configuration")
    cache_dir: str | None = Field(None, description="HF datasets cache; null = the default one")
    verify_timeout: int = Field(
        5, ge=1, description="seconds one answer comparison may take (parsing and math-verify), reward and score alike"
    )


class Math500Task(Task):
    """MATH500 (test only)."""

    Config = Math500Config
    config: Math500Config
    default_rewards = ("math500_correctness", "math500_format")
    splits = ("test",)

    def load(self, split: str) -> list[Example]:
        cfg = self.config
        if cfg.data_path is not None:
            records = read_split(cfg.data_path, split, what="math500")
        else:
            records = load_hf_cached(cfg.hf_dataset, cfg.hf_config, split, "math500", cfg.cache_dir)
        return [_example(split, i, r) for i, r in enumerate(records)]

    def format_prompt(self, example: Example) -> str:
        return d1_prompt(f"{INSTRUCTIONS}\n{example.question}")

    def reward_columns(self, example: Example) -> dict[str, Any]:
        """``answer`` and ``verify_timeout``, so that ``math500_correctness`` is bounded like ``score``."""
        return {**super().reward_columns(example), "verify_timeout": self.config.verify_timeout}

    def score(self, example: Example, completion: str) -> dict[str, float]:
        """``accuracy``: the last ``\\boxed{…}`` (else, as in d1's evaluation, the answer tags'
        content) is equivalent to the gold answer; ``answered``: answer tags present."""
        answer = extract_answer(completion)
        stated = last_boxed(completion)
        if stated is None:
            stated = answer
        correct = math_equivalent(stated, example.answer, self.config.verify_timeout)
        return {"accuracy": float(correct), "answered": float(answer is not None)}


def _example(split: str, i: int, record: dict[str, Any]) -> Example:
    problem = str(field(record, "problem", "question", what="math500")).strip()
    answer = record.get("answer")
    if answer is None:
        answer = last_boxed(str(field(record, "solution", what="math500")))
        if answer is None:
            raise ConfigError(f"math500: record {i} has no answer and no \\boxed{{}} in its solution")
    answer = str(answer).strip()
    boxed = last_boxed(answer)
    gold = boxed if boxed is not None else answer
    uid = record.get("unique_id") or f"math500-{split}-{i}"
    return Example(id=str(uid), question=problem, answer=gold, columns={})
