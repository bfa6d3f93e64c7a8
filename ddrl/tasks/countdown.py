"""`countdown`: reach a target with + − × ÷, using each given number exactly once (docs/tasks.md).

Two variants:

- ``d1``: the d1 zero-shot protocol — the d1 system prompt, ``Numbers: [..]`` / ``Target: ..``,
  the expression inside ``<answer>`` tags; rewarded by ``countdown_correctness`` (1.0 / 0.1 / 0).
  Numbers 1–99, targets 1–100.
- ``toy``: sized for the ``tiny`` character model — prompt ``3,5,7:15=``, completion a bare
  expression such as ``3*7-5``; rewarded by ``countdown_toy_correctness``. Numbers 1–9,
  targets 1–99.

Generated puzzles are always solvable (an exhaustive search picks the target among the integers
the numbers reach) and carry one solution, which is also ``Example.answer``. Files in the common
JSONL shapes load too: ``{"nums" | "numbers": [..], "target": ..}`` and d1's
``{"input": "3,5,7", "output": "15"}``.
"""

from __future__ import annotations

import random
from typing import Any, Literal

from pydantic import ConfigDict, Field

from ddrl.config import ConfigError
from ddrl.tasks.arithmetic import answer_expression, reachable_integers, solve, solves
from ddrl.tasks.base import Example, Task, TaskConfig
from ddrl.tasks.data import field, generate_split, read_split
from ddrl.tasks.protocol import d1_prompt, extract_answer, last_boxed

# (smallest number, largest number, smallest target, largest target) per variant
RANGES = {"d1": (1, 99, 1, 100), "toy": (1, 9, 1, 99)}

D1_INSTRUCTIONS = (
    "Combine the given numbers with +, -, * and / (parentheses allowed) into an expression equal "
    "to the target. Use every number exactly once. Inside the answer tags write only the "
    "expression, without an equals sign or the target."
)


class CountdownConfig(TaskConfig):
    """Options of the `countdown` task."""

    model_config = ConfigDict(extra="forbid")

    name: str = "countdown"
    variant: Literal["d1", "toy"] = Field("d1", description="d1 protocol, or bare prompts for tiny")
    num_numbers: Literal[3, 4] = Field(3, description="numbers per generated puzzle")
    operators: str = Field("+-*/", pattern=r"^[+\-*/]+$", description="operators generated solutions use")
    num_generated_train: int = Field(2000, ge=1, description="generated train puzzles")
    num_generated_test: int = Field(256, ge=1, description="generated test puzzles")
    data_path: str | None = Field(None, description="JSONL/parquet file or directory; null = generate")


