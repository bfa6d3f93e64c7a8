"""Mask schemes: how an estimator (or a loss) masks the completion (design §4, §2.1).

Each scheme is a pure function of the completion's valid positions ``valid [B, L]`` and a
``torch.Generator``; it returns ``MaskedViews``. The weights are chosen so that the weighted sum of
scored log-probs is the scheme's estimate (see ``estimators.base``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from ddrl.estimators.base import MaskedViews

Weighting = Literal["elbo", "inverse_masked"]


def _rand(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None) -> Tensor:
    return torch.rand(shape, generator=generator, device=like.device)


def _count_weights(masked: Tensor, valid: Tensor, weighting: Weighting) -> Tensor:
    """Per-token weights ``[B, R, L]``: (n/m)/R ("elbo") or (1/m)/R ("inverse_masked").

    m is the realised number of masked positions of the view (clamped >= 1), n the number of
    valid positions of the row; the 1/R averages the views.
    """
    r = masked.shape[1]
    m = masked.sum(-1, keepdim=True).clamp(min=1).float()  # (B, R, 1)
    scale = valid.sum(-1).float()[:, None, None] if weighting == "elbo" else torch.ones_like(m)
    return masked.float() * scale / m / r


def stratified_masks(
    valid: Tensor, num_samples: int, generator: torch.Generator | None = None, weighting: Weighting = "elbo"
) -> MaskedViews:
    """K masks per row with mask counts stratified over 1..n and uniformly random positions.

    m_k = floor((k + u) n / K) + 1 with one u ~ U[0, 1) per row, so that averaged over the K
    draws the count is exactly uniform on {1..n}: an unbiased estimate of the ELBO
    E_{m ~ U{1..n}} (n/m) E_{|M|=m} sum_{d in M} log pi(o_{-M})_{d, o_d}.
    """
    b, n = valid.shape
    k = num_samples
    n_valid = valid.sum(-1)  # (B,)
    u = _rand((b, 1), valid, generator)
    strata = (torch.arange(k, device=valid.device)[None, :] + u) / k  # (B, K) in [0, 1)
    m = (strata * n_valid[:, None]).floor().long() + 1  # (B, K) in 1..n
    scores = _rand((b, k, n), valid, generator).masked_fill(~valid[:, None, :], 2.0)
    ranks = scores.argsort(-1).argsort(-1)  # rank of each position among the row's valid ones
    masked = (ranks < m[..., None]) & valid[:, None, :]
    return MaskedViews(masked, masked, _count_weights(masked, valid, weighting))


def antithetic_masks(
    valid: Tensor,
    num_samples: int,
    generator: torch.Generator | None = None,
    rate_range: tuple[float, float] = (0.1, 1.0),
    weighting: Weighting = "elbo",
) -> MaskedViews:
    """DMPO's published scheme: K/2 Bernoulli masks at rates lambda ~ U[rate_range], each with
    its complement (so every valid token is masked exactly once per pair)."""
    if num_samples % 2:
        raise ValueError(f"antithetic masks come in pairs: num_samples must be even, got {num_samples}")
    b, n = valid.shape
    pairs = num_samples // 2
    lo, hi = rate_range
    rate = lo + (hi - lo) * _rand((b, pairs, 1), valid, generator)
    first = _rand((b, pairs, n), valid, generator) < rate  # (B, K/2, L)
    masked = torch.stack([first, ~first], dim=2).flatten(1, 2) & valid[:, None, :]  # (B, K, L)
    return MaskedViews(masked, masked, _count_weights(masked, valid, weighting))


def one_step_masks(
    valid: Tensor, prompt_mask: Tensor, p_mask_prompt: float, generator: torch.Generator | None = None
) -> MaskedViews:
    """d1's one-step view: the whole completion masked, each real prompt token masked with
    probability ``p_mask_prompt``; every valid completion token scored with weight 1."""
    b, n = valid.shape
    completion = torch.ones((b, 1, n), dtype=torch.bool, device=valid.device)
    scored = valid[:, None, :].clone()
    prompt = (_rand((b, 1, prompt_mask.shape[1]), valid, generator) < p_mask_prompt) & prompt_mask[:, None]
    return MaskedViews(completion, scored, scored.float(), prompt)


def coupled_masks(
    valid: Tensor,
    generator: torch.Generator | None = None,
    t_range: tuple[float, float] = (0.2, 0.8),
    include_full: bool = True,
) -> MaskedViews:
    """DiffuCoder's coupled pair: t ~ U[t_range] per row, one view masks the completion where
    u < t (weight 1/t), the other where u >= t (weight 1/(1-t)), so every token is predicted
    exactly once across the pair. With ``include_full`` a fully masked view is added and the
    result averaged with it, as in the published code: (lp_full + lp_pair) / 2."""
    b, n = valid.shape
    lo, hi = t_range
    t = lo + (hi - lo) * _rand((b, 1), valid, generator)  # (B, 1)
    first = _rand((b, n), valid, generator) < t  # (B, L)
    pair = torch.stack([first, ~first], dim=1)  # (B, 2, L)
    pair_w = torch.stack([1.0 / t.expand(b, n), 1.0 / (1.0 - t).expand(b, n)], dim=1)
    if include_full:
        full = torch.ones((b, 1, n), dtype=torch.bool, device=valid.device)
        masked = torch.cat([full, pair], dim=1)
        weights = torch.cat([torch.ones((b, 1, n), device=valid.device), pair_w], dim=1) / 2
    else:
        masked, weights = pair, pair_w
    scored = masked & valid[:, None, :]
    return MaskedViews(masked, scored, weights * scored.float())


def order_masks(valid: Tensor, order: Tensor) -> MaskedViews:
    """The L canvases of one unmasking order: view d masks every valid position not revealed
    before step d and scores the position ``order[:, d]`` (weight 1). Their sum is the exact path
    log-likelihood log p(o | q; sigma); positions outside ``valid`` are context, never masked."""
    b, n = valid.shape
    if order.shape != (b, n):
        raise ValueError(f"order must be [B, L] = {(b, n)}, got {tuple(order.shape)}")
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=order.device).expand(b, n))
    step = torch.arange(n, device=order.device)[None, :, None]  # (1, L_views, 1)
    masked = (rank[:, None, :] >= step) & valid[:, None, :]  # (B, L_views, L)
    scored = (rank[:, None, :] == step) & valid[:, None, :]
    return MaskedViews(masked, scored, scored.float())


def random_order(valid: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """``[B, L]`` a uniformly random permutation of the positions of each row."""
    return _rand(tuple(valid.shape), valid, generator).argsort(-1)


def sft_masks(valid: Tensor, generator: torch.Generator | None = None, eps: float = 1e-3) -> MaskedViews:
    """LLaDA's supervised masking: per sequence t ~ U(0, 1), p = (1 - eps) t + eps, each valid
    completion token masked with probability p and weighted 1 / (p * n_valid), so that
    -sum(weights * logprobs) is sum_masked CE / p / answer_length (design §2.3)."""
    b, n = valid.shape
    t = _rand((b, 1), valid, generator)
    p = (1 - eps) * t + eps  # (B, 1)
    masked = (_rand((b, n), valid, generator) < p) & valid
    n_valid = valid.sum(-1, keepdim=True).clamp(min=1).float()
    weights = masked.float() / (p * n_valid)
    return MaskedViews(masked[:, None], masked[:, None], weights[:, None])
