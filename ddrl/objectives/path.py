"""What MDNS's path-measure losses (`log_variance`, `rerf`) share: the target along a recorded path.

A rollout x ~ p_old was revealed in an order sigma that the sampler records (``ancestral``). For the
target p*(x) ∝ p_ref(x) exp(r(x)/alpha) the per-path log-ratio of model to (unnormalised) target is

    F_theta(x, sigma) = log p_theta(x; sigma) - log p_ref(x; sigma) - r(x)/alpha,

with log p_theta(x; sigma) the exact path likelihood (the `exact` estimator along sigma, with
gradient) and log p_ref(x; sigma) scored by the sampler on the same canvases. With
``reference: uniform`` (MDNS: p_ref = V^-L, r = -beta H, alpha = 1) log p_ref is a constant and
is dropped: every loss built on F here is invariant to shifting F (a variance, or a baseline), so
log Z is never needed. E_{p_theta}[F] = KL(p_theta || p*) - log Z over the joint law of (sigma, x).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field
from torch import Tensor

from ddrl.config import ConfigError
from ddrl.models.base import MaskedDiffusionPolicy
from ddrl.objectives.base import Objective, ObjectiveConfig, ObjectiveContext, RolloutBatch
from ddrl.objectives.groups import group_softmax, normalized_ess, per_group


class PathObjectiveConfig(ObjectiveConfig):
    """Options of the target shared by the path-measure losses."""

    alpha: float = Field(1.0, gt=0, description="temperature of the tilt exp(r / alpha); MDNS: 1")
    reference: Literal["policy", "uniform"] = Field(
        "uniform", description="uniform: p_ref = V^-L (MDNS, energy targets); policy: the frozen initial policy"
    )


def path_log_ratio(log_q: Tensor, log_target: Tensor) -> Tensor:
    """``[N]`` F = log p_theta(x; sigma) - log_target, where log_target = log p_ref(x; sigma) + r/alpha."""
    return log_q - log_target


class PathObjective(Objective):
    """Prepares F's frozen parts from the sampler's record; subclasses define the loss."""

    config: PathObjectiveConfig
    needs_estimator = frozenset({"exact_path"})
    preferred_estimator = "exact"

    @property
    def needs_reference(self) -> bool:
        return self.config.reference == "policy"

    @property
    def needs_sampler(self) -> frozenset[str]:
        extra = {"scorer_logprobs"} if self.needs_reference else set()
        return frozenset({"exact_path", "token_logprobs", "unmask_step", *extra})

    def rollout_scorers(self, ctx: ObjectiveContext) -> list[MaskedDiffusionPolicy]:
        return [ctx.ref_policy] if self.needs_reference and ctx.ref_policy is not None else []

    def prepare(self, rollout: RolloutBatch, ctx: ObjectiveContext) -> dict[str, Any]:
        s = rollout.sample
        name = self.config.name
        if s is None or s.token_logprobs is None or s.unmask_step is None:
            raise ConfigError(f"{name} needs the sampling order and path log-probs: use sampler ancestral")
        log_target = rollout.rewards.to(s.token_logprobs).double() / self.config.alpha
        if self.needs_reference:
            if not s.scorer_logprobs:
                raise ConfigError(f"{name} with reference=policy needs the reference scored along the path")
            log_target = log_target + s.scorer_logprobs[0].sum(-1).double()
        return {
            "order": s.order,  # (B, L) sigma
            "lp_old": s.token_logprobs.sum(-1).double(),  # (B,) log p_old(x; sigma)
            "log_target": log_target,  # (B,) log p_ref(x; sigma) + r / alpha (+ const)
        }

    def path_log_probs(self, rollout: RolloutBatch, prepared: dict[str, Any], ctx: ObjectiveContext) -> Tensor:
        """``[B]`` log p_theta(x; sigma) along the recorded orders (differentiable)."""
        views = ctx.estimator.draw(rollout.batch, None, prepared["order"])
        return ctx.estimator.score(ctx.policy, rollout.batch, views).sequence()

    def path_metrics(self, log_ratio: Tensor, group_ids: Tensor) -> dict[str, float]:
        """Logged for every path loss: the normalised ESS of the weights softmax(-F) per group
        (MDNS's ESS for the uniform reference and alpha = 1) and F's mean and spread."""
        ess = normalized_ess(group_softmax(-log_ratio.double(), group_ids), group_ids)
        return {
            "ess": per_group(ess, group_ids).mean().item(),
            "log_ratio_mean": log_ratio.mean().item(),
            "log_ratio_std": log_ratio.std().item() if log_ratio.numel() > 1 else 0.0,
        }

