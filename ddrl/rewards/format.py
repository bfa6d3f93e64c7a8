"""d1's format rewards (docs/tasks.md), shared by every task that uses the ``<reasoning>``/``<answer>``
template. Values and matching rules reproduce d1's functions so that reward curves compare.

- ``d1_strict_format`` 0.5: the whole completion is ``<reasoning>\\n…\\n</reasoning>\\n<answer>\\n…
  \\n</answer>\\n`` (matched as d1 does, with ``.`` spanning lines and ``$`` allowed before one
  final newline).
- ``d1_soft_format`` 0.5: the completion starts with a reasoning block followed, after any white
  space, by an answer block (anything may follow).
- ``d1_tag_count`` up to 0.5: see ``tag_count``.
"""

from __future__ import annotations

import re
from typing import Any

_STRICT = re.compile(r"^<reasoning>\n.*?\n</reasoning>\n<answer>\n.*?\n</answer>\n$", re.DOTALL)
_SOFT = re.compile(r"<reasoning>.*?</reasoning>\s*<answer>.*?</answer>", re.DOTALL)


def d1_strict_format(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """0.5 when the completion is exactly the d1 template, else 0."""
    return [0.5 if _STRICT.match(c) else 0.0 for c in completions]


def d1_soft_format(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """0.5 when the completion opens with a reasoning block then an answer block, else 0."""
    return [0.5 if _SOFT.match(c) else 0.0 for c in completions]


def tag_count(text: str) -> float:
    """d1's tag-count score: 0.125 for each of ``<reasoning>\\n``, ``\\n</reasoning>\\n``,
    ``\\n<answer>\\n`` and ``\\n</answer>`` occurring exactly once, less 0.001 per character
    after the closing answer tag.

    As in d1, the trailing text is charged twice — once after ``\\n</answer>\\n`` (with the
    ``\\n<answer>\\n`` credit) and once after ``\\n</answer>`` not counting its newline (with the
    ``\\n</answer>`` credit) — so a character after the final newline costs 0.002, and a
    completion ending in ``\\n</answer>`` with no newline pays 0.001 per character of the whole
    text on the first charge (its split finds no ``\\n</answer>\\n``).
    """
    score = 0.0
    if text.count("<reasoning>\n") == 1:
        score += 0.125
    if text.count("\n</reasoning>\n") == 1:
        score += 0.125
    if text.count("\n<answer>\n") == 1:
        score += 0.125
        score -= len(text.split("\n</answer>\n")[-1]) * 0.001
    if text.count("\n</answer>") == 1:
        score += 0.125
        score -= (len(text.split("\n</answer>")[-1]) - 1) * 0.001
    return score


def d1_tag_count(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """``tag_count`` of each completion."""
    return [tag_count(c) for c in completions]
