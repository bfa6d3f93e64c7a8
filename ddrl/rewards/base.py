"""The `Reward` interface: TRL's reward-function shape.

A reward is a plain callable registered in the ``ddrl.rewards`` entry-point group::

    def my_reward(prompts: list[str], completions: list[str], **columns) -> list[float | None]

``columns`` carries the example's fields (e.g. ``answer``, ``numbers``, ``target``) repeated per
completion, plus ``completion_ids`` (one list of token ids per completion) for rewards that work on
tokens rather than text. ``None`` means "not applicable to this row"; such rows get no
contribution from that function.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Protocol, Sequence

import torch
from torch import Tensor


class Reward(Protocol):
    __name__: str

    def __call__(self, prompts: list[str], completions: list[str], **columns: Any) -> list[float | None]: ...


RewardFn = Callable[..., Sequence[float | None]]


def combine_rewards(
    functions: Sequence[tuple[str, RewardFn, float]],
    prompts: list[str],
    completions: list[str],
    columns: dict[str, list[Any]],
) -> tuple[Tensor, dict[str, Tensor]]:
    """Evaluate ``(name, fn, weight)`` triples; return the weighted total ``[B]`` and each
    function's raw values ``{name: [B]}`` (NaN where a function returned None)."""
    n = len(completions)
    parts: dict[str, Tensor] = {}
    total = torch.zeros(n, dtype=torch.float64)
    for name, fn, weight in functions:
        values = list(fn(prompts, completions, **columns))
        if len(values) != n:
            raise ValueError(f"reward {name!r} returned {len(values)} values for {n} completions")
        raw = torch.tensor([math.nan if v is None else float(v) for v in values], dtype=torch.float64)
        parts[name] = raw
        total += weight * torch.nan_to_num(raw, nan=0.0)
    return total.float(), {k: v.float() for k, v in parts.items()}
