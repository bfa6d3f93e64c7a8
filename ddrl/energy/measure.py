"""Draw lattice samples from a policy and measure them against the Boltzmann target.

``sample_policy`` runs any sampler with an empty prompt (the lattice tasks have none) and keeps
the exact path log-probabilities when the sampler records them (``exact_path``: one site per step
in a random order, e.g. ``ancestral`` at temperature 1). ``sample_metrics`` turns the samples into
MDNS's numbers (``ddrl.energy.metrics``): ESS and the log Z estimate need the path log-probs; the
histogram KL(p̂ || p*), TV and the log Z error need the exact p* (enumeration). Exact order-averaged
likelihoods (KL(p* || p_theta)) are computed only for tiny lattices (``order_averaged_divergences``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ddrl.energy.spin_lattice import LatticeTooLarge, SpinLattice
from ddrl.energy.metrics import (
    histogram_divergences,
    log_partition_estimate,
    mode_balance,
    normalized_ess,
    uniform_log_weights,
)

if TYPE_CHECKING:
    from ddrl.models.base import MaskedDiffusionPolicy
    from ddrl.samplers.base import Sampler

MAX_ORDER_AVERAGED_SITES = 9  # 2^n canvases per state and q^n states: 2x2 and 3x3 Ising
# the metrics of sample_metrics that need the exact p* (enumerating q^n states)
EXACT_METRICS = ("log_z", "log_z_error", "kl_path", "kl_hist", "tv_hist")


@dataclass
class LatticeSample:
    """``states [N, n]`` long; ``path_log_probs [N]`` log p_theta(x; sigma), or None when the
    sampler's token log-probs are not an exact path likelihood."""

    states: Tensor
    path_log_probs: Tensor | None
    nfe: int = 0  # forward passes of the policy that drew them


@torch.no_grad()
def sample_policy(
    policy: MaskedDiffusionPolicy,
    sampler: Sampler,
    num_samples: int,
    *,
    batch_size: int = 1024,
    generator: torch.Generator | None = None,
) -> LatticeSample:
    """``num_samples`` completions of the empty prompt, ``batch_size`` at a time."""
    exact = "exact_path" in sampler.records and "token_logprobs" in sampler.records
    states, log_probs = [], []
    nfe = 0
    was_training = policy.training
    policy.eval()
    try:
        for lo in range(0, num_samples, batch_size):
            b = min(batch_size, num_samples - lo)
            prompt = torch.zeros((b, 0), dtype=torch.long, device=policy.device)
            out = sampler.sample(policy, prompt, generator=generator)
            states.append(out.completion_ids.cpu())
            nfe += out.nfe
            if exact and out.path_logprob is not None:
                log_probs.append(out.path_logprob.double().cpu())
    finally:
        policy.train(was_training)
    path = torch.cat(log_probs) if exact and log_probs else None
    return LatticeSample(torch.cat(states), path, nfe)


def sample_metrics(lattice: SpinLattice, sample: LatticeSample, exact: bool | None = None) -> dict[str, float]:
    """MDNS's metrics of a sample (keys below); ``exact`` (default: when enumerable) adds those
    that need the exact p*, and raises ``LatticeTooLarge`` when asked for a lattice too big.

    Always: num_samples, energy_per_site, magnetisation, abs_magnetisation (+ mode_balance for
    Ising). With path log-probs: ess, log_z_estimate. Exact: log_z, log_z_error = |log Zhat - log Z|,
    kl_hist = KL(p̂ || p*) of the N-sample histogram, tv_hist, and (with path log-probs)
    kl_path = mean(log p_theta(x; sigma) - log p*(x)): the reverse KL between the path measure and
    p* x uniform orders, an upper bound on KL(p_theta || p*) that, unlike kl_hist, does not depend
    on N (its mean does not; E[kl_hist] = KL(p_theta || p*) + the sampling floor at N).
    """
    x = sample.states
    rewards = lattice.log_boltzmann(x)
    m = lattice.magnetisation(x)
    out: dict[str, float] = {
        "num_samples": float(x.shape[0]),
        "energy_per_site": float(lattice.energy(x).mean() / lattice.num_sites),
        "magnetisation": float(m.mean()),
        "abs_magnetisation": float(m.abs().mean()),
    }
    if lattice.kind == "ising":
        out["mode_balance"] = mode_balance(m)
    if sample.path_log_probs is not None:
        log_w = uniform_log_weights(rewards, sample.path_log_probs, lattice.log_num_states)
        out["ess"] = normalized_ess(log_w)
        out["log_z_estimate"] = log_partition_estimate(log_w, lattice.log_num_states)
    if exact is None:
        exact = lattice.enumerable
    if exact:
        lattice.require_enumerable("exact sample metrics (log Z error, histogram KL and TV)")
        log_z = lattice.log_partition()
        out["log_z"] = log_z
        if sample.path_log_probs is not None:
            out["log_z_error"] = abs(out["log_z_estimate"] - log_z)
            out["kl_path"] = float((sample.path_log_probs.double() - (rewards - log_z)).mean())
        out["kl_hist"], out["tv_hist"] = histogram_divergences(lattice.index(x), rewards - log_z)
    return out


@torch.no_grad()
def order_averaged_divergences(
    policy: MaskedDiffusionPolicy, lattice: SpinLattice, max_sites: int = MAX_ORDER_AVERAGED_SITES
) -> dict[str, float]:
    """Exact KL(p* || p_theta) and KL(p_theta || p*) with p_theta(x) = E_sigma p_theta(x; sigma)
    averaged over all n! orders (dynamic programming over the 2^n revealed sets, for each of the
    q^n states): tiny lattices only."""
    from ddrl.enumeration import kl_divergence, sequence_log_probs

    if lattice.num_sites > max_sites:
        raise LatticeTooLarge(
            f"the order-averaged p_theta of a {lattice.L}x{lattice.L} lattice needs 2^{lattice.num_sites} "
            f"forward passes for each of its {lattice.q}^{lattice.num_sites} states; it is computed for at "
            f"most {max_sites} sites. Use sample_metrics (histogram KL(p̂ || p*), ESS, log Z error) instead."
        )
    log_target = lattice.log_target()
    log_q = sequence_log_probs(policy, [], lattice.states().to(policy.device)).cpu()
    return {
        "kl_target_policy": kl_divergence(log_target, log_q),
        "kl_policy_target": kl_divergence(log_q, log_target),
    }
