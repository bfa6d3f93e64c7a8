"""Countdown rewards of d1 (docs/tasks.md): 1.0 when the answer is an expression using exactly the
given numbers (as a multiset) and equal to the target within 1e-5; 0.1 when there is an answer
that is wrong, uses other numbers or cannot be evaluated; 0 when there is no answer.

The expression is read by ``ddrl.tasks.arithmetic`` (exact fractions, never ``eval``); a
``\\boxed{…}``, ``×``/``÷``/unicode minus and a trailing ``= target`` are accepted.
"""

from __future__ import annotations

from typing import Any, Sequence

from ddrl.tasks.arithmetic import answer_expression, solves
from ddrl.tasks.protocol import extract_answer


def countdown_value(answer: str | None, numbers: Sequence[int], target: float) -> float:
    """1.0 / 0.1 / 0 for one extracted answer (None = no answer)."""
    if answer is None:
        return 0.0
    return 1.0 if solves(answer_expression(answer), numbers, target) else 0.1


def countdown_correctness(
    prompts: list[str],
    completions: list[str],
    numbers: list[Sequence[int]],
    target: list[float],
    **kwargs: Any,
) -> list[float]:
    """d1 variant: the answer is the last ``<answer>…</answer>`` pair's content."""
    return [countdown_value(extract_answer(c), n, t) for c, n, t in zip(completions, numbers, target)]


def countdown_toy_correctness(
    prompts: list[str],
    completions: list[str],
    numbers: list[Sequence[int]],
    target: list[float],
    **kwargs: Any,
) -> list[float]:
    """Toy variant: the whole completion is the expression; an empty one is no answer."""
    return [countdown_value(c.strip() or None, n, t) for c, n, t in zip(completions, numbers, target)]
