"""Per-group statistics over the completions of each prompt (rows sharing a group id).

All functions take flat ``[N]`` tensors and ``group_ids [N]`` and return ``[N]`` (each row gets
its group's statistic), so they work unchanged on a batch gathered from several processes.

Public API, the scaffold every objective's ``weigh`` is built from (plugins included)::

    groups, (log_rnd,) = ctx.groups(rollout, state.log_rnd)   # gathered over processes: Groups
    adv = group_advantages(groups.rewards, groups.ids)        # [N] r - mean_group(r)
    state = replace(state, advantages=groups.mine(adv).float())
    metrics = {"frac_reward_zero_std": groups.frac_reward_zero_std()}

so that a prompt's group is normalised as a whole even when its completions live on several
processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

Centre = Literal["group_mean", "leave_one_out"]


@dataclass(frozen=True)
class Groups:
    """A rollout batch's rows gathered from every process, rank-major (``ctx.groups``).

    Attributes:
        ids: ``[N]`` the group (prompt) id of every row.
        rewards: ``[N]`` every row's reward, as the rollout holds it.
        completions: ``[N, L]`` every row's completion token ids.
        local: this process's rows of every gathered ``[N]`` tensor.
    """

    ids: Tensor
    rewards: Tensor
    completions: Tensor
    local: slice

    def mine(self, x: Tensor) -> Tensor:
        """This process's rows of a gathered ``[N]`` tensor."""
        return x[self.local]

    @property
    def count(self) -> int:
        """Number of groups (prompts)."""
        return group_index(self.ids)[1]

    def frac_reward_zero_std(self) -> float:
        """Share of groups whose rewards are all equal (no learning signal for a relative advantage)."""
        std = per_group(group_std(self.rewards.double(), self.ids), self.ids)
        return (std < 1e-6).float().mean().item()

    def frac_identical(self) -> float:
        """Share of groups whose completions are all the same sequence: their self-normalised
        weights are uniform whatever the rewards, so a group-relative signal vanishes."""
        return per_group(identical_groups(self.completions, self.ids), self.ids).float().mean().item()


def group_advantages(rewards: Tensor, group_ids: Tensor, centre: Centre = "group_mean", scale: bool = False) -> Tensor:
    """``[N]`` float64 A = r - centre (the group mean, or the mean of the other rows), divided by
    (std_group(r) + 1e-4) when ``scale`` (sample std; GRPO's and TraceRL's z-score)."""
    r = rewards.double()
    adv = r - (group_mean(r, group_ids) if centre == "group_mean" else leave_one_out_mean(r, group_ids))
    if scale:
        adv = adv / (group_std(r, group_ids) + 1e-4)
    return adv


def group_index(group_ids: Tensor) -> tuple[Tensor, int]:
    """Dense group index ``[N]`` in 0..n_groups-1 and n_groups."""
    _, inverse = torch.unique(group_ids, return_inverse=True)
    return inverse, int(inverse.max().item()) + 1 if inverse.numel() else 0


def group_sum(x: Tensor, group_ids: Tensor) -> Tensor:
    inv, n = group_index(group_ids)
    return torch.zeros(n, dtype=x.dtype, device=x.device).index_add_(0, inv, x)[inv]


def group_size(group_ids: Tensor) -> Tensor:
    return group_sum(torch.ones_like(group_ids, dtype=torch.float64), group_ids)


def group_mean(x: Tensor, group_ids: Tensor) -> Tensor:
    return group_sum(x, group_ids) / group_size(group_ids).to(x.dtype)


def group_std(x: Tensor, group_ids: Tensor) -> Tensor:
    """Sample standard deviation (n - 1 in the denominator; 0 for a group of one)."""
    n = group_size(group_ids).to(x.dtype)
    centred = x - group_mean(x, group_ids)
    return (group_sum(centred**2, group_ids) / (n - 1).clamp(min=1)).sqrt()


def leave_one_out_mean(x: Tensor, group_ids: Tensor) -> Tensor:
    """Mean of the *other* rows of the group: (sum - x) / (n - 1)."""
    n = group_size(group_ids).to(x.dtype)
    if bool((n < 2).any()):
        raise ValueError("a leave-one-out baseline needs at least 2 completions per prompt")
    return (group_sum(x, group_ids) - x) / (n - 1)


def group_softmax(x: Tensor, group_ids: Tensor) -> Tensor:
    """softmax of ``x`` within each group (numerically stable)."""
    inv, n = group_index(group_ids)
    peak = torch.full((n,), -torch.inf, dtype=x.dtype, device=x.device).scatter_reduce(
        0, inv, x, reduce="amax", include_self=True
    )
    e = torch.exp(x - peak[inv])
    return e / torch.zeros(n, dtype=x.dtype, device=x.device).index_add_(0, inv, e)[inv]


def normalized_ess(weights: Tensor, group_ids: Tensor) -> Tensor:
    """Per-row 1 / (G sum_g w_g^2) of its group, for weights normalised within each group:
    1 for uniform weights, 1/G when one completion takes all the weight."""
    return 1.0 / (group_size(group_ids).to(weights.dtype) * group_sum(weights**2, group_ids))


def identical_groups(x: Tensor, group_ids: Tensor) -> Tensor:
    """``[N]`` bool: whether every row of each row's group equals the group's first row (``x [N, ...]``)."""
    inv, n = group_index(group_ids)
    first = torch.full((n,), x.shape[0], dtype=torch.long, device=x.device).scatter_reduce(
        0, inv, torch.arange(x.shape[0], device=x.device), reduce="amin"
    )
    same = (x == x[first[inv]]).reshape(x.shape[0], -1).all(-1)
    return group_sum(same.double(), group_ids) == group_size(group_ids)


def per_group(x: Tensor, group_ids: Tensor) -> Tensor:
    """One value per group (the value of its first row): ``[n_groups]``."""
    inv, n = group_index(group_ids)
    first = torch.full((n,), x.numel(), dtype=torch.long, device=x.device).scatter_reduce(
        0, inv, torch.arange(x.numel(), device=x.device), reduce="amin"
    )
    return x[first]
