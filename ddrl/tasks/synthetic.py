"""`synthetic`: enumerable token-level problems with a seeded reward from a family.

Like `pattern`, but the reward is drawn per prompt from a family of functions (``ddrl.rewards.
synthetic``): per-position scores, pairwise equalities, a function of one token's count, a parity
over a subset of positions, or a mix of two. Coefficients are random (from ``seed``) and the reward
is standardised under uniformly random completions (mean 0, standard deviation ``reward_scale``),
so ``alpha`` means the same across problems.
With a token-only `tiny` policy every completion can be listed and p_theta, p* and
KL(p* || p_theta) are exact (``ddrl.enumeration``): this is how DMPO is checked on problems nobody
tuned it for (``benchmarks/distribution_matching.py --family``).
"""

from __future__ import annotations

import random
from typing import Any, Literal

import torch
from pydantic import ConfigDict, Field

from ddrl.config import ConfigError
from ddrl.rewards.synthetic import synthetic_values, term_values
from ddrl.tasks.base import Example
from ddrl.tasks.tokens import TokenTask, TokenTaskConfig

Kind = Literal["position", "pairs", "count", "parity", "mixed"]
TERM_KINDS = ("position", "pairs", "count", "parity")
NORMALISATION_SAMPLES = 65536  # uniform draws that fix shift and scale when V^L is larger


class SyntheticConfig(TokenTaskConfig):
    model_config = ConfigDict(extra="forbid")

    name: str = "synthetic"
    length: int = Field(4, ge=2, le=8, description="completion length L (a parity needs 2 positions)")
    reward: Kind = Field("mixed", description="the reward family: one term kind, or mixed (two kinds)")
    reward_scale: float = Field(1.0, gt=0, description="standard deviation of the reward under uniform completions")


def random_term(kind: str, num_tokens: int, length: int, rng: random.Random) -> dict[str, Any]:
    """One reward term of ``kind`` with coefficients from ``rng`` (see ``ddrl.rewards.synthetic``)."""
    if kind == "position":
        return {"kind": kind, "table": [[rng.gauss(0, 1) for _ in range(num_tokens)] for _ in range(length)]}
    if kind == "pairs":
        pairs = [[i, j] for i in range(length) for j in range(i + 1, length)]
        chosen = rng.sample(pairs, k=max(1, len(pairs) // 2))
        return {"kind": kind, "pairs": chosen, "coefficients": [rng.gauss(0, 1) for _ in chosen]}
    if kind == "count":
        return {"kind": kind, "token": rng.randrange(num_tokens), "values": [rng.gauss(0, 1) for _ in range(length + 1)]}
    if kind == "parity":
        subset = sorted(rng.sample(range(length), k=rng.randint(2, length)))
        bits = [rng.randrange(2) for _ in range(num_tokens)]
        if len(set(bits)) == 1:
            bits[rng.randrange(num_tokens)] ^= 1  # both parities must be reachable
        return {"kind": kind, "subset": subset, "bits": bits, "coefficient": rng.choice([-1.0, 1.0])}
    raise ConfigError(f"unknown reward kind {kind!r}; kinds: {', '.join(TERM_KINDS)}, mixed")


def random_spec(kind: str, num_tokens: int, length: int, rng: random.Random, std: float = 1.0) -> dict[str, Any]:
    """A reward spec: its terms, and the shift and scale that give it mean 0 and standard deviation
    ``std`` under uniformly random completions."""
    kinds = rng.sample(TERM_KINDS, k=2) if kind == "mixed" else [kind]
    terms = [random_term(k, num_tokens, length, rng) for k in kinds]
    if num_tokens**length <= NORMALISATION_SAMPLES:
        grid = torch.cartesian_prod(*[torch.arange(num_tokens)] * length).view(-1, length)
    else:
        g = torch.Generator().manual_seed(rng.randrange(2**31))
        grid = torch.randint(num_tokens, (NORMALISATION_SAMPLES, length), generator=g)
    raw = sum(term_values(t, grid) for t in terms)
    spread = float(raw.std())  # type: ignore[union-attr]
    return {"terms": terms, "shift": float(raw.mean()), "scale": (spread if spread > 1e-12 else 1.0) / std}  # type: ignore[union-attr]


class SyntheticTask(TokenTask):
    """The same prompts serve as train and test split: the target is a distribution, not a skill."""

    Config = SyntheticConfig
    default_rewards = ("synthetic_reward",)
    config: SyntheticConfig

    def load(self, split: str) -> list[Example]:
        cfg = self.config
        rng = random.Random(f"synthetic-{cfg.seed}")
        out = []
        for i in range(cfg.num_prompts):
            prompt = [rng.randrange(cfg.num_tokens) for _ in range(cfg.prompt_length)]
            spec = random_spec(cfg.reward, cfg.num_tokens, cfg.length, rng, cfg.reward_scale)
            out.append(Example(f"synthetic-{i}", " ".join(map(str, prompt)), None, {"prompt_ids": prompt, "reward": spec}))
        return out

    def score(self, example: Example, completion: str) -> dict[str, float]:
        """No right answer (accuracy NaN); the reward of the completion."""
        ids = torch.tensor([[int(t) for t in completion.split()]])
        return {"accuracy": float("nan"), "reward": float(synthetic_values(example.columns["reward"], ids)[0])}
