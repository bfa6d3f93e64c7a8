"""Energy-based targets: Boltzmann distributions p*(x) ∝ exp(-beta H(x)) on spin lattices.

The setting of MDNS (arXiv 2508.10684; docs/objectives.md), where WDCE comes from: a masked diffusion
model samples a lattice one site at a time, and its exact path likelihood turns every sample into
an importance-weighted sample of p*.

- ``spin_lattice``: periodic L x L lattices, Ising and Potts energies, exact log Z by enumeration.
- ``metrics``: ESS, log Z estimates, histogram divergences, magnetisation balance.
- ``swendsen_wang``: a cluster Monte Carlo reference sampler for lattices too big to enumerate.
- ``measure``: draw samples from a policy and report all of the above.
"""
