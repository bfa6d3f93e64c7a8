"""Rewards of the `synthetic` task: a seeded family of functions of a token sequence.

A spec (a JSON-able dict, one per prompt, made by ``ddrl.tasks.synthetic``) holds one or more
*terms*, each with random coefficients; the reward is their sum, shifted and scaled so that it has
mean 0 and standard deviation 1 under uniformly random completions. Term kinds, over token ids
0..V-1 at positions 0..L-1:

    position: sum_d c[d][o_d]                             every position on its own
    pairs:    sum_{(i, j)} c_ij * 1[o_i == o_j]             pairwise equalities (couples positions)
    count:    f[#{d: o_d == v}]                             a random function of one token's count
    parity:   c * (-1)^(sum_{d in S} bit[o_d])              a parity of token bits over a subset S
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor


def term_values(term: dict[str, Any], completions: Tensor) -> Tensor:
    """``[N]`` float64 values of one term for ``completions [N, L]`` (token ids)."""
    ids = completions.long()
    kind = term["kind"]
    if kind == "position":
        table = torch.tensor(term["table"], dtype=torch.float64)  # [L, V]
        return table.gather(1, ids.T).T.sum(-1)
    if kind == "pairs":
        out = torch.zeros(ids.shape[0], dtype=torch.float64)
        for (i, j), c in zip(term["pairs"], term["coefficients"]):
            out += c * (ids[:, i] == ids[:, j]).double()
        return out
    if kind == "count":
        counts = (ids == term["token"]).sum(-1)
        return torch.tensor(term["values"], dtype=torch.float64)[counts]
    if kind == "parity":
        bits = torch.tensor(term["bits"], dtype=torch.long)[ids[:, term["subset"]]]  # [N, |S|]
        return term["coefficient"] * (1 - 2 * (bits.sum(-1) % 2)).double()
    raise ValueError(f"unknown reward term kind {kind!r}")


def synthetic_values(spec: dict[str, Any], completions: Tensor) -> Tensor:
    """``[N]`` float64 reward of every row of ``completions [N, L]`` under ``spec``."""
    raw = sum(term_values(t, completions) for t in spec["terms"])
    return (raw - spec["shift"]) / spec["scale"]  # type: ignore[operator]


def synthetic_reward(
    prompts: list[str], completions: list[str], completion_ids: list[list[int]], reward: list[dict], **columns: Any
) -> list[float | None]:
    """The `synthetic` task's reward, read from the completion's token ids and the prompt's spec."""
    out: list[float | None] = []
    for ids, spec in zip(completion_ids, reward):
        out.append(float(synthetic_values(spec, torch.tensor([ids]))[0]))
    return out
