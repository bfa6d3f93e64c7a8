"""Swendsen–Wang cluster Monte Carlo: reference samples for lattices too big to enumerate.

One sweep (the Edwards–Sokal coupling), for many independent chains at once:

1. every bond whose two sites hold the same value is activated with probability
   p = 1 - exp(-beta J_eff), J_eff = 2J for Ising (s_a s_b = 2 * 1[x_a = x_b] - 1) and J for Potts;
2. the connected components of the active bonds are the clusters;
3. every cluster C takes a fresh value: Potts uniformly over q; Ising with field h the spin +1
   with probability sigmoid(2 beta h |C|) (the field's weight exp(beta h s |C|) factorises over
   clusters).

p*(x) ∝ exp(-beta H(x)) is invariant under a sweep, and near the critical point clusters flip
whole ordered domains, so chains mix where single-site updates stall. Ferromagnetic couplings
only (J >= 0). The bonds are ``SpinLattice.bonds`` (each neighbour pair once, also at L = 2).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ddrl.energy.spin_lattice import SpinLattice


def cluster_labels(active: Tensor, bonds: Tensor, num_sites: int) -> Tensor:
    """``[C, n]`` long: for each chain, one site id shared by all sites of a cluster.

    Args:
        active: ``[C, E]`` bool, which bonds join their two sites.
        bonds: ``[E, 2]`` long site pairs.

    Label propagation (min over active bonds) with pointer jumping until nothing changes.
    """
    c = active.shape[0]
    a = bonds[:, 0].expand(c, -1)
    b = bonds[:, 1].expand(c, -1)
    labels = torch.arange(num_sites, device=active.device).expand(c, -1).clone()
    while True:
        joined = torch.minimum(labels.gather(1, a), labels.gather(1, b)).masked_fill(~active, num_sites)
        new = labels.scatter_reduce(1, a, joined, reduce="amin").scatter_reduce(1, b, joined, reduce="amin")
        new = new.gather(1, new)  # jump to the label's own label: halves the path each round
        if torch.equal(new, labels):
            return labels
        labels = new


@torch.no_grad()
def sweep(lattice: SpinLattice, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One Swendsen–Wang update of every chain: ``x [C, n]`` -> ``[C, n]``."""
    if lattice.J < 0:
        raise ValueError("the Swendsen-Wang sampler here handles ferromagnetic couplings (J >= 0) only")
    c, n = x.shape
    bonds = lattice.bonds.to(x.device)
    j_eff = 2 * lattice.J if lattice.kind == "ising" else lattice.J
    p_bond = -math.expm1(-lattice.beta * j_eff)
    equal = x[:, bonds[:, 0]] == x[:, bonds[:, 1]]  # (C, E)
    u = torch.rand(equal.shape, generator=generator, device=x.device)
    labels = cluster_labels(equal & (u < p_bond), bonds, n)  # (C, n)
    if lattice.kind == "ising":
        size = torch.zeros((c, n), dtype=torch.float64, device=x.device).scatter_add_(
            1, labels, torch.ones((c, n), dtype=torch.float64, device=x.device)
        )  # cluster sizes, stored at each cluster's label
        p_up = torch.sigmoid(2 * lattice.beta * lattice.h * size)
        up = torch.rand((c, n), generator=generator, device=x.device, dtype=torch.float64) < p_up
        fresh = up.long()
    else:
        fresh = torch.randint(lattice.q, (c, n), generator=generator, device=x.device)
    return fresh.gather(1, labels)


@torch.no_grad()
def swendsen_wang_samples(
    lattice: SpinLattice,
    num_samples: int,
    *,
    num_chains: int = 64,
    burn_in: int = 200,
    thin: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """``[num_samples, n]`` configurations from ``num_chains`` chains started uniformly at random:
    ``burn_in`` sweeps discarded, then every ``thin``-th sweep of every chain kept."""
    x = torch.randint(lattice.q, (num_chains, lattice.num_sites), generator=generator)
    for _ in range(burn_in):
        x = sweep(lattice, x, generator)
    kept = []
    total = 0
    while total < num_samples:
        for _ in range(thin):
            x = sweep(lattice, x, generator)
        kept.append(x)
        total += num_chains
    return torch.cat(kept)[:num_samples]
