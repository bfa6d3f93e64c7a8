"""The target along a recorded sampling path: MDNS's setting, shared by `dmpo` (``log_ratio: path``),
`log_variance` and `rerf`.

A rollout x ~ p_old was revealed one token per step in an order sigma that the sampler records
(``ancestral``), together with the log-probability of each placed token under the sampling policy
and, where asked, under the reference on the same canvases. Summed, those are exact path
likelihoods log p_old(x; sigma) and log p_ref(x; sigma) (docs/objectives.md, "Path likelihoods").
For the target p*(x) ∝ p_ref(x) exp(r(x)/alpha) the per-path log-ratio of model to (unnormalised)
target is

    F_theta(x, sigma) = log p_theta(x; sigma) - log p_ref(x; sigma) - r(x)/alpha,

with log p_theta(x; sigma) the exact path likelihood (the `exact` estimator along sigma, with
gradient). With ``reference: uniform`` (MDNS, arXiv 2508.10684: p_ref = V^-L, r = -beta H,
alpha = 1) log p_ref is a constant and is dropped: every loss built on F is invariant to shifting
F (a variance, a baseline, a softmax over the group), so log Z is never needed.
E_{p_theta}[F] = KL(p_theta || p*) - log Z over the joint law of (sigma, x).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field
from torch import Tensor

from ddrl.config import ConfigError
from ddrl.models.base import MaskedDiffusionPolicy
from ddrl.objectives.base import Objective, ObjectiveConfig, ObjectiveContext, RolloutBatch
from ddrl.objectives.groups import group_softmax, normalized_ess, per_group
from ddrl.rows import RowState

Reference = Literal["policy", "uniform"]


# ------------------------------------------------------------------------------------------------
# what the sampler recorded


@dataclass
class RecordedPath(RowState):
    """Exact path log-likelihoods a sampler recorded for each completion.

    Attributes:
        order: ``[B, L]`` sigma, the completion positions in the order they were revealed.
        old_logp: ``[B]`` log p_old(x; sigma), the sampling policy's path log-likelihood.
        ref_logp: ``[B]`` log p_ref(x; sigma) on the same canvases, or None for the uniform
            reference (a constant, dropped).
    """

    order: Tensor
    old_logp: Tensor
    ref_logp: Tensor | None = None


def path_records(with_reference: bool) -> frozenset[str]:
    """What a sampler must record (``Sampler.records``) for ``recorded_path``."""
    return frozenset({"exact_path", "token_logprobs", "unmask_step"} | ({"scorer_logprobs"} if with_reference else set()))


def path_scorers(ctx: ObjectiveContext, with_reference: bool) -> list[MaskedDiffusionPolicy]:
    """The policies the sampler scores along its path: the reference, when there is one."""
    return [ctx.ref_policy] if with_reference and ctx.ref_policy is not None else []


def recorded_path(rollout: RolloutBatch, with_reference: bool, who: str, alternative: str = "") -> RecordedPath:
    """The rollout's path record; a ``ConfigError`` naming ``who`` (and an ``alternative`` to the
    ancestral sampler, if any) when the sampler kept none."""
    s = rollout.sample
    fix = f"use sampler ancestral{'; or ' + alternative if alternative else ''}"
    if s is None or s.token_logprobs is None or s.unmask_step is None:
        raise ConfigError(f"{who} needs the sampling order and the log-probs along the path: {fix}")
    if with_reference and not s.scorer_logprobs:
        raise ConfigError(f"{who} with reference=policy needs the reference scored along the path: {fix}")
    ref = s.scorer_logprobs[0].sum(-1) if with_reference else None
    return RecordedPath(s.order, s.token_logprobs.sum(-1), ref)  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------------
# the path-measure losses


class PathObjectiveConfig(ObjectiveConfig):
    """Options of the target shared by the path-measure losses."""

    alpha: float = Field(1.0, gt=0, description="temperature of the tilt exp(r / alpha); MDNS: 1")
    reference: Reference = Field(
        "uniform", description="uniform: p_ref = V^-L (MDNS, energy targets); policy: the frozen initial policy"
    )


@dataclass
class PathState(RowState):
    """F's frozen parts, and what a loss adds per rollout batch.

    Attributes:
        path: the sampler's record (sigma, log p_old(x; sigma), log p_ref(x; sigma)).
        log_target: ``[B]`` float64 log p_ref(x; sigma) + r/alpha (+ a constant).
        centre: ``[B]`` a per-row constant subtracted from F (group mean or baseline), set by ``weigh``.
        group_size: ``[B]`` the size of each row's group, set by ``weigh``.
    """

    path: RecordedPath
    log_target: Tensor
    centre: Tensor | None = None
    group_size: Tensor | None = None

    @property
    def old_logp(self) -> Tensor:
        """``[B]`` float64 log p_old(x; sigma)."""
        return self.path.old_logp.double()


def path_log_ratio(log_q: Tensor, log_target: Tensor) -> Tensor:
    """``[B]`` F = log p_theta(x; sigma) - log_target, where log_target = log p_ref(x; sigma) + r/alpha."""
    return log_q - log_target


class PathObjective(Objective[PathState]):
    """Prepares F's frozen parts from the sampler's record; subclasses define the loss."""

    config: PathObjectiveConfig
    needs_estimator = frozenset({"exact_path"})
    preferred_estimator = "exact"

    @property
    def needs_reference(self) -> bool:
        return self.config.reference == "policy"

    @property
    def needs_sampler(self) -> frozenset[str]:
        return path_records(self.needs_reference)

    def rollout_scorers(self, ctx: ObjectiveContext) -> list[MaskedDiffusionPolicy]:
        return path_scorers(ctx, self.needs_reference)

    def prepare(self, rollout: RolloutBatch, ctx: ObjectiveContext) -> PathState:
        path = recorded_path(rollout, self.needs_reference, self.config.name)
        log_target = rollout.rewards.to(path.old_logp).double() / self.config.alpha
        if path.ref_logp is not None:
            log_target = log_target + path.ref_logp.double()
        return PathState(path, log_target)

    def path_log_probs(self, rollout: RolloutBatch, state: PathState, ctx: ObjectiveContext) -> Tensor:
        """``[B]`` log p_theta(x; sigma) along the recorded orders (differentiable)."""
        views = ctx.estimator.draw(rollout.batch, None, state.path.order)
        return ctx.estimator.score(ctx.policy, rollout.batch, views).sequence()

    @staticmethod
    def path_metrics(log_ratio: Tensor, group_ids: Tensor) -> dict[str, float]:
        """Logged for every path loss: the normalised ESS of the weights softmax(-F) per group
        (MDNS's ESS for the uniform reference and alpha = 1) and F's mean and spread."""
        ess = normalized_ess(group_softmax(-log_ratio.double(), group_ids), group_ids)
        return {
            "ess": per_group(ess, group_ids).mean().item(),
            "log_ratio_mean": log_ratio.mean().item(),
            "log_ratio_std": log_ratio.std().item() if log_ratio.numel() > 1 else 0.0,
        }
