"""The reward of `reverse_word`, in TRL's shape: ``(prompts, completions, **columns) -> list[float]``."""

from __future__ import annotations

from typing import Any


def reverse_word_match(prompts: list[str], completions: list[str], answer: list[str], **columns: Any) -> list[float]:
    """The share of the answer's letters that the completion puts in the right place.

    ``answer`` is the task's gold column (``Example.answer``), one entry per completion.
    """
    out = []
    for completion, gold in zip(completions, answer):
        text = completion.strip()
        out.append(sum(a == b for a, b in zip(text, gold)) / len(gold))
    return out
