"""`spg`: Sandwiched Policy Gradient (arXiv 2510.09541).

With A_i = r_i - mean_group(r) (no std division) and len_i the completion's valid length,

    L(theta) = -sum_i A_i len_i P_i / sum_i len_i,

where P_i sandwiches log p_theta(o_i): a lower bound where the reward is above the group mean and an
upper bound where it is not. From K masked views M_1..M_K of the completion (mask rates
t_j = |M_j| / len, the `blockwise` estimator by default):

    ELBO side (A_i > 0):   P = (1/K) sum_j mean_{k in M_j} log pi(o_k | M_j)             (the 1/t-weighted ELBO)
    upper bound (A_i <= 0): q_k = (1/K) sum_j 1[k in M_j] pi(o_k | M_j)^beta / t_j,
                            P = (1/beta) mean_{k: q_k > 0} log q_k

and the published ``mix`` uses omega * upper + (1 - omega) * ELBO (omega = 0.5) on the A <= 0 side.
No reference model, no ratio: a rollout batch serves mu steps with fresh masks at each.

Departures from the published code:
1. log q_k is computed in log space (logsumexp of beta log pi - log t); the published code raises
   float32 probabilities to the power beta, so a token whose pi^beta underflows to 0 silently drops
   out of the mean. Equal otherwise.
2. Masks come from ddrl's keyed generator (per rollout, inner iteration and chunk) instead of one
   integer seed per step; the prompt's left padding is never masked. Same distribution otherwise.
3. Advantages are normalised over each prompt's group gathered from every process (published: the
   gathered batch viewed as groups of G, the same thing).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
from pydantic import ConfigDict, Field
from torch import Tensor

from ddrl.objectives.base import Objective, ObjectiveConfig, ObjectiveContext, ObjectiveOutput, RolloutBatch, Weighed
from ddrl.objectives.groups import group_advantages
from ddrl.rows import RowState

NegativeBound = Literal["mix", "upper", "elbo"]


class SPGConfig(ObjectiveConfig):
    model_config = ConfigDict(extra="forbid")

    name: str = "spg"
    negative_bound: NegativeBound = Field("mix", description="P where A <= 0: mix (published), upper (EUBO) or elbo")
    mix_weight: float = Field(0.5, ge=0, le=1, description="omega: weight of the upper bound in mix")
    eubo_beta: float = Field(1.5, gt=0, description="beta of the upper bound (published 1.5; Sudoku 1.0)")
    mask_after_eos: bool = Field(True, description="count completion tokens up to the first EOS only")


class SandwichBounds(NamedTuple):
    elbo: Tensor  # [B] mean over views of the mean log-prob over masked valid tokens
    upper: Tensor  # [B] (1/beta) mean_k log q_k


def sandwich_bounds(logprobs: Tensor, scored: Tensor, valid: Tensor, beta: float) -> SandwichBounds:
    """SPG's two estimates of log p(o) from K views: ``logprobs, scored [B, K, L]`` (log pi(o_k | view j)
    where scored, anything elsewhere), ``valid [B, L]`` (len = its row sums; t_j = |M_j| / len).

    K = 1 with every valid token masked (t = 1) makes both equal the mean log-prob for any beta;
    K = 1 with mask M gives upper = elbo - log(t) / beta.
    """
    k = logprobs.shape[1]
    m = scored.sum(-1).clamp(min=1)  # (B, K) masked valid tokens of each view (a view with none adds 0)
    elbo = ((logprobs * scored).sum(-1) / m).mean(-1)
    log_t = torch.log(m / valid.sum(-1, keepdim=True).clamp(min=1))  # (B, K)
    present = scored.any(1)  # (B, L) tokens with q_k > 0
    terms = (beta * logprobs - log_t[..., None]).masked_fill(~scored, -math.inf)
    terms = torch.where(present[:, None, :], terms, 0.0)  # keep logsumexp finite where nothing is scored
    log_q = torch.logsumexp(terms, dim=1) - math.log(k)  # (B, L)
    upper = (log_q * present).sum(-1) / present.sum(-1).clamp(min=1) / beta
    return SandwichBounds(elbo, upper)


def spg_loss(
    bounds: SandwichBounds,
    advantages: Tensor,
    lengths: Tensor,
    negative_bound: NegativeBound = "mix",
    mix_weight: float = 0.5,
) -> Tensor:
    """L = -sum_i A_i len_i P_i / sum_i len_i with P_i the ELBO side where A_i > 0 and the chosen
    negative bound elsewhere; ``advantages, lengths [B]``."""
    if negative_bound == "elbo":
        negative = bounds.elbo
    elif negative_bound == "upper":
        negative = bounds.upper
    else:
        negative = mix_weight * bounds.upper + (1 - mix_weight) * bounds.elbo
    a = advantages.to(bounds.elbo)
    p = torch.where(a > 0, bounds.elbo, negative)
    lengths = lengths.to(bounds.elbo)
    return -(a * lengths * p).sum() / lengths.sum().clamp(min=1)


@dataclass
class SPGState(RowState):
    """``advantages [B]``: A = r - mean_group(r), set by ``weigh`` (nothing is frozen per row)."""

    advantages: Tensor | None = None


class SPG(Objective[SPGState]):
    """SPG on any estimator's views (published: `blockwise`, K = 2)."""

    Config = SPGConfig
    config: SPGConfig
    preferred_estimator = "blockwise"

    def prepare(self, rollout: RolloutBatch, ctx: ObjectiveContext) -> SPGState:
        return SPGState()  # no old or reference log-probs

    def weigh(self, rollout: RolloutBatch, state: SPGState, ctx: ObjectiveContext) -> Weighed[SPGState]:
        groups, _ = ctx.groups(rollout)
        advantages = group_advantages(groups.rewards, groups.ids).float()
        metrics = {
            "frac_positive": (advantages > 0).float().mean().item(),
            "frac_reward_zero_std": groups.frac_reward_zero_std(),
        }
        return Weighed(SPGState(groups.mine(advantages)), metrics)

    def loss(self, rollout: RolloutBatch, state: SPGState, ctx: ObjectiveContext, iteration: int) -> ObjectiveOutput:
        cfg = self.config
        batch = ctx.counted(rollout.batch, cfg.mask_after_eos)
        views = ctx.estimator.draw(batch, ctx.generator, rollout.order)  # fresh masks at every step
        logprobs = ctx.estimator.score(ctx.policy, batch, views).logprobs  # (B, K, L)
        bounds = sandwich_bounds(logprobs, views.scored, batch.completion_mask, cfg.eubo_beta)
        lengths = batch.completion_mask.sum(-1)
        loss = spg_loss(bounds, state.advantages, lengths, cfg.negative_bound, cfg.mix_weight)
        return ObjectiveOutput(loss, {"elbo": bounds.elbo.mean().item(), "upper": bounds.upper.mean().item()})
