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

from typing import Any, ClassVar, Literal

import torch
from pydantic import ConfigDict, Field
from torch import Tensor

from ddrl.batch import SequenceBatch, truncate_after_eos
from ddrl.config import ConfigError
from ddrl.objectives.base import Objective, ObjectiveConfig, ObjectiveContext, ObjectiveOutput, RolloutBatch
from ddrl.objectives.groups import group_mean, group_std, leave_one_out_mean, per_group
from ddrl.objectives.ppo import clipped_surrogate, k3_kl, masked_mean


class GRPOFamilyConfig(ObjectiveConfig):
    model_config = ConfigDict(extra="forbid")

    beta: float = Field(0.04, ge=0, description="k3 KL coefficient to the reference; 0 = no reference")
    epsilon: float = Field(0.5, gt=0, description="clip: ratio >= 1 - epsilon")
    epsilon_high: float | None = Field(None, gt=0, description="clip: ratio <= 1 + epsilon_high (null = epsilon)")
    baseline: Literal["group_mean", "leave_one_out"] = "group_mean"
    scale_rewards: bool = Field(False, description="divide advantages by the group's reward std")
    mask_after_eos: bool = Field(True, description="count completion tokens up to the first EOS only")


class DiffuGRPOConfig(GRPOFamilyConfig):
    name: str = "diffu_grpo"


class CoupledGRPOConfig(GRPOFamilyConfig):
    name: str = "coupled_grpo"
    beta: float = Field(0.01, ge=0, description="k3 KL coefficient to the reference; 0 = no reference")
    baseline: Literal["group_mean", "leave_one_out"] = "leave_one_out"


def group_advantages(rewards: Tensor, group_ids: Tensor, baseline: str, scale: bool) -> Tensor:
    """``[N]`` A = r - baseline (group mean or leave-one-out), optionally / (group std + 1e-4)."""
    r = rewards.double()
    centre = group_mean(r, group_ids) if baseline == "group_mean" else leave_one_out_mean(r, group_ids)
    adv = r - centre
    if scale:
        adv = adv / (group_std(r, group_ids) + 1e-4)
    return adv.float()


class _GRPOFamily(Objective):
    """Shared implementation; the registered classes only choose the defaults."""

    Config: ClassVar[type[GRPOFamilyConfig]]
    config: GRPOFamilyConfig
    needs_estimator = frozenset({"token"})

    @property
    def needs_reference(self) -> bool:
        return self.config.beta > 0

    def _valid(self, batch: SequenceBatch, ctx: ObjectiveContext) -> SequenceBatch:
        eos = ctx.policy.eos_token_id
        if not self.config.mask_after_eos or eos is None:
            return batch
        return batch.with_completion_mask(batch.completion_mask & truncate_after_eos(batch.completion_ids, eos))

    def prepare(self, rollout: RolloutBatch, ctx: ObjectiveContext) -> dict[str, Any]:
        batch = self._valid(rollout.batch, ctx)
        order = None if rollout.sample is None else rollout.sample.order
        views, old, ref = [], [], []
        for _ in range(ctx.num_iterations):
            v = ctx.estimator.draw(batch, ctx.generator, order)
            views.append(v)
            old.append(ctx.estimator.score(ctx.policy, batch, v).per_token())
            if self.needs_reference:
                if ctx.ref_policy is None:
                    raise ConfigError(f"{self.config.name} with beta > 0 needs a reference policy (or set objective.beta=0)")
                ref.append(ctx.estimator.score(ctx.ref_policy, batch, v).per_token())
        out: dict[str, Any] = {"views": views, "old_logp": torch.stack(old, 1)}  # (B, mu, L)
        if ref:
            out["ref_logp"] = torch.stack(ref, 1)
        return out

    def weigh(self, rollout: RolloutBatch, prepared: dict[str, Any], ctx: ObjectiveContext) -> dict[str, Any]:
        (rewards, ids), local = ctx.gather_groups(rollout.rewards.float(), rollout.group_ids)
        adv = group_advantages(rewards, ids, self.config.baseline, self.config.scale_rewards)
        std = per_group(group_std(rewards.double(), ids), ids)
        out = dict(prepared)
        out["advantages"] = adv[local]
        out["metrics"] = {"frac_reward_zero_std": (std < 1e-6).float().mean().item()}
        return out

    def loss(
        self, rollout: RolloutBatch, prepared: dict[str, Any], ctx: ObjectiveContext, iteration: int
    ) -> ObjectiveOutput:
        cfg = self.config
        batch = self._valid(rollout.batch, ctx)
        scored = ctx.estimator.score(ctx.policy, batch, prepared["views"][iteration])
        logp, mask = scored.per_token(), scored.token_mask  # (B, L)
        eps_high = cfg.epsilon if cfg.epsilon_high is None else cfg.epsilon_high
        ppo = clipped_surrogate(logp, prepared["old_logp"][:, iteration], prepared["advantages"], cfg.epsilon, eps_high)
        per_token = ppo.loss
        metrics = {
            "clip_ratio": masked_mean((ppo.low_clipped | ppo.high_clipped).float(), mask).item(),
            "clip_ratio_low": masked_mean(ppo.low_clipped.float(), mask).item(),
            "clip_ratio_high": masked_mean(ppo.high_clipped.float(), mask).item(),
        }
        if self.needs_reference:
            kl = k3_kl(logp, prepared["ref_logp"][:, iteration])
            per_token = per_token + cfg.beta * kl
            metrics["kl"] = masked_mean(kl, mask).item()
        return ObjectiveOutput(masked_mean(per_token, mask), metrics)


class DiffuGRPO(_GRPOFamily):
    Config = DiffuGRPOConfig
    preferred_estimator = "one_step"


class CoupledGRPO(_GRPOFamily):
    Config = CoupledGRPOConfig
    preferred_estimator = "coupled"
