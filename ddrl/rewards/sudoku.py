"""Sudoku reward of d1 (docs/tasks.md): the digits of the answer, padded with 0 or cut to 16; the
reward is the fraction of the puzzle's empty cells whose digit matches the stored solution
(0 without an answer). Columns: ``puzzle`` and ``solution``, 16-digit strings.
"""

from __future__ import annotations

from typing import Any

from ddrl.tasks.protocol import answer_grid, cell_accuracy, extract_answer


def sudoku_correctness(
    prompts: list[str], completions: list[str], puzzle: list[str], solution: list[str], **kwargs: Any
) -> list[float]:
    """d1 variant: the answer is the last ``<answer>…</answer>`` pair's content."""
    return [
        cell_accuracy(answer_grid(extract_answer(c)), p, s) for c, p, s in zip(completions, puzzle, solution)
    ]


def sudoku_toy_correctness(
    prompts: list[str], completions: list[str], puzzle: list[str], solution: list[str], **kwargs: Any
) -> list[float]:
    """Toy variant: the whole completion is the answer."""
    return [cell_accuracy(answer_grid(c), p, s) for c, p, s in zip(completions, puzzle, solution)]
