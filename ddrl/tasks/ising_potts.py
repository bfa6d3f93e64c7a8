"""`ising` and `potts`: sample a Boltzmann distribution on an L x L periodic lattice (MDNS, arXiv 2508.10684).

There is no prompt and no text. A completion of n = L^2 tokens is a configuration (site (i, j) =
position i*L + j, values 0..q-1; Ising spins s = 2x - 1), the reward is r(x) = -beta H(x)
(``lattice_boltzmann``), and with alpha = 1 and a uniform reference the tilted target is
p*(x) ∝ exp(-beta H(x)). Energies, bonds (each neighbour pair once, also at L = 2) and exact
log Z: ``ddrl.energy.spin_lattice``.

What a run needs besides the task (``suggested_sections``, applied by ``ddrl train --task ising``):
a token-only `tiny` model over q values plus the mask (``charset: null``, ``vocab_size = q + 1``),
the `ancestral` sampler at temperature 1 over the whole lattice (one random order, one site per
step: exact path likelihoods), and for `dmpo` MDNS's WDCE settings (alpha 1, exact path weights,
uniform reference). "Accuracy" means nothing here: held-out evaluation draws ``eval_samples``
configurations and reports ESS, the log Z error and the histogram KL(p̂ || p*) (``measure_policy``).
A lattice with more than 2^22 states (Ising beyond 4x4) has no exact p*: its evaluation skips
the exact metrics (``EXACT_METRICS``: log_z, log_z_error, kl_path, kl_hist, tv_hist) and warns
once, naming them.
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import ConfigDict, Field

from ddrl.config import ConfigError
from ddrl.energy.measure import EXACT_METRICS, sample_metrics, sample_policy
from ddrl.energy.spin_lattice import MAX_ENUMERATED_STATES, LatticeKind, SpinLattice
from ddrl.tasks.base import Example, Task, TaskConfig

if TYPE_CHECKING:
    from ddrl.models.base import MaskedDiffusionPolicy
    from ddrl.samplers.base import Sampler

ROW_SEPARATOR = "/"


class LatticeTaskConfig(TaskConfig):
    """Options both lattice tasks share (physics names: L, J, beta)."""

    L: int = Field(4, ge=2, le=32, description="lattice side; n = L*L sites = the completion length")
    J: float = Field(1.0, description="coupling (J > 0: ferromagnetic)")
    beta: float = Field(0.28, ge=0, description="inverse temperature")
    eval_samples: int = Field(4096, ge=2, description="configurations drawn by held-out evaluation")


class IsingConfig(LatticeTaskConfig):
    model_config = ConfigDict(extra="forbid")

    name: str = "ising"
    h: float = Field(0.1, description="external field")


class PottsConfig(LatticeTaskConfig):
    model_config = ConfigDict(extra="forbid")

    name: str = "potts"
    L: int = Field(3, ge=2, le=32, description="lattice side; n = L*L sites = the completion length")
    q: int = Field(3, ge=2, le=10, description="number of states per site")
    beta: float = Field(1.005, ge=0, description="inverse temperature (q = 3 critical: log(1 + sqrt 3))")


class LatticeTask(Task):
    """One example (the lattice); the same in the train and test split."""

    kind: ClassVar[LatticeKind]
    config: LatticeTaskConfig
    default_rewards = ("lattice_boltzmann",)
    heldout_metric = "ess"

    @property
    def lattice(self) -> SpinLattice:
        cfg = self.config
        return SpinLattice(self.kind, cfg.L, cfg.J, cfg.beta, getattr(cfg, "h", 0.0), getattr(cfg, "q", 2))

    def load(self, split: str) -> list[Example]:
        lat = self.lattice
        spec = {"kind": lat.kind, "L": lat.L, "J": lat.J, "beta": lat.beta, "h": lat.h, "q": lat.q}
        return [Example(f"{lat.kind}-{lat.L}x{lat.L}", "", None, {"lattice": spec})]

    @classmethod
    def eval_lengths(cls, config: LatticeTaskConfig) -> list[int] | None:  # type: ignore[override]
        return [config.L * config.L]

    @classmethod
    def suggested_sections(cls, config: LatticeTaskConfig) -> dict[str, dict[str, Any]]:  # type: ignore[override]
        q = getattr(config, "q", 2)
        n = config.L * config.L
        return {
            "model": {
                "name": "tiny", "charset": None,
                "architecture": {"vocab_size": q + 1, "d_model": 64, "n_layers": 2, "n_heads": 4,
                                 "ffn_hidden": 128, "max_seq_len": max(8, n),
                                 "absolute_positions": True},
            },
            "sampler": {"name": "ancestral", "max_completion_length": n, "block_length": None, "temperature": 1.0},
            "objective": {
                "name": "dmpo", "alpha": 1.0, "log_ratio": "path", "reference": "uniform", "baseline": "none",
            },
        }

    def format_prompt(self, example: Example) -> str:
        return ""

    def encode(self, example: Example, policy: MaskedDiffusionPolicy) -> list[int]:
        q = self.lattice.q
        if policy.vocab_size != q + 1 or policy.mask_token_id != q:
            raise ConfigError(
                f"{self.config.name} needs a token-only policy over {q} site values plus the mask "
                f"(vocab_size {q + 1}, mask id {q}); this one has vocab_size {policy.vocab_size} and mask id "
                f"{policy.mask_token_id}. Use model tiny with charset: null and architecture.vocab_size: {q + 1}"
            )
        return []

    def decode(self, completion_ids: list[int], policy: MaskedDiffusionPolicy) -> str:
        L = self.lattice.L
        digits = "".join(str(int(v)) for v in completion_ids)
        return ROW_SEPARATOR.join(digits[i : i + L] for i in range(0, len(digits), L))

    def parse(self, completion: str) -> torch.Tensor:
        """``[1, n]`` the configuration written by ``decode``."""
        digits = completion.replace(ROW_SEPARATOR, "")
        if len(digits) != self.lattice.num_sites or not digits.isdigit():
            raise ValueError(f"not a {self.lattice.L}x{self.lattice.L} configuration: {completion!r}")
        return torch.tensor([[int(c) for c in digits]], dtype=torch.long)

    def score(self, example: Example, completion: str) -> dict[str, float]:
        """Energy per site and magnetisation of one configuration; no accuracy (NaN)."""
        lat = self.lattice
        x = self.parse(completion)
        return {
            "accuracy": math.nan,
            "energy_per_site": float(lat.energy(x)[0]) / lat.num_sites,
            "magnetisation": float(lat.magnetisation(x)[0]),
        }

    def exact_sampler(self) -> Sampler:
        """MDNS's sampler of this lattice: ``ancestral`` at temperature 1, one site per step in a
        uniformly random order over the whole lattice (exact path likelihoods)."""
        from ddrl.samplers.ancestral import AncestralSampler, AncestralSamplerConfig

        return AncestralSampler(AncestralSamplerConfig(max_completion_length=self.lattice.num_sites, temperature=1.0))

    def measure_policy(
        self, policy: MaskedDiffusionPolicy, sampler: Sampler | None, seed: int
    ) -> dict[str, float] | None:
        """``eval_samples`` configurations from ``sampler`` (None: ``exact_sampler``): ESS, log Z
        error, KL(p̂ || p*) ... and ``nfe``, the forward passes spent."""
        sampler = sampler if sampler is not None else self.exact_sampler()
        if not self.lattice.enumerable:
            self._warn_skipped_exact_metrics()
        generator = torch.Generator(device=policy.device).manual_seed(seed)
        sample = sample_policy(policy, sampler, self.config.eval_samples, generator=generator)
        metrics = sample_metrics(self.lattice, sample, exact=self.lattice.enumerable)
        if "ess" not in metrics:
            metrics["ess"] = math.nan  # the sampler records no exact path likelihood
        metrics["nfe"] = float(sample.nfe)
        return metrics


    def skipped_exact_metrics(self) -> tuple[str, ...]:
        """The metrics ``measure_policy`` leaves out because q^n states are too many to list."""
        return () if self.lattice.enumerable else EXACT_METRICS

    def _warn_skipped_exact_metrics(self) -> None:
        """Say once per task which exact metrics this lattice's runs skip, and why."""
        if getattr(self, "_warned_skipped", False):
            return
        self._warned_skipped = True
        lat = self.lattice
        warnings.warn(
            f"{lat.kind} {lat.L}x{lat.L}: skipping the exact metrics {', '.join(EXACT_METRICS)}: they "
            f"enumerate all q^n = {lat.q}^{lat.num_sites} states and at most {MAX_ENUMERATED_STATES} (2^22) "
            "can be listed. Reported: ESS, log_z_estimate, energy and magnetisation (and nfe); compare "
            "energy and magnetisation with the Swendsen-Wang reference (ddrl.energy.swendsen_wang).",
            UserWarning,
            stacklevel=3,
        )


class IsingTask(LatticeTask):
    Config = IsingConfig
    kind = "ising"
    config: IsingConfig


class PottsTask(LatticeTask):
    Config = PottsConfig
    kind = "potts"
    config: PottsConfig
