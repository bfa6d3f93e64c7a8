"""`log_variance`: the log-variance divergence between path measures (a loss MDNS compares).

MDNS (arXiv 2508.10684; docs/objectives.md) compares WDCE with this loss; the divergence itself is the
log-variance loss of Richter et al. (2020). With F as in ``objectives.path`` (model path
log-likelihood minus the tilted target along the recorded order),

    L(theta) = sum_groups Var_{i in g} F_theta(x_i, sigma_i),

which is 0 exactly when p_theta(x; sigma) ∝ p_ref(x; sigma) exp(r(x)/alpha) on the samples, for
any sampling law p_old with that support: the loss stays valid off-policy, so one rollout batch
can serve several optimizer steps. The gradient flows through log p_theta(x; sigma) along the
recorded order (the `exact` estimator: L forward passes per completion).

How it is computed: sum_i (F_i - Fbar_g)^2 / N_g with the group mean Fbar_g detached. Because
sum_{i in g} (F_i - Fbar_g) = 0 the detached mean changes neither the value nor the gradient,
and it lets the chunks of one group be processed separately. Fbar_g is taken at the current
weights: from the sampler's record at the first inner iteration, recomputed (no gradient) before
each later one.
"""

from __future__ import annotations

from dataclasses import replace

from pydantic import ConfigDict
from torch import Tensor

from ddrl.objectives.base import ObjectiveContext, ObjectiveOutput, RolloutBatch, Weighed
from ddrl.objectives.groups import group_mean, group_size
from ddrl.objectives.path import PathObjective, PathObjectiveConfig, PathState, path_log_ratio


class LogVarianceConfig(PathObjectiveConfig):
    model_config = ConfigDict(extra="forbid")

    name: str = "log_variance"


def log_variance_loss(log_ratio: Tensor, centre: Tensor, group_sizes: Tensor) -> Tensor:
    """sum_i (F_i - c_i)^2 / N_i: F = ``log_ratio [B]`` (with gradient), c = ``centre [B]`` the mean
    of F over each row's group (detached), N = ``group_sizes [B]``. Summed over all groups of the
    batch this is sum_g Var_g(F) (population variance), value and gradient."""
    return ((log_ratio - centre.detach()) ** 2 / group_sizes).sum()


class LogVariance(PathObjective):
    Config = LogVarianceConfig
    config: LogVarianceConfig

    def weigh(self, rollout: RolloutBatch, state: PathState, ctx: ObjectiveContext) -> Weighed[PathState]:
        return self._centre(rollout, state, ctx, state.old_logp, with_metrics=True)

    def begin_iteration(self, rollout: RolloutBatch, state: PathState, ctx: ObjectiveContext, iteration: int) -> PathState:
        if iteration == 0:
            return state  # theta == old: the centre from the sampler's record is current
        return self._centre(rollout, state, ctx, self.path_log_probs(rollout, state, ctx).double()).state

    def _centre(
        self, rollout: RolloutBatch, state: PathState, ctx: ObjectiveContext, log_q: Tensor, with_metrics: bool = False
    ) -> Weighed[PathState]:
        groups, (f,) = ctx.groups(rollout, path_log_ratio(log_q, state.log_target))
        centred = replace(state, centre=groups.mine(group_mean(f, groups.ids)), group_size=groups.mine(group_size(groups.ids)))
        return Weighed(centred, self.path_metrics(f, groups.ids) if with_metrics else {})

    def loss(self, rollout: RolloutBatch, state: PathState, ctx: ObjectiveContext, iteration: int) -> ObjectiveOutput:
        f = path_log_ratio(self.path_log_probs(rollout, state, ctx).double(), state.log_target)
        loss = log_variance_loss(f, state.centre, state.group_size).float()
        return ObjectiveOutput(loss, {"log_variance": loss.item()})
