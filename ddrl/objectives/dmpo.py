"""`dmpo`: Distribution Matching Policy Optimization, the weighted denoising cross-entropy (WDCE).

Paper: arXiv 2510.08233 (design §2, §2.1). The rollouts o_i ~ p_old are importance-weighted
samples of the tilted target p*(o|q) ∝ p_ref(o|q) exp(r(q,o)/alpha); per prompt group

    w+ = softmax_G(c (log_rnd + r/alpha)),    log_rnd = log p_ref(o) - log p_old(o),

and the loss is the denoising cross-entropy weighted by the advantage a = w+ - strength * baseline:

    L(theta) = sum_i a_i * (1/R) sum_r (1/m_r) sum_{d in M_r} -log pi_theta(o with M_r masked)_{d, o_d}.

Where ddrl follows the published code (§2.1): log_rnd by the ELBO estimator with masks shared by
ref and old (default), or exact along the ancestral sampler's path (first version); weights
normalised over the group gathered from all processes; frozen for the mu optimizer steps of a
rollout batch; R antithetic loss masks with rates lambda ~ U[0.1, 1] drawn afresh at every step;
the prompt never masked; summed, not averaged, over the micro-batch.
Departures: none intended; `unbiased` re-estimates log p_theta at the start of each inner
iteration on the views used for log p_old (at iteration 0 it equals the `mean` baseline).

``reference: uniform`` is MDNS's setting (design §2.3, energy targets): p_ref(o) = V^-L for every
completion, so there is no reference model and log_rnd = -log p_old(o) up to a constant, which
the group softmax ignores. With alpha = 1, ``log_ratio: path`` and the ``ancestral`` sampler the
weights are exactly MDNS's softmax(r - log p_old(o; sigma)), and ``baseline: none`` is its WDCE.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import torch
from pydantic import ConfigDict, Field, model_validator
from torch import Tensor

from ddrl.batch import truncate_after_eos
from ddrl.config import ConfigError
from ddrl.estimators.base import MaskedViews
from ddrl.estimators.masks import antithetic_masks
from ddrl.models.base import MaskedDiffusionPolicy
from ddrl.objectives.denoising import weighted_denoising_ce
from ddrl.objectives.base import Objective, ObjectiveConfig, ObjectiveContext, ObjectiveOutput, RolloutBatch
from ddrl.objectives.groups import group_index, group_size, group_softmax, group_std, normalized_ess, per_group

Baseline = Literal["negative", "mean", "unbiased", "none"]


class DMPOConfig(ObjectiveConfig):
    model_config = ConfigDict(extra="forbid")

    name: str = "dmpo"
    alpha: float = Field(0.04, gt=0, description="temperature of the tilt exp(r / alpha)")
    proximal: float = Field(1.0, gt=0, le=1, description="c: 1 = full tilt; < 1 interpolates towards p_old")
    target_ess: float | None = Field(
        None, gt=0, le=1, description="adaptive c per group so that 1/(G sum w^2) hits this (e.g. 0.7)"
    )
    baseline: Baseline = "negative"
    baseline_strength: float = Field(1.0, ge=0)
    scale_by_std: bool = Field(False, description="divide the advantages by their group std")
    log_ratio: Literal["estimator", "path"] = Field(
        "estimator", description="estimator: ELBO after generation (published); path: exact, ancestral sampler"
    )
    reference: Literal["policy", "uniform"] = Field(
        "policy", description="policy: the frozen initial policy; uniform: p_ref = V^-L, no reference model (MDNS)"
    )
    loss_replicates: int = Field(4, ge=2, description="R antithetic loss masks per completion (even)")
    loss_rate_range: tuple[float, float] = (0.1, 1.0)
    mask_up_to_eos: bool = Field(False, description="loss masks only up to (and including) the first EOS")

    @model_validator(mode="after")
    def _check(self) -> DMPOConfig:
        if self.loss_replicates % 2:
            raise ValueError(f"loss_replicates must be even (antithetic pairs), got {self.loss_replicates}")
        lo, hi = self.loss_rate_range
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"loss_rate_range must satisfy 0 < lo <= hi <= 1, got {self.loss_rate_range}")
        return self


class DMPOWeights(NamedTuple):
    advantage: Tensor  # [N] a = w+ - strength * baseline (divided by the group std if asked)
    w_plus: Tensor  # [N] softmax_G(c (log_rnd + r/alpha))
    proximal: Tensor  # [N] the c used for each row's group
    ess: Tensor  # [N] normalised ESS of w+ in each row's group


def dmpo_weights(
    log_rnd: Tensor,
    rewards: Tensor,
    group_ids: Tensor,
    alpha: float,
    proximal: float = 1.0,
    target_ess: float | None = None,
    baseline: Baseline = "negative",
    strength: float = 1.0,
    scale_by_std: bool = False,
    current_log_ratio: Tensor | None = None,
) -> DMPOWeights:
    """DMPO's per-group weights and advantages (design §2.1); all tensors ``[N]``.

    ``current_log_ratio`` = log p_theta - log p_old, needed by the ``unbiased`` baseline.
    """
    log_rnd, rewards = log_rnd.double(), rewards.double()
    tilt = log_rnd + rewards / alpha
    c = torch.full_like(tilt, proximal)
    if target_ess is not None:
        c = adaptive_proximal(tilt, group_ids, target_ess, proximal)
    w_plus = group_softmax(c * tilt, group_ids)
    if baseline == "negative":
        centre = group_softmax(c * (log_rnd - rewards / alpha), group_ids)
    elif baseline == "mean":
        centre = 1.0 / group_size(group_ids).to(tilt)
    elif baseline == "unbiased":
        if current_log_ratio is None:
            raise ValueError("the unbiased baseline needs current_log_ratio = log p_theta - log p_old")
        centre = group_softmax(current_log_ratio.double(), group_ids)
    else:
        centre = torch.zeros_like(tilt)
    advantage = w_plus - strength * centre
    if scale_by_std:
        advantage = advantage / (group_std(advantage, group_ids) + 1e-8)
    return DMPOWeights(advantage.float(), w_plus.float(), c.float(), normalized_ess(w_plus, group_ids).float())


def adaptive_proximal(
    tilt: Tensor, group_ids: Tensor, target_ess: float, c_max: float = 1.0, iterations: int = 40
) -> Tensor:
    """Per-row c in (0, c_max]: the largest c whose group weights softmax(c * tilt) keep a
    normalised ESS >= ``target_ess`` (ESS falls as c grows; c -> 0 gives uniform weights)."""
    lo = torch.zeros_like(tilt)
    hi = torch.full_like(tilt, c_max)
    ok_at_max = normalized_ess(group_softmax(hi * tilt, group_ids), group_ids) >= target_ess
    for _ in range(iterations):
        mid = (lo + hi) / 2
        ok = normalized_ess(group_softmax(mid * tilt, group_ids), group_ids) >= target_ess
        lo, hi = torch.where(ok, mid, lo), torch.where(ok, hi, mid)
    return torch.where(ok_at_max, torch.full_like(tilt, c_max), lo)


def wdce_loss(policy: MaskedDiffusionPolicy, rollout: RolloutBatch, advantage: Tensor, views: MaskedViews) -> Tensor:
    """sum_i a_i * (1/R) sum_r (1/m_r) sum_{d in M_r} CE: the weights of ``views`` carry 1/(R m_r)."""
    return weighted_denoising_ce(policy, rollout.batch, advantage, views)


class DMPO(Objective):
    Config = DMPOConfig
    config: DMPOConfig
    preferred_estimator = "elbo"

    @property
    def needs_reference(self) -> bool:
        return self.config.reference == "policy"

    @property
    def needs_sampler(self) -> frozenset[str]:
        if self.config.log_ratio != "path":
            return frozenset()
        return frozenset({"exact_path", "scorer_logprobs"} if self.needs_reference else {"exact_path", "token_logprobs"})

    @property
    def needs_estimator(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset({"sequence"}) if self.config.log_ratio == "estimator" else frozenset()

    def rollout_scorers(self, ctx: ObjectiveContext) -> list[MaskedDiffusionPolicy]:
        path = self.config.log_ratio == "path" and self.needs_reference
        return [ctx.ref_policy] if path and ctx.ref_policy is not None else []

    # -------------------------------------------------------------------------------------------
    def prepare(self, rollout: RolloutBatch, ctx: ObjectiveContext) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.config.log_ratio == "estimator" or self.config.baseline == "unbiased":
            # views shared by ref and old (and by the current policy for the unbiased baseline)
            order = None if rollout.sample is None else rollout.sample.order
            out["views"] = ctx.estimator.draw(rollout.batch, ctx.generator, order)
            out["lp_old"] = ctx.estimator.score(ctx.policy, rollout.batch, out["views"]).sequence()
        uniform = self.config.reference == "uniform"  # log p_ref is a constant: dropped
        if self.config.log_ratio == "path":
            s = rollout.sample
            if s is None or s.token_logprobs is None or (not uniform and not s.scorer_logprobs):
                raise ConfigError(
                    "dmpo log_ratio=path needs a sampler that records the log-probs along its path "
                    "(and the reference's, unless reference=uniform): sampler ancestral; or set "
                    "objective.log_ratio=estimator"
                )
            lp_ref = 0.0 if uniform else s.scorer_logprobs[0].sum(-1)
            out["log_rnd"] = lp_ref - s.token_logprobs.sum(-1)
            return out
        if uniform:
            out["log_rnd"] = -out["lp_old"]
            return out
        if ctx.ref_policy is None:
            raise ConfigError("dmpo needs a reference policy")
        lp_ref = ctx.estimator.score(ctx.ref_policy, rollout.batch, out["views"]).sequence()
        out["log_rnd"] = lp_ref - out["lp_old"]
        return out

    def weigh(self, rollout: RolloutBatch, prepared: dict[str, Any], ctx: ObjectiveContext) -> dict[str, Any]:
        return self._weigh(rollout, prepared, ctx, current_log_ratio=None)

    def begin_iteration(
        self, rollout: RolloutBatch, prepared: dict[str, Any], ctx: ObjectiveContext, iteration: int
    ) -> dict[str, Any]:
        if self.config.baseline != "unbiased" or iteration == 0 or "views" not in prepared:
            return prepared
        lp_now = ctx.estimator.score(ctx.policy, rollout.batch, prepared["views"]).sequence()
        return self._weigh(rollout, prepared, ctx, current_log_ratio=lp_now - prepared["lp_old"])

    def _weigh(
        self, rollout: RolloutBatch, prepared: dict[str, Any], ctx: ObjectiveContext, current_log_ratio: Tensor | None
    ) -> dict[str, Any]:
        cfg = self.config
        log_rnd = prepared["log_rnd"]
        if cfg.baseline == "unbiased" and current_log_ratio is None:
            current_log_ratio = torch.zeros_like(log_rnd)  # iteration 0: theta == old
        tensors = [log_rnd, rollout.rewards.to(log_rnd), rollout.group_ids]
        if current_log_ratio is not None:
            tensors.append(current_log_ratio)
        gathered, local = ctx.gather_groups(*tensors)
        g_log_rnd, g_rewards, g_ids = gathered[:3]
        w = dmpo_weights(
            g_log_rnd, g_rewards, g_ids, cfg.alpha, cfg.proximal, cfg.target_ess, cfg.baseline,
            cfg.baseline_strength, cfg.scale_by_std, gathered[3] if current_log_ratio is not None else None,
        )
        out = dict(prepared)
        out["advantage"] = w.advantage[local]
        reward_std = per_group(group_std(g_rewards, g_ids), g_ids)
        out["metrics"] = {
            "ess": per_group(w.ess, g_ids).mean().item(),
            "proximal": per_group(w.proximal, g_ids).mean().item(),
            "log_ratio_mean": g_log_rnd.mean().item(),
            "log_ratio_std": g_log_rnd.std().item() if g_log_rnd.numel() > 1 else 0.0,
            "weight_max": w.w_plus.max().item(),
            "advantage_abs_mean": w.advantage.abs().mean().item(),
            "frac_reward_zero_std": (reward_std < 1e-6).float().mean().item(),
            "num_groups": float(group_index(g_ids)[1]),
        }
        return out

    def loss(
        self, rollout: RolloutBatch, prepared: dict[str, Any], ctx: ObjectiveContext, iteration: int
    ) -> ObjectiveOutput:
        cfg = self.config
        valid = rollout.batch.completion_mask
        eos = ctx.policy.eos_token_id
        if cfg.mask_up_to_eos and eos is not None:
            valid = valid & truncate_after_eos(rollout.batch.completion_ids, eos)
        views = antithetic_masks(valid, cfg.loss_replicates, ctx.generator, cfg.loss_rate_range, "inverse_masked")
        loss = wdce_loss(ctx.policy, rollout, prepared["advantage"], views)
        return ObjectiveOutput(loss, {"wdce": loss.item()})
