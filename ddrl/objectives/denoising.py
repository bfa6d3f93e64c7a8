"""The weighted denoising cross-entropy: one loss behind DMPO, SFT and pretraining (design §2.3).

    L(theta) = sum_i a_i * sum_{r, d} w_{i,r,d} * -log pi_theta(o_i with mask M_{i,r})_{d, o_{i,d}}

The mask scheme fixes the per-token weights w (DMPO: antithetic masks with 1/(R m); SFT: LLaDA's
1/(p * answer length)); the row weights a are DMPO's advantages, or 1/B for supervised training.
"""

from __future__ import annotations

from torch import Tensor

from ddrl.batch import SequenceBatch
from ddrl.estimators.base import MaskedViews, score_views
from ddrl.models.base import MaskedDiffusionPolicy


def weighted_denoising_ce(
    policy: MaskedDiffusionPolicy,
    batch: SequenceBatch,
    row_weights: Tensor,
    views: MaskedViews,
    micro_batch_size: int | None = None,
) -> Tensor:
    """``sum_i row_weights[i] * CE_i`` with CE_i = -sum_{r,d} views.weights * log pi: ``row_weights [B]``."""
    logprobs = score_views(policy, batch, views, micro_batch_size)  # (B, R, L)
    denoising_ce = -(views.weights * logprobs).sum((1, 2))  # (B,)
    return (row_weights * denoising_ce).sum()
