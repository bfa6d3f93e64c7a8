"""`rerf`: REINFORCE on the reverse KL between path measures, KL(p_theta || p*) (a loss MDNS compares).

MDNS (arXiv 2508.10684; docs/objectives.md) compares WDCE with plain REINFORCE on the reverse KL. With F
as in ``objectives.path``, E_{p_theta}[F] = KL(p_theta || p*) - log Z over the joint law of
(sigma, x), and the score-function identity gives

    grad KL = E_{(sigma, x) ~ p_theta} [ (F_theta(x, sigma) - b) grad log p_theta(x; sigma) ]

for any baseline b that does not depend on the sample itself (E[grad log p_theta] = 0). Rollouts
come from p_old; rho = p_theta(x; sigma) / p_old(x; sigma) (detached; 1 at the first inner
iteration) keeps the estimate unbiased when a batch is reused. The surrogate, per group g,

    sum_{i in g} stopgrad(rho_i (F_i - b_i)) * F_theta(x_i, sigma_i) / N_g,

has that gradient (grad F_theta = grad log p_theta; F_i inside the stop-gradient is taken at the
current weights, b_i at rollout time). Baselines: ``leave_one_out`` (mean of the
other rows' F at rollout time: unbiased, the default), ``mean`` (the group mean, row included:
on-policy the gradient is then exactly half that of `log_variance`), ``none``.
Unlike WDCE this is mode-seeking: on a symmetric two-mode target it may settle on one mode.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from pydantic import ConfigDict
from torch import Tensor

from ddrl.objectives.base import ObjectiveContext, ObjectiveOutput, RolloutBatch, Weighed
from ddrl.objectives.groups import group_mean, group_size, leave_one_out_mean
from ddrl.objectives.path import PathObjective, PathObjectiveConfig, PathState, path_log_ratio


class RERFConfig(PathObjectiveConfig):
    model_config = ConfigDict(extra="forbid")

    name: str = "rerf"
    baseline: Literal["leave_one_out", "mean", "none"] = "leave_one_out"


def rerf_loss(log_ratio: Tensor, baseline: Tensor, ratio: Tensor, group_sizes: Tensor) -> Tensor:
    """sum_i stopgrad(rho_i (F_i - b_i)) F_i / N_i: F = ``log_ratio [B]`` (with gradient),
    b = ``baseline [B]``, rho = p_theta / p_old along the path (``ratio [B]``), N = ``group_sizes [B]``."""
    return ((ratio * (log_ratio - baseline)).detach() * log_ratio / group_sizes).sum()


def rerf_baseline(log_ratio: Tensor, group_ids: Tensor, kind: str) -> Tensor:
    """``[B]`` b per row from the rollout-time F (``log_ratio [B]``)."""
    if kind == "leave_one_out":
        return leave_one_out_mean(log_ratio, group_ids)
    if kind == "mean":
        return group_mean(log_ratio, group_ids)
    return log_ratio.new_zeros(log_ratio.shape)


class RERF(PathObjective):
    Config = RERFConfig
    config: RERFConfig

    def weigh(self, rollout: RolloutBatch, state: PathState, ctx: ObjectiveContext) -> Weighed[PathState]:
        groups, (f_old,) = ctx.groups(rollout, path_log_ratio(state.old_logp, state.log_target))
        baseline = groups.mine(rerf_baseline(f_old, groups.ids, self.config.baseline))
        state = replace(state, centre=baseline, group_size=groups.mine(group_size(groups.ids)))
        return Weighed(state, self.path_metrics(f_old, groups.ids))

    def loss(self, rollout: RolloutBatch, state: PathState, ctx: ObjectiveContext, iteration: int) -> ObjectiveOutput:
        log_q = self.path_log_probs(rollout, state, ctx).double()
        ratio = (log_q.detach() - state.old_logp).exp()
        f = path_log_ratio(log_q, state.log_target)
        loss = rerf_loss(f, state.centre, ratio, state.group_size).float()
        return ObjectiveOutput(loss, {"rerf_surrogate": loss.item(), "path_ratio_mean": ratio.mean().item()})
