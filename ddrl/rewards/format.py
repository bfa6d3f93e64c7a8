"""d1's format rewards (docs/tasks.md), shared by every task that uses the ``<reasoning>``/``<answer>``
template. Values and matching rules reproduce d1's functions so that reward curves compare.

- ``d1_strict_format`` 0.5: the whole completion is ``<reasoning>\\n…\\n</reasoning>\\n<answer>\\n…
  \\n</answer>\\n`` (matched as d1 does, with ``.`` spanning lines and ``$`` allowed before one
  final newline).
- ``d1_soft_format`` 0.5: the completion starts with a reasoning block followed, after any white
  space, by an answer block (anything may follow).
- ``d1_tag_count`` up to 0.5: see ``tag_count``.

Both format checks are linear in the completion's length (d1's lazy regexes, ``.*?`` twice, are
quadratic on adversarial text: 1-2 s on 100,000 characters) and look at no completion longer than
``MAX_FORMAT_CHARS``: such a completion gets 0 from both, before any matching.
"""

from __future__ import annotations

import re
from typing import Any

MAX_FORMAT_CHARS = 65_536  # longer completions do not follow the format (0 from strict and soft)

_OPEN_REASONING = "<reasoning>"
_STRICT_HEAD = "<reasoning>\n"
_STRICT_MIDDLE = "\n</reasoning>\n<answer>\n"
_STRICT_TAIL = "\n</answer>\n"
_SOFT_MIDDLE = re.compile(r"</reasoning>\s*<answer>")  # \s* runs are disjoint: one linear scan
_CLOSE_ANSWER = "</answer>"


def strict_format(text: str) -> bool:
    """d1's ``^<reasoning>\\n.*?\\n</reasoning>\\n<answer>\\n.*?\\n</answer>\\n$`` (DOTALL) in
    linear time: the head, then the middle anywhere before the tail, then the tail ending the
    text or followed by one final newline (``$``)."""
    if len(text) > MAX_FORMAT_CHARS or not text.startswith(_STRICT_HEAD):
        return False
    ends = [len(text)] + ([len(text) - 1] if text.endswith("\n") else [])
    for end in ends:
        body = text[:end]
        if (
            body.endswith(_STRICT_TAIL)
            and len(body) >= len(_STRICT_HEAD) + len(_STRICT_TAIL)
            and _STRICT_MIDDLE in body[len(_STRICT_HEAD) : end - len(_STRICT_TAIL)]
        ):
            return True
    return False


def soft_format(text: str) -> bool:
    """d1's ``re.match(r"<reasoning>.*?</reasoning>\\s*<answer>.*?</answer>", DOTALL)`` in linear
    time: the first ``</reasoning>``+space+``<answer>`` after the opening tag leaves the most room
    for a ``</answer>`` after it, so it is the only one to try."""
    if len(text) > MAX_FORMAT_CHARS or not text.startswith(_OPEN_REASONING):
        return False
    middle = _SOFT_MIDDLE.search(text, len(_OPEN_REASONING))
    return middle is not None and text.find(_CLOSE_ANSWER, middle.end()) >= 0


def d1_strict_format(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """0.5 when the completion is exactly the d1 template, else 0."""
    return [0.5 if strict_format(c) else 0.0 for c in completions]


def d1_soft_format(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """0.5 when the completion opens with a reasoning block then an answer block, else 0."""
    return [0.5 if soft_format(c) else 0.0 for c in completions]


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
