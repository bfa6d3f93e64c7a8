"""GSM8K rewards of d1 (docs/tasks.md); ``answer`` is the gold number string (after ``####``).

"The answer" of a completion is the text inside its last ``<answer>…</answer>`` pair
(``ddrl.tasks.protocol.extract_answer``); a completion without a pair gets 0 from both.
"""

from __future__ import annotations

import re
from typing import Any

from ddrl.tasks.protocol import extract_answer

_DIGITS = re.compile(r"[0-9]+")


def gsm8k_correctness(
    prompts: list[str], completions: list[str], answer: list[str], **kwargs: Any
) -> list[float]:
    """2.0 when the stripped answer equals the gold string exactly (d1: no numeric
    normalisation during training; ``GSM8KTask.score`` normalises for evaluation)."""
    return [2.0 if extract_answer(c) == str(gold).strip() else 0.0 for c, gold in zip(completions, answer)]


def gsm8k_integer(prompts: list[str], completions: list[str], **kwargs: Any) -> list[float]:
    """0.5 when the answer is all ASCII digits (d1's ``isdigit``, without unicode digits)."""
    out = []
    for c in completions:
        stated = extract_answer(c)
        out.append(0.5 if stated is not None and _DIGITS.fullmatch(stated) else 0.0)
    return out
