"""Periodic L x L spin lattices, their Ising and Potts energies, and exact enumeration when small.

Sites are numbered row-major: site (i, j) is completion position i*L + j, so a policy's completion
of n = L*L tokens *is* a configuration x with x_a in {0 .. q-1}.

Bonds. The lattice is a torus and every unordered pair of neighbouring sites is one bond, counted
once. For L >= 3 these are the 2n pairs (site, right neighbour) and (site, lower neighbour). For
L = 2 the right neighbour of (i, 0) is (i, 1) and, wrapping around, the right neighbour of (i, 1)
is (i, 0) again — the same pair — so the 2 x 2 torus has n = 4 bonds (a 4-cycle), not 2n = 8.
Summing s * roll(s) over both axes, a common implementation, counts each of those pairs twice
(i.e. it uses 2J at L = 2); it agrees with this definition for every L >= 3. L = 1 is rejected.

Energies (Ising spins s = 2x - 1):

    Ising:  H(x) = -J sum_<ab> s_a s_b - h sum_a s_a
    Potts:  H(x) = -J sum_<ab> 1[x_a = x_b]

and the target is p*(x) = exp(-beta H(x)) / Z, whose log Z is exact by enumeration for
q^n <= ``MAX_ENUMERATED_STATES`` (the 4 x 4 Ising lattice, 3-state Potts up to 13 sites).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import torch
from torch import Tensor

MAX_ENUMERATED_STATES = 2**22
LatticeKind = Literal["ising", "potts"]


class LatticeTooLarge(ValueError):
    """An exact (enumerating) computation was asked for a lattice with too many states."""


def periodic_bonds(L: int) -> Tensor:
    """``[E, 2]`` long: each neighbour pair {a, b} (a < b) of the L x L torus once.

    E = 2 L^2 for L >= 3 and E = 4 for L = 2 (see the module docstring).
    """
    if L < 2:
        raise ValueError(f"a periodic lattice needs L >= 2 (L = {L} has no neighbour pairs)")
    pairs: set[tuple[int, int]] = set()
    for i in range(L):
        for j in range(L):
            a = i * L + j
            for b in (i * L + (j + 1) % L, ((i + 1) % L) * L + j):
                pairs.add((min(a, b), max(a, b)))
    return torch.tensor(sorted(pairs), dtype=torch.long)


def ising_energy(x: Tensor, bonds: Tensor, J: float, h: float) -> Tensor:
    """``[N]`` float64 H(x) = -J sum_bonds s_a s_b - h sum_a s_a, s = 2x - 1, for ``x [N, n]`` in {0, 1}."""
    s = 2.0 * x.double() - 1.0
    return -J * (s[:, bonds[:, 0]] * s[:, bonds[:, 1]]).sum(-1) - h * s.sum(-1)


def potts_energy(x: Tensor, bonds: Tensor, J: float) -> Tensor:
    """``[N]`` float64 H(x) = -J * #{bonds with equal ends}, for ``x [N, n]`` in {0 .. q-1}."""
    return -J * (x[:, bonds[:, 0]] == x[:, bonds[:, 1]]).double().sum(-1)


