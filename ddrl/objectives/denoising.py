"""The weighted denoising cross-entropy: one loss behind DMPO, SFT and pretraining.

    L(theta) = sum_i a_i * sum_{r, d} w_{i,r,d} * -log pi_theta(o_i with mask M_{i,r})_{d, o_{i,d}}

The mask scheme fixes the per-token weights w (DMPO: antithetic masks with 1/(R m); SFT: LLaDA's
1/(p * answer length)); the row weights a are DMPO's advantages, or 1/B for supervised training
(docs/objectives.md, "WDCE").
"""

from __future__ import annotations

from torch import Tensor


def wdce(logprobs: Tensor, token_weights: Tensor, row_weights: Tensor) -> Tensor:
    """sum_i a_i * CE_i with CE_i = -sum_{r,d} w_{i,r,d} log pi_{i,r,d}.

    ``logprobs [B, R, L]`` log pi(view)_{d, o_d} (0 where not scored, ``score_views``),
    ``token_weights [B, R, L]`` w (0 where not scored, ``MaskedViews.weights``), ``row_weights [B]`` a.
    """
    denoising_ce = -(token_weights * logprobs).sum((1, 2))  # (B,)
    return (row_weights * denoising_ce).sum()
