"""`elbo`: the masked-diffusion evidence lower bound by Monte Carlo (docs/objectives.md, "Path likelihoods").

    log p(o|q) >= E_{m ~ U{1..L}} (L/m) E_{|M|=m} sum_{d in M} log pi(o with M masked)_{d, o_d}

Two mask schemes:

* ``stratified`` (default): K masks with counts spread evenly over 1..L and uniform positions, an
  unbiased estimate of the bound above.
* ``antithetic``: DMPO's published scheme, K/2 Bernoulli masks with rates lambda ~ U[0.1, 1] and
  their complements; weighted by L/m it is a (biased, lower-variance) surrogate of the same bound.

Draw once and score two policies on the same views for a low-variance log-ratio
(``LikelihoodEstimator.log_ratio``).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import ConfigDict, Field, model_validator
from torch import Tensor

from ddrl.batch import SequenceBatch
from ddrl.estimators.base import EstimatorConfig, LikelihoodEstimator, MaskedViews, score_views
from ddrl.estimators.masks import Weighting, antithetic_masks, stratified_masks
from ddrl.models.base import MaskedDiffusionPolicy


class ElboConfig(EstimatorConfig):
    model_config = ConfigDict(extra="forbid")

    name: str = "elbo"
    num_samples: int = Field(4, ge=1, description="K masked copies per sequence")
    mask_scheme: Literal["stratified", "antithetic"] = "stratified"
    rate_range: tuple[float, float] = Field((0.1, 1.0), description="antithetic: lambda ~ U[lo, hi]")
    weighting: Weighting = Field("elbo", description="elbo: L/m per view; inverse_masked: 1/m")

    @model_validator(mode="after")
    def _check(self) -> ElboConfig:
        lo, hi = self.rate_range
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"rate_range must satisfy 0 < lo <= hi <= 1, got {self.rate_range}")
        if self.mask_scheme == "antithetic" and self.num_samples % 2:
            raise ValueError(f"antithetic masks come in pairs: num_samples must be even, got {self.num_samples}")
        return self


class ElboEstimator(LikelihoodEstimator):
    Config = ElboConfig
    provides = frozenset({"token", "sequence", "sequence_bound"})
    config: ElboConfig

    def draw(
        self, batch: SequenceBatch, generator: torch.Generator | None = None, order: Tensor | None = None
    ) -> MaskedViews:
        cfg = self.config
        if cfg.mask_scheme == "stratified":
            return stratified_masks(batch.completion_mask, cfg.num_samples, generator, cfg.weighting)
        return antithetic_masks(batch.completion_mask, cfg.num_samples, generator, cfg.rate_range, cfg.weighting)


def all_masks_views(n: int, batch_size: int, device: torch.device) -> MaskedViews:
    """Every non-empty mask M of n positions, weighted so the weighted sum is the exact ELBO:
    P(M) * (n/|M|) = 1 / (n C(n,|M|)) * n/|M| = 1 / (|M| C(n,|M|))."""
    bits = ((torch.arange(1, 2**n, device=device)[:, None] >> torch.arange(n, device=device)) & 1).bool()
    m = bits.sum(-1, keepdim=True)
    binom = torch.tensor([math.comb(n, int(k)) for k in m.flatten()], device=device).view(-1, 1)
    weights = bits.float() / (m * binom).float()
    expand = lambda t: t[None].expand(batch_size, -1, -1)  # noqa: E731
    return MaskedViews(expand(bits), expand(bits), expand(weights))


def elbo_enumerated(
    policy: MaskedDiffusionPolicy, batch: SequenceBatch, micro_batch_size: int | None = None
) -> Tensor:
    """``[B]`` the ELBO computed exactly by enumerating all 2^L - 1 masks (tiny L only)."""
    n = batch.completion_length
    if n > 12:
        raise ValueError(f"enumerating every mask needs 2^L forward passes; L={n} is too long")
    if not bool(batch.completion_mask.all()):
        raise ValueError("elbo_enumerated scores the whole completion; completion_mask must be all True")
    views = all_masks_views(n, batch.batch_size, batch.device)
    lp = score_views(policy, batch, views, micro_batch_size)
    return (views.weights * lp).sum((1, 2))