class CountdownTask(Task):
    """Countdown puzzles, generated from ``seed`` or loaded from ``data_path``."""

    Config = CountdownConfig
    config: CountdownConfig
    default_rewards = ("countdown_correctness",)

    def __init__(self, config: CountdownConfig) -> None:
        super().__init__(config)
        if config.variant == "toy":
            self.default_rewards = ("countdown_toy_correctness",)  # type: ignore[misc]

    # -------------------------------------------------------------------------------------------
    def load(self, split: str) -> list[Example]:
        cfg = self.config
        if cfg.data_path is not None:
            records = read_split(cfg.data_path, split, what="countdown")
            puzzles = [_from_record(r) for r in records]
        else:
            count = cfg.num_generated_train if split == "train" else cfg.num_generated_test
            puzzles = generate_split(
                lambda rng: draw_puzzle(rng, cfg.variant, cfg.num_numbers, cfg.operators),
                namespace=f"countdown-{cfg.variant}-{cfg.num_numbers}"
                + ("" if cfg.operators == "+-*/" else f"-{cfg.operators}"),
                split=split,
                seed=cfg.seed,
                count=count,
            )
        return [self._example(split, i, *p) for i, p in enumerate(puzzles)]

    def _example(self, split: str, i: int, numbers: list[int], target: int, solution: str | None) -> Example:
        if self.config.variant == "toy":
            question = f"{','.join(map(str, numbers))}:{target}="
        else:
            question = f"Numbers: {numbers}\nTarget: {target}"
        columns = {"numbers": numbers, "target": target}
        return Example(id=f"countdown-{split}-{i}", question=question, answer=solution, columns=columns)

    def format_prompt(self, example: Example) -> str:
        if self.config.variant == "toy":
            return example.question
        return d1_prompt(f"{D1_INSTRUCTIONS}\n{example.question}")

    @classmethod
    def eval_lengths(cls, config: CountdownConfig) -> list[int] | None:  # type: ignore[override]
        return [8, 16] if config.variant == "toy" else None

    def reference_completion(self, example: Example) -> str | None:
        """The stored solution: bare for `toy`, in the d1 tag format otherwise."""
        solution = example.answer
        if solution is None:
            return None
        if self.config.variant == "toy":
            return solution
        return self._tagged(example.columns["numbers"], example.columns["target"], solution)

    def corrupt_completion(self, example: Example, rng: random.Random) -> str | None:
        """The solution with its first operator swapped (+ <-> -, * <-> /): a systematic, plausible
        slip that keeps the form and the numbers but misses the target; else another operator,
        else a random expression over the numbers. None if nothing wrong is found."""
        numbers, target = list(example.columns["numbers"]), example.columns["target"]
        solution = example.answer or ""
        swap = {"+": "-", "-": "+", "*": "/", "/": "*"}
        candidates = [
            solution[:i] + swap[c] + solution[i + 1 :] for i, c in enumerate(solution) if c in swap
        ]
        for _ in range(50):
            candidates.append(_random_expression(numbers, rng))
        for text in candidates:
            if not solves(text, numbers, target):
                return text if self.config.variant == "toy" else self._tagged(numbers, target, text)
        return None

    def _tagged(self, numbers: list[int], target: int, expression: str) -> str:
        reasoning = f"Using {', '.join(map(str, numbers))}: {expression} = {target}."
        return f"<reasoning>\n{reasoning}\n</reasoning>\n<answer>\n{expression}\n</answer>\n"

    def score(self, example: Example, completion: str) -> dict[str, float]:
        """``accuracy`` 1.0 when the answer solves the puzzle; ``answered`` when there is one
        (answer tags, or a non-empty toy completion).

        d1 variant: the answer tags' content, or — as d1's evaluation does — the last
        ``\\boxed{…}`` of a completion without tags. Toy variant: the bare completion.
        """
        if self.config.variant == "toy":
            answer: str | None = completion.strip() or None
            stated = answer
        else:
            answer = extract_answer(completion)
            stated = answer if answer is not None else last_boxed(completion)
        numbers, target = example.columns["numbers"], example.columns["target"]
        correct = stated is not None and solves(answer_expression(stated), numbers, target)
        return {"accuracy": float(correct), "answered": float(answer is not None)}


# ------------------------------------------------------------------------------------------------
# generation and loading


def draw_puzzle(
    rng: random.Random, variant: str, n: int, operators: str = "+-*/"
) -> tuple[str, str, tuple[list[int], int, str]] | None:
    """One solvable puzzle ``(group, key, (numbers, target, solution))``, or None when the
    numbers reach no target in range.

    The group ignores the numbers' order, so no test puzzle appears in train in any order; the
    key keeps it, so one split may hold the same numbers in several orders (the toy variant has
    only 2,144 order-free puzzles with three numbers, too few for 2,000 + 256)."""
    lo, hi, t_lo, t_hi = RANGES[variant]
    numbers = [rng.randint(lo, hi) for _ in range(n)]
    targets = reachable_integers(numbers, t_lo, t_hi, operators)
    if not targets:
        return None
    target = rng.choice(targets)
    group = f"{sorted(numbers)}:{target}"
    solution = solve(numbers, target, operators)
    assert solution is not None  # target was drawn among the reachable values
    return group, f"{numbers}:{target}", (numbers, target, solution)


def _random_expression(numbers: list[int], rng: random.Random) -> str:
    order = rng.sample(numbers, len(numbers))
    text = str(order[0])
    for n in order[1:]:
        op = rng.choice("+-*/")
        text = f"({text}{op}{n})" if rng.random() < 0.5 else f"{text}{op}{n}"
    if text.startswith("(") and text.endswith(")") and text.count("(") == 1:
        text = text[1:-1]
    return text


def _from_record(record: dict[str, Any]) -> tuple[list[int], int, str | None]:
    """``(numbers, target, solution)`` of a file record (``solution`` None when unknown)."""
    raw = field(record, "nums", "numbers", "input", what="countdown")
    target_raw = field(record, "target", "output", what="countdown")
    try:
        items = raw.split(",") if isinstance(raw, str) else list(raw)
        numbers = [int(str(x).strip()) for x in items]
        target = int(str(target_raw).strip())
    except (TypeError, ValueError):
        raise ConfigError(f"countdown: record {record!r} has non-integer numbers or target") from None
    solution = record.get("solution")
    if solution is None and len(numbers) <= 4:
        solution = solve(numbers, target)
    return numbers, target, solution
