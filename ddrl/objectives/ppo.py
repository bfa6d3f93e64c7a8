"""PPO-style token losses shared by the GRPO family (pure functions of tensors).

Public API: plugin objectives with a clipped ratio or a k3 KL term use these.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class ClippedSurrogate(NamedTuple):
    loss: Tensor  # [B, L] per-token -min(r A, clip(r) A)
    ratio: Tensor  # [B, L]
    low_clipped: Tensor  # [B, L] bool: r < 1 - eps_low with A < 0
    high_clipped: Tensor  # [B, L] bool: r > 1 + eps_high with A > 0


def clipped_surrogate(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, eps_low: float, eps_high: float
) -> ClippedSurrogate:
    """Token-level PPO clip: ``logp, old_logp [B, L]``, ``advantages [B]``.

    loss = -min(r A, clip(r, 1 - eps_low, 1 + eps_high) A) with r = exp(logp - old_logp).
    """
    ratio = torch.exp(logp - old_logp)
    adv = advantages[:, None]
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high)
    loss = -torch.minimum(ratio * adv, clipped * adv)
    return ClippedSurrogate(loss, ratio, (ratio < 1 - eps_low) & (adv < 0), (ratio > 1 + eps_high) & (adv > 0))


def k3_kl(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """Schulman's k3 estimator of KL(pi || ref) per token: exp(d) - d - 1 with d = ref - logp (>= 0)."""
    d = ref_logp - logp
    return torch.exp(d) - d - 1


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over the True entries of ``mask`` (0 when there are none)."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1)


class TokenPPOLoss(NamedTuple):
    loss: Tensor  # scalar: the masked token mean of the per-token loss
    surrogate: ClippedSurrogate  # per-token clipped objective, ratios and clip flags ([B, L])
    kl: Tensor | None  # [B, L] k3 KL to ``kl_logp``, or None


def token_ppo_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    eps_low: float,
    eps_high: float,
    beta: float = 0.0,
    kl_logp: Tensor | None = None,
) -> TokenPPOLoss:
    """GRPO's token loss, averaged over the ``mask [B, L]`` tokens of the micro-batch::

        loss = mean_t [ -min(rho_t A, clip(rho_t, 1 - eps_low, 1 + eps_high) A) + beta * k3_t ]

    ``logp, old_logp [B, L]`` (rho = exp(logp - old_logp)), ``advantages [B]``; the k3 term, against
    ``kl_logp [B, L]`` (the reference for GRPO, the old policy for TraceRL), only when it is given.
    """
    ppo = clipped_surrogate(logp, old_logp, advantages, eps_low, eps_high)
    per_token = ppo.loss
    kl = None
    if kl_logp is not None:
        kl = k3_kl(logp, kl_logp)
        per_token = per_token + beta * kl
    return TokenPPOLoss(masked_mean(per_token, mask), ppo, kl)


def clip_metrics(loss: TokenPPOLoss, mask: Tensor) -> dict[str, float]:
    """TRL's clip statistics over the ``mask`` tokens: ``clip_ratio`` (either side), ``_low``, ``_high``."""
    s = loss.surrogate
    return {
        "clip_ratio": masked_mean((s.low_clipped | s.high_clipped).float(), mask).item(),
        "clip_ratio_low": masked_mean(s.low_clipped.float(), mask).item(),
        "clip_ratio_high": masked_mean(s.high_clipped.float(), mask).item(),
    }
