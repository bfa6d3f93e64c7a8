"""`exact`: the random-order autoregressive likelihood (docs/objectives.md, "Path likelihoods").

For an unmasking order sigma the path likelihood is exact and costs L forward passes:

    log p(o | q; sigma) = sum_d log pi(x~^{sigma,<d})_{sigma_d, o_{sigma_d}}

With ``orders: given`` the estimator scores the order the sampler recorded (or a uniformly random
one when none is known); the result is an unbiased estimate of p(o|q), not of its log.
With ``orders: all`` it returns log p(o|q) = log mean_sigma p(o|q; sigma) exactly, by dynamic
programming over the 2^L revealed sets (every order passes through the same canvases), which is
feasible for L up to ~12.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import ConfigDict, Field
from torch import Tensor

from ddrl.batch import SequenceBatch
from ddrl.estimators.base import EstimatorConfig, LikelihoodEstimator, MaskedViews, TokenLogProbs, score_views
from ddrl.estimators.masks import order_masks, random_order
from ddrl.models.base import MaskedDiffusionPolicy

MAX_ENUMERATED_LENGTH = 12


class ExactConfig(EstimatorConfig):
    model_config = ConfigDict(extra="forbid")

    name: str = "exact"
    orders: Literal["given", "all"] = Field(
        "given", description="given: the sampler's (or a random) order; all: every order, by DP"
    )


class ExactEstimator(LikelihoodEstimator):
    """Exact path likelihood along an order (one view per unmasking step)."""

    Config = ExactConfig
    provides = frozenset({"token", "sequence", "exact_path"})
    config: ExactConfig

    def draw(
        self, batch: SequenceBatch, generator: torch.Generator | None = None, order: Tensor | None = None
    ) -> MaskedViews:
        if order is None:
            order = random_order(batch.completion_mask, generator)
        return order_masks(batch.completion_mask, order)

    def log_likelihood(
        self,
        policy: MaskedDiffusionPolicy,
        batch: SequenceBatch,
        generator: torch.Generator | None = None,
        order: Tensor | None = None,
    ) -> Tensor:
        if self.config.orders == "all":
            return log_likelihood_all_orders(policy, batch, self.config.micro_batch_size)
        return super().log_likelihood(policy, batch, generator, order)

    def log_ratio(
        self,
        numerator: MaskedDiffusionPolicy,
        denominator: MaskedDiffusionPolicy,
        batch: SequenceBatch,
        generator: torch.Generator | None = None,
        order: Tensor | None = None,
    ) -> Tensor:
        if self.config.orders == "all":
            mb = self.config.micro_batch_size
            return log_likelihood_all_orders(numerator, batch, mb) - log_likelihood_all_orders(denominator, batch, mb)
        return super().log_ratio(numerator, denominator, batch, generator, order)


def subset_views(n: int, batch_size: int, device: torch.device) -> MaskedViews:
    """One view per revealed set S (bit j of s set = position j revealed): ``[B, 2^n, n]``."""
    bits = (torch.arange(2**n, device=device)[:, None] >> torch.arange(n, device=device)) & 1
    masked = (bits == 0)[None].expand(batch_size, -1, -1)
    return MaskedViews(masked, masked, masked.float())


def log_likelihood_all_orders(
    policy: MaskedDiffusionPolicy, batch: SequenceBatch, micro_batch_size: int | None = None
) -> Tensor:
    """``[B]`` log p(o|q) = log (1/L!) sum_sigma p(o|q; sigma), exactly.

    g(S) = log sum over orders that reveal exactly S of their probability; g(empty) = 0 and
    g(S) = logsumexp_{j in S} [ g(S - j) + log pi(canvas revealing S - j)_{j, o_j} ].
    """
    n = batch.completion_length
    if n > MAX_ENUMERATED_LENGTH:
        raise ValueError(
            f"exact enumeration over orders needs 2^L forward passes; L={n} > {MAX_ENUMERATED_LENGTH}. "
            "Use orders: given (one path) or the elbo estimator."
        )
    if not bool(batch.completion_mask.all()):
        raise ValueError("exact enumeration scores the whole completion; completion_mask must be all True")
    views = subset_views(n, batch.batch_size, batch.device)
    lp = TokenLogProbs(score_views(policy, batch, views, micro_batch_size), views).logprobs  # (B, 2^n, n)
    columns = [torch.zeros(batch.batch_size, device=lp.device, dtype=lp.dtype)]  # g(empty set)
    for s in range(1, 2**n):
        terms = [columns[s ^ (1 << j)] + lp[:, s ^ (1 << j), j] for j in range(n) if s >> j & 1]
        columns.append(torch.logsumexp(torch.stack(terms, -1), -1))
    return columns[-1] - math.lgamma(n + 1)
