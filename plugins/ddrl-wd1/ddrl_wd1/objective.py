"""`wd1`: weighted policy optimisation for diffusion LLMs (arXiv 2507.08838).

Per prompt group, with the group-relative advantage A_i = r_i - mean_group(r) (no std division),

    w+ = softmax_G(A),    w- = softmax_G(-A),    L(theta) = -sum_i (w+_i - w-_i) S_i,

where S_i = sum_t log pi_theta(o_t | masked input) is d1's one-step estimate (the `one_step`
estimator: every completion token masked, each prompt token masked with p = 0.15), summed over the
completion up to and including the first EOS, not length-normalised; the loss is summed over the
micro-batch. ``positive_only`` keeps the w+ term alone. No reference model, no ratio, no clipping:
a rollout batch serves mu optimizer steps with a fresh mask at each.

Departures from the published code (none changes the loss in the published setting):
1. The softmax runs over each prompt's group gathered from every process; the published code
   softmaxes the per-device micro-batch, which is one group when per_device_train_batch_size =
   num_generations = 6, its setting.
2. The prompt's left padding is never masked and is not attended to; the published LLaDA forward
   gets no attention mask.
3. Masks come from ddrl's keyed generator (per rollout, inner iteration and chunk) instead of one
   integer seed per iteration; same distribution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from pydantic import ConfigDict, Field
from torch import Tensor

from ddrl.objectives.base import Objective, ObjectiveConfig, ObjectiveContext, ObjectiveOutput, RolloutBatch, Weighed
from ddrl.objectives.groups import group_advantages, group_softmax
from ddrl.rows import RowState


class WD1Config(ObjectiveConfig):
    model_config = ConfigDict(extra="forbid")

    name: str = "wd1"
    positive_only: bool = Field(False, description="keep only the w+ = softmax(A) term (the paper's ablation)")
    mask_after_eos: bool = Field(True, description="count completion tokens up to the first EOS only")


class WD1Weights(NamedTuple):
    coefficient: Tensor  # [N] w+ - w- (or w+ with positive_only): the weight of S_i in -L
    w_plus: Tensor  # [N] softmax_G(A)
    w_minus: Tensor  # [N] softmax_G(-A)
    advantages: Tensor  # [N] A = r - mean_group(r)


def wd1_weights(rewards: Tensor, group_ids: Tensor, positive_only: bool = False) -> WD1Weights:
    """wd1's per-group weights; all tensors ``[N]`` (a batch gathered over processes).

    A = (a, -a) gives w+ - w- = (tanh a, -tanh a); equal rewards give 0. Shifting the rewards
    leaves every weight unchanged (A is centred), scaling them does not (softmax is not scale-free).
    """
    advantages = group_advantages(rewards, group_ids)
    w_plus = group_softmax(advantages, group_ids)
    w_minus = group_softmax(-advantages, group_ids)
    coefficient = w_plus if positive_only else w_plus - w_minus
    return WD1Weights(coefficient.float(), w_plus.float(), w_minus.float(), advantages.float())


def wd1_loss(coefficient: Tensor, log_likelihood: Tensor) -> Tensor:
    """L = -sum_i c_i S_i: ``coefficient [B]`` (frozen), ``log_likelihood [B]`` S_i with gradient."""
    return -(coefficient.to(log_likelihood) * log_likelihood).sum()


@dataclass
class WD1State(RowState):
    """``coefficient [B]``: w+ - w- of each completion, set by ``weigh`` (nothing is frozen per row)."""

    coefficient: Tensor | None = None


class WD1(Objective[WD1State]):
    """wd1 on any estimator whose ``sequence()`` is a log-likelihood surrogate (published: one_step)."""

    Config = WD1Config
    config: WD1Config
    needs_estimator = frozenset({"sequence"})
    preferred_estimator = "one_step"

    def prepare(self, rollout: RolloutBatch, ctx: ObjectiveContext) -> WD1State:
        return WD1State()  # no old or reference log-probs

    def weigh(self, rollout: RolloutBatch, state: WD1State, ctx: ObjectiveContext) -> Weighed[WD1State]:
        groups, _ = ctx.groups(rollout)
        w = wd1_weights(groups.rewards, groups.ids, self.config.positive_only)
        metrics = {
            "coefficient_abs_mean": w.coefficient.abs().mean().item(),
            "weight_max": w.w_plus.max().item(),
            "frac_reward_zero_std": groups.frac_reward_zero_std(),
            "num_groups": float(groups.count),
        }
        return Weighed(WD1State(groups.mine(w.coefficient)), metrics)

    def loss(self, rollout: RolloutBatch, state: WD1State, ctx: ObjectiveContext, iteration: int) -> ObjectiveOutput:
        batch = ctx.counted(rollout.batch, self.config.mask_after_eos)
        views = ctx.estimator.draw(batch, ctx.generator, rollout.order)  # fresh masks at every step
        log_likelihood = ctx.estimator.score(ctx.policy, batch, views).sequence()  # (B,) S_i
        loss = wd1_loss(state.coefficient, log_likelihood)
        return ObjectiveOutput(loss, {"log_likelihood": log_likelihood.mean().item()})
