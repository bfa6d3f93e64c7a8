"""`pattern`: a token-level toy target small enough to enumerate (docs/objectives.md: verification).

Prompts are short random token sequences over ``num_tokens`` ids; each prompt has a target pattern
of ``length`` tokens, and the reward is the fraction of completion positions that match it. With a
token-only `tiny` policy (``charset: null``, ``vocab_size = num_tokens + 1``) every completion can be
listed, so p_theta, the tilted target p* ∝ p_ref exp(r/alpha) and KL(p*||p_theta) are exact
(``ddrl.enumeration``). No text is involved: prompts are token ids and completions are shown as ids.
"""

from __future__ import annotations

import torch
from pydantic import ConfigDict, Field

from ddrl.tasks.base import Example
from ddrl.tasks.tokens import TokenTask, TokenTaskConfig


class PatternConfig(TokenTaskConfig):
    model_config = ConfigDict(extra="forbid")

    name: str = "pattern"
    num_prompts: int = Field(3, ge=1)


class PatternTask(TokenTask):
    """The same prompts serve as train and test split: the target is a distribution, not a skill."""

    Config = PatternConfig
    default_rewards = ("pattern_match",)
    config: PatternConfig

    def load(self, split: str) -> list[Example]:
        cfg = self.config
        g = torch.Generator().manual_seed(cfg.seed)
        out = []
        for i in range(cfg.num_prompts):
            prompt = torch.randint(cfg.num_tokens, (cfg.prompt_length,), generator=g).tolist()
            target = torch.randint(cfg.num_tokens, (cfg.length,), generator=g).tolist()
            out.append(Example(f"pattern-{i}", " ".join(map(str, prompt)), target, {"prompt_ids": prompt}))
        return out

    def score(self, example: Example, completion: str) -> dict[str, float]:
        tokens = [int(t) for t in completion.split()]
        match = sum(a == b for a, b in zip(tokens, example.answer)) / len(example.answer)
        return {"accuracy": float(match == 1.0), "match": match}
