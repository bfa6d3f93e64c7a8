"""Reward of the lattice tasks (`ising`, `potts`): r(x) = -beta H(x), the log Boltzmann factor.

With alpha = 1 and a uniform reference the tilted target p*(x) ∝ exp(r(x)) is the Boltzmann
distribution (docs/objectives.md, "Energy targets"). The configuration is the completion as token
ids (site a = position a, row-major); the lattice comes from the example's ``lattice`` column (``SpinLattice`` fields).
"""

from __future__ import annotations

from typing import Any

import torch

from ddrl.energy.spin_lattice import SpinLattice


def lattice_boltzmann(
    prompts: list[str], completions: list[str], completion_ids: list[list[int]], lattice: list[dict], **columns: Any
) -> list[float]:
    """-beta H(x) of each completion (one batched energy evaluation per distinct lattice)."""
    out = [0.0] * len(completion_ids)
    rows_of: dict[tuple, list[int]] = {}
    for i, spec in enumerate(lattice):
        rows_of.setdefault(tuple(sorted(spec.items())), []).append(i)
    for key, rows in rows_of.items():
        model = SpinLattice(**dict(key))
        x = torch.tensor([completion_ids[i] for i in rows], dtype=torch.long)
        for i, value in zip(rows, model.log_boltzmann(x).tolist()):
            out[i] = value
    return out
