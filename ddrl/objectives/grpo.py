"""The GRPO family for masked diffusion models: `diffu_grpo` (d1) and `coupled_grpo` (DiffuCoder).

Both are token-level PPO with a group-relative advantage; they differ in defaults only:

* `diffu_grpo` (d1, arXiv 2504.12216): per-token log-probs from the `one_step` estimator (prompt
  masked with p = 0.15), A = r - mean_group(r) (std scaling optional), symmetric clip eps, k3 KL to
  the reference with beta.
* `coupled_grpo` (DiffuCoder, arXiv 2506.20639): the `coupled` estimator (complementary masks),
  a leave-one-out baseline A = r - mean_{j != i} r_j, asymmetric clip bounds, optional KL.

Per rollout batch, for each of the mu inner iterations a fresh set of views is drawn and scored by
the old (= current at rollout time) and reference policies; iteration k reuses view set k for the
current policy, so old, reference and current share the mask seed within an iteration.
Completion tokens count up to and including the first EOS. The loss is the token mean over the
micro-batch: sum(per_token_loss * mask) / sum(mask).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import ClassVar

import torch
from pydantic import ConfigDict, Field
from torch import Tensor

from ddrl.config import ConfigError
from ddrl.estimators.base import MaskedViews
from ddrl.objectives.base import Objective, ObjectiveConfig, ObjectiveContext, ObjectiveOutput, RolloutBatch, Weighed
from ddrl.objectives.groups import Centre, group_advantages
from ddrl.objectives.ppo import clip_metrics, masked_mean, token_ppo_loss
from ddrl.rows import RowState


class GRPOFamilyConfig(ObjectiveConfig):
    model_config = ConfigDict(extra="forbid")

    beta: float = Field(0.04, ge=0, description="k3 KL coefficient to the reference; 0 = no reference")
    epsilon: float = Field(0.5, gt=0, description="clip: ratio >= 1 - epsilon")
    epsilon_high: float | None = Field(None, gt=0, description="clip: ratio <= 1 + epsilon_high (null = epsilon)")
    baseline: Centre = "group_mean"
    scale_rewards: bool = Field(False, description="divide advantages by the group's reward std")
    mask_after_eos: bool = Field(True, description="count completion tokens up to the first EOS only")


class DiffuGRPOConfig(GRPOFamilyConfig):
    name: str = "diffu_grpo"


class CoupledGRPOConfig(GRPOFamilyConfig):
    name: str = "coupled_grpo"
    beta: float = Field(0.01, ge=0, description="k3 KL coefficient to the reference; 0 = no reference")
    baseline: Centre = "leave_one_out"


@dataclass
class GRPOState(RowState):
    """Per inner iteration k: the views (``views[k]``) and the old and reference per-token
    log-probs on them (``[B, mu, L]``); the advantages (``[B]``) set by ``weigh``."""

    views: list[MaskedViews]
    old_logp: Tensor
    ref_logp: Tensor | None = None
    advantages: Tensor | None = None


class _GRPOFamily(Objective[GRPOState]):
    """Shared implementation; the registered classes only choose the defaults."""

    Config: ClassVar[type[GRPOFamilyConfig]]
    config: GRPOFamilyConfig
    needs_estimator = frozenset({"token"})

    @property
    def needs_reference(self) -> bool:
        return self.config.beta > 0

    def prepare(self, rollout: RolloutBatch, ctx: ObjectiveContext) -> GRPOState:
        batch = ctx.counted(rollout.batch, self.config.mask_after_eos)
        if self.needs_reference and ctx.ref_policy is None:
            raise ConfigError(f"{self.config.name} with beta > 0 needs a reference policy (or set objective.beta=0)")
        views, old, ref = [], [], []
        for _ in range(ctx.num_iterations):  # view set k serves inner iteration k
            v = ctx.estimator.draw(batch, ctx.generator, rollout.order)
            views.append(v)
            old.append(ctx.estimator.score(ctx.policy, batch, v).per_token())
            if self.needs_reference:
                ref.append(ctx.estimator.score(ctx.ref_policy, batch, v).per_token())  # type: ignore[arg-type]
        return GRPOState(views, torch.stack(old, 1), torch.stack(ref, 1) if ref else None)  # (B, mu, L)

    def weigh(self, rollout: RolloutBatch, state: GRPOState, ctx: ObjectiveContext) -> Weighed[GRPOState]:
        groups, _ = ctx.groups(rollout)
        adv = group_advantages(groups.rewards, groups.ids, self.config.baseline, self.config.scale_rewards)
        state = replace(state, advantages=groups.mine(adv).float())
        return Weighed(state, {"frac_reward_zero_std": groups.frac_reward_zero_std()})

    def loss(self, rollout: RolloutBatch, state: GRPOState, ctx: ObjectiveContext, iteration: int) -> ObjectiveOutput:
        cfg = self.config
        scored = ctx.estimator.score(ctx.policy, ctx.counted(rollout.batch, self.config.mask_after_eos), state.views[iteration])
        logp, mask = scored.per_token(), scored.token_mask  # (B, L)
        ref = None if state.ref_logp is None else state.ref_logp[:, iteration]
        eps_high = cfg.epsilon if cfg.epsilon_high is None else cfg.epsilon_high
        out = token_ppo_loss(logp, state.old_logp[:, iteration], state.advantages, mask, cfg.epsilon, eps_high, cfg.beta, ref)
        metrics = clip_metrics(out, mask)
        if out.kl is not None:
            metrics["kl"] = masked_mean(out.kl, mask).item()
        return ObjectiveOutput(out.loss, metrics)


class DiffuGRPO(_GRPOFamily):
    Config = DiffuGRPOConfig
    preferred_estimator = "one_step"


class CoupledGRPO(_GRPOFamily):
    Config = CoupledGRPOConfig
    preferred_estimator = "coupled"
