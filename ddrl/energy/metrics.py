"""How good is a sampler of a Boltzmann target? MDNS's metrics as pure functions of tensors.

Samples x_i ~ p_theta come with the exact log-probability of the path that produced them,
log p_theta(x_i; sigma_i) (the ``ancestral`` sampler records it). Relative to the uniform
reference p_ref = q^-n the log-weights are

    log w_i = r(x_i) - n log q - log p_theta(x_i; sigma_i),          r = -beta H,

exact importance weights of the joint law of (sigma, x), so E[w] = Z / q^n whatever the model.

- ``normalized_ess``: 1 / (B sum_i wbar_i^2) with wbar = w / sum w; 1 for a perfect sampler.
- ``log_partition_estimate``: log Zhat = logsumexp(log w) - log B + n log q.
- ``histogram_divergences``: the sample histogram p̂ against the exact p*: KL(p̂ || p*) (the
  direction MDNS reports, summed over visited states, finite for any sample) and
  TV = 1/2 sum_x |p̂(x) - p*(x)|. Both are positive even for a perfect sampler — about
  (K - 1) / (2N) for the KL when the K likely states are well covered — so they are only
  comparable at the same sample size N (``SpinLattice.exact_samples`` gives the floor).
- ``mode_balance``: P(m > 0) + P(m = 0) / 2, exactly 1/2 for a spin-flip symmetric target
  (h = 0); far from 1/2 means the sampler favours one of the two ordered modes.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def uniform_log_weights(rewards: Tensor, path_log_probs: Tensor, log_num_states: float) -> Tensor:
    """``[B]`` float64 log w = r - n log q - log p_theta(x; sigma) (``rewards``, ``path_log_probs`` ``[B]``)."""
    return rewards.double() - log_num_states - path_log_probs.double()


def normalized_ess(log_weights: Tensor) -> float:
    """1 / (B sum_i wbar_i^2) of the self-normalised weights softmax(``log_weights [B]``)."""
    w = torch.softmax(log_weights.double(), 0)
    return float(1.0 / (log_weights.numel() * (w**2).sum()))


def log_partition_estimate(log_weights: Tensor, log_num_states: float) -> float:
    """log Zhat = logsumexp(log w) - log B + n log q (``log_weights [B]`` relative to uniform)."""
    lw = log_weights.double()
    return float(torch.logsumexp(lw, 0) - math.log(lw.numel()) + log_num_states)


def histogram_divergences(state_index: Tensor, log_target: Tensor) -> tuple[float, float]:
    """(KL(p̂ || p*), TV(p̂, p*)) of the empirical distribution of N samples.

    Args:
        state_index: ``[N]`` long, an id per sample (equal configurations, equal ids).
        log_target: ``[N]`` log p*(x_i) of each sample (normalised).

    TV needs p* only on visited states: sum_x |p̂ - p*| = sum_visited |p̂ - p*| + (1 - sum_visited p*).
    """
    n = state_index.numel()
    unique, inverse, counts = torch.unique(state_index, return_inverse=True, return_counts=True)
    first = torch.full((unique.numel(),), n, dtype=torch.long).scatter_reduce(
        0, inverse, torch.arange(n), reduce="amin"
    )
    log_p_star = log_target.double()[first]  # (K,) one value per visited state
    p_hat = counts.double() / n
    kl = float((p_hat * (p_hat.log() - log_p_star)).sum())
    p_star = log_p_star.exp()
    tv = 0.5 * float((p_hat - p_star).abs().sum() + (1.0 - p_star.sum()).clamp(min=0))
    return kl, tv


def mode_balance(magnetisation: Tensor) -> float:
    """P(m > 0) + P(m = 0) / 2 over samples ``[N]`` (1/2 for a symmetric target)."""
    m = magnetisation.double()
    return float((m > 0).double().mean() + 0.5 * (m == 0).double().mean())
