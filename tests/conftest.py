"""Shared fixtures: tiny policies small enough to enumerate every outcome exactly."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a hub lookup would retry for tens of seconds

import pytest
import torch

from ddrl.batch import SequenceBatch
from ddrl.models.char_tokenizer import CharTokenizer
from ddrl.models.tiny import TinyArchitecture, TinyPolicy

# Weights far from zero so that the model's conditionals are peaked and depend on the context:
# with the usual 0.02 init every distribution is nearly uniform and exact tests lose their teeth.
PEAKED = dict(d_model=32, n_layers=2, n_heads=2, ffn_hidden=64, init_std=0.35)


@pytest.fixture(scope="session")
def token_policy() -> TinyPolicy:
    """A token-only policy: tokens {0, 1, 2} and the mask 3 (V = 3 real tokens)."""
    torch.manual_seed(0)
    policy = TinyPolicy.fresh(TinyArchitecture(vocab_size=4, **PEAKED), None, seed=11)
    return policy.eval()


@pytest.fixture(scope="session")
def token_policy_b() -> TinyPolicy:
    """A second token-only policy (another seed), e.g. a reference."""
    return TinyPolicy.fresh(TinyArchitecture(vocab_size=4, **PEAKED), None, seed=12).eval()


@pytest.fixture(scope="session")
def char_policy() -> TinyPolicy:
    """A character-level policy (random weights) for sampler tests on text prompts."""
    arch = TinyArchitecture(d_model=48, n_layers=2, n_heads=2, ffn_hidden=96, init_std=0.2)
    return TinyPolicy.fresh(arch, CharTokenizer(), seed=3).eval()


def all_completions(num_tokens: int, length: int) -> torch.Tensor:
    """``[num_tokens**length, length]`` every sequence over tokens 0..num_tokens-1."""
    grids = torch.cartesian_prod(*[torch.arange(num_tokens)] * length)
    return grids.view(-1, length)


def batch_for(prompt: list[int], completions: torch.Tensor) -> SequenceBatch:
    """The same prompt in front of every completion row."""
    n = completions.shape[0]
    prompt_ids = torch.tensor(prompt, dtype=torch.long).expand(n, -1).clone()
    return SequenceBatch.from_parts(prompt_ids, completions)