@dataclass(frozen=True)
class SpinLattice:
    """One Boltzmann target: an Ising (q = 2) or q-state Potts model on the L x L torus."""

    kind: LatticeKind
    L: int
    J: float = 1.0
    beta: float = 1.0
    h: float = 0.0
    q: int = 2

    def __post_init__(self) -> None:
        if self.kind not in ("ising", "potts"):
            raise ValueError(f"unknown lattice kind {self.kind!r}; use 'ising' or 'potts'")
        if self.L < 2:
            raise ValueError(f"a periodic lattice needs L >= 2, got L = {self.L}")
        if self.kind == "ising" and self.q != 2:
            raise ValueError(f"an Ising lattice has q = 2 spin values, got q = {self.q}")
        if self.kind == "potts" and (self.q < 2 or self.h != 0):
            raise ValueError("a Potts lattice needs q >= 2 and has no field (h = 0)")

    @property
    def num_sites(self) -> int:
        """n = L^2, the completion length."""
        return self.L * self.L

    @property
    def log_num_states(self) -> float:
        """n log q: log of the number of configurations (minus log p of the uniform reference)."""
        return self.num_sites * math.log(self.q)

    @property
    def enumerable(self) -> bool:
        return self.q**self.num_sites <= MAX_ENUMERATED_STATES

    @cached_property
    def bonds(self) -> Tensor:
        """``[E, 2]`` the neighbour pairs (``periodic_bonds``)."""
        return periodic_bonds(self.L)

    def energy(self, x: Tensor) -> Tensor:
        """``[N]`` float64 H(x) for configurations ``x [N, n]``."""
        self._check(x)
        bonds = self.bonds.to(x.device)
        if self.kind == "ising":
            return ising_energy(x, bonds, self.J, self.h)
        return potts_energy(x, bonds, self.J)

    def log_boltzmann(self, x: Tensor) -> Tensor:
        """``[N]`` float64 -beta H(x): the reward r(x) and, up to log Z, log p*(x)."""
        return -self.beta * self.energy(x)

    def magnetisation(self, x: Tensor) -> Tensor:
        """``[N]`` float64 order parameter in [-1, 1] (Ising: mean spin) or [0, 1] (Potts:
        (q * largest colour share - 1) / (q - 1))."""
        self._check(x)
        if self.kind == "ising":
            return (2.0 * x.double() - 1.0).mean(-1)
        share = torch.nn.functional.one_hot(x, self.q).double().mean(-2).amax(-1)  # (N,)
        return (self.q * share - 1) / (self.q - 1)

    # ------------------------------------------------------------------------------------------
    # exact computations (enumeration)

    def require_enumerable(self, what: str) -> None:
        """Raise ``LatticeTooLarge`` (with what to do instead) unless q^n states can be listed."""
        if not self.enumerable:
            raise LatticeTooLarge(
                f"{what} enumerates all q^n = {self.q}^{self.num_sites} states of the {self.L}x{self.L} "
                f"{self.kind} lattice; at most {MAX_ENUMERATED_STATES} (2^22) can be enumerated (Ising up "
                "to 4x4, 3-state Potts up to 13 sites). For bigger lattices use the metrics that need no "
                "enumeration (ESS and the log Z estimate, exact=False) and the Swendsen-Wang reference "
                "sampler (ddrl.energy.swendsen_wang) for energy and magnetisation moments."
            )

    def states(self, start: int = 0, stop: int | None = None) -> Tensor:
        """``[stop - start, n]`` long: configurations number start..stop-1 (base-q digits, site 0 first)."""
        self.require_enumerable("listing states")
        total = self.q**self.num_sites
        stop = total if stop is None else min(stop, total)
        index = torch.arange(start, stop, dtype=torch.long)
        powers = self.q ** torch.arange(self.num_sites - 1, -1, -1, dtype=torch.long)
        return (index[:, None] // powers) % self.q

    def index(self, x: Tensor) -> Tensor:
        """``[N]`` long: the number of each configuration (inverse of ``states``)."""
        self._check(x)
        if self.num_sites * math.log2(self.q) >= 63:
            raise LatticeTooLarge(f"{self.q}^{self.num_sites} states do not fit a 64-bit index")
        powers = self.q ** torch.arange(self.num_sites - 1, -1, -1, dtype=torch.long, device=x.device)
        return (x.long() * powers).sum(-1)

    def log_partition(self, chunk: int = 2**18) -> float:
        """log Z = log sum_x exp(-beta H(x)), exactly (chunked enumeration)."""
        self.require_enumerable("the exact log Z")
        total = self.q**self.num_sites
        parts = [torch.logsumexp(self.log_boltzmann(self.states(lo, lo + chunk)), 0) for lo in range(0, total, chunk)]
        return float(torch.logsumexp(torch.stack(parts), 0))

    def log_target(self) -> Tensor:
        """``[q^n]`` float64 log p*(x) of every configuration, in ``states`` order."""
        self.require_enumerable("the exact target p*")
        logits = self.log_boltzmann(self.states())
        return logits - torch.logsumexp(logits, 0)

    def exact_samples(self, num_samples: int, generator: torch.Generator | None = None) -> Tensor:
        """``[num_samples, n]`` independent draws from p* (by enumeration): a perfect sampler, the
        reference for what finite-sample metrics look like without model error."""
        probs = self.log_target().exp()
        index = torch.multinomial(probs, num_samples, replacement=True, generator=generator)
        powers = self.q ** torch.arange(self.num_sites - 1, -1, -1, dtype=torch.long)
        return (index[:, None] // powers) % self.q

    def _check(self, x: Tensor) -> None:
        if x.dim() != 2 or x.shape[1] != self.num_sites:
            raise ValueError(
                f"configurations of the {self.L}x{self.L} lattice are [N, {self.num_sites}]; got "
                f"{tuple(x.shape)} (is sampler.max_completion_length = {self.num_sites}?)"
            )
        if x.numel() and (int(x.min()) < 0 or int(x.max()) >= self.q):
            raise ValueError(
                f"site values must be in 0..{self.q - 1}; got {int(x.min())}..{int(x.max())} "
                f"(the policy must be token-only with vocab_size = q + 1 = {self.q + 1})"
            )
