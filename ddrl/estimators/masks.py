"""Mask schemes: how an estimator (or a loss) masks the completion (docs/objectives.md).

Each scheme is a pure function of the completion's valid positions ``valid [B, L]`` and a
``torch.Generator``; it returns ``MaskedViews``. The weights are chosen so that the weighted sum of
scored log-probs is the scheme's estimate (see ``estimators.base``).

Public API: plugins build their estimators and losses from these schemes and score the views with
``estimators.base.score_views`` (per-token log-probs under the views' masks, with gradients).
Besides the estimators' schemes, two serve the plugin objectives (docs/objectives.md) and any other:
``blockwise_masks`` (SPG's block-wise masks) and ``trajectory_masks`` (a sampler's own canvases,
from ``SampleOutput.unmask_step``, for TraceRL).
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
    -sum(weights * logprobs) is sum_masked CE / p / answer_length (docs/objectives.md, "SFT")."""
    b, n = valid.shape
    t = _rand((b, 1), valid, generator)
    p = (1 - eps) * t + eps  # (B, 1)
    masked = (_rand((b, n), valid, generator) < p) & valid
    n_valid = valid.sum(-1, keepdim=True).clamp(min=1).float()
    weights = masked.float() / (p * n_valid)
    return MaskedViews(masked[:, None], masked[:, None], weights[:, None])


def blockwise_masks(
    valid: Tensor,
    prompt_mask: Tensor,
    block_length: int,
    num_samples: int,
    p_mask_prompt: float = 0.15,
    generator: torch.Generator | None = None,
    weighting: Weighting = "elbo",
) -> MaskedViews:
    """SPG's block-wise masks (arXiv 2510.09541): K views per row, each chosen around one block.

    The completion is cut into blocks of ``block_length`` (the last may be shorter). View k picks a
    block b; blocks after b are fully masked, m ~ U{1..n_b} of block b's n_b valid positions are
    masked uniformly at random, and every still-clean position before it (earlier blocks, and the
    real prompt tokens) is masked with probability ``p_mask_prompt``. Positions outside ``valid``
    (after the first EOS) are always masked and never scored; every masked valid position is scored.

    The blocks follow the published code: the first K entries of a random permutation of all blocks,
    taken modulo the number of blocks up to the last valid position — so with every block valid the
    K views see K distinct blocks (uniform without replacement); otherwise the low blocks are favoured.

    Weights: ``"inverse_masked"`` gives (1/m_k)/K per scored token, so the estimate is SPG's ELBO side,
    the mean over views of the mean log-prob over the masked valid tokens; ``"elbo"`` scales it by n.
    Shapes: ``valid [B, L]``, ``prompt_mask [B, P]`` -> views ``[B, K, L]``, prompt masks ``[B, K, P]``.
    """
    if block_length < 1 or num_samples < 1:
        raise ValueError(f"block_length and num_samples must be >= 1, got {block_length} and {num_samples}")
    if not 0 <= p_mask_prompt <= 1:
        raise ValueError(f"p_mask_prompt must lie in [0, 1], got {p_mask_prompt}")
    b, n = valid.shape
    k = num_samples
    num_blocks = -(-n // block_length)
    block_of = torch.arange(n, device=valid.device) // block_length  # (L,)
    last_valid_block = torch.where(valid, block_of, -1).amax(-1)  # (B,)
    candidates = (last_valid_block + 1).clamp(min=1)  # blocks that may be chosen
    draws = -(-k // num_blocks)  # K > number of blocks: several permutations, one after the other
    perm = torch.cat([_rand((b, num_blocks), valid, generator).argsort(-1) for _ in range(draws)], 1)
    chosen = perm[:, :k] % candidates[:, None]  # (B, K)
    offset = block_of[None, None, :] - chosen[..., None]  # (B, K, L): < 0 earlier, 0 chosen, > 0 later
    in_block = (offset == 0) & valid[:, None, :]
    n_block = in_block.sum(-1)  # (B, K)
    m = (_rand((b, k), valid, generator) * n_block).floor().long() + 1  # U{1..n_b}
    scores = _rand((b, k, n), valid, generator).masked_fill(~in_block, 2.0)
    ranks = scores.argsort(-1).argsort(-1)  # rank of each position among block b's valid ones
    in_block_masked = (ranks < m[..., None]) & in_block
    earlier_masked = (offset < 0) & (_rand((b, k, n), valid, generator) < p_mask_prompt)
    masked = in_block_masked | earlier_masked | (offset > 0) | ~valid[:, None, :]
    scored = masked & valid[:, None, :]
    prompt = (_rand((b, k, prompt_mask.shape[1]), valid, generator) < p_mask_prompt) & prompt_mask[:, None]
    return MaskedViews(masked, scored, _count_weights(scored, valid, weighting), prompt)


def trajectory_masks(valid: Tensor, unmask_step: Tensor, merge: int = 1, num_steps: int | None = None) -> MaskedViews:
    """A sampler's own trajectory as views (TraceRL, arXiv 2509.06949), from ``SampleOutput.unmask_step``.

    Sampler steps are merged in consecutive groups of ``merge`` (TraceRL's shrinkage s). View k is the
    canvas at the start of merged step k: every completion position revealed at a step >= k * merge is
    masked (the prompt is clean), and the valid positions revealed during steps [k*merge, (k+1)*merge)
    are scored with weight 1. With ``merge = 1`` the views are exactly the canvases the sampler fed to
    the policy, and each valid position is scored in exactly one view, so ``per_token()`` is the
    log-prob of every token on the canvas it was decoded from.

    Shapes: ``valid, unmask_step [B, L]`` -> ``[B, R, L]`` with R = ceil(num_steps / merge)
    (``num_steps`` defaults to the largest recorded step + 1; pass the sampler's ``num_steps`` so that
    every chunk of a rollout gets the same R).
    """
    if merge < 1:
        raise ValueError(f"merge must be >= 1, got {merge}")
    if unmask_step.shape != valid.shape:
        raise ValueError(f"unmask_step {tuple(unmask_step.shape)} must have the shape of valid {tuple(valid.shape)}")
    if bool((unmask_step < 0).any()):
        raise ValueError("unmask_step holds a negative step: every completion position must have been revealed")
    steps = int(unmask_step.max().item()) + 1 if num_steps is None else num_steps
    if unmask_step.numel() and int(unmask_step.max().item()) >= steps:
        raise ValueError(f"unmask_step records step {int(unmask_step.max().item())} but num_steps is {steps}")
    merged = unmask_step // merge  # (B, L)
    view = torch.arange(-(-steps // merge), device=valid.device)[None, :, None]  # (1, R, 1)
    masked = merged[:, None, :] >= view
    scored = (merged[:, None, :] == view) & valid[:, None, :]
    return MaskedViews(masked, scored, scored.float())
