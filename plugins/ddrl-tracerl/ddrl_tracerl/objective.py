"""`tracerl`: trajectory-aware RL for diffusion LLMs (TraceRL, arXiv 2509.06949).

TraceRL trains on the sampler's own trajectory instead of random masks. The sampler records the step
at which each completion token was revealed (``SampleOutput.unmask_step``); consecutive steps are
merged in groups of s (the shrinkage, 8); for merged step k the input masks every token decoded at a
step >= k*s and the targets are the tokens decoded during merged step k (ddrl's public
``trajectory_masks``). With l_t = log pi_theta(o_t | canvas of its merged step) and the rewards
z-scored per group, A_i = (r_i - mean_group r) / (std_group r + 1e-4), each token gets

    loss_t = -min(rho_t A_i, clip(rho_t, 1 - eps, 1 + eps) A_i) + beta * k3(l_t, l_t^old),
    rho_t = exp(l_t - l_t^old),

against the old policy's log-probs on the same canvases (eps = 0.2, beta = 0.01), averaged over the
micro-batch's valid tokens (up to and including the first EOS). The estimator section is not used.

Departures from the published code:
1. No diffusion value model (TraceRL's optional variance reduction): the advantage is the group's
   z-scored reward for every token of a completion.
2. The old policy is the policy that generated the rollout, and a rollout batch serves mu optimizer
   steps (ddrl's loop); the published trainer instead walks the rollout's canvases in mini-batches,
   one optimizer step each. With mu = 1 the ratio is exactly 1 and clip and KL do nothing.
3. Merged steps count over the whole completion (s consecutive sampler steps, across block borders
   when a block's steps are not a multiple of s).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from pydantic import ConfigDict, Field
from torch import Tensor

from ddrl.config import ConfigError
from ddrl.estimators.base import MaskedViews, score_views
from ddrl.estimators.masks import trajectory_masks
from ddrl.objectives.base import Objective, ObjectiveConfig, ObjectiveContext, ObjectiveOutput, RolloutBatch, Weighed
from ddrl.objectives.groups import group_advantages
from ddrl.objectives.ppo import clip_metrics, masked_mean, token_ppo_loss
from ddrl.rows import RowState


class TraceRLConfig(ObjectiveConfig):
    model_config = ConfigDict(extra="forbid")

    name: str = "tracerl"
    shrinkage: int = Field(8, ge=1, description="s: consecutive sampler steps merged into one training canvas")
    epsilon: float = Field(0.2, gt=0, description="clip: ratio >= 1 - epsilon")
    epsilon_high: float | None = Field(None, gt=0, description="clip: ratio <= 1 + epsilon_high (null = epsilon)")
    beta: float = Field(0.01, ge=0, description="k3 KL coefficient to the old policy")
    scale_rewards: bool = Field(True, description="z-score the rewards per group (false: only centre them)")
    mask_after_eos: bool = Field(True, description="train on completion tokens up to the first EOS only")
    micro_batch_size: int | None = Field(None, ge=1, description="canvases per forward pass; null = all")


def trace_views(rollout: RolloutBatch, valid: Tensor, shrinkage: int) -> MaskedViews:
    """The training canvases of a rollout: ``trajectory_masks`` of its recorded unmasking steps,
    without the merged steps that score no token of these rows (``[B, R', L]``)."""
    sample = rollout.sample
    if sample is None or sample.unmask_step is None:
        raise ConfigError(
            "tracerl trains on the sampler's trajectory: use a sampler that records unmask_step "
            "(block, fast or ancestral)"
        )
    views = trajectory_masks(valid, sample.unmask_step, shrinkage, sample.num_steps or None)
    keep = views.scored.any(-1).any(0)  # (R,) merged steps with at least one target
    return MaskedViews(views.completion_masked[:, keep], views.scored[:, keep], views.weights[:, keep])


@dataclass
class TraceRLState(RowState):
    """``old_logp [B, L]``: the old policy's log-prob of every valid token on its canvas;
    ``advantages [B]``: the z-scored rewards, set by ``weigh``."""

    old_logp: Tensor
    advantages: Tensor | None = None


class TraceRL(Objective[TraceRLState]):
    """Token-level PPO on the sampler's own canvases."""

    Config = TraceRLConfig
    config: TraceRLConfig

    @property
    def needs_sampler(self) -> frozenset[str]:
        return frozenset({"unmask_step"})

    def _token_logprobs(self, policy: Any, rollout: RolloutBatch, ctx: ObjectiveContext) -> tuple[Tensor, Tensor, int]:
        """``[B, L]`` log-prob of every valid token on its canvas, the ``[B, L]`` valid mask, R'."""
        batch = ctx.counted(rollout.batch, self.config.mask_after_eos)
        views = trace_views(rollout, batch.completion_mask, self.config.shrinkage)
        lp = score_views(policy, batch, views, self.config.micro_batch_size)  # (B, R', L)
        return (views.weights * lp).sum(1), views.scored.any(1), views.num_views

    def prepare(self, rollout: RolloutBatch, ctx: ObjectiveContext) -> TraceRLState:
        old_logp, _, _ = self._token_logprobs(ctx.policy, rollout, ctx)
        return TraceRLState(old_logp)

    def weigh(self, rollout: RolloutBatch, state: TraceRLState, ctx: ObjectiveContext) -> Weighed[TraceRLState]:
        groups, _ = ctx.groups(rollout)
        advantages = group_advantages(groups.rewards, groups.ids, scale=self.config.scale_rewards).float()
        state = replace(state, advantages=groups.mine(advantages))
        return Weighed(state, {"frac_reward_zero_std": groups.frac_reward_zero_std()})

    def loss(self, rollout: RolloutBatch, state: TraceRLState, ctx: ObjectiveContext, iteration: int) -> ObjectiveOutput:
        cfg = self.config
        logp, mask, num_views = self._token_logprobs(ctx.policy, rollout, ctx)
        eps_high = cfg.epsilon if cfg.epsilon_high is None else cfg.epsilon_high
        out = token_ppo_loss(logp, state.old_logp, state.advantages, mask, cfg.epsilon, eps_high, cfg.beta, state.old_logp)
        metrics = {
            "clip_ratio": clip_metrics(out, mask)["clip_ratio"],
            "kl": masked_mean(out.kl, mask).item(),  # type: ignore[arg-type]
            "trace_steps": float(num_views),
        }
        return ObjectiveOutput(out.loss, metrics)
