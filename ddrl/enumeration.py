"""Exact distributions on enumerable spaces (tiny vocabularies and lengths).

Where every completion can be listed, p_theta(o|q) is computable exactly (the order-averaged
likelihood, ``estimators.exact.log_likelihood_all_orders``), and so are the reward-tilted target
p*(o|q) ∝ p_ref(o|q) exp(r(q,o)/alpha) and every divergence between them. This is how ddrl checks
that an objective does what it claims (docs/objectives.md: DMPO must drive KL(p*||p_theta) towards 0).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ddrl.batch import SequenceBatch
from ddrl.estimators.exact import log_likelihood_all_orders
from ddrl.models.base import MaskedDiffusionPolicy


def all_sequences(num_tokens: int, length: int, device: torch.device | str = "cpu") -> Tensor:
    """``[num_tokens**length, length]`` every sequence over token ids 0..num_tokens-1."""
    if num_tokens**length > 1_000_000:
        raise ValueError(f"{num_tokens}^{length} sequences are too many to enumerate")
    grid = torch.cartesian_prod(*[torch.arange(num_tokens, device=device)] * length)
    return grid.view(-1, length)


@torch.no_grad()
def sequence_log_probs(
    policy: MaskedDiffusionPolicy, prompt: list[int], completions: Tensor, micro_batch_size: int | None = 4096
) -> Tensor:
    """``[N]`` log p_theta(o|q) for every row o of ``completions [N, L]``, exactly."""
    n = completions.shape[0]
    prompt_ids = torch.tensor(prompt, dtype=torch.long, device=completions.device).expand(n, -1).clone()
    if prompt_ids.shape[1] == 0:
        prompt_ids = prompt_ids.view(n, 0)
    batch = SequenceBatch.from_parts(prompt_ids, completions)
    out = []
    rows = max(1, (micro_batch_size or n) // (2 ** completions.shape[1]))
    for lo in range(0, n, rows):
        out.append(log_likelihood_all_orders(policy, batch.index(slice(lo, lo + rows))))
    return torch.cat(out).double()


@torch.no_grad()
def block_sequence_log_probs(
    policy: MaskedDiffusionPolicy, prompt: list[int], completions: Tensor, block_size: int,
    micro_batch_size: int | None = 4096,
) -> Tensor:
    """``[N]`` log p_theta(o|q) of block-by-block decoding (uniformly random order inside each block,
    later blocks masked), exactly: ``estimators.block_elbo.log_likelihood_block_orders``. For a
    block-diffusion model this is its generative distribution; blocks as in ``ddrl.models.tiny``."""
    from ddrl.estimators.block_elbo import log_likelihood_block_orders

    n = completions.shape[0]
    prompt_ids = torch.tensor(prompt, dtype=torch.long, device=completions.device).expand(n, -1).clone()
    if prompt_ids.shape[1] == 0:
        prompt_ids = prompt_ids.view(n, 0)
    batch = SequenceBatch.from_parts(prompt_ids, completions)
    rows = max(1, (micro_batch_size or n) // (2 ** min(completions.shape[1], block_size)))
    out = [log_likelihood_block_orders(policy, batch.index(slice(lo, lo + rows)), block_size)
           for lo in range(0, n, rows)]
    return torch.cat(out).double()


def tilted_log_target(log_p_ref: Tensor, rewards: Tensor, alpha: float) -> Tensor:
    """log p*(o) = log p_ref(o) + r(o)/alpha - log Z, normalised over the enumerated rows."""
    logits = log_p_ref.double() + rewards.double() / alpha
    return logits - torch.logsumexp(logits, 0)


def kl_divergence(log_p: Tensor, log_q: Tensor) -> float:
    """KL(p || q) = sum_o p(o) (log p(o) - log q(o)) over enumerated rows."""
    p = log_p.double().exp()
    return float((p * (log_p.double() - log_q.double())).sum())


def entropy(log_p: Tensor) -> float:
    p = log_p.double().exp()
    return float(-(p * log_p.double()).sum())


def expectation(log_p: Tensor, values: Tensor) -> float:
    return float((log_p.double().exp() * values.double()).sum())
