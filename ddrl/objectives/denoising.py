"""The weighted denoising cross-entropy: one loss behind DMPO, SFT and pretraining.

    L(theta) = sum_i a_i * sum_{r, d} w_{i,r,d} * -log pi_theta(o_i with mask M_{i,r})_{d, o_{i,d}}

The mask scheme fixes the per-token weights w (DMPO: antithetic masks with 1/(R m); SFT: LLaDA's
1/(p * answer length)); the row weights a are DMPO's advantages, or 1/B for supervised training
(docs/objectives.md, "WDCE").
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from ddrl.batch import SequenceBatch
from ddrl.estimators.base import MaskedViews, score_views
from ddrl.models.base import MaskedDiffusionPolicy


def wdce(logprobs: Tensor, token_weights: Tensor, row_weights: Tensor) -> Tensor:
    """sum_i a_i * CE_i with CE_i = -sum_{r,d} w_{i,r,d} log pi_{i,r,d}.

    ``logprobs [B, R, L]`` log pi(view)_{d, o_d} (0 where not scored, ``score_views``),
    ``token_weights [B, R, L]`` w (0 where not scored, ``MaskedViews.weights``), ``row_weights [B]`` a.
    """
    denoising_ce = -(token_weights * logprobs).sum((1, 2))  # (B,)
    return (row_weights * denoising_ce).sum()


def wdce_by_parts(
    policy: MaskedDiffusionPolicy,
    batch: SequenceBatch,
    views: MaskedViews,
    row_weights: Tensor,
    micro_batch_size: int,
    backward: Callable[[Tensor], None],
) -> Tensor:
    """``wdce`` of ``policy``'s scores on ``views``, ``micro_batch_size`` views at a time, each part's
    backward run at once (the loss is a sum over views, so the gradients add up to the one-graph
    ones). Returns the loss's value, detached. ``row_weights [B]``, ``views [B, R, L]``."""
    b, r, n = views.scored.shape
    flat_batch = batch.repeat_interleave(r)  # one row per view: (b, r) -> b * R + r
    flat = MaskedViews(
        views.completion_masked.reshape(b * r, 1, n), views.scored.reshape(b * r, 1, n), views.weights.reshape(b * r, 1, n),
        None if views.prompt_masked is None else views.prompt_masked.reshape(b * r, 1, -1),
    )
    weights = row_weights.repeat_interleave(r)
    total = torch.zeros((), device=row_weights.device)
    for lo in range(0, b * r, micro_batch_size):
        rows = slice(lo, lo + micro_batch_size)
        part = flat.index(rows)
        loss = wdce(score_views(policy, flat_batch.index(rows), part), part.weights, weights[rows])
        if loss.requires_grad:
            backward(loss)
        total = total + loss.detach()
    return total
