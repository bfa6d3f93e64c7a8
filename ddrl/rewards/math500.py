"""MATH500 rewards of d1 (docs/tasks.md); ``answer`` is the gold answer without ``\\boxed``.

- ``math500_correctness`` 2.0 when the completion's last ``\\boxed{…}`` is equivalent to the
  gold answer — by math-verify, where d1 compared normalised strings (see
  ``ddrl.tasks.protocol.math_equivalent``, which also explains the main-thread rule), within the
  task's ``verify_timeout`` (the ``verify_timeout`` column), exactly as ``Math500Task.score``.
- ``math500_format`` 0.5 × [(1 if answer tags are present) + (1 if ``\\boxed`` is inside the
  answer, else 0.5)], so 0.25–1.0. d1's code tested ``"\\boxed" in answer`` with a Python
  string in which ``\\b`` is a backspace, so its check never fired and every completion got the
  0.5 branch; ddrl checks for the literal ``\\boxed`` as intended. Without tags there is no
  answer to hold a box, so the value is 0.25 (d1 looked at the whole completion instead).
"""

from __future__ import annotations

from typing import Any

from ddrl.tasks.protocol import (
    DEFAULT_VERIFY_TIMEOUT,
    extract_answer,
    last_boxed,
    math_equivalent,
)


def math500_correctness(
    prompts: list[str],
    completions: list[str],
    answer: list[str],
    verify_timeout: list[float] | None = None,
    **kwargs: Any,
) -> list[float]:
    """2.0 when the last box of the completion is equivalent to the gold answer, else 0.

    ``verify_timeout`` (the task's, through ``Math500Task.reward_columns``) bounds each
    comparison, as in ``Math500Task.score``; without the column, ``DEFAULT_VERIFY_TIMEOUT``."""
    timeouts = verify_timeout if verify_timeout is not None else [DEFAULT_VERIFY_TIMEOUT] * len(completions)
    return [
        2.0 if math_equivalent(last_boxed(c), str(gold), float(t)) else 0.0
        for c, gold, t in zip(completions, answer, timeouts)
    ]


def math500_format(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """0.25, 0.5, 0.75 or 1.0 from answer tags and a ``\\boxed`` inside them."""
    out = []
    for c in completions:
        stated = extract_answer(c)
        tags = 1.0 if stated is not None else 0.0
        boxed = 1.0 if stated is not None and "\\boxed" in stated else 0.5
        out.append(0.5 * (tags + boxed))
    return out
