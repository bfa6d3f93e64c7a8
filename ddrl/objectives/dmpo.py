"""`dmpo`: Distribution Matching Policy Optimization, the weighted denoising cross-entropy (WDCE).

Paper: arXiv 2510.08233; docs/objectives.md ("DMPO"). The rollouts o_i ~ p_old are importance-weighted
samples of the tilted target p*(o|q) ∝ p_ref(o|q) exp(r(q,o)/alpha); per prompt group

    w+ = softmax_G(c (log_rnd + r/alpha)),    log_rnd = log p_ref(o) - log p_old(o),

and the loss is the denoising cross-entropy weighted by the advantage a = w+ - strength * baseline:

    L(theta) = sum_i a_i * (1/R) sum_r (1/m_r) sum_{d in M_r} -log pi_theta(o with M_r masked)_{d, o_d}.

Where ddrl follows the published code: log_rnd by the ELBO estimator with masks shared by
ref and old (default), or exact along the ancestral sampler's path (first version); weights
normalised over the group gathered from all processes; frozen for the mu optimizer steps of a
rollout batch; R antithetic loss masks with rates lambda ~ U[0.1, 1] drawn afresh at every step;
the prompt never masked; summed, not averaged, over the micro-batch.
Departures: none intended; `unbiased` re-estimates log p_theta at the start of each inner
iteration on the views used for log p_old (at iteration 0 it equals the `mean` baseline).

``reference: uniform`` is MDNS's setting (arXiv 2508.10684, energy targets): p_ref(o) = V^-L for
every completion, so there is no reference model and log_rnd = -log p_old(o) up to a constant,
which the group softmax ignores. With alpha = 1, ``log_ratio: path`` and the ``ancestral`` sampler
(the path record of ``objectives.path``) the weights are exactly MDNS's
softmax(r - log p_old(o; sigma)), and ``baseline: none`` is its WDCE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any, Literal, NamedTuple

import torch
from pydantic import AliasChoices, ConfigDict, Field, model_validator
from torch import Tensor

from ddrl.batch import SequenceBatch
from ddrl.config import ConfigError
from ddrl.estimators.base import MaskedViews, score_views
from ddrl.estimators.masks import antithetic_masks
from ddrl.models.base import MaskedDiffusionPolicy
from ddrl.objectives.base import Objective, ObjectiveConfig, ObjectiveContext, ObjectiveOutput, RolloutBatch, Weighed
from ddrl.objectives.denoising import wdce, wdce_by_parts
from ddrl.objectives.groups import Groups, group_size, group_softmax, group_std, normalized_ess, per_group
from ddrl.objectives.path import Reference, path_records, path_scorers, recorded_path
from ddrl.objectives.replay import PooledBatch, ReplayPool, prompt_keys, resample_rows
from ddrl.rows import RowState

Baseline = Literal["negative", "mean", "unbiased", "none"]

# The published code's settings (arXiv 2510.08233): one flag away, ``objective.preset=published``.
# On exact problems the negative baseline collapses to a point mass (docs/dmpo.md); the robust
# defaults are the field defaults below.
PUBLISHED = {
    "proximal": 1.0, "target_ess": None, "baseline": "negative", "baseline_strength": 1.0,
    "scale_by_std": False, "loss_replicates": 4, "defensive": 0.0, "log_ratio": "estimator", "replay": 1,
}


class DMPOConfig(ObjectiveConfig):
    model_config = ConfigDict(extra="forbid")

    name: str = "dmpo"
    preset: Literal["robust", "published"] = Field(
        "robust", description="robust: ddrl's defaults (docs/dmpo.md); published: the paper's settings, unless set here"
    )
    alpha: float = Field(0.04, gt=0, description="temperature of the tilt exp(r / alpha)")
    proximal: float = Field(1.0, gt=0, le=1, description="c: 1 = full tilt; < 1 interpolates towards p_old")
    target_ess: float | None = Field(
        None, gt=0, le=1, description="adaptive c per group so that 1/(G sum w^2) hits this (e.g. 0.7)"
    )
    baseline: Baseline = Field("none", description="subtracted from w+: none (plain WDCE), mean, unbiased, negative")
    baseline_strength: float = Field(1.0, ge=0)
    scale_by_std: bool = Field(False, description="divide the advantages by their group std")
    log_ratio: Literal["auto", "estimator", "path"] = Field(
        "auto", description="path: exact, from the sampler's path record (ancestral; block/fast with one token "
        "per step); estimator: ELBO after generation (published); auto: path where the sampler records it, else estimator",
    )
    reference: Reference = Field(
        "policy", description="policy: the frozen initial policy; uniform: p_ref = V^-L, no reference model (MDNS)"
    )
    loss_replicates: int = Field(4, ge=2, description="R antithetic loss masks per completion (even)")
    loss_rate_range: tuple[float, float] = (0.1, 1.0)
    mask_after_eos: bool = Field(
        False, description="loss masks only up to (and including) the first EOS",
        validation_alias=AliasChoices("mask_after_eos", "mask_up_to_eos"),  # the earlier name still loads
    )
    defensive: float = Field(
        0.25, ge=0, lt=1,
        description="epsilon: share of each group drawn from the reference; weights against (1-eps) p_old + eps p_ref "
        "(not used with reference=uniform)",
    )
    replay: int = Field(
        16, ge=1,
        description="rollout batches pooled per prompt: the current one and replay-1 earlier ones, each completion "
        "weighed against the proposal it was drawn from (1 = no replay; docs/dmpo.md)",
    )
    replay_rows: Literal["resample", "all"] = Field(
        "resample",
        description="resample: each inner iteration draws as many loss rows as one rollout batch has from the pool, "
        "in proportion to |advantage| (the loss costs what it costs without replay); all: every pooled row",
    )

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        """``preset: published`` fills the published values of every option the section leaves unset."""
        if isinstance(data, dict) and data.get("preset") == "published":
            return {**PUBLISHED, **data}
        return data

    @model_validator(mode="after")
    def _check(self) -> DMPOConfig:
        if self.loss_replicates % 2:
            raise ValueError(f"loss_replicates must be even (antithetic pairs), got {self.loss_replicates}")
        lo, hi = self.loss_rate_range
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"loss_rate_range must satisfy 0 < lo <= hi <= 1, got {self.loss_rate_range}")
        if self.defensive > 0 and self.reference == "uniform":
            if "defensive" in self.model_fields_set:
                raise ValueError("defensive draws come from the reference policy: set reference=policy or defensive=0")
            self.defensive = 0.0  # the default share needs a reference model to draw from
        if self.replay > 1 and self.baseline == "unbiased":
            if "replay" in self.model_fields_set:
                raise ValueError("baseline unbiased re-estimates log p_theta on the current rollout batch only: set replay=1")
            self.replay = 1  # the default pool does not apply to the unbiased baseline
        return self


class DMPOWeights(NamedTuple):
    advantages: Tensor  # [N] a = w+ - strength * b (divided by the group std if asked)
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
    baseline: Baseline = "none",
    strength: float = 1.0,
    scale_by_std: bool = False,
    current_log_ratio: Tensor | None = None,
) -> DMPOWeights:
    """DMPO's per-group weights and advantages; all tensors ``[N]`` (docs/objectives.md)::

        w+ = softmax_G(c (log_rnd + r/alpha))       c fixed, or adaptive to hit target_ess
        a  = w+ - strength * b                       b from ``dmpo_baseline``
        a  = a / std_G(a)                            if scale_by_std

    ``current_log_ratio`` = log p_theta - log p_old, needed by the ``unbiased`` baseline.
    """
    log_rnd, rewards = log_rnd.double(), rewards.double()
    tilt = log_rnd + rewards / alpha
    c = torch.full_like(tilt, proximal)
    if target_ess is not None:
        c = adaptive_proximal(tilt, group_ids, target_ess, proximal)
    w_plus = group_softmax(c * tilt, group_ids)
    advantages = w_plus - strength * dmpo_baseline(baseline, log_rnd, rewards / alpha, c, group_ids, current_log_ratio)
    if scale_by_std:
        advantages = advantages / (group_std(advantages, group_ids) + 1e-8)
    return DMPOWeights(advantages.float(), w_plus.float(), c.float(), normalized_ess(w_plus, group_ids).float())


def dmpo_baseline(
    kind: Baseline, log_rnd: Tensor, reward_tilt: Tensor, c: Tensor, group_ids: Tensor, current_log_ratio: Tensor | None
) -> Tensor:
    """``[N]`` b, what is subtracted from w+ (``reward_tilt`` = r/alpha):

    negative: softmax_G(c (log_rnd - r/alpha)), the oppositely tilted weights (sums with w+ to 0 per
    group, 0 advantage for equal rewards); mean: 1/G; unbiased: softmax_G(log p_theta - log p_old);
    none: 0 (plain WDCE).
    """
    if kind == "negative":
        return group_softmax(c * (log_rnd - reward_tilt), group_ids)
    if kind == "mean":
        return 1.0 / group_size(group_ids).to(log_rnd)
    if kind == "unbiased":
        if current_log_ratio is None:
            raise ValueError("the unbiased baseline needs current_log_ratio = log p_theta - log p_old")
        return group_softmax(current_log_ratio.double(), group_ids)
    return torch.zeros_like(log_rnd)


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


def mixture_log_ratio(ref_logp: Tensor, old_logp: Tensor, share: float) -> Tensor:
    """``[B]`` log p_ref - log q, q the proposal: p_old, or with a defensive ``share`` eps of every
    group drawn from p_ref the mixture q = (1 - eps) p_old + eps p_ref (weights then stay below
    exp(r/alpha) / eps, and no group can consist of one repeated completion)."""
    if share == 0:
        return ref_logp - old_logp
    log_q = torch.logaddexp(old_logp + math.log1p(-share), ref_logp + math.log(share))
    return ref_logp - log_q


@dataclass
class DMPOState(RowState):
    """What DMPO freezes per rollout batch.

    Attributes:
        log_rnd: ``[B]`` log p_ref(o) - log p_old(o) (up to a constant for the uniform reference).
        views: the masked views log p_old (and log p_ref) were estimated on, shared with the
            current policy by the ``unbiased`` baseline; None with exact path weights.
        old_logp: ``[B]`` log p_old(o) estimated on ``views`` (None without views).
        advantages: ``[B]`` a, set by ``weigh``.
        row: ``[B]`` each row's position in the rollout batch (set by ``weigh`` when replaying).
        replay_advantages: ``[B, P]`` the pooled advantage of the same position in each of the P
            earlier rollout batches replayed with this one (``objectives.replay``), or None.
    """

    log_rnd: Tensor
    views: MaskedViews | None = None
    old_logp: Tensor | None = None
    advantages: Tensor | None = None
    row: Tensor | None = None
    replay_advantages: Tensor | None = None


class DMPO(Objective[DMPOState]):
    Config = DMPOConfig
    config: DMPOConfig
    preferred_estimator = "elbo"

    def __init__(self, config: DMPOConfig) -> None:
        super().__init__(config)
        self.pool = ReplayPool(config.replay)
        self._replayed: list[PooledBatch] = []  # the pooled batches the current rollout batch's state links to

    def state_dict(self) -> dict[str, Tensor]:
        """The replay pool (this process's rows of the last replay-1 rollout batches)."""
        return self.pool.state_dict()

    def load_state_dict(self, tensors: dict[str, Tensor]) -> None:
        self.pool.load_state_dict(tensors)

    @property
    def needs_reference(self) -> bool:
        return self.config.reference == "policy"

    @property
    def exact_path(self) -> bool:
        """log_rnd from the sampler's path record, required (``log_ratio: path``)."""
        return self.config.log_ratio == "path"

    def uses_path(self, ctx: ObjectiveContext) -> bool:
        """Whether log_rnd comes from the path record in this run: required, or (``auto``) the
        sampler records it (``ctx.sampler_records``)."""
        if self.config.log_ratio == "auto":
            return path_records(self.needs_reference) <= ctx.sampler_records
        return self.exact_path

    @property
    def reestimates(self) -> bool:
        """The unbiased baseline: log p_theta - log p_old re-estimated before every inner iteration."""
        return self.config.baseline == "unbiased"

    @property
    def reference_share(self) -> float:
        return self.config.defensive

    @property
    def needs_sampler(self) -> frozenset[str]:
        return path_records(self.needs_reference) if self.exact_path else frozenset()

    @property
    def needs_estimator(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset() if self.exact_path else frozenset({"sequence"})

    def rollout_scorers(self, ctx: ObjectiveContext) -> list[MaskedDiffusionPolicy]:
        return path_scorers(ctx, self.needs_reference) if self.uses_path(ctx) else []

    # -------------------------------------------------------------------------------------------
    def prepare(self, rollout: RolloutBatch, ctx: ObjectiveContext) -> DMPOState:
        views = old_logp = None
        path_mode = self.uses_path(ctx)
        if not path_mode or self.reestimates:
            # views shared by ref and old (and by the current policy for the unbiased baseline)
            views = ctx.estimator.draw(rollout.batch, ctx.generator, rollout.order)
            old_logp = ctx.estimator.score(ctx.policy, rollout.batch, views).sequence()
        if path_mode:
            path = recorded_path(rollout, self.needs_reference, "dmpo log_ratio=path", "set objective.log_ratio=estimator")
            old, ref = path.old_logp, path.ref_logp
        elif not self.needs_reference:
            old, ref = old_logp, None
        elif ctx.ref_policy is None:
            raise ConfigError("dmpo needs a reference policy")
        else:
            old, ref = old_logp, ctx.estimator.score(ctx.ref_policy, rollout.batch, views).sequence()  # type: ignore[arg-type]
        # the uniform reference's log p_ref is a constant: dropped
        log_rnd = -old if ref is None else mixture_log_ratio(ref, old, self.config.defensive)  # type: ignore[operator]
        return DMPOState(log_rnd, views, old_logp)

    def weigh(self, rollout: RolloutBatch, state: DMPOState, ctx: ObjectiveContext) -> Weighed[DMPOState]:
        # iteration 0 of the unbiased baseline: theta == old, log p_theta - log p_old = 0
        current = torch.zeros_like(state.log_rnd) if self.reestimates else None
        weighed = self._weigh(rollout, state, ctx, current)
        if self.config.replay == 1:
            return weighed
        return self._weigh_pooled(rollout, weighed, ctx)

    def _weigh_pooled(self, rollout: RolloutBatch, weighed: Weighed[DMPOState], ctx: ObjectiveContext) -> Weighed[DMPOState]:
        """Weights self-normalised per prompt over this rollout batch and the pooled earlier ones
        (``objectives.replay``); the batch's own weights give the logged ``ess`` as without replay."""
        cfg, state = self.config, weighed.state
        b = len(rollout)
        keys = prompt_keys(rollout.batch)
        past = self.pool.fits(b)
        parts = [PooledBatch(rollout.batch, rollout.rewards, state.log_rnd, keys), *reversed(past)]  # newest first
        pooled = RolloutBatch(SequenceBatch.cat([p.batch for p in parts]), torch.cat([p.rewards for p in parts]),
                              torch.cat([p.keys for p in parts]))
        groups, (log_rnd,) = ctx.groups(pooled, torch.cat([p.log_rnd for p in parts]))
        w = dmpo_weights(log_rnd, groups.rewards, groups.ids, cfg.alpha, cfg.proximal, cfg.target_ess, cfg.baseline,
                         cfg.baseline_strength, cfg.scale_by_std)
        # as much loss weight as the current batch's groups alone would carry (prompts that do not repeat
        # make more groups in the pool than in one batch)
        current_groups = ctx.groups(rollout)[0].count
        advantages = groups.mine(w.advantages) * (current_groups / groups.count)
        by_batch = advantages.view(len(parts), b)
        self._replayed = parts[1:]
        self.pool.push(parts[0])
        state = replace(state, advantages=by_batch[0].float(), row=torch.arange(b, device=advantages.device),
                        replay_advantages=by_batch[1:].T.float().contiguous())
        metrics = {**weighed.metrics, "replay_batches": float(len(past)),
                   "replay_ess": per_group(w.ess, groups.ids).mean().item(),
                   "replay_groups": float(groups.count)}
        return Weighed(state, metrics)

    def begin_iteration(self, rollout: RolloutBatch, state: DMPOState, ctx: ObjectiveContext, iteration: int) -> DMPOState:
        if not self.reestimates or iteration == 0 or state.views is None:
            return state
        now = ctx.estimator.score(ctx.policy, rollout.batch, state.views).sequence()
        return self._weigh(rollout, state, ctx, now - state.old_logp).state

    def _weigh(
        self, rollout: RolloutBatch, state: DMPOState, ctx: ObjectiveContext, current_log_ratio: Tensor | None
    ) -> Weighed[DMPOState]:
        cfg = self.config
        extra = [] if current_log_ratio is None else [current_log_ratio]
        groups, (log_rnd, *current) = ctx.groups(rollout, state.log_rnd, *extra)
        w = dmpo_weights(
            log_rnd, groups.rewards, groups.ids, cfg.alpha, cfg.proximal, cfg.target_ess, cfg.baseline,
            cfg.baseline_strength, cfg.scale_by_std, current[0] if current else None,
        )
        return Weighed(replace(state, advantages=groups.mine(w.advantages)), self._metrics(groups, log_rnd, w))

    @staticmethod
    def _metrics(groups: Groups, log_rnd: Tensor, w: DMPOWeights) -> dict[str, float]:
        return {
            "ess": per_group(w.ess, groups.ids).mean().item(),
            "proximal": per_group(w.proximal, groups.ids).mean().item(),
            "log_ratio_mean": log_rnd.mean().item(),
            "log_ratio_std": log_rnd.std().item() if log_rnd.numel() > 1 else 0.0,
            "weight_max": w.w_plus.max().item(),
            "advantage_abs_mean": w.advantages.abs().mean().item(),
            "frac_reward_zero_std": groups.frac_reward_zero_std(),
            "frac_groups_identical": groups.frac_identical(),
            "num_groups": float(groups.count),
        }

    def loss(self, rollout: RolloutBatch, state: DMPOState, ctx: ObjectiveContext, iteration: int) -> ObjectiveOutput:
        cfg = self.config
        sequences, advantages = self.loss_rows(rollout, state, ctx)
        batch = ctx.counted(sequences, cfg.mask_after_eos)
        views = antithetic_masks(batch.completion_mask, cfg.loss_replicates, ctx.generator, cfg.loss_rate_range, "inverse_masked")
        if ctx.loss_micro_batch_size is not None and ctx.backward is not None:
            loss = wdce_by_parts(ctx.policy, sequences, views, advantages, ctx.loss_micro_batch_size, ctx.backward)
            return ObjectiveOutput(loss, {"wdce": loss.item()}, backward_done=True)
        loss = wdce(score_views(ctx.policy, sequences, views), views.weights, advantages)
        return ObjectiveOutput(loss, {"wdce": loss.item()})

    def loss_rows(self, rollout: RolloutBatch, state: DMPOState, ctx: ObjectiveContext) -> tuple[SequenceBatch, Tensor]:
        """The sequences the loss scores and their advantages: the rollout's rows; with replay, also
        the same positions of the pooled earlier batches, all of them (``replay_rows: all``) or as
        many rows as the rollout has, resampled by |advantage| (``resample``)."""
        if state.replay_advantages is None or state.row is None or not self._replayed:
            return rollout.batch, state.advantages  # type: ignore[return-value]
        rows = state.row.cpu()
        sequences = SequenceBatch.cat([rollout.batch, *(p.batch.index(rows) for p in self._replayed)])
        advantages = torch.cat([state.advantages, *state.replay_advantages.unbind(1)])  # type: ignore[list-item]
        if self.config.replay_rows == "all":
            return sequences, advantages
        picked, picked_advantages = resample_rows(advantages, len(rollout), ctx.generator)
        if picked.numel() == 0:  # every advantage 0: a zero loss on the rollout's rows
            return rollout.batch, torch.zeros_like(state.advantages)  # type: ignore[arg-type]
        return sequences.index(picked.to(sequences.prompt_ids.device)), picked_advantages.to(advantages)
