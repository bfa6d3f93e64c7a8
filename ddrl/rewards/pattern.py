"""Reward of the `pattern` toy task: the fraction of positions equal to the target pattern."""

from __future__ import annotations

from typing import Any


def pattern_match(prompts: list[str], completions: list[str], **columns: Any) -> list[float | None]:
    """mean_l 1[o_l == answer_l], read from ``completion_ids`` (the completion as token ids)."""
    out: list[float | None] = []
    for ids, target in zip(columns["completion_ids"], columns["answer"]):
        out.append(sum(int(a) == int(b) for a, b in zip(ids, target)) / len(target))
    return out
